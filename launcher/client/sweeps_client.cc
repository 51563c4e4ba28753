#include "launcher/client/sweeps_client.h"

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/job_spec.h"
#include "launcher/api_values.h"
#include "launcher/client/client_common.h"
#include "launcher/sweep/sweep_spec.h"
#include "shardtune/v1/sweeps.grpc.pb.h"

namespace shardtune {

namespace {

struct SweepFlags {
  std::string server, token, tls_ca, output = "table";
  std::string path, id, idempotency_key, status, page_token;
  int priority = 0, page_size = 0;
  double interval_s = 2;  // watch: between two looks
};

// A value of the trial's, for a table: numbers to 4 significant digits, strings as they are.
std::string ValueText(const google::protobuf::Value& v) {
  switch (v.kind_case()) {
    case google::protobuf::Value::kNumberValue:
      return fmt::format("{:.4g}", v.number_value());
    case google::protobuf::Value::kStringValue:
      return v.string_value();
    case google::protobuf::Value::kBoolValue:
      return v.bool_value() ? "true" : "false";
    default:
      return Json(v);
  }
}

std::string ValuesText(const v1::Trial& t) {
  std::vector<std::string> parts;
  for (const auto& [path, value] : t.values().fields()) parts.push_back(path + "=" + ValueText(value));
  std::sort(parts.begin(), parts.end());
  std::string text;
  for (const auto& p : parts) text += (text.empty() ? "" : ", ") + p;
  return text;
}

std::string ObjectiveText(const v1::Trial& t) { return t.has_objective() ? fmt::format("{:.6g}", t.objective()) : "-"; }

void PrintTrials(const v1::Sweep& s) {
  std::printf("%5s  %-9s %-22s %-10s %7s  %12s  %s\n", "trial", "status", "job", "job status", "steps",
              s.objective_metric().c_str(), "values");
  for (const v1::Trial& t : s.trials()) {
    const bool best = s.has_best_trial() && s.best_trial() == t.number();
    std::printf("%5s  %-9s %-22s %-10s %7lld  %12s  %s%s\n", fmt::format("{:03d}", t.number()).c_str(),
                api::ShortName(t.status()).c_str(), t.job_id().empty() ? "-" : t.job_id().c_str(),
                t.job_id().empty() ? "-" : api::ShortName(t.job_status()).c_str(), static_cast<long long>(t.steps()),
                ObjectiveText(t).c_str(), ValuesText(t).c_str(), best ? "  <- best" : "");
    if (!t.note().empty() && t.status() != v1::TRIAL_STATUS_COMPLETED) std::printf("       %s\n", t.note().c_str());
  }
}

void PrintSweep(const v1::Sweep& s) {
  std::printf("id:        %s\nname:      %s\ntenant:    %s\nstatus:    %s%s\n", s.id().c_str(), s.name().c_str(),
              s.tenant().c_str(), api::ShortName(s.status()).c_str(),
              s.message().empty() ? "" : (": " + s.message()).c_str());
  std::printf("search:    %s, %lld of %lld trials finished, %lld at once\n", s.strategy().c_str(),
              static_cast<long long>(s.trials_finished()), static_cast<long long>(s.max_trials()),
              static_cast<long long>(s.parallel_trials()));
  std::printf("objective: %s (%s)\n", s.objective_metric().c_str(), s.objective_goal().c_str());
  if (s.has_best_trial()) {
    for (const v1::Trial& t : s.trials())
      if (t.number() == s.best_trial())
        std::printf("best:      trial %03lld (job %s): %s %s\n", static_cast<long long>(t.number()), t.job_id().c_str(),
                    s.objective_metric().c_str(), ObjectiveText(t).c_str());
  }
  std::printf("created:   %s\nfinished:  %s\noutput:    %s/NNN\n", Time(s.create_time()).c_str(),
              Time(s.finish_time()).c_str(), s.output_dir().c_str());
  if (s.trials_size() > 0) PrintTrials(s);
}

void PrintSweepRow(const v1::Sweep& s) {
  std::printf("%-24s %-24s %-10s %5lld/%-5lld %-12s %s\n", s.id().c_str(), s.name().c_str(),
              api::ShortName(s.status()).c_str(), static_cast<long long>(s.trials_finished()),
              static_cast<long long>(s.max_trials()), s.strategy().c_str(), Time(s.create_time()).c_str());
}

class SweepCall {
 public:
  explicit SweepCall(const SweepFlags& flags)
      : flags(flags),
        json(flags.output == "json"),
        stub(v1::SweepService::NewStub(OpenChannel(flags.server, flags.tls_ca))) {}
  std::unique_ptr<grpc::ClientContext> Context() const { return ContextWithKey(flags.token); }
  int Show(const grpc::Status& status, const v1::Sweep& sweep) const {
    return ShowReply(status, sweep, json, PrintSweep);
  }

  const SweepFlags& flags;
  const bool json;
  std::unique_ptr<v1::SweepService::Stub> stub;
};

// The sweep file as it is and its base job spec resolved here (relative paths are the
// submitter's), both checked first: a bad sweep never leaves this machine.
int Submit(SweepCall& call) {
  SpecOptions job;
  job.check_files = false;  // the server checks them, on its disk
  job.resolve_file = [](const std::string& id) { return std::optional<std::string>(kUploadedFilePrefix + id); };
  v1::CreateSweepRequest request;
  try {
    sweep::SweepOptions options;
    options.job = job;
    const sweep::SweepSpec spec = sweep::LoadSweepSpec(call.flags.path, options);
    request.set_spec_yaml(ReadFile(call.flags.path));
    request.set_base_job_yaml(JobSpecToYaml(LoadJobSpec(spec.base, job)));
  } catch (const Error& e) {  // SpecError too
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  request.set_idempotency_key(call.flags.idempotency_key);
  request.set_priority(call.flags.priority);
  v1::Sweep sweep;
  const grpc::Status status = call.stub->CreateSweep(call.Context().get(), request, &sweep);
  if (!status.ok()) return Refused(status);
  if (call.json) return call.Show(status, sweep);
  std::printf("%s\n", sweep.id().c_str());
  return 0;
}

int Get(SweepCall& call) {
  v1::GetSweepRequest request;
  request.set_id(call.flags.id);
  v1::Sweep sweep;
  return call.Show(call.stub->GetSweep(call.Context().get(), request, &sweep), sweep);
}

int Cancel(SweepCall& call) {
  v1::CancelSweepRequest request;
  request.set_id(call.flags.id);
  v1::Sweep sweep;
  return call.Show(call.stub->CancelSweep(call.Context().get(), request, &sweep), sweep);
}

int List(SweepCall& call) {
  v1::ListSweepsRequest request;
  if (!call.flags.status.empty()) {
    const auto value = api::ParseName<v1::SweepStatus>(call.flags.status);
    if (!value) {
      std::fprintf(stderr, "--status %s: not a sweep status (%s)\n", call.flags.status.c_str(),
                   api::ShortNames(v1::SweepStatus_descriptor()).c_str());
      return 2;
    }
    request.set_status(*value);
  }
  request.set_page_size(call.flags.page_size);
  request.set_page_token(call.flags.page_token);
  v1::ListSweepsResponse response;
  const grpc::Status status = call.stub->ListSweeps(call.Context().get(), request, &response);
  if (!status.ok()) return Refused(status);
  if (call.json) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  for (const auto& s : response.sweeps()) PrintSweepRow(s);
  if (!response.next_page_token().empty()) std::printf("(more: --page-token %s)\n", response.next_page_token().c_str());
  return 0;
}

// Looks at the sweep every --interval seconds until it ends: a line per trial whose status, job
// status or objective changed (--output json: the sweep, each time it changed), then the whole
// sweep. Exits 0 when it succeeded. A server that is unreachable for a while (restarting) is
// waited for, up to two minutes.
int Watch(SweepCall& call) {
  std::map<int64_t, std::string> shown;  // each trial's last printed line
  v1::Sweep sweep;
  std::string last_json;
  int unavailable_since_s = 0;
  while (true) {
    v1::GetSweepRequest request;
    request.set_id(call.flags.id);
    const grpc::Status status = call.stub->GetSweep(call.Context().get(), request, &sweep);
    // A server restarting (the sweep goes on after it): look again, for up to two minutes.
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && unavailable_since_s < 120) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      ++unavailable_since_s;
      continue;
    }
    if (!status.ok()) return Refused(status);
    unavailable_since_s = 0;
    if (call.json) {
      const std::string now = Json(sweep);
      if (now != last_json) std::printf("%s\n", now.c_str());
      last_json = now;
    } else {
      for (const v1::Trial& t : sweep.trials()) {
        const std::string line = fmt::format("trial {:03d} {} (job {} {}) steps {} {} {}  {}", t.number(),
                                             api::ShortName(t.status()), t.job_id().empty() ? "-" : t.job_id(),
                                             t.job_id().empty() ? "-" : api::ShortName(t.job_status()), t.steps(),
                                             sweep.objective_metric(), ObjectiveText(t), ValuesText(t));
        if (shown[t.number()] != line)
          std::printf("%s %s\n", Time(google::protobuf::util::TimeUtil::GetCurrentTime()).c_str(), line.c_str());
        shown[t.number()] = line;
      }
    }
    std::fflush(stdout);
    if (sweep.status() != v1::SWEEP_STATUS_RUNNING) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(call.flags.interval_s * 1000)));
  }
  if (!call.json) {
    PrintSweep(sweep);
  }
  return sweep.status() == v1::SWEEP_STATUS_SUCCEEDED ? 0 : 1;
}

using SweepCommandSet = ClientCommandSet<SweepFlags, SweepCall>;

void IdOption(CLI::App* c, SweepFlags& f) { c->add_option("id", f.id, "sweep id (sweep-...)")->required(); }

const std::vector<SweepCommandSet::Command>& Commands() {
  static const std::vector<SweepCommandSet::Command> commands = {
      {"submit", "run a sweep on a shardtune-server: its trials become jobs of your tenant",
       [](CLI::App* c, SweepFlags& f) {
         c->add_option("sweep", f.path, "sweep spec (YAML); its base job spec is sent along")->required();
         c->add_option("--idempotency-key", f.idempotency_key,
                       "a retried submit with the same key returns the first sweep");
         c->add_option("--priority", f.priority, "every trial job's (higher runs first)");
       },
       Submit},
      {"get", "show a sweep and its trials", IdOption, Get},
      {"list", "list sweeps (newest first)",
       [](CLI::App* c, SweepFlags& f) {
         c->add_option("--status", f.status, api::ShortNames(v1::SweepStatus_descriptor()) + " (or SWEEP_STATUS_...)");
         c->add_option("--page-size", f.page_size, "sweeps per page");
         c->add_option("--page-token", f.page_token, "from the previous page");
       },
       List},
      {"watch", "follow a sweep's trials until it ends; exits with its outcome",
       [](CLI::App* c, SweepFlags& f) {
         IdOption(c, f);
         c->add_option("--interval", f.interval_s, "seconds between two looks (default 2)")
             ->check(CLI::Range(0.1, 3600.0));
       },
       Watch},
      {"cancel", "cancel a sweep and its unfinished trials' jobs", IdOption, Cancel},
  };
  return commands;
}

}  // namespace

struct SweepCommands::State {
  explicit State(CLI::App& sweep) : commands(sweep, Commands()) {}
  SweepCommandSet commands;
};

SweepCommands::SweepCommands(CLI::App& sweep) : state_(std::make_unique<State>(sweep)) {}
SweepCommands::~SweepCommands() = default;
bool SweepCommands::parsed() const { return state_->commands.parsed(); }
int SweepCommands::Run() { return state_->commands.Run(); }

}  // namespace shardtune
