#include "launcher/server/server_metrics.h"

#include <algorithm>
#include <cctype>

#include "launcher/api_values.h"
#include "launcher/server/http_server.h"
#include "launcher/server/job_manager.h"

namespace shardtune::server {

namespace {

// Request latencies: a ping's milliseconds up to a data check's (ValidateJob) seconds; a stream
// (WatchJob) lasts as long as its job and lands in +Inf.
const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,      2.5,   5,    10,    30,   60};

// "succeeded", "running", ... (the names clients see, lowercase as in the OpenAI API).
std::string StatusLabel(v1::JobStatus status) { return api::ShortName(status); }

// The job's error code as dashboards have known it ("RANK_FAILED"); "UNSPECIFIED" when it has none.
std::string CodeLabel(const v1::Job& job) {
  const v1::JobErrorCode code = job.error().code();
  if (code == v1::JOB_ERROR_CODE_UNSPECIFIED) return "UNSPECIFIED";
  std::string label = api::ShortName(code);
  std::transform(label.begin(), label.end(), label.begin(), [](unsigned char c) { return std::toupper(c); });
  return label;
}

const std::vector<std::string> kJobLabels = {"job", "tenant", "name"};

}  // namespace

ServerMetrics::ServerMetrics()
    : jobs_(registry_.AddGauge("shardtune_jobs", "Jobs in the store, by tenant and status.", {"tenant", "status"})),
      queue_depth_(registry_.AddGauge("shardtune_queue_depth", "Jobs queued for slots (status queued).")),
      slots_in_use_(registry_.AddGauge("shardtune_slots_in_use",
                                       "Slots (ranks) held by running attempts and Slurm submissions in flight.")),
      slots_free_(registry_.AddGauge("shardtune_slots_free", "Slots of the pool no attempt holds.")),
      job_step_(registry_.AddGauge("shardtune_job_step", "A running job's latest reported step.", kJobLabels)),
      job_total_steps_(registry_.AddGauge("shardtune_job_total_steps", "A running job's steps in all.", kJobLabels)),
      job_loss_(registry_.AddGauge("shardtune_job_loss", "A running job's latest training loss.", kJobLabels)),
      job_validation_loss_(registry_.AddGauge(
          "shardtune_job_validation_loss", "A running job's latest validation loss (once it evaluated).", kJobLabels)),
      job_tokens_per_second_(registry_.AddGauge("shardtune_job_tokens_per_second",
                                                "A running job's training throughput at its latest step, in "
                                                "tokens per second over all ranks.",
                                                kJobLabels)),
      job_eta_(registry_.AddGauge("shardtune_job_eta_seconds",
                                  "Seconds until a running job's estimated finish, from its attempt's pace.",
                                  kJobLabels)),
      attempts_(registry_.AddCounter("shardtune_job_attempts_total",
                                     "Attempts started: each job's first run, each retry and each resume.",
                                     {"tenant"})),
      attempt_failures_(registry_.AddCounter("shardtune_job_attempt_failures_total",
                                             "Attempts that ended in an error (retried or not), by error code.",
                                             {"tenant", "code"})),
      retries_(registry_.AddCounter("shardtune_job_retries_total",
                                    "Failed attempts requeued to resume from the latest checkpoint, by error code.",
                                    {"tenant", "code"})),
      failures_(registry_.AddCounter("shardtune_job_failures_total", "Jobs that ended failed, by error code.",
                                     {"tenant", "code"})),
      jobs_ended_(registry_.AddCounter("shardtune_jobs_ended_total",
                                       "Jobs that reached a final status (succeeded, failed, cancelled).",
                                       {"tenant", "status"})),
      grpc_requests_(registry_.AddCounter("shardtune_grpc_requests_total",
                                          "gRPC calls handled, by full method and status code.", {"method", "code"})),
      grpc_seconds_(registry_.AddHistogram("shardtune_grpc_request_duration_seconds",
                                           "gRPC call latency, from the call's start to its status (a stream: "
                                           "its whole life).",
                                           {"method"}, kLatencyBuckets)),
      http_requests_(registry_.AddCounter("shardtune_http_requests_total",
                                          "HTTP requests answered, by method, route template and status code.",
                                          {"method", "route", "code"})),
      http_seconds_(registry_.AddHistogram("shardtune_http_request_duration_seconds",
                                           "HTTP request latency, from routing to the response written.",
                                           {"method", "route"}, kLatencyBuckets)) {}

void ServerMetrics::StatusChanged(const v1::Job& job, v1::JobStatus to) {
  const v1::JobStatus from = job.status();
  if (from == to) return;
  if (to == v1::JOB_STATUS_RUNNING) attempts_.Add({job.tenant()});
  // An attempt that ended in an error is requeued (a retry) or fails its job.
  if (from == v1::JOB_STATUS_RUNNING && (to == v1::JOB_STATUS_QUEUED || to == v1::JOB_STATUS_FAILED))
    attempt_failures_.Add({job.tenant(), CodeLabel(job)});
  if (from == v1::JOB_STATUS_RUNNING && to == v1::JOB_STATUS_QUEUED) retries_.Add({job.tenant(), CodeLabel(job)});
  if (to == v1::JOB_STATUS_FAILED) failures_.Add({job.tenant(), CodeLabel(job)});
  if (IsTerminal(to)) jobs_ended_.Add({job.tenant(), StatusLabel(to)});
}

void ServerMetrics::RpcHandled(const std::string& method, const std::string& code, double seconds) {
  grpc_requests_.Add({method, code});
  grpc_seconds_.Observe({method}, seconds);
}

void ServerMetrics::HttpHandled(const std::string& method, const std::string& route, int status, double seconds) {
  http_requests_.Add({method, route, std::to_string(status)});
  if (seconds >= 0) http_seconds_.Observe({method, route}, seconds);
}

void ServerMetrics::SetJobGauges(JobManager& manager) {
  jobs_.Clear();
  int64_t queued = 0;
  for (const auto& [key, count] : manager.store().CountByTenantAndStatus()) {
    jobs_.Set({key.first, StatusLabel(key.second)}, static_cast<double>(count));
    if (key.second == v1::JOB_STATUS_QUEUED) queued += count;
  }
  queue_depth_.Set({}, static_cast<double>(queued));
  const JobManager::PoolState pool = manager.Pool();
  slots_in_use_.Set({}, pool.slots_in_use);
  slots_free_.Set({}, std::max(0, pool.slots - pool.slots_in_use));
  for (Gauge* gauge :
       {&job_step_, &job_total_steps_, &job_loss_, &job_validation_loss_, &job_tokens_per_second_, &job_eta_})
    gauge->Clear();
  const int64_t now_ms = NowMs();
  for (const v1::Job& job : pool.running) {
    const LabelValues labels = {job.id(), job.tenant(), job.name()};
    job_step_.Set(labels, static_cast<double>(job.step()));
    if (job.total_steps() > 0) job_total_steps_.Set(labels, static_cast<double>(job.total_steps()));
    const auto& metrics = job.metrics();
    if (const auto it = metrics.find("loss"); it != metrics.end()) job_loss_.Set(labels, it->second);
    if (const auto it = metrics.find("val_loss"); it != metrics.end()) job_validation_loss_.Set(labels, it->second);
    if (const auto it = metrics.find("tokens_per_s"); it != metrics.end())
      job_tokens_per_second_.Set(labels, it->second);
    if (job.has_estimated_finish_time())
      job_eta_.Set(labels,
                   static_cast<double>(std::max<int64_t>(0, api::Ms(job.estimated_finish_time()) - now_ms)) / 1000);
  }
}

std::string ServerMetrics::Scrape(JobManager& manager) {
  std::lock_guard<std::mutex> lock(scrape_mutex_);
  SetJobGauges(manager);
  return registry_.Render();
}

void MountMetrics(HttpServer& http, JobManager& manager, const ApiKeyTable* keys) {
  auto serve = [&manager](httplib::Response& response) {
    response.set_content(manager.metrics().Scrape(manager), kPrometheusTextContentType);
  };
  if (!keys)
    return http.Get("/metrics", [serve](const httplib::Request&, httplib::Response& response) { serve(response); });
  http.Get("/metrics",
           WithCaller(*keys, [serve](const Caller& caller, const httplib::Request&, httplib::Response& response) {
             if (!caller.admin) {
               return WriteHttpError(response, 403,
                                     "GET /metrics shows every tenant's jobs: it takes an admin's API key (or serve it "
                                     "on metrics_listen)",
                                     "invalid_request_error", "permission_denied");
             }
             serve(response);
           }));
}

}  // namespace shardtune::server
