#include "launcher/client/client.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <vector>

#include "common/error.h"
#include "common/job_spec.h"
#include "launcher/api_values.h"
#include "launcher/client/client_common.h"
#include "shardtune/v1/jobs.grpc.pb.h"

namespace shardtune {

namespace v1 = shardtune::v1;

namespace {

// The flags of every client command; each command reads those it declared.
struct Flags {
  std::string server, token, tls_ca, output = "table";
  std::string id, spec_path, idempotency_key, name, status, page_token;
  std::vector<std::string> labels;
  int priority = 0, page_size = 0, ranks = 0;
  int64_t after = 0;
  bool logs = false;  // watch: print the ranks' log lines too
};

// Tables show enum values by their short names ("running"); --output json by their full ones.
void PrintJobRow(const v1::Job& j) {
  std::printf("%-22s %-24s %-10s %6lld/%-6lld %5.1f%%  %s\n", j.id().c_str(), j.name().c_str(),
              api::ShortName(j.status()).c_str(), static_cast<long long>(j.step()),
              static_cast<long long>(j.total_steps()), 100.0 * j.progress(), Time(j.create_time()).c_str());
}

void PrintJob(const v1::Job& j) {
  std::printf("id:        %s\nname:      %s\ntenant:    %s\nstatus:    %s\nattempt:   %d on %d ranks\n", j.id().c_str(),
              j.name().c_str(), j.tenant().c_str(), api::ShortName(j.status()).c_str(), j.attempt(), j.ranks());
  std::printf("progress:  step %lld of %lld (%.1f%%), %lld tokens\n", static_cast<long long>(j.step()),
              static_cast<long long>(j.total_steps()), 100.0 * j.progress(),
              static_cast<long long>(j.trained_tokens()));
  for (const auto& [k, v] : j.metrics()) std::printf("  %-14s %g\n", k.c_str(), v);
  std::printf("created:   %s\nstarted:   %s\nfinished:  %s\noutput:    %s\n", Time(j.create_time()).c_str(),
              Time(j.start_time()).c_str(), Time(j.finish_time()).c_str(), j.output_dir().c_str());
  if (!j.error().message().empty())
    std::printf("error:     %s: %s\n", api::ShortName(j.error().code()).c_str(), j.error().message().c_str());
}

// One command's call to the server: its flags, the stub, and a context per RPC carrying the key.
class Call {
 public:
  explicit Call(const Flags& flags) : flags(flags), json(flags.output == "json") {
    stub_ = v1::JobService::NewStub(OpenChannel(flags.server, flags.tls_ca));
  }

  v1::JobService::Stub& stub() { return *stub_; }
  std::unique_ptr<grpc::ClientContext> Context() const { return ContextWithKey(flags.token); }
  // The request of an RPC that names one job (GetJobRequest, CancelJobRequest, ...).
  template <typename Request>
  Request Ref() const {
    Request request;
    request.set_id(flags.id);
    return request;
  }
  // The job an RPC answered with, as a table or JSON; or why the server refused.
  int Show(const grpc::Status& status, const v1::Job& job) const { return ShowReply(status, job, json, PrintJob); }

  const Flags& flags;
  const bool json;

 private:
  std::unique_ptr<v1::JobService::Stub> stub_;
};

// The spec, resolved here (relative paths are the submitter's) and checked, as the YAML the
// server receives; nullopt (after printing why) when it is bad: a bad spec never leaves this machine.
std::optional<std::string> ResolvedSpec(const std::string& path) {
  try {
    SpecOptions options;
    options.check_files = false;
    // An uploaded file (file:ID) stays named so: the server resolves it for the caller's tenant.
    options.resolve_file = [](const std::string& id) { return std::optional<std::string>(kUploadedFilePrefix + id); };
    return JobSpecToYaml(LoadJobSpec(path, options));
  } catch (const SpecError& e) {
    std::fprintf(stderr, "%s\n", e.what());
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
  }
  return std::nullopt;
}

int Submit(Call& call) {
  const std::optional<std::string> yaml = ResolvedSpec(call.flags.spec_path);
  if (!yaml) return 2;
  v1::CreateJobRequest request;
  request.set_spec_yaml(*yaml);
  request.set_idempotency_key(call.flags.idempotency_key);
  request.set_priority(call.flags.priority);
  v1::Job job;
  const grpc::Status status = call.stub().CreateJob(call.Context().get(), request, &job);
  if (!status.ok()) return Refused(status);
  if (call.json) return call.Show(status, job);
  std::printf("%s\n", job.id().c_str());
  return 0;
}

int Validate(Call& call) {
  const std::optional<std::string> yaml = ResolvedSpec(call.flags.spec_path);
  if (!yaml) return 2;
  v1::ValidateJobRequest request;
  request.set_spec_yaml(*yaml);
  v1::ValidateJobResponse response;
  const grpc::Status status = call.stub().ValidateJob(call.Context().get(), request, &response);
  if (!status.ok()) return Refused(status);
  if (call.json) {
    std::printf("%s\n", Json(response).c_str());
  } else {
    std::printf("%s", response.valid() ? response.summary().c_str() : "");
    std::printf("%s", response.plan().c_str());
    for (const auto& p : response.problems()) std::printf("%s\n", p.c_str());
  }
  return response.valid() ? 0 : 2;
}

int List(Call& call) {
  const Flags& f = call.flags;
  v1::ListJobsRequest request;
  if (!f.status.empty()) {
    const auto value = api::ParseName<v1::JobStatus>(f.status);
    if (!value) {
      std::fprintf(stderr, "--status %s: not a job status (%s)\n", f.status.c_str(),
                   api::ShortNames(v1::JobStatus_descriptor()).c_str());
      return 2;
    }
    request.set_status(*value);
  }
  request.set_name(f.name);
  for (const auto& label : f.labels) {
    const auto eq = label.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "--label %s: expected KEY=VALUE\n", label.c_str());
      return 2;
    }
    (*request.mutable_labels())[label.substr(0, eq)] = label.substr(eq + 1);
  }
  request.set_page_size(f.page_size);
  request.set_page_token(f.page_token);
  v1::ListJobsResponse response;
  const grpc::Status status = call.stub().ListJobs(call.Context().get(), request, &response);
  if (!status.ok()) return Refused(status);
  if (call.json) {
    std::printf("%s\n", Json(response).c_str());
  } else {
    for (const auto& j : response.jobs()) PrintJobRow(j);
    if (!response.next_page_token().empty())
      std::printf("(more: --page-token %s)\n", response.next_page_token().c_str());
  }
  return 0;
}

// get, cancel and pause: an RPC on the job named by its id, answered with the job.
template <typename Request>
using JobRpcMethod = grpc::Status (v1::JobService::Stub::*)(grpc::ClientContext*, const Request&, v1::Job*);
template <typename Request, JobRpcMethod<Request> rpc>
int JobRpc(Call& call) {
  v1::Job job;
  return call.Show((call.stub().*rpc)(call.Context().get(), call.Ref<Request>(), &job), job);
}

int Resume(Call& call) {
  v1::ResumeJobRequest request;
  request.set_id(call.flags.id);
  request.set_ranks(call.flags.ranks);
  v1::Job job;
  return call.Show(call.stub().ResumeJob(call.Context().get(), request, &job), job);
}

// Every page of a listing, for `events` and `checkpoints` (which print a job's whole history):
// `list(token)` asks for the page after `token` ("" first) and answers with the next page's
// token, "" after the last; false when the server refused (printed).
template <typename ListPage>
bool EveryPage(ListPage&& list) {
  std::string token;
  do {
    const std::optional<std::string> next = list(token);
    if (!next) return false;
    token = *next;
  } while (!token.empty());
  return true;
}

int Checkpoints(Call& call) {
  int code = 0;
  EveryPage([&](const std::string& token) -> std::optional<std::string> {
    v1::ListCheckpointsRequest request;
    request.set_job_id(call.flags.id);
    request.set_page_size(1000);
    request.set_page_token(token);
    v1::ListCheckpointsResponse response;
    const grpc::Status status = call.stub().ListCheckpoints(call.Context().get(), request, &response);
    if (!status.ok()) {
      code = Refused(status);
      return std::nullopt;
    }
    for (const auto& c : response.checkpoints()) {
      if (call.json) {
        std::printf("%s\n", Json(c).c_str());
        continue;
      }
      std::printf("step %-8lld %s  %s", static_cast<long long>(c.step()), Time(c.create_time()).c_str(),
                  c.path().c_str());
      for (const char* figure : {"train_loss", "valid_loss"})
        if (c.metrics().count(figure)) std::printf("  %s %.4f", figure, c.metrics().at(figure));
      std::printf("\n");
    }
    return response.next_page_token();
  });
  return code;
}

int Events(Call& call) {
  int code = 0;
  EveryPage([&](const std::string& token) -> std::optional<std::string> {
    v1::ListJobEventsRequest request;
    request.set_job_id(call.flags.id);
    request.set_after_seq(call.flags.after);
    request.set_page_size(1000);
    request.set_page_token(token);
    v1::ListJobEventsResponse response;
    const grpc::Status status = call.stub().ListJobEvents(call.Context().get(), request, &response);
    if (!status.ok()) {
      code = Refused(status);
      return std::nullopt;
    }
    for (const auto& e : response.events()) {
      if (call.json) {
        v1::JobEvent brief = e;
        brief.clear_job();
        std::printf("%s\n", Json(brief).c_str());
      } else {
        std::printf("%5lld %s %-10s %s\n", static_cast<long long>(e.seq()), Time(e.create_time()).c_str(),
                    api::ShortName(e.kind()).c_str(), e.message().c_str());
      }
    }
    return response.next_page_token();
  });
  return code;
}

// Every event as it happens; a live line on a terminal; the job's outcome as exit code.
int Watch(Call& call) {
  v1::WatchJobRequest request;
  request.set_id(call.flags.id);
  auto context = call.Context();
  auto reader = call.stub().WatchJob(context.get(), request);
  v1::Job job;
  v1::JobEvent event;
  const bool live = ::isatty(STDERR_FILENO) && !call.json;
  while (reader->Read(&event)) {
    job = event.job();
    if (call.json) {
      std::printf("%s\n", Json(event).c_str());
      std::fflush(stdout);
    } else if (event.kind() == v1::JOB_EVENT_KIND_PROGRESS && live) {
      const auto& m = job.metrics();
      const double eta_s = job.has_estimated_finish_time()
                               ? (api::Ms(job.estimated_finish_time()) - api::Ms(event.create_time())) / 1000.0
                               : 0;
      std::fprintf(stderr, "\r\033[K[%-30s] step %lld/%lld  loss %.4f  %.0f tok/s  ETA %.0fs",
                   std::string(static_cast<size_t>(30 * job.progress()), '#').c_str(),
                   static_cast<long long>(job.step()), static_cast<long long>(job.total_steps()),
                   m.count("loss") ? m.at("loss") : 0.0, m.count("tokens_per_s") ? m.at("tokens_per_s") : 0.0,
                   std::max(0.0, eta_s));
    } else if (event.kind() != v1::JOB_EVENT_KIND_PROGRESS &&
               (event.kind() != v1::JOB_EVENT_KIND_LOG || call.flags.logs)) {
      if (live) std::fprintf(stderr, "\r\033[K");
      std::printf("%s %-10s %s\n", Time(event.create_time()).c_str(), api::ShortName(event.kind()).c_str(),
                  event.message().c_str());
      std::fflush(stdout);
    }
  }
  if (live) std::fprintf(stderr, "\n");
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return Refused(status);
  if (!call.json) std::printf("job %s %s\n", job.id().c_str(), api::ShortName(job.status()).c_str());
  return job.status() == v1::JOB_STATUS_SUCCEEDED ? 0 : 1;
}

// The options each command takes besides --server, --token, --tls-ca and --output.
void JobFileOptions(CLI::App* c, Flags& f) {
  c->add_option("job", f.spec_path, "job spec (YAML)")->required();
  c->add_option("--idempotency-key", f.idempotency_key, "a retried submit with the same key returns the first job");
  c->add_option("--priority", f.priority, "higher runs first");
}
void ListOptions(CLI::App* c, Flags& f) {
  c->add_option("--status", f.status, api::ShortNames(v1::JobStatus_descriptor()) + " (or JOB_STATUS_...)");
  c->add_option("--name", f.name, "job name");
  c->add_option("--label", f.labels, "KEY=VALUE (repeatable)");
  c->add_option("--page-size", f.page_size, "jobs per page");
  c->add_option("--page-token", f.page_token, "from the previous page");
}
void IdOption(CLI::App* c, Flags& f) { c->add_option("id", f.id, "job id")->required(); }

// The client commands, in the order --help lists them: name, help, options, handler.
using JobCommandSet = ClientCommandSet<Flags, Call>;
const std::vector<JobCommandSet::Command>& Commands() {
  static const std::vector<JobCommandSet::Command> commands = {
      {"submit", "submit a job to a shardtune-server", JobFileOptions, Submit},
      {"validate", "check a job spec and its data on the server",
       [](CLI::App* c, Flags& f) { c->add_option("job", f.spec_path)->required(); }, Validate},
      {"list", "list jobs (newest first)", ListOptions, List},
      {"get", "show a job", IdOption, JobRpc<v1::GetJobRequest, &v1::JobService::Stub::GetJob>},
      {"watch", "follow a job live (status, progress, checkpoints; --logs: the ranks' lines); exits with its outcome",
       [](CLI::App* c, Flags& f) {
         IdOption(c, f);
         c->add_flag("--logs", f.logs, "also print the ranks' log lines as they are written");
       },
       Watch},
      {"cancel", "cancel a job", IdOption, JobRpc<v1::CancelJobRequest, &v1::JobService::Stub::CancelJob>},
      {"pause", "checkpoint a job and stop it", IdOption, JobRpc<v1::PauseJobRequest, &v1::JobService::Stub::PauseJob>},
      {"resume", "requeue a paused job from its checkpoint",
       [](CLI::App* c, Flags& f) {
         IdOption(c, f);
         c->add_option("--ranks", f.ranks, "resume on this many ranks");
       },
       Resume},
      {"events", "a job's events",
       [](CLI::App* c, Flags& f) {
         IdOption(c, f);
         c->add_option("--after", f.after, "events after this sequence number");
       },
       Events},
      {"checkpoints", "a job's checkpoints", IdOption, Checkpoints},
  };
  return commands;
}

}  // namespace

struct ClientCommands::State {
  explicit State(CLI::App& app) : commands(app, Commands()) {}
  JobCommandSet commands;
};

ClientCommands::ClientCommands(CLI::App& app) : state_(std::make_unique<State>(app)) {}
ClientCommands::~ClientCommands() = default;
bool ClientCommands::parsed() const { return state_->commands.parsed(); }
int ClientCommands::Run() { return state_->commands.Run(); }

}  // namespace shardtune
