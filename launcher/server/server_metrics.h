#pragma once
// The server's Prometheus metrics (docs/server.md, "Metrics"), every name prefixed shardtune_:
// counters of job attempts, retries and failures by error code, and of gRPC and HTTP requests with
// their latency histograms, kept as they happen; and gauges read at each scrape from the job store
// and the scheduler (jobs by status and tenant, queue depth, slots, and each running job's step,
// loss, tokens per second and ETA from its workers' reports). Counters start at 0 with the process.
//
// Threads: every method may be called from any thread (the scheduler, RPC and HTTP handlers).

#include <mutex>
#include <string>

#include "launcher/server/metrics_registry.h"
#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

class ApiKeyTable;
class HttpServer;
class JobManager;

class ServerMetrics {
 public:
  ServerMetrics();

  // A job about to change from its status in `job` to `to` (JobManager::SetStatus, before the change).
  void StatusChanged(const v1::Job& job, v1::JobStatus to);
  // One RPC finished: its full method ("shardtune.v1.JobService/CreateJob"), its status code's name.
  void RpcHandled(const std::string& method, const std::string& code, double seconds);
  // One HTTP request answered: its route template, its status; `seconds` < 0: not timed (refused
  // before routing).
  void HttpHandled(const std::string& method, const std::string& route, int status, double seconds);

  // The text of GET /metrics: every family, the gauges read from `manager` now.
  std::string Scrape(JobManager& manager);

  // The counters' values, for tests: shardtune_job_attempts_total of `tenant`.
  double Attempts(const std::string& tenant) const { return attempts_.Value({tenant}); }

 private:
  void SetJobGauges(JobManager& manager);

  MetricsRegistry registry_;
  std::mutex scrape_mutex_;  // one scrape at a time: each clears and refills the gauges
  // Gauges, read at each scrape.
  Gauge& jobs_;
  Gauge& queue_depth_;
  Gauge& slots_in_use_;
  Gauge& slots_free_;
  Gauge& job_step_;
  Gauge& job_total_steps_;
  Gauge& job_loss_;
  Gauge& job_validation_loss_;
  Gauge& job_tokens_per_second_;
  Gauge& job_eta_;
  // Counters, as things happen.
  Counter& attempts_;
  Counter& attempt_failures_;
  Counter& retries_;
  Counter& failures_;
  Counter& jobs_ended_;
  Counter& grpc_requests_;
  Histogram& grpc_seconds_;
  Counter& http_requests_;
  Histogram& http_seconds_;
};

// Mounts GET /metrics on `http`: for an admin API key of `keys` only (it shows every tenant's
// jobs), or for anyone when `keys` is null (metrics_listen). `manager` and `keys` outlive `http`.
void MountMetrics(HttpServer& http, JobManager& manager, const ApiKeyTable* keys);

}  // namespace shardtune::server
