#include "launcher/client/client.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "common/job_spec.h"
#include "shardtune/v1/jobs.grpc.pb.h"

namespace shardtune {

namespace v1 = shardtune::v1;

struct ClientCommands::State {
  std::string server, token, tls_ca, output = "table";
  std::string id, spec_path, idempotency_key, name, status, page_token;
  std::vector<std::string> labels;
  int priority = 0, page_size = 0, ranks = 0;
  int64_t after = 0;
  bool logs = false;  // watch: print the ranks' log lines too
  std::map<std::string, CLI::App*> commands;
  CLI::App* parsed = nullptr;
};

namespace {

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string Time(int64_t ms) {
  if (ms <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buffer;
}

void PrintJobRow(const v1::Job& j) {
  std::printf("%-22s %-24s %-10s %6lld/%-6lld %5.1f%%  %s\n", j.id().c_str(), j.name().c_str(),
              v1::JobStatus_Name(j.status()).c_str(), static_cast<long long>(j.step()),
              static_cast<long long>(j.total_steps()), 100.0 * j.progress(), Time(j.created_ms()).c_str());
}

void PrintJob(const v1::Job& j) {
  std::printf("id:        %s\nname:      %s\ntenant:    %s\nstatus:    %s\nattempt:   %d on %d ranks\n", j.id().c_str(),
              j.name().c_str(), j.tenant().c_str(), v1::JobStatus_Name(j.status()).c_str(), j.attempt(), j.ranks());
  std::printf("progress:  step %lld of %lld (%.1f%%), %lld tokens\n", static_cast<long long>(j.step()),
              static_cast<long long>(j.total_steps()), 100.0 * j.progress(),
              static_cast<long long>(j.trained_tokens()));
  for (const auto& [k, v] : j.metrics()) std::printf("  %-14s %g\n", k.c_str(), v);
  std::printf("created:   %s\nstarted:   %s\nfinished:  %s\noutput:    %s\n", Time(j.created_ms()).c_str(),
              Time(j.started_ms()).c_str(), Time(j.finished_ms()).c_str(), j.output_dir().c_str());
  if (!j.error().message().empty())
    std::printf("error:     %s: %s\n", j.error().code().c_str(), j.error().message().c_str());
}

int Refused(const grpc::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n",
               grpc::StatusCode(status.error_code()) == grpc::UNAVAILABLE ? "UNAVAILABLE" : "refused",
               status.error_message().c_str());
  switch (status.error_code()) {
    case grpc::INVALID_ARGUMENT:
    case grpc::NOT_FOUND:
    case grpc::FAILED_PRECONDITION:
    case grpc::UNAUTHENTICATED:
    case grpc::PERMISSION_DENIED:
    case grpc::RESOURCE_EXHAUSTED:
      return 2;
    default:
      return 1;
  }
}

}  // namespace

ClientCommands::ClientCommands(CLI::App& app) : state_(std::make_unique<State>()) {
  State& s = *state_;
  auto add = [&](const std::string& name, const std::string& help) {
    CLI::App* c = app.add_subcommand(name, help);
    c->add_option("--server", s.server, "shardtune-server address (default: $SHARDTUNE_SERVER)");
    c->add_option("--token", s.token, "API key (default: $SHARDTUNE_TOKEN)");
    c->add_option("--tls-ca", s.tls_ca, "CA certificate: connect with TLS");
    c->add_option("--output", s.output, "table or json")->check(CLI::IsMember({"table", "json"}));
    s.commands[name] = c;
    return c;
  };
  CLI::App* submit = add("submit", "submit a job to a shardtune-server");
  submit->add_option("job", s.spec_path, "job spec (YAML)")->required();
  submit->add_option("--idempotency-key", s.idempotency_key,
                     "a retried submit with the same key returns the first job");
  submit->add_option("--priority", s.priority, "higher runs first");
  add("validate", "check a job spec and its data on the server")->add_option("job", s.spec_path)->required();
  CLI::App* list = add("list", "list jobs (newest first)");
  list->add_option("--status", s.status, "QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCELLED");
  list->add_option("--name", s.name, "job name");
  list->add_option("--label", s.labels, "KEY=VALUE (repeatable)");
  list->add_option("--page-size", s.page_size, "jobs per page");
  list->add_option("--page-token", s.page_token, "from the previous page");
  const std::vector<std::pair<std::string, std::string>> by_id = {
      {"get", "show a job"},
      {"watch", "follow a job live (status, progress, checkpoints; --logs: the ranks' lines); exits with its outcome"},
      {"cancel", "cancel a job"},
      {"pause", "checkpoint a job and stop it"},
      {"resume", "requeue a paused job from its checkpoint"},
      {"events", "a job's events"},
      {"checkpoints", "a job's checkpoints"}};
  for (const auto& [name, description] : by_id) {
    CLI::App* c = add(name, description);
    c->add_option("id", s.id, "job id")->required();
    if (name == "resume") c->add_option("--ranks", s.ranks, "resume on this many ranks");
    if (name == "events") c->add_option("--after", s.after, "events after this sequence number");
    if (name == "watch") c->add_flag("--logs", s.logs, "also print the ranks' log lines as they are written");
  }
}

ClientCommands::~ClientCommands() = default;

bool ClientCommands::parsed() const {
  for (const auto& [name, c] : state_->commands)
    if (c->parsed()) return true;
  return false;
}

int ClientCommands::Run() {
  State& s = *state_;
  std::string command;
  for (const auto& [name, c] : s.commands)
    if (c->parsed()) command = name;
  // Defaults: flags, then the environment, then ~/.config/shardtune/client.yaml.
  YAML::Node file;
  if (const char* home = std::getenv("HOME")) {
    const std::string path = std::string(home) + "/.config/shardtune/client.yaml";
    if (std::filesystem::exists(path)) file = YAML::LoadFile(path);
  }
  auto pick = [&](std::string& value, const char* env, const char* key, const std::string& fallback) {
    if (value.empty() && std::getenv(env)) value = std::getenv(env);
    if (value.empty() && file && file[key]) value = file[key].as<std::string>();
    if (value.empty()) value = fallback;
  };
  pick(s.server, "SHARDTUNE_SERVER", "server", "127.0.0.1:50551");
  pick(s.token, "SHARDTUNE_TOKEN", "token", "");
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!s.tls_ca.empty()) {
    grpc::SslCredentialsOptions options;
    std::ifstream in(s.tls_ca);
    options.pem_root_certs.assign(std::istreambuf_iterator<char>(in), {});
    credentials = grpc::SslCredentials(options);
  }
  auto stub = v1::JobService::NewStub(grpc::CreateChannel(s.server, credentials));
  auto context = [&]() {
    auto c = std::make_unique<grpc::ClientContext>();
    if (!s.token.empty()) c->AddMetadata("authorization", "Bearer " + s.token);
    return c;
  };
  const bool json = s.output == "json";
  auto show = [&](const v1::Job& job) {
    if (json) {
      std::printf("%s\n", Json(job).c_str());
    } else {
      PrintJob(job);
    }
    return 0;
  };

  grpc::Status status;
  if (command == "submit" || command == "validate") {
    std::string yaml;
    try {
      // Resolved here: relative paths are the submitter's, and a bad spec never leaves this machine.
      yaml = JobSpecToYaml(LoadJobSpec(s.spec_path, SpecOptions{/*check_files=*/false}));
    } catch (const SpecError& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 2;
    } catch (const Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 2;
    }
    if (command == "validate") {
      v1::ValidateJobRequest request;
      request.set_spec_yaml(yaml);
      v1::ValidateJobResponse response;
      status = stub->ValidateJob(context().get(), request, &response);
      if (!status.ok()) return Refused(status);
      if (json) {
        std::printf("%s\n", Json(response).c_str());
      } else {
        std::printf("%s", response.valid() ? response.summary().c_str() : "");
        std::printf("%s", response.plan().c_str());
        for (const auto& p : response.problems()) std::printf("%s\n", p.c_str());
      }
      return response.valid() ? 0 : 2;
    }
    v1::CreateJobRequest request;
    request.set_spec_yaml(yaml);
    request.set_idempotency_key(s.idempotency_key);
    request.set_priority(s.priority);
    v1::Job job;
    status = stub->CreateJob(context().get(), request, &job);
    if (!status.ok()) return Refused(status);
    if (json) return show(job);
    std::printf("%s\n", job.id().c_str());
    return 0;
  }
  if (command == "list") {
    v1::ListJobsRequest request;
    if (!s.status.empty()) {
      v1::JobStatus value;
      if (!v1::JobStatus_Parse(s.status, &value)) {
        std::fprintf(stderr, "--status %s: not a job status\n", s.status.c_str());
        return 2;
      }
      request.set_status(value);
    }
    request.set_name(s.name);
    for (const auto& label : s.labels) {
      const auto eq = label.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "--label %s: expected KEY=VALUE\n", label.c_str());
        return 2;
      }
      (*request.mutable_labels())[label.substr(0, eq)] = label.substr(eq + 1);
    }
    request.set_page_size(s.page_size);
    request.set_page_token(s.page_token);
    v1::ListJobsResponse response;
    status = stub->ListJobs(context().get(), request, &response);
    if (!status.ok()) return Refused(status);
    if (json) {
      std::printf("%s\n", Json(response).c_str());
    } else {
      for (const auto& j : response.jobs()) PrintJobRow(j);
      if (!response.next_page_token().empty())
        std::printf("(more: --page-token %s)\n", response.next_page_token().c_str());
    }
    return 0;
  }
  v1::JobRef ref;
  ref.set_id(s.id);
  v1::Job job;
  if (command == "get" || command == "cancel" || command == "pause") {
    if (command == "get") status = stub->GetJob(context().get(), ref, &job);
    if (command == "cancel") status = stub->CancelJob(context().get(), ref, &job);
    if (command == "pause") status = stub->PauseJob(context().get(), ref, &job);
    return status.ok() ? show(job) : Refused(status);
  }
  if (command == "resume") {
    v1::ResumeJobRequest request;
    request.set_id(s.id);
    request.set_ranks(s.ranks);
    status = stub->ResumeJob(context().get(), request, &job);
    return status.ok() ? show(job) : Refused(status);
  }
  if (command == "checkpoints") {
    v1::ListCheckpointsResponse response;
    status = stub->ListCheckpoints(context().get(), ref, &response);
    if (!status.ok()) return Refused(status);
    if (json) {
      std::printf("%s\n", Json(response).c_str());
    } else {
      for (const auto& c : response.checkpoints())
        std::printf("step %-8lld %s  %s\n", static_cast<long long>(c.step()), Time(c.time_ms()).c_str(),
                    c.path().c_str());
    }
    return 0;
  }
  if (command == "events") {
    v1::ListJobEventsRequest request;
    request.set_id(s.id);
    request.set_after_seq(s.after);
    request.set_limit(1000);
    v1::ListJobEventsResponse response;
    status = stub->ListJobEvents(context().get(), request, &response);
    if (!status.ok()) return Refused(status);
    for (const auto& e : response.events()) {
      if (json) {
        v1::JobEvent brief = e;
        brief.clear_job();
        std::printf("%s\n", Json(brief).c_str());
      } else {
        std::printf("%5lld %s %-10s %s\n", static_cast<long long>(e.seq()), Time(e.time_ms()).c_str(), e.kind().c_str(),
                    e.message().c_str());
      }
    }
    return 0;
  }
  // watch: every event as it happens; a live line on a terminal; the job's outcome as exit code.
  v1::WatchJobRequest request;
  request.set_id(s.id);
  auto ctx = context();
  auto reader = stub->WatchJob(ctx.get(), request);
  v1::JobEvent event;
  const bool live = ::isatty(STDERR_FILENO) && !json;
  while (reader->Read(&event)) {
    job = event.job();
    if (json) {
      v1::JobEvent brief = event;
      std::printf("%s\n", Json(brief).c_str());
      std::fflush(stdout);
    } else if (event.kind() == "progress" && live) {
      const auto& m = job.metrics();
      const double eta_s = job.estimated_finish_ms() > 0 ? (job.estimated_finish_ms() - event.time_ms()) / 1000.0 : 0;
      std::fprintf(stderr, "\r\033[K[%-30s] step %lld/%lld  loss %.4f  %.0f tok/s  ETA %.0fs",
                   std::string(static_cast<size_t>(30 * job.progress()), '#').c_str(),
                   static_cast<long long>(job.step()), static_cast<long long>(job.total_steps()),
                   m.count("loss") ? m.at("loss") : 0.0, m.count("tokens_per_s") ? m.at("tokens_per_s") : 0.0,
                   std::max(0.0, eta_s));
    } else if (event.kind() != "progress" && (event.kind() != "log" || s.logs)) {
      if (live) std::fprintf(stderr, "\r\033[K");
      std::printf("%s %-10s %s\n", Time(event.time_ms()).c_str(), event.kind().c_str(), event.message().c_str());
      std::fflush(stdout);
    }
  }
  if (live) std::fprintf(stderr, "\n");
  status = reader->Finish();
  if (!status.ok()) return Refused(status);
  if (!json) std::printf("job %s %s\n", job.id().c_str(), v1::JobStatus_Name(job.status()).c_str());
  return job.status() == v1::SUCCEEDED ? 0 : 1;
}

}  // namespace shardtune
