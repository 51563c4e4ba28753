#include "launcher/server/job_manager.h"

#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/exit_codes.h"
#include "common/job_spec.h"
#include "common/run_dir.h"
#include "launcher/server/processes.h"
#include "sharding/planner.h"

extern char** environ;

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

std::string NewJobId() { return "job-" + RandomToken().substr(0, 16); }

JobSpec ParseSpec(const std::string& yaml) {
  try {
    return ParseJobSpec(yaml, "spec_yaml", "/");
  } catch (const SpecError& e) {
    std::string message = "the job spec has problems:";
    for (const auto& p : e.problems()) message += "\n" + p;
    throw RequestError(RequestError::Kind::kInvalidArgument, message);
  } catch (const Error& e) {
    throw RequestError(RequestError::Kind::kInvalidArgument, e.what());
  }
}

}  // namespace

std::string SpecText(const v1::CreateJobRequest& request) {
  if (request.spec_case() != v1::CreateJobRequest::kSpecFields) return request.spec_yaml();
  return StructToJson(request.spec_fields());
}

std::string StructToJson(const google::protobuf::Struct& fields) {
  // JSON is YAML: the structured spec goes through the same parser and checks as the text.
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(fields, &json).ok())
    throw RequestError(RequestError::Kind::kInvalidArgument, "spec_fields does not convert to JSON");
  return json;
}

JobManager::JobManager(ServerConfig config, std::string server_address)
    : config_(std::move(config)),
      server_address_(std::move(server_address)),
      store_(std::make_unique<JobStore>(config_.database)) {
  for (const ApiKey& key : config_.api_keys) store_->PutApiKey(key.sha256, key.tenant, key.role);
  fs::create_directories(config_.data_dir);
}

JobManager::~JobManager() { Stop(); }

void JobManager::Start() {
  // Re-attach: attempts whose supervisor still runs stay RUNNING (and are watched again); the
  // others are settled from their exit files by the first Tick.
  for (JobRecord& r : store_->Unfinished()) {
    if (r.job.status() == v1::RUNNING) {
      const bool alive = SupervisorAlive(r.supervisor_pid, r.job.id());
      spdlog::info("job {}: attempt {} {} ", r.job.id(), r.job.attempt(),
                   alive ? "still runs; watching it again" : "ended while the server was down");
      Event(r, "note",
            alive ? "the server restarted and re-attached to the running attempt"
                  : "the server restarted; the attempt ended while it was down");
    }
  }
  validator_ = std::thread([this] { ValidateLoop(); });
  thread_ = std::thread([this] {
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) return;
        try {
          Tick();
        } catch (const std::exception& e) {
          spdlog::error("scheduler: {}", e.what());
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

void JobManager::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  validation_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (validator_.joinable()) validator_.join();
}

std::string JobManager::WorkerPath() const {
  return config_.worker.empty() ? (SelfDirectory() / "shardtune-worker").string() : config_.worker;
}

JobManager::DataCheck JobManager::CheckData(const std::string& spec_yaml) const {
  const fs::path scratch = fs::path(config_.data_dir) / ("validate-" + RandomToken().substr(0, 16));
  fs::create_directories(scratch);
  WriteFileAtomic(scratch / "job.yaml", spec_yaml);
  const CommandResult run =
      RunCommand({WorkerPath(), "validate-data", (scratch / "job.yaml").string(), "--log-level", "error"});
  fs::remove_all(scratch);
  return {run.status == 0, run.output};
}

void JobManager::ValidateLoop() {
  // One job at a time, oldest first: a data check reads every file of the job, and several at
  // once would only compete for the same disks.
  while (true) {
    std::optional<JobRecord> next;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      validation_.wait_for(lock, std::chrono::seconds(1), [&] {
        if (stopping_) return true;
        for (const JobRecord& r : store_->Unfinished()) {
          if (r.job.status() == v1::VALIDATING && (!next || r.job.created_ms() < next->job.created_ms())) next = r;
        }
        return next.has_value();
      });
      if (stopping_) return;
      if (!next) continue;
    }
    const DataCheck check = CheckData(next->job.spec_yaml());
    std::lock_guard<std::mutex> lock(mutex_);
    auto r = store_->Get(next->job.id());
    if (!r || r->job.status() != v1::VALIDATING) continue;  // cancelled meanwhile
    if (check.ok) {
      std::string summary = check.report.substr(0, check.report.find('\n'));
      SetStatus(*r, v1::QUEUED, summary.empty() ? "its data checked" : "data checked: " + summary);
    } else {
      r->job.mutable_error()->set_code("INVALID_DATA");
      r->job.mutable_error()->set_message(check.report.substr(0, 8000));
      SetStatus(*r, v1::FAILED, "its data has problems (not retried: a user error):\n" + r->job.error().message());
    }
  }
}

void JobManager::Event(const JobRecord& r, const std::string& kind, const std::string& message) {
  store_->AddEvent(r.job, kind, message);
  std::lock_guard<std::mutex> lock(events_mutex_);
  events_.notify_all();
}

void JobManager::WaitForEvent(const std::string& job_id, int64_t after_seq, int timeout_ms) {
  std::unique_lock<std::mutex> lock(events_mutex_);
  events_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                   [&] { return !store_->Events(job_id, after_seq, 1).empty(); });
}

void JobManager::SetStatus(JobRecord& r, v1::JobStatus status, const std::string& message) {
  r.job.set_status(status);
  if (status == v1::RUNNING && r.job.started_ms() == 0) r.job.set_started_ms(NowMs());
  if (IsTerminal(status)) r.job.set_finished_ms(NowMs());
  store_->Update(r);
  Event(r, "status", fmt::format("{}: {}", v1::JobStatus_Name(status), message));
  spdlog::info("job {} ({}): {}: {}", r.job.id(), r.job.name(), v1::JobStatus_Name(status), message);
}

static void RequireWrite(const Caller& caller) {
  if (caller.read_only) {
    throw RequestError(RequestError::Kind::kPermissionDenied,
                       fmt::format("this key of tenant '{}' is a viewer's: it may list and watch jobs, not change them",
                                   caller.tenant));
  }
}

JobRecord JobManager::Owned(const Caller& caller, const std::string& id) {
  auto record = store_->Get(id);
  // Another tenant's job does not exist for this caller.
  if (!record || (!caller.admin && record->job.tenant() != caller.tenant))
    throw RequestError(RequestError::Kind::kNotFound, fmt::format("no job '{}'", id));
  return *record;
}

int JobManager::UsedSlots(const std::string& tenant, int* running_jobs) {
  int slots = 0;
  *running_jobs = 0;
  for (const JobRecord& r : store_->Unfinished()) {
    if (r.job.status() != v1::RUNNING) continue;
    if (!tenant.empty() && r.job.tenant() != tenant) continue;
    slots += r.job.ranks();
    ++*running_jobs;
  }
  return slots;
}

v1::Job JobManager::Create(const Caller& caller, const v1::CreateJobRequest& request) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!request.idempotency_key().empty()) {
    if (auto existing = store_->FindByIdempotencyKey(caller.tenant, request.idempotency_key())) return existing->job;
  }
  const JobSpec spec = ParseSpec(SpecText(request));
  const int ranks = static_cast<int>(spec.resources.world_size());
  if (ranks > config_.total_slots()) {
    throw RequestError(RequestError::Kind::kResourceExhausted,
                       fmt::format("resources ask for {} ranks, but this server's pool has {} slots in all; the job "
                                   "could never start",
                                   ranks, config_.total_slots()));
  }
  if (const auto quota = config_.quotas.find(caller.tenant);
      quota != config_.quotas.end() && quota->second.max_ranks > 0 && ranks > quota->second.max_ranks) {
    throw RequestError(RequestError::Kind::kResourceExhausted,
                       fmt::format("resources ask for {} ranks; tenant '{}' may use at most {}", ranks, caller.tenant,
                                   quota->second.max_ranks));
  }
  if (const auto plan = PlanFor(spec, ranks); plan && !plan->fits) {
    throw RequestError(RequestError::Kind::kResourceExhausted,
                       fmt::format("the job does not fit its {} ranks of {:.1f} GiB each:\n{}", ranks,
                                   config_.memory_per_slot_gib, PlanToText(*plan)));
  }
  if (RunDir(spec.output.dir).HasFinal()) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("output.dir {} holds a finished run (final/); choose another", spec.output.dir));
  }
  for (const JobRecord& other : store_->Unfinished()) {
    if (other.job.output_dir() == spec.output.dir) {
      throw RequestError(RequestError::Kind::kFailedPrecondition,
                         fmt::format("output.dir {} is in use by job {}", spec.output.dir, other.job.id()));
    }
  }
  JobRecord r;
  r.job.set_id(NewJobId());
  r.job.set_name(spec.name);
  for (const auto& [k, v] : spec.labels) (*r.job.mutable_labels())[k] = v;
  r.job.set_tenant(caller.tenant);
  r.job.set_spec_yaml(JobSpecToYaml(spec));
  r.job.set_status(v1::VALIDATING);
  r.job.set_created_ms(NowMs());
  r.job.set_output_dir(spec.output.dir);
  r.job.set_priority(request.priority());
  r.job.set_ranks(ranks);
  r.job.mutable_error()->set_rank(-1);
  r.idempotency_key = request.idempotency_key();
  r.requested_ranks = ranks;
  store_->Insert(r);
  Event(r, "status", "VALIDATING: accepted; checking its data");
  validation_.notify_one();
  spdlog::info("job {} ({}) accepted for tenant {}: {} ranks", r.job.id(), r.job.name(), r.job.tenant(), ranks);
  return r.job;
}

std::optional<Plan> JobManager::PlanFor(const JobSpec& spec, int64_t ranks) const {
  if (config_.memory_per_slot_gib <= 0) return std::nullopt;
  try {
    return MakePlan(PlanInputForJob(spec, ranks, config_.memory_per_slot_gib * (1 << 30), config_.gpus));
  } catch (const Error& e) {
    throw RequestError(RequestError::Kind::kInvalidArgument, e.what());
  }
}

v1::Job JobManager::Get(const Caller& caller, const std::string& id) { return Owned(caller, id).job; }

v1::Job JobManager::Cancel(const Caller& caller, const std::string& id) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  JobRecord r = Owned(caller, id);
  if (IsTerminal(r.job.status())) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("job {} has ended ({})", id, v1::JobStatus_Name(r.job.status())));
  }
  if (r.job.status() != v1::RUNNING) {
    SetStatus(r, v1::CANCELLED, "cancelled before it ran");
    return r.job;
  }
  r.cancel_requested = true;
  r.signal_sent_ms = NowMs();
  store_->Update(r);
  Signal(r, SIGTERM);
  Event(r, "note", "cancel requested: SIGTERM sent to the job's processes");
  return r.job;
}

v1::Job JobManager::Pause(const Caller& caller, const std::string& id) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  JobRecord r = Owned(caller, id);
  if (r.job.status() == v1::QUEUED) {
    SetStatus(r, v1::PAUSED, "paused before it ran");
  } else if (r.job.status() == v1::RUNNING) {
    r.pause_requested = true;
    store_->Update(r);
    Event(r, "note", "pause requested: the job checkpoints and stops at its next step");
  } else {
    throw RequestError(
        RequestError::Kind::kFailedPrecondition,
        fmt::format("job {} is {}; only queued or running jobs pause", id, v1::JobStatus_Name(r.job.status())));
  }
  return r.job;
}

v1::Job JobManager::Resume(const Caller& caller, const std::string& id, int ranks) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  JobRecord r = Owned(caller, id);
  if (r.job.status() != v1::PAUSED) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("job {} is {}; only paused jobs resume", id, v1::JobStatus_Name(r.job.status())));
  }
  if (ranks > 0) {
    if (ranks > config_.total_slots()) {
      throw RequestError(RequestError::Kind::kResourceExhausted,
                         fmt::format("{} ranks exceed the pool's {} slots", ranks, config_.total_slots()));
    }
    const JobSpec spec = ParseSpec(r.job.spec_yaml());
    const int64_t global = spec.training.global_batch_size, micro = spec.training.micro_batch_size;
    if (global > 0 && global % (micro * ranks) != 0) {
      throw RequestError(
          RequestError::Kind::kInvalidArgument,
          fmt::format("{} ranks do not divide the global batch {} into micro-batches of {}", ranks, global, micro));
    }
    r.requested_ranks = ranks;
  }
  r.pause_requested = false;
  SetStatus(r, v1::QUEUED,
            fmt::format("resumed; will continue from its latest checkpoint on {} ranks", r.requested_ranks));
  return r.job;
}

bool JobManager::WorkerTokenValid(const std::string& job_id, const std::string& token) {
  const auto r = store_->Get(job_id);
  return r && !r->worker_token_hash.empty() && Sha256Hex(token) == r->worker_token_hash;
}

bool JobManager::Progress(const v1::ProgressReport& report) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto r = store_->Get(report.job_id());
  if (!r || r->job.attempt() != report.attempt()) return true;  // a stale attempt: stop it
  v1::Job& job = r->job;
  job.set_step(report.step());
  job.set_total_steps(report.total_steps());
  job.set_epoch(report.epoch());
  job.set_trained_tokens(report.trained_tokens());
  job.set_progress(report.total_steps() > 0 ? static_cast<double>(report.step()) / report.total_steps() : 0.0);
  for (const auto& [k, v] : report.metrics()) (*job.mutable_metrics())[k] = v;
  if (job.started_ms() > 0 && report.step() > 0 && report.total_steps() > 0) {
    // From this attempt's pace; a rough figure by design.
    const double per_step = static_cast<double>(NowMs() - job.started_ms()) / static_cast<double>(report.step());
    job.set_estimated_finish_ms(NowMs() + static_cast<int64_t>(per_step * (report.total_steps() - report.step())));
  }
  store_->Update(*r);
  Event(*r, report.metrics().count("val_loss") ? "metrics" : "progress",
        report.log_line().empty() ? fmt::format("step {}/{}", report.step(), report.total_steps()) : report.log_line());
  return r->pause_requested || r->cancel_requested;
}

void JobManager::CheckpointSaved(const v1::CheckpointReport& report) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto r = store_->Get(report.job_id());
  if (!r) return;
  store_->AddCheckpoint(report.job_id(), report.step(), report.path());
  Event(*r, "checkpoint", fmt::format("checkpoint at step {}: {}", report.step(), report.path()));
}

void JobManager::Result(const v1::ResultReport& report) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto r = store_->Get(report.job_id());
  if (!r || r->job.attempt() != report.attempt()) return;
  if (r->result_succeeded) return;  // a later run of the same attempt (a Slurm requeue) changes nothing
  r->result_reported = true;
  r->result_succeeded = report.succeeded();
  r->result_paused = report.paused();
  if (report.has_error() && !report.error().message().empty()) *r->job.mutable_error() = report.error();
  store_->Update(*r);
  if (report.has_error() && !report.error().message().empty()) Event(*r, "error", report.error().message());
}

void JobManager::Signal(const JobRecord& r, int signal) {
  if (!r.backend_id.empty()) {  // Slurm signals every step, and kills after its KillWait
    RunCommand({"scancel", signal == SIGKILL ? "--signal=KILL" : "--signal=TERM", "--full", r.backend_id});
    if (signal == SIGTERM) RunCommand({"scancel", r.backend_id});
    return;
  }
  if (r.supervisor_pid > 0 && SupervisorAlive(r.supervisor_pid, r.job.id())) {
    ::kill(-static_cast<pid_t>(r.supervisor_pid), signal);  // its process group: mpirun and local ranks
  }
  if (signal == SIGKILL) KillJobProcesses(r.job.id());
}

void JobManager::ForwardLog(JobRecord& r) {
  // The attempt's log (mpirun's output: every rank's lines) becomes "log" events, a whole line
  // at a time, so that WatchJob shows what the ranks print.
  constexpr size_t kMaxLine = 4000, kMaxBytesPerCall = 1 << 20;
  std::ifstream in(fs::path(config_.data_dir) / r.job.id() / fmt::format("attempt-{}.log", r.job.attempt()),
                   std::ios::binary);
  if (!in) return;
  in.seekg(r.log_offset);
  std::string chunk(kMaxBytesPerCall, '\0');
  in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  chunk.resize(static_cast<size_t>(in.gcount()));
  size_t used = 0;
  for (size_t end = chunk.find('\n'); end != std::string::npos; end = chunk.find('\n', used)) {
    std::string line = chunk.substr(used, end - used);
    used = end + 1;
    if (line.empty()) continue;
    if (line.size() > kMaxLine) line = line.substr(0, kMaxLine) + " [...]";
    Event(r, "log", line);
  }
  if (used == 0) return;
  r.log_offset += static_cast<int64_t>(used);
  store_->Update(r);
}

void JobManager::Tick() {
  // Running attempts: what they printed; ended? overdue for SIGKILL?
  for (JobRecord& r : store_->Unfinished()) {
    if (r.job.status() != v1::RUNNING) continue;
    ForwardLog(r);
    int exit_code = -1;
    bool ended = false;
    if (!r.backend_id.empty()) {
      if (++slurm_polls_ % 10 != 0) continue;  // about once a second
      static const std::set<std::string> kRunning = {"PENDING",   "CONFIGURING",  "RUNNING",     "COMPLETING",
                                                     "REQUEUED",  "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                                                     "SUSPENDED", "SIGNALING",    "STAGE_OUT",   "UNKNOWN"};
      const auto state = SlurmState(r);
      if (state && kRunning.count(*state)) {
        // Preempted and requeued jobs run the batch script again and resume from their checkpoint.
        if (r.signal_sent_ms > 0 && NowMs() - r.signal_sent_ms > static_cast<int64_t>(config_.cancel_grace_s * 1000))
          RunCommand({"scancel", "--signal=KILL", "--full", r.backend_id});
        continue;
      }
      Settle(r, ReadExitFile(r.exit_file).value_or(-1));  // ended: the batch script's exit file tells how
      continue;
    }
    int status = 0;
    const pid_t pid = static_cast<pid_t>(r.supervisor_pid);
    const pid_t waited = pid > 0 ? ::waitpid(pid, &status, WNOHANG) : -1;
    if (waited == pid && pid > 0) {
      ended = true;
      exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    } else if (waited < 0 && !SupervisorAlive(r.supervisor_pid, r.job.id())) {
      ended = true;  // not our child (the server restarted): the exit file tells
      exit_code = ReadExitFile(r.exit_file).value_or(-1);
    }
    if (ended) {
      Settle(r, exit_code);
    } else if (r.signal_sent_ms > 0 &&
               NowMs() - r.signal_sent_ms > static_cast<int64_t>(config_.cancel_grace_s * 1000)) {
      Signal(r, SIGKILL);
    }
  }
  // Queued jobs, by priority then age, while slots last.
  std::vector<JobRecord> queued;
  for (JobRecord& r : store_->Unfinished())
    if (r.job.status() == v1::QUEUED) queued.push_back(r);
  std::stable_sort(queued.begin(), queued.end(),
                   [](const JobRecord& a, const JobRecord& b) { return a.job.priority() > b.job.priority(); });
  for (JobRecord& r : queued) {
    int running = 0;
    const int free = config_.total_slots() - UsedSlots("", &running);
    if (r.requested_ranks > free) break;  // FIFO: nothing overtakes the head of the queue
    int tenant_running = 0;
    const int tenant_slots = UsedSlots(r.job.tenant(), &tenant_running);
    if (const auto quota = config_.quotas.find(r.job.tenant()); quota != config_.quotas.end()) {
      const TenantQuota& q = quota->second;
      if ((q.max_running_jobs > 0 && tenant_running >= q.max_running_jobs) ||
          (q.max_ranks > 0 && tenant_slots + r.requested_ranks > q.max_ranks))
        continue;  // this tenant waits; others may go
    }
    Launch(r);
  }
}

void JobManager::Launch(JobRecord& r) {
  const fs::path dir = fs::path(config_.data_dir) / r.job.id();
  fs::create_directories(dir);
  const int attempt = r.job.attempt() + 1;
  const fs::path spec = dir / "job.yaml";
  WriteFileAtomic(spec, r.job.spec_yaml());
  std::string hostfile_text;
  int left = r.requested_ranks;
  for (const HostSlots& h : config_.hosts) {
    if (left <= 0) break;
    hostfile_text += fmt::format("{} slots={}\n", h.host, h.slots);
    left -= h.slots;
  }
  WriteFileAtomic(dir / "hostfile", hostfile_text);
  const std::string token = RandomToken();
  r.worker_token_hash = Sha256Hex(token);
  r.exit_file = (dir / fmt::format("exit-{}", attempt)).string();
  fs::remove(r.exit_file);
  r.job.set_attempt(attempt);
  r.job.set_ranks(r.requested_ranks);
  r.log_offset = 0;
  r.cancel_requested = false;
  r.pause_requested = false;
  r.signal_sent_ms = 0;
  r.result_reported = r.result_succeeded = r.result_paused = false;
  r.job.clear_error();
  r.job.mutable_error()->set_rank(-1);

  const std::string worker = WorkerPath();
  std::vector<std::string> argv = {(SelfDirectory() / "shardtune-server").string(),
                                   "supervise",
                                   "--job",
                                   r.job.id(),
                                   "--exit-file",
                                   r.exit_file,
                                   "--log",
                                   (dir / fmt::format("attempt-{}.log", attempt)).string(),
                                   "--",
                                   config_.mpirun};
  // Unbound unless the operator's arguments bind (see LaunchTraining).
  const bool binds =
      std::any_of(config_.mpirun_extra_args.begin(), config_.mpirun_extra_args.end(),
                  [](const std::string& a) { return a.rfind("--bind-to", 0) == 0 || a.rfind("-bind-to", 0) == 0; });
  if (!binds) argv.insert(argv.end(), {"--bind-to", "none"});
  for (const auto& a : config_.mpirun_extra_args) argv.push_back(a);
  for (const char* name : {"SHARDTUNE_SERVER", "SHARDTUNE_JOB_ID", "SHARDTUNE_JOB_TOKEN", "SHARDTUNE_JOB_ATTEMPT"}) {
    argv.push_back("-x");
    argv.push_back(name);
  }
  // Ranks' output stays on mpirun's, whose lines become the job's log events (each rank also
  // writes OUTPUT_DIR/logs/rank-NNNNN.log). Open MPI 5 and later would divert it to files alone
  // under --output-filename.
  argv.insert(argv.end(), {"-np", std::to_string(r.requested_ranks), "--hostfile", (dir / "hostfile").string(), worker,
                           spec.string()});
  const std::map<std::string, std::string> env = {
      {"SHARDTUNE_SERVER", server_address_}, {"SHARDTUNE_JOB_ID", r.job.id()},
      {"SHARDTUNE_JOB_TOKEN", token},        {"SHARDTUNE_JOB_ATTEMPT", std::to_string(attempt)},
      {"OMPI_ALLOW_RUN_AS_ROOT", "1"},       {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}};
  if (config_.backend == "slurm") {
    LaunchSlurm(r, dir, spec, worker, env);
    return;
  }
  r.supervisor_pid = SpawnInNewSession(argv, env);
  SetStatus(r, v1::RUNNING,
            fmt::format("attempt {} on {} ranks (supervisor pid {})", attempt, r.requested_ranks, r.supervisor_pid));
}

void JobManager::LaunchSlurm(JobRecord& r, const fs::path& dir, const fs::path& spec, const std::string& worker,
                             const std::map<std::string, std::string>& env) {
  // The template's {{NAME}}s become single-quoted words; the job's environment reaches the
  // batch script through sbatch's default --export=ALL.
  std::string script = ReadFile(config_.slurm_template);
  const std::map<std::string, std::string> values = {{"RANKS", std::to_string(r.requested_ranks)},
                                                     {"MPIRUN", config_.mpirun},
                                                     {"WORKER", worker},
                                                     {"SPEC", spec.string()},
                                                     {"EXIT_FILE", r.exit_file},
                                                     {"JOB_ID", r.job.id()}};
  for (const auto& [name, value] : values) {
    const std::string placeholder = "{{" + name + "}}";
    const std::string word = name == "RANKS" ? value : ShellQuote(value);
    for (size_t at = script.find(placeholder); at != std::string::npos; at = script.find(placeholder, at + word.size()))
      script.replace(at, placeholder.size(), word);
  }
  const fs::path script_path = dir / fmt::format("attempt-{}.sbatch", r.job.attempt());
  WriteFileAtomic(script_path, script);
  std::vector<std::string> argv = {"sbatch", "--parsable", "--job-name=shardtune-" + r.job.id(),
                                   fmt::format("--ntasks={}", r.requested_ranks),
                                   "--output=" + (dir / fmt::format("attempt-{}.log", r.job.attempt())).string()};
  if (!config_.slurm_partition.empty()) argv.push_back("--partition=" + config_.slurm_partition);
  argv.push_back(script_path.string());
  const CommandResult submitted = RunCommand(argv, env);
  const std::string id = submitted.output.substr(0, submitted.output.find_first_of(";\n"));
  if (submitted.status != 0 || id.empty() || id.find_first_not_of("0123456789") != std::string::npos) {
    r.job.mutable_error()->set_code("BACKEND");
    r.job.mutable_error()->set_message("sbatch failed: " + submitted.output);
    SetStatus(r, v1::FAILED, r.job.error().message());
    return;
  }
  r.backend_id = id;
  r.supervisor_pid = 0;
  SetStatus(r, v1::RUNNING,
            fmt::format("attempt {} on {} ranks: Slurm job {}", r.job.attempt(), r.requested_ranks, id));
}

std::optional<std::string> JobManager::SlurmState(const JobRecord& r) {
  // squeue lists a job while it is pending, running or requeued, and for a while after it ends.
  const CommandResult q = RunCommand({"squeue", "--noheader", "--jobs=" + r.backend_id, "--format=%T"});
  const std::string state = q.output.substr(0, q.output.find('\n'));
  if (q.status != 0 && q.output.find("Invalid job id") == std::string::npos) return std::string("UNKNOWN");
  if (state.empty() || q.status != 0) return std::nullopt;
  return state;
}

void JobManager::Settle(JobRecord& r, int exit_code) {
  KillJobProcesses(r.job.id());  // nothing of an ended attempt outlives it
  ForwardLog(r);
  r.supervisor_pid = 0;
  r.backend_id.clear();
  const bool finished = RunDir(r.job.output_dir()).HasFinal();
  if (r.cancel_requested) {
    SetStatus(r, v1::CANCELLED, "cancelled");
  } else if (finished && (exit_code == 0 || r.result_succeeded)) {
    // (A run Slurm requeued after the job had finished refuses to train again: still a success.)
    SetStatus(r, v1::SUCCEEDED, fmt::format("attempt {} finished", r.job.attempt()));
  } else if (exit_code == 0 && (r.result_paused || r.pause_requested)) {
    SetStatus(r, v1::PAUSED, fmt::format("stopped at its checkpoint after step {}", r.job.step()));
  } else if (exit_code == kExitInvalidInput) {
    r.job.mutable_error()->set_code("INVALID_INPUT");
    if (r.job.error().message().empty()) r.job.mutable_error()->set_message("the worker rejected the job's input");
    SetStatus(r, v1::FAILED, r.job.error().message() + " (not retried: a user error)");
  } else {
    const std::string why = exit_code < 0 ? "its processes vanished (node lost or killed)"
                                          : fmt::format("mpirun exited with status {}", exit_code);
    if (r.job.error().code().empty()) r.job.mutable_error()->set_code("RANK_FAILED");
    if (r.job.error().message().empty()) r.job.mutable_error()->set_message(why);
    if (r.job.attempt() < config_.max_attempts) {
      SetStatus(r, v1::QUEUED,
                fmt::format("attempt {} failed ({}); retrying from the latest checkpoint", r.job.attempt(),
                            r.job.error().message()));
    } else {
      SetStatus(
          r, v1::FAILED,
          fmt::format("attempt {} of {} failed: {}", r.job.attempt(), config_.max_attempts, r.job.error().message()));
    }
  }
}

}  // namespace shardtune::server
