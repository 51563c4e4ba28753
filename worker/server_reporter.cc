#include "worker/server_reporter.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <thread>

#include "common/error.h"
#include "common/job_spec.h"
#include "common/worker_contract.h"
#include "shardtune/v1/jobs.grpc.pb.h"

namespace shardtune {

namespace {

std::string Environment(std::string_view name) {
  const char* value = std::getenv(std::string(name).c_str());
  return value != nullptr ? value : "";
}

// A call that may not have reached the server: no server listening, or none answering in time.
bool Undelivered(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

static_assert(static_cast<int>(contract::JobErrorKind::kBackend) == v1::JOB_ERROR_CODE_BACKEND &&
                  static_cast<int>(contract::JobErrorKind::kTimeout) == v1::JOB_ERROR_CODE_TIMEOUT &&
                  static_cast<int>(contract::JobErrorKind::kInvalidSpec) == v1::JOB_ERROR_CODE_INVALID_SPEC,
              "contract::JobErrorKind mirrors proto JobErrorCode");

}  // namespace

struct ServerReporter::Impl {
  std::unique_ptr<v1::WorkerService::Stub> stub;
  std::string job_id, token;
  int attempt = 0;
  // How long an evaluation's report keeps trying to reach the server (contract::kEnvEvaluationWait).
  std::chrono::milliseconds evaluation_wait{0};
  bool warned = false;
  // The heartbeat thread: sends one every `heartbeat_interval` until `stopping`.
  std::thread heartbeat;
  std::mutex heartbeat_mutex;
  std::condition_variable heartbeat_wake;
  bool stopping = false;

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(heartbeat_mutex);
      stopping = true;
    }
    heartbeat_wake.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }

  void StartHeartbeats(std::chrono::milliseconds interval) {
    heartbeat = std::thread([this, interval] {
      // Its own warning flag (`warned` belongs to the training thread); a deadline of the
      // interval, so that a server that does not answer delays no later heartbeat.
      bool heartbeat_warned = false;
      v1::HeartbeatReport report;
      report.set_job_id(job_id);
      report.set_attempt(attempt);
      std::unique_lock<std::mutex> lock(heartbeat_mutex);
      while (!stopping) {
        lock.unlock();
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer " + token);
        context.set_deadline(std::chrono::system_clock::now() + std::max(interval, std::chrono::milliseconds(1000)));
        v1::WorkerReply reply;
        const grpc::Status status = stub->Heartbeat(&context, report, &reply);
        if (!status.ok() && !heartbeat_warned) {
          heartbeat_warned = true;
          spdlog::warn("cannot send a heartbeat to the server: {} (training goes on)", status.error_message());
        }
        lock.lock();
        heartbeat_wake.wait_for(lock, interval, [&] { return stopping; });
      }
    });
  }

  // `wait_for_ready`: the call waits, up to its deadline, for a server that is not reachable yet
  // (restarting) rather than failing at once.
  std::unique_ptr<grpc::ClientContext> Context(bool wait_for_ready = false) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", "Bearer " + token);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    context->set_wait_for_ready(wait_for_ready);
    return context;
  }
  void Check(const grpc::Status& status, const char* what) {
    if (status.ok() || warned) return;
    warned = true;  // once: the server may be restarting
    spdlog::warn("cannot report {} to the server: {} (training goes on)", what, status.error_message());
  }

  void SendResult(v1::ResultReport report) {
    report.set_job_id(job_id);
    report.set_attempt(attempt);
    // A few tries, each waiting for the server to be reachable: a server restarting right now
    // would otherwise fall back on the exit status alone.
    constexpr int kTries = 3;
    grpc::Status status;
    for (int tried = 1; tried <= kTries; ++tried) {
      v1::WorkerReply reply;
      status = stub->ReportResult(Context(/*wait_for_ready=*/true).get(), report, &reply);
      if (status.ok() || !Undelivered(status)) break;
      if (tried < kTries) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    Check(status, "the result");
  }
};

bool ServerReporter::ManagedByServer() {
  return !Environment(contract::kEnvJobToken).empty() && !Environment(contract::kEnvServer).empty() &&
         !Environment(contract::kEnvJobId).empty();
}

std::unique_ptr<ServerReporter> ServerReporter::FromEnvironment() {
  if (!ManagedByServer()) return nullptr;
  auto impl = std::make_unique<Impl>();
  // A restarted server is found again within seconds (gRPC's back-off between attempts to
  // connect otherwise grows to two minutes).
  grpc::ChannelArguments channel;
  channel.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  impl->stub = v1::WorkerService::NewStub(
      grpc::CreateCustomChannel(Environment(contract::kEnvServer), grpc::InsecureChannelCredentials(), channel));
  impl->job_id = Environment(contract::kEnvJobId);
  impl->token = Environment(contract::kEnvJobToken);
  impl->attempt = std::atoi(Environment(contract::kEnvJobAttempt).c_str());
  if (const double wait_s = std::atof(Environment(contract::kEnvEvaluationWait).c_str()); wait_s > 0)
    impl->evaluation_wait = std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000));
  if (const double interval_s = std::atof(Environment(contract::kEnvHeartbeatInterval).c_str()); interval_s > 0)
    impl->StartHeartbeats(std::chrono::milliseconds(static_cast<int64_t>(interval_s * 1000)));
  return std::unique_ptr<ServerReporter>(new ServerReporter(std::move(impl)));
}

ServerReporter::ServerReporter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ServerReporter::~ServerReporter() = default;

bool ServerReporter::Progress(int64_t step, int64_t total_steps, double epoch, int64_t tokens,
                              const std::map<std::string, double>& metrics, const std::string& log_line) {
  v1::ProgressReport report;
  report.set_job_id(impl_->job_id);
  report.set_attempt(impl_->attempt);
  report.set_step(step);
  report.set_total_steps(total_steps);
  report.set_epoch(epoch);
  report.set_trained_tokens(tokens);
  for (const auto& [k, v] : metrics) (*report.mutable_metrics())[k] = v;
  report.set_log_line(log_line);
  // An evaluation of a sweep's trial is delivered, however long the server takes to come back (up
  // to evaluation_wait): its verdict says whether the trial goes on. A report the server took
  // twice (its answer lost) is judged once. Every other report is sent once.
  const bool deliver = impl_->evaluation_wait.count() > 0 && metrics.count("val_loss") > 0;
  const auto give_up = std::chrono::steady_clock::now() + impl_->evaluation_wait;
  v1::WorkerReply reply;
  grpc::Status status;
  for (;;) {
    status = impl_->stub->ReportProgress(impl_->Context(deliver).get(), report, &reply);
    if (!deliver || status.ok() || !Undelivered(status) || std::chrono::steady_clock::now() >= give_up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  impl_->Check(status, "progress");
  return status.ok() && reply.stop();
}

void ServerReporter::Checkpoint(int64_t step, const std::string& path) {
  v1::CheckpointReport report;
  report.set_job_id(impl_->job_id);
  report.set_attempt(impl_->attempt);
  report.set_step(step);
  report.set_path(path);
  v1::WorkerReply reply;
  impl_->Check(impl_->stub->ReportCheckpoint(impl_->Context().get(), report, &reply), "a checkpoint");
}

void ServerReporter::Result(AttemptOutcome outcome) {
  v1::ResultReport report;
  switch (outcome) {
    case AttemptOutcome::kFinished:
      report.set_outcome(v1::ATTEMPT_OUTCOME_FINISHED);
      break;
    case AttemptOutcome::kPaused:
      report.set_outcome(v1::ATTEMPT_OUTCOME_PAUSED);
      break;
    case AttemptOutcome::kStopped:
      report.set_outcome(v1::ATTEMPT_OUTCOME_STOPPED);
      break;
  }
  report.mutable_error()->set_rank(-1);
  impl_->SendResult(std::move(report));
}

void ServerReporter::Failure(contract::JobErrorKind kind, const std::string& what) {
  v1::ResultReport report;
  report.set_outcome(v1::ATTEMPT_OUTCOME_FAILED);
  const auto code = static_cast<v1::JobErrorCode>(kind);
  report.mutable_error()->set_code(code);
  // Collective errors already name their rank ("rank 0: all_gather of ... at step 12 ...").
  report.mutable_error()->set_message(what.rfind("rank ", 0) == 0 ? what : "rank 0: " + what);
  report.mutable_error()->set_rank(0);
  impl_->SendResult(std::move(report));
}

}  // namespace shardtune
