#include "worker/server_reporter.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "shardtune/v1/jobs.grpc.pb.h"

namespace shardtune {

struct ServerReporter::Impl {
  std::unique_ptr<v1::WorkerService::Stub> stub;
  std::string job_id, token;
  int attempt = 0;
  bool warned = false;

  std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", "Bearer " + token);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return context;
  }
  void Check(const grpc::Status& status, const char* what) {
    if (status.ok() || warned) return;
    warned = true;  // once: the server may be restarting
    spdlog::warn("cannot report {} to the server: {} (training goes on)", what, status.error_message());
  }
};

bool ServerReporter::ManagedByServer() {
  return std::getenv("SHARDTUNE_JOB_TOKEN") != nullptr && std::getenv("SHARDTUNE_SERVER") != nullptr &&
         std::getenv("SHARDTUNE_JOB_ID") != nullptr;
}

std::unique_ptr<ServerReporter> ServerReporter::FromEnvironment() {
  if (!ManagedByServer()) return nullptr;
  auto impl = std::make_unique<Impl>();
  impl->stub = v1::WorkerService::NewStub(
      grpc::CreateChannel(std::getenv("SHARDTUNE_SERVER"), grpc::InsecureChannelCredentials()));
  impl->job_id = std::getenv("SHARDTUNE_JOB_ID");
  impl->token = std::getenv("SHARDTUNE_JOB_TOKEN");
  const char* attempt = std::getenv("SHARDTUNE_JOB_ATTEMPT");
  impl->attempt = attempt ? std::atoi(attempt) : 0;
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
  v1::WorkerReply reply;
  const grpc::Status status = impl_->stub->ReportProgress(impl_->Context().get(), report, &reply);
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

void ServerReporter::Result(bool succeeded, bool paused, const std::string& error_code, const std::string& message) {
  v1::ResultReport report;
  report.set_job_id(impl_->job_id);
  report.set_attempt(impl_->attempt);
  report.set_succeeded(succeeded);
  report.set_paused(paused);
  report.mutable_error()->set_code(error_code);
  report.mutable_error()->set_message(message);
  report.mutable_error()->set_rank(message.empty() ? -1 : 0);
  v1::WorkerReply reply;
  impl_->Check(impl_->stub->ReportResult(impl_->Context().get(), report, &reply), "the result");
}

}  // namespace shardtune
