#include "launcher/server/services.h"

#include <spdlog/spdlog.h>

#include <set>
#include <sstream>

#include "common/job_spec.h"
#include "launcher/api_values.h"
#include "launcher/server/page_token.h"
#include "launcher/server/service_util.h"

namespace shardtune::server {

using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;

namespace {

// ListJobEvents' and ListCheckpoints' page size: default 100, at most 1000.
int64_t PageSize(int32_t requested) { return requested > 0 ? std::min(requested, 1000) : 100; }

RequestError BadPageToken(const std::string& bound_to) {
  return RequestError(RequestError::Kind::kInvalidArgument,
                      "page_token is not one this server gave for this listing (a token belongs to " + bound_to +
                          " it was given with)");
}

class JobServiceImpl final : public v1::JobService::Service {
 public:
  explicit JobServiceImpl(JobManager& manager) : manager_(manager), keys_(manager.config()) {}

  Status CreateJob(ServerContext* context, const v1::CreateJobRequest* request, v1::Job* job) override {
    return Authenticated(context, [&](const Caller& caller) {
      *job = manager_.Create(caller, *request);
      return Status::OK;
    });
  }

  Status ValidateJob(ServerContext* context, const v1::ValidateJobRequest* request,
                     v1::ValidateJobResponse* response) override {
    return Authenticated(context, [&](const Caller& caller) {
      std::string text = request->spec_case() == v1::ValidateJobRequest::kSpecFields
                             ? StructToJson(request->spec_fields())
                             : request->spec_yaml();
      try {
        std::set<std::string> uploaded;  // file:ID paths: the worker checks the files they name
        const JobSpec spec = ParseJobSpec(text, "spec_yaml", "/", manager_.UploadedFilesOf(caller, &uploaded));
        manager_.storage().Require(caller.tenant, caller.admin, spec);  // PERMISSION_DENIED, before any file is read
        if (!uploaded.empty()) text = JobSpecToYaml(spec);
        if (const auto plan = manager_.PlanFor(spec, spec.resources.world_size())) {
          response->set_plan(PlanToText(*plan));
          if (!plan->fits) response->add_problems("the job does not fit its ranks' memory (see plan)");
        }
      } catch (const SpecError& e) {
        response->set_valid(false);
        for (const auto& p : e.problems()) response->add_problems(p);
        return Status::OK;
      }
      const auto [ok, report] = manager_.CheckData(text, caller.tenant);
      response->set_valid(ok && response->problems().empty());
      if (ok) {
        response->set_summary(report);
      } else {
        std::istringstream lines(report);
        for (std::string line; std::getline(lines, line);)
          if (!line.empty()) response->add_problems(line);
      }
      return Status::OK;
    });
  }

  Status GetJob(ServerContext* context, const v1::GetJobRequest* request, v1::Job* job) override {
    return Authenticated(context, [&](const Caller& caller) {
      *job = manager_.Get(caller, request->id());
      return Status::OK;
    });
  }

  Status ListJobs(ServerContext* context, const v1::ListJobsRequest* request, v1::ListJobsResponse* response) override {
    return Authenticated(context, [&](const Caller& caller) {
      JobFilter filter;
      filter.tenant = caller.visible_tenant();
      filter.status = request->status();
      filter.name = request->name();
      filter.labels = {request->labels().begin(), request->labels().end()};
      filter.limit = request->page_size() > 0 ? std::min(request->page_size(), 500) : 50;
      if (!request->page_token().empty()) {
        filter.after = DecodePageToken(request->page_token(), filter);
        if (!filter.after) {
          throw RequestError(RequestError::Kind::kInvalidArgument,
                             "page_token is not one this server gave for this listing (a token belongs to the "
                             "status, name and labels it was given with)");
        }
      }
      filter.limit += 1;  // one more tells whether there is a next page
      auto records = manager_.store().List(filter);
      if (static_cast<int64_t>(records.size()) == filter.limit) {
        records.pop_back();
        const v1::Job& last = records.back().job;
        response->set_next_page_token(EncodePageToken({api::Ms(last.create_time()), last.id()}, filter));
      }
      for (const auto& r : records) *response->add_jobs() = r.job;
      return Status::OK;
    });
  }

  Status CancelJob(ServerContext* context, const v1::CancelJobRequest* request, v1::Job* job) override {
    return Authenticated(context, [&](const Caller& caller) {
      *job = manager_.Cancel(caller, request->id());
      return Status::OK;
    });
  }

  Status PauseJob(ServerContext* context, const v1::PauseJobRequest* request, v1::Job* job) override {
    return Authenticated(context, [&](const Caller& caller) {
      *job = manager_.Pause(caller, request->id());
      return Status::OK;
    });
  }

  Status ResumeJob(ServerContext* context, const v1::ResumeJobRequest* request, v1::Job* job) override {
    return Authenticated(context, [&](const Caller& caller) {
      *job = manager_.Resume(caller, request->id(), request->ranks());
      return Status::OK;
    });
  }

  Status WatchJob(ServerContext* context, const v1::WatchJobRequest* request,
                  grpc::ServerWriter<v1::JobEvent>* writer) override {
    return Authenticated(context, [&](const Caller& caller) {
      manager_.Get(caller, request->id());  // NOT_FOUND before anything is streamed
      int64_t seq = request->after_seq();
      while (!context->IsCancelled()) {
        const auto events = manager_.store().Events(request->id(), seq, 100);
        for (const auto& e : events) {
          if (!writer->Write(e)) return Status::OK;
          seq = e.seq();
        }
        if (events.empty()) {
          if (IsTerminal(manager_.Get(caller, request->id()).status())) return Status::OK;
          manager_.WaitForEvent(request->id(), seq, 500);
        }
      }
      return Status::OK;
    });
  }

  Status ListJobEvents(ServerContext* context, const v1::ListJobEventsRequest* request,
                       v1::ListJobEventsResponse* response) override {
    return Authenticated(context, [&](const Caller& caller) {
      manager_.Get(caller, request->job_id());
      int64_t after = request->after_seq();
      if (!request->page_token().empty()) {
        const auto seq = DecodeEventPageToken(request->page_token(), request->job_id(), request->after_seq());
        if (!seq) throw BadPageToken("the job_id and after_seq");
        after = *seq;
      }
      auto events = manager_.store().Events(request->job_id(), after, PageSize(request->page_size()) + 1);
      if (static_cast<int64_t>(events.size()) > PageSize(request->page_size())) {
        events.pop_back();
        response->set_next_page_token(
            EncodeEventPageToken(events.back().seq(), request->job_id(), request->after_seq()));
      }
      for (auto& e : events) *response->add_events() = std::move(e);
      return Status::OK;
    });
  }

  Status ListCheckpoints(ServerContext* context, const v1::ListCheckpointsRequest* request,
                         v1::ListCheckpointsResponse* response) override {
    return Authenticated(context, [&](const Caller& caller) {
      manager_.Get(caller, request->job_id());
      int64_t after = 0;
      if (!request->page_token().empty()) {
        const auto step = DecodeCheckpointPageToken(request->page_token(), request->job_id());
        if (!step) throw BadPageToken("the job_id");
        after = *step;
      }
      auto checkpoints = manager_.store().Checkpoints(request->job_id(), after, PageSize(request->page_size()) + 1);
      if (static_cast<int64_t>(checkpoints.size()) > PageSize(request->page_size())) {
        checkpoints.pop_back();
        response->set_next_page_token(EncodeCheckpointPageToken(checkpoints.back().step(), request->job_id()));
      }
      for (auto& c : checkpoints) *response->add_checkpoints() = std::move(c);
      return Status::OK;
    });
  }

 private:
  template <typename F>
  Status Authenticated(ServerContext* context, F&& body) {
    return keys_.Authenticated(context, std::forward<F>(body));
  }

  JobManager& manager_;
  ApiKeys keys_;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(JobManager& manager) : manager_(manager) {}

  Status ReportProgress(ServerContext* context, const v1::ProgressReport* report, v1::WorkerReply* reply) override {
    return Checked(context, report->job_id(), [&] {
      reply->set_stop(manager_.Progress(*report));
      return Status::OK;
    });
  }
  Status ReportCheckpoint(ServerContext* context, const v1::CheckpointReport* report, v1::WorkerReply*) override {
    return Checked(context, report->job_id(), [&] {
      manager_.CheckpointSaved(*report);
      return Status::OK;
    });
  }
  Status ReportResult(ServerContext* context, const v1::ResultReport* report, v1::WorkerReply*) override {
    return Checked(context, report->job_id(), [&] {
      manager_.Result(*report);
      return Status::OK;
    });
  }
  Status Heartbeat(ServerContext* context, const v1::HeartbeatReport* report, v1::WorkerReply*) override {
    return Checked(context, report->job_id(), [&] {
      manager_.Heartbeat(*report);
      return Status::OK;
    });
  }

 private:
  template <typename F>
  Status Checked(ServerContext* context, const std::string& job_id, F&& body) {
    if (!manager_.WorkerTokenValid(job_id, Bearer(context)))
      return Status(StatusCode::UNAUTHENTICATED, "not this job's worker token");
    return Guard(context, body);
  }

  JobManager& manager_;
};

}  // namespace

std::unique_ptr<v1::JobService::Service> MakeJobService(JobManager& manager) {
  return std::make_unique<JobServiceImpl>(manager);
}

std::unique_ptr<v1::WorkerService::Service> MakeWorkerService(JobManager& manager) {
  return std::make_unique<WorkerServiceImpl>(manager);
}

}  // namespace shardtune::server
