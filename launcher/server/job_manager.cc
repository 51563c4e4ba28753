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
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/exit_codes.h"
#include "common/job_checks.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/worker_contract.h"
#include "launcher/api_values.h"
#include "launcher/rank_command.h"
#include "launcher/server/attempt_end.h"
#include "launcher/server/processes.h"
#include "sharding/planner.h"

extern char** environ;

namespace shardtune::server {

namespace fs = std::filesystem;

namespace {

std::string NewJobId() { return "job-" + RandomToken().substr(0, 16); }

// `yaml` as a spec that fits `ranks` data-parallel ranks (0: the ranks its resources name); else
// the request's error, listing every problem.
JobSpec ParseSpec(const std::string& yaml, int64_t ranks = 0, const SpecOptions& options = {}) {
  try {
    JobSpec spec = ParseJobSpec(yaml, "spec_yaml", "/", options);
    RequireFitsWorld(spec, ranks > 0 ? ranks : spec.resources.world_size());
    return spec;
  } catch (const SpecError& e) {
    std::string message = "the job spec has problems:";
    for (const auto& p : e.problems()) message += "\n" + p;
    throw RequestError(RequestError::Kind::kInvalidArgument, message, v1::JOB_ERROR_CODE_INVALID_SPEC, e.problems());
  } catch (const Error& e) {
    // The worker's mapping (a file the spec names missing: INVALID_INPUT); never a retryable code here.
    const auto kind = contract::JobErrorKindFor(e.code());
    throw RequestError(
        RequestError::Kind::kInvalidArgument, e.what(),
        contract::IsUserError(kind) ? static_cast<v1::JobErrorCode>(kind) : v1::JOB_ERROR_CODE_INVALID_SPEC);
  }
}

// Lines in which mpirun says that it lost a host: its daemon there died or became unreachable
// (Open MPI 4's ORTE and Open MPI 5's PRRTE word them alike).
bool MpirunLostAHost(const std::string& line) {
  return line.find("has lost communication with a remote daemon") != std::string::npos ||
         line.find("daemon has unexpectedly failed after launch") != std::string::npos;
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
    throw RequestError(RequestError::Kind::kInvalidArgument, "spec_fields does not convert to JSON",
                       v1::JOB_ERROR_CODE_INVALID_SPEC);
  return json;
}

JobManager::JobManager(ServerConfig config, std::string server_address)
    : config_(std::move(config)),
      storage_(config_.storage, config_.api_keys),
      job_user_(ResolveJobUser(config_.run_as, config_.job_umask)),  // refuses root or a missing user
      server_address_(std::move(server_address)),
      store_(std::make_unique<JobStore>(config_.database)),
      files_(std::make_unique<FileStore>(*store_, config_)) {
  for (const ApiKey& key : config_.api_keys) store_->PutApiKey(key.sha256, key.tenant, key.role);
  last_created_ms_ = store_->MaxCreatedMs();
  for (const JobRecord& r : store_->Unfinished()) output_dirs_in_use_[r.job.output_dir()] = r.job.id();
  fs::create_directories(config_.data_dir);
  if (::geteuid() != 0) job_user_ = ResolveJobUser("", config_.job_umask);  // cannot switch users: its own
  if (config_.backend == "slurm" && config_.slurm.launcher == "mpirun" && ::geteuid() == 0 && job_user_.name.empty() &&
      !config_.slurm.allow_run_as_root) {
    Fail(ErrorCode::kInvalidArgument,
         "backend slurm: jobs would run as root (the server does, and run_as is not set), which mpirun refuses; set "
         "run_as (recommended), slurm.launcher: srun, or slurm.allow_run_as_root: true");
  }
  if (job_user_.name.empty()) return;
  // The job's user writes its outputs under its tenant's root: the root itself is made its own
  // (what is inside is left as it is); DATA_DIR is traversable, so that it reads each job's spec.
  fs::permissions(config_.data_dir, fs::perms(0711));
  for (const auto& [tenant, storage] : config_.storage.tenants) {
    if (::chown(storage.root.c_str(), job_user_.uid, job_user_.gid) != 0)
      FailErrno(fmt::format("chown to run_as '{}' (storage.tenants.{}.root)", job_user_.name, tenant), storage.root);
  }
}

void JobManager::ShareWithJobUser(const fs::path& dir, const std::vector<fs::path>& files) const {
  if (job_user_.name.empty()) return;
  fs::permissions(dir, fs::perms(0711));
  for (const fs::path& file : files) {
    if (::chown(file.c_str(), job_user_.uid, job_user_.gid) != 0)
      FailErrno(fmt::format("chown to run_as '{}'", job_user_.name), file.string());
  }
}

JobManager::~JobManager() { Stop(); }

void JobManager::Start() {
  // Re-attach: attempts whose supervisor still runs stay RUNNING (and are watched again); the
  // others are settled from their exit files by the first Tick.
  for (JobRecord& r : store_->Unfinished()) {
    if (r.job.status() == v1::JOB_STATUS_RUNNING) {
      const bool alive = SupervisorRuns(r);
      if (alive && r.backend_id.empty()) ExpectHeartbeats(r);  // the clock starts again
      spdlog::info("job {}: attempt {} {} ", r.job.id(), r.job.attempt(),
                   alive ? "still runs; watching it again" : "ended while the server was down");
      Event(r, v1::JOB_EVENT_KIND_NOTE,
            alive ? "the server restarted and re-attached to the running attempt"
                  : "the server restarted; the attempt ended while it was down");
    }
  }
  if (config_.backend == "slurm") CancelUnrecordedSlurmJobs();
  validator_ = std::thread([this] { ValidateLoop(); });
  thread_ = std::thread([this] { ScheduleLoop(); });
}

void JobManager::ScheduleLoop() {
  // Slurm's commands can take seconds: they run between two holds of the lock, so that no RPC
  // waits on them (SlurmCalls).
  while (true) {
    SlurmCalls slurm;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      try {
        Tick(slurm);
      } catch (const std::exception& e) {
        spdlog::error("scheduler: {}", e.what());
      }
      slurm.commands.swap(slurm_commands_);
    }
    if (!slurm.empty()) {
      MakeSlurmCalls(slurm);
      std::lock_guard<std::mutex> lock(mutex_);
      try {
        ApplySlurmResults(slurm);
      } catch (const std::exception& e) {
        spdlog::error("scheduler: {}", e.what());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
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

JobManager::DataCheck JobManager::CheckData(const std::string& spec_yaml, const std::string& tenant) const {
  const fs::path scratch = fs::path(config_.data_dir) / ("validate-" + RandomToken().substr(0, 16));
  fs::create_directories(scratch);
  WriteFileAtomic(scratch / "job.yaml", spec_yaml);
  ShareWithJobUser(scratch, {scratch / "job.yaml"});
  CommandResult run;
  try {
    run =
        RunJobCommand({WorkerPath(), "validate-data", (scratch / "job.yaml").string(), "--log-level", "error"},
                      tenant.empty() ? std::map<std::string, std::string>() : storage_.Environment(tenant), job_user_);
  } catch (const RequestError& e) {  // its tenant lost its storage since it was admitted
    run.output = e.what();
  }
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
        next = store_->Oldest(v1::JOB_STATUS_VALIDATING);  // by index: each CreateJob wakes this
        return next.has_value();
      });
      if (stopping_) return;
      if (!next) continue;
    }
    const DataCheck check = CheckData(next->job.spec_yaml(), next->job.tenant());
    std::lock_guard<std::mutex> lock(mutex_);
    auto r = store_->Get(next->job.id());
    if (!r || r->job.status() != v1::JOB_STATUS_VALIDATING) continue;  // cancelled meanwhile
    if (check.ok) {
      std::string summary = check.report.substr(0, check.report.find('\n'));
      SetStatus(*r, v1::JOB_STATUS_QUEUED, summary.empty() ? "its data checked" : "data checked: " + summary);
    } else {
      SetError(r->job, v1::JOB_ERROR_CODE_INVALID_DATA, check.report.substr(0, 8000));
      SetStatus(*r, v1::JOB_STATUS_FAILED,
                "its data has problems (not retried: a user error):\n" + r->job.error().message());
    }
  }
}

void JobManager::Event(const JobRecord& r, v1::JobEventKind kind, const std::string& message, v1::JobEventLevel level) {
  store_->AddEvent(r.job, kind, message, level);
  NotifyEvents();
}

void JobManager::NotifyEvents() {
  std::lock_guard<std::mutex> lock(events_mutex_);
  events_.notify_all();
}

void JobManager::WaitForEvent(const std::string& job_id, int64_t after_seq, int timeout_ms) {
  std::unique_lock<std::mutex> lock(events_mutex_);
  events_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                   [&] { return !store_->Events(job_id, after_seq, 1).empty(); });
}

void JobManager::SetStatus(JobRecord& r, v1::JobStatus status, const std::string& message) {
  metrics_.StatusChanged(r.job, status);
  r.job.set_status(status);
  if (status == v1::JOB_STATUS_RUNNING && !r.job.has_start_time()) *r.job.mutable_start_time() = api::TimeOfMs(NowMs());
  if (IsTerminal(status)) {
    *r.job.mutable_finish_time() = api::TimeOfMs(NowMs());
    if (const auto user = output_dirs_in_use_.find(r.job.output_dir());
        user != output_dirs_in_use_.end() && user->second == r.job.id())
      output_dirs_in_use_.erase(user);
  }
  store_->Update(r, v1::JOB_EVENT_KIND_STATUS, fmt::format("{}: {}", api::ShortName(status), message));
  NotifyEvents();
  const LogJobScope log_job(r.job.id());
  spdlog::info("job {} ({}): {}: {}", r.job.id(), r.job.name(), api::ShortName(status), message);
}

void RequireWrite(const Caller& caller) {
  if (caller.read_only) {
    throw RequestError(
        RequestError::Kind::kPermissionDenied,
        fmt::format("this key of tenant '{}' is a viewer's: it may list and watch jobs and sweeps, not change them",
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

JobManager::SlotUse JobManager::UsedSlots(const std::vector<JobRecord>& unfinished) const {
  SlotUse use;
  for (const JobRecord& r : unfinished) {
    if (r.job.status() != v1::JOB_STATUS_RUNNING && !submitting_.count(r.job.id())) continue;
    use.Add(r.job.tenant(), r.job.ranks());
  }
  return use;
}

v1::Job JobManager::Create(const Caller& caller, const v1::CreateJobRequest& request, const std::string& openai) {
  RequireWrite(caller);
  if (!request.idempotency_key().empty()) {  // a retry: the job it made, without checking it again
    if (auto existing = store_->FindByIdempotencyKey(caller.tenant, request.idempotency_key())) return existing->job;
  }
  // The checks that read files (the storage check walks named directories) or plan run without
  // the manager's lock, so that a large spec does not hold up other calls; what they depend on
  // that may change meanwhile (the uploaded files, the idempotency key, the output dir) is checked
  // again under it.
  std::set<std::string> uploaded;  // the files it names as file:ID
  const JobSpec spec = ParseSpec(SpecText(request), 0, UploadedFilesOf(caller, &uploaded));
  RequireAdmissible(caller, spec);
  const int ranks = static_cast<int>(spec.resources.world_size());

  std::lock_guard<std::mutex> lock(mutex_);
  if (!request.idempotency_key().empty()) {  // the same request, admitted by another call meanwhile
    if (auto existing = store_->FindByIdempotencyKey(caller.tenant, request.idempotency_key())) return existing->job;
  }
  for (const std::string& id : uploaded) {  // DeleteFile holds the lock: none goes while the job is admitted
    if (!files_->Get(caller.tenant, id))
      throw RequestError(RequestError::Kind::kInvalidArgument,
                         fmt::format("no uploaded file '{}' (deleted while the job was admitted)", id),
                         v1::JOB_ERROR_CODE_INVALID_SPEC);
  }
  if (const auto problem = FinishedRunProblem(spec.output.dir)) {
    throw RequestError(RequestError::Kind::kFailedPrecondition, *problem);
  }
  if (const auto user = output_dirs_in_use_.find(spec.output.dir); user != output_dirs_in_use_.end()) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("output.dir {} is in use by job {}", spec.output.dir, user->second));
  }
  JobRecord r;
  r.job.set_id(NewJobId());
  r.job.set_name(spec.name);
  for (const auto& [k, v] : spec.labels) (*r.job.mutable_labels())[k] = v;
  r.job.set_tenant(caller.tenant);
  r.job.set_spec_yaml(JobSpecToYaml(spec));
  r.job.set_status(v1::JOB_STATUS_VALIDATING);
  // Strictly increasing, even when the clock steps back or two jobs share a millisecond: a job
  // created while a client pages through ListJobs is then newer than every row already listed
  // and never lands behind its cursor (job_store.h, ListPosition).
  last_created_ms_ = std::max(NowMs(), last_created_ms_ + 1);
  *r.job.mutable_create_time() = api::TimeOfMs(last_created_ms_);
  r.job.set_output_dir(spec.output.dir);
  r.job.set_priority(request.priority());
  r.job.set_ranks(ranks);
  r.job.mutable_error()->set_rank(-1);
  r.idempotency_key = request.idempotency_key();
  r.requested_ranks = ranks;
  r.openai = openai;
  store_->Insert(r, v1::JOB_EVENT_KIND_STATUS, "validating: accepted; checking its data");
  files_->RecordUses(r.job.id(), uploaded);
  output_dirs_in_use_[r.job.output_dir()] = r.job.id();
  NotifyEvents();
  validation_.notify_one();
  const LogJobScope log_job(r.job.id());
  spdlog::info("job {} ({}) accepted for tenant {}: {} ranks", r.job.id(), r.job.name(), r.job.tenant(), ranks);
  return r.job;
}

void JobManager::RequireAdmissible(const Caller& caller, const JobSpec& spec) const {
  storage_.Require(caller.tenant, caller.admin, spec);
  if (config_.backend != "slurm" && spec.resources.NamesSchedulerOptions()) {
    throw RequestError(RequestError::Kind::kInvalidArgument,
                       "resources: time_limit, partition, account and qos are for a batch scheduler; this server's "
                       "backend is local",
                       v1::JOB_ERROR_CODE_INVALID_SPEC);
  }
  const int ranks = static_cast<int>(spec.resources.world_size());
  RequireRanksAvailable(caller.tenant, ranks);
  RequirePlanFits(spec, ranks);
}

void JobManager::RequireRanksAvailable(const std::string& tenant, int ranks) const {
  if (ranks > config_.total_slots()) {
    throw RequestError(RequestError::Kind::kResourceExhausted,
                       fmt::format("resources ask for {} ranks, but this server's pool has {} slots in all; the job "
                                   "could never start",
                                   ranks, config_.total_slots()));
  }
  if (const auto quota = config_.quotas.find(tenant);
      quota != config_.quotas.end() && quota->second.max_ranks > 0 && ranks > quota->second.max_ranks) {
    throw RequestError(RequestError::Kind::kResourceExhausted,
                       fmt::format("resources ask for {} ranks; tenant '{}' may use at most {}", ranks, tenant,
                                   quota->second.max_ranks));
  }
}

void JobManager::RequirePlanFits(const JobSpec& spec, int ranks) const {
  if (const auto plan = PlanFor(spec, ranks); plan && !plan->fits) {
    throw RequestError(RequestError::Kind::kResourceExhausted,
                       fmt::format("the job does not fit its {} ranks of {:.1f} GiB each:\n{}", ranks,
                                   config_.memory_per_slot_gib, PlanToText(*plan)));
  }
}

std::optional<Plan> JobManager::PlanFor(const JobSpec& spec, int64_t ranks) const {
  if (config_.memory_per_slot_gib <= 0) return std::nullopt;
  try {
    return MakePlan(PlanInputForJob(spec, ranks, config_.memory_per_slot_gib * (1 << 30), config_.gpus));
  } catch (const Error& e) {
    throw RequestError(RequestError::Kind::kInvalidArgument, e.what(), v1::JOB_ERROR_CODE_INVALID_SPEC);
  }
}

v1::Job JobManager::Get(const Caller& caller, const std::string& id) { return Owned(caller, id).job; }

v1::Job JobManager::Cancel(const Caller& caller, const std::string& id) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  JobRecord r = Owned(caller, id);
  if (IsTerminal(r.job.status())) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("job {} has ended ({})", id, api::ShortName(r.job.status())));
  }
  if (r.job.status() != v1::JOB_STATUS_RUNNING) {
    submitting_.erase(id);  // an sbatch running now is cancelled when it returns
    SetStatus(r, v1::JOB_STATUS_CANCELLED, "cancelled before it ran");
    return r.job;
  }
  r.cancel_requested = true;
  r.signal_sent_ms = NowMs();
  store_->Update(r);
  Signal(r, SIGTERM);
  Event(r, v1::JOB_EVENT_KIND_NOTE, "cancel requested: SIGTERM sent to the job's processes");
  return r.job;
}

v1::Job JobManager::Pause(const Caller& caller, const std::string& id) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  JobRecord r = Owned(caller, id);
  if (r.job.status() == v1::JOB_STATUS_QUEUED) {
    submitting_.erase(id);  // likewise
    SetStatus(r, v1::JOB_STATUS_PAUSED, "paused before it ran");
  } else if (r.job.status() == v1::JOB_STATUS_RUNNING) {
    r.pause_requested = true;
    store_->Update(r);
    Event(r, v1::JOB_EVENT_KIND_NOTE, "pause requested: the job checkpoints and stops at its next step");
  } else {
    throw RequestError(
        RequestError::Kind::kFailedPrecondition,
        fmt::format("job {} is {}; only queued or running jobs pause", id, api::ShortName(r.job.status())));
  }
  return r.job;
}

v1::Job JobManager::Resume(const Caller& caller, const std::string& id, int ranks) {
  RequireWrite(caller);
  std::lock_guard<std::mutex> lock(mutex_);
  JobRecord r = Owned(caller, id);
  if (r.job.status() != v1::JOB_STATUS_PAUSED) {
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("job {} is {}; only paused jobs resume", id, api::ShortName(r.job.status())));
  }
  // On a new rank count, the same checks as admission: the pool, the tenant's max_ranks, the memory plan.
  if (ranks > 0) {
    RequireRanksAvailable(r.job.tenant(), ranks);
    r.requested_ranks = ranks;
  }
  // Its batch and shard group must fit the rank count; its paths, still its tenant's.
  const JobSpec spec = ParseSpec(r.job.spec_yaml(), r.requested_ranks);
  if (ranks > 0) RequirePlanFits(spec, ranks);
  storage_.Require(r.job.tenant(), caller.admin, spec);
  r.pause_requested = false;
  SetStatus(r, v1::JOB_STATUS_QUEUED,
            fmt::format("resumed; will continue from its latest checkpoint on {} ranks", r.requested_ranks));
  return r.job;
}

bool JobManager::SupervisorRuns(const JobRecord& r) const {
  if (r.supervisor_pid <= 0) return false;
  if (const auto id = ReadPidFile(AttemptFile(r, ".pid").string()))
    return id->pid == r.supervisor_pid && StillRuns(*id);
  return LegacySupervisorAlive(r.supervisor_pid, r.job.id());  // started by a server without pid files
}

fs::path JobManager::AttemptFile(const JobRecord& r, const std::string& suffix) const {
  return fs::path(config_.data_dir) / r.job.id() / fmt::format("attempt-{}{}", r.job.attempt(), suffix);
}

void JobManager::Signal(const JobRecord& r, int signal) {
  if (!r.backend_id.empty()) {  // Slurm signals every step, and kills after its KillWait
    slurm_commands_.push_back(
        {"scancel", signal == SIGKILL ? "--signal=KILL" : "--signal=TERM", "--full", r.backend_id});
    if (signal == SIGTERM) slurm_commands_.push_back({"scancel", r.backend_id});
    return;
  }
  // Only the supervisor: it passes a stop on to mpirun, and kills every process of the attempt
  // when told to (launcher/server/processes.h). One started before pid files existed knows no
  // kSignalKillAttempt: its process group (mpirun and the local ranks) gets the signal itself.
  if (!SupervisorRuns(r)) return;
  if (!fs::exists(AttemptFile(r, ".pid")))
    ::kill(-static_cast<pid_t>(r.supervisor_pid), signal);
  else
    ::kill(static_cast<pid_t>(r.supervisor_pid), signal == SIGKILL ? kSignalKillAttempt : kSignalStopAttempt);
}

bool JobManager::GracePeriodOver(const JobRecord& r) const {
  return r.signal_sent_ms > 0 && NowMs() - r.signal_sent_ms > static_cast<int64_t>(config_.cancel_grace_s * 1000);
}

void JobManager::NoteHostLost(JobRecord& r, const std::string& line) {
  if (r.job.error().code() == v1::JOB_ERROR_CODE_NODE_LOST) {
    // mpirun names the host a few lines after the first ("Remote daemon: [[1,0],1] on node n2").
    if (line.find(" on node ") != std::string::npos && r.job.error().message().find(" on node ") == std::string::npos)
      r.job.mutable_error()->set_message(r.job.error().message() + " (" + line.substr(line.find_first_not_of(' ')) +
                                         ")");
    return;
  }
  if (IsUserError(r.job.error().code())) return;
  SetError(r.job, v1::JOB_ERROR_CODE_NODE_LOST, "mpirun lost a host: " + line);
  r.job.mutable_error()->set_rank(-1);
}

void JobManager::ForwardLog(JobRecord& r) {
  // The attempt's log (mpirun's output: every rank's lines) becomes "log" events, a whole line
  // at a time, so that WatchJob shows what the ranks print. mpirun's own lines saying that it lost
  // a host make the attempt's error NODE_LOST.
  constexpr size_t kMaxLine = 4000, kMaxBytesPerCall = 1 << 20;
  const std::optional<std::string> read = ReadJobWrittenFile(AttemptFile(r, ".log"), r.log_offset, kMaxBytesPerCall);
  if (!read) return;
  const std::string& chunk = *read;
  size_t used = 0;
  for (size_t end = chunk.find('\n'); end != std::string::npos; end = chunk.find('\n', used)) {
    std::string line = chunk.substr(used, end - used);
    used = end + 1;
    if (line.empty()) continue;
    if (line.size() > kMaxLine) line = line.substr(0, kMaxLine) + " [...]";
    if (MpirunLostAHost(line) ||
        (r.job.error().code() == v1::JOB_ERROR_CODE_NODE_LOST && line.find("Remote daemon:") != std::string::npos))
      NoteHostLost(r, line);
    Event(r, v1::JOB_EVENT_KIND_LOG, line);
  }
  if (used == 0) return;
  r.log_offset += static_cast<int64_t>(used);
  store_->Update(r);
}

void JobManager::Tick(SlurmCalls& slurm) {
  // Slurm jobs are polled every tenth tick (about once a second), all of them in one squeue call
  // made without the lock (ApplySlurmResults settles them).
  const bool poll_slurm = ++slurm_ticks_ % 10 == 0;
  // Running attempts: what they printed; ended? overdue for SIGKILL?
  for (JobRecord& r : store_->Unfinished()) {
    if (r.job.status() != v1::JOB_STATUS_RUNNING) continue;
    ForwardLog(r);
    KillIfSilent(r);
    if (!r.backend_id.empty()) {
      if (poll_slurm) slurm.polls.push_back({r.job.id(), r.job.attempt(), r.backend_id, std::nullopt, ""});
      continue;
    }
    // Only a supervisor this process spawned is waited for (a pid from before a restart may now
    // be another child's: the validator's, say); any other is found by its identity.
    const pid_t pid = static_cast<pid_t>(r.supervisor_pid);
    const bool ours = spawned_.count(pid) > 0;
    int status = 0;
    const pid_t waited = ours ? ::waitpid(pid, &status, WNOHANG) : -1;
    if (waited == pid) {
      spawned_.erase(pid);
      Settle(r, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    } else if (waited < 0 && (ours || !SupervisorRuns(r))) {
      spawned_.erase(pid);
      Settle(r, ReadExitFile(r.exit_file).value_or(-1));  // not our child (the server restarted): the exit file tells
    } else if (GracePeriodOver(r)) {
      Signal(r, SIGKILL);
    }
  }
  // Queued jobs, by priority then age, while slots last. One read of the store for all of them
  // (with a thousand jobs queued, a read per queued job held the lock for seconds).
  const std::vector<JobRecord> unfinished = store_->Unfinished();
  SlotUse used = UsedSlots(unfinished);
  std::vector<JobRecord> queued;
  for (const JobRecord& r : unfinished)
    if (r.job.status() == v1::JOB_STATUS_QUEUED && !submitting_.count(r.job.id())) queued.push_back(r);
  std::stable_sort(queued.begin(), queued.end(),
                   [](const JobRecord& a, const JobRecord& b) { return a.job.priority() > b.job.priority(); });
  for (JobRecord& r : queued) {
    if (r.requested_ranks > config_.total_slots() - used.slots) break;  // FIFO: nothing overtakes the head of the queue
    const auto& [tenant_slots, tenant_running] = used.by_tenant[r.job.tenant()];
    if (const auto quota = config_.quotas.find(r.job.tenant()); quota != config_.quotas.end()) {
      const TenantQuota& q = quota->second;
      if ((q.max_running_jobs > 0 && tenant_running >= q.max_running_jobs) ||
          (q.max_ranks > 0 && tenant_slots + r.requested_ranks > q.max_ranks))
        continue;  // this tenant waits; others may go
    }
    Launch(r, slurm);
    used.Add(r.job.tenant(), r.requested_ranks);
  }
}

void JobManager::Launch(JobRecord& r, SlurmCalls& slurm) {
  std::map<std::string, std::string> storage_env;
  try {
    storage_env = storage_.Environment(r.job.tenant());
  } catch (const RequestError& e) {  // its tenant lost its storage since it was admitted
    SetError(r.job, v1::JOB_ERROR_CODE_INVALID_INPUT, e.what());
    return SetStatus(r, v1::JOB_STATUS_FAILED, e.what());
  }
  const fs::path dir = fs::path(config_.data_dir) / r.job.id();
  fs::create_directories(dir);
  const int attempt = r.job.attempt() + 1;
  const fs::path spec = dir / "job.yaml";
  WriteFileAtomic(spec, r.job.spec_yaml());
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

  RankCommand ranks;
  ranks.program = config_.mpirun;
  ranks.ranks = r.requested_ranks;
  ranks.environment.assign(contract::kJobEnvironment.begin(), contract::kJobEnvironment.end());
  ranks.worker = {WorkerPath(), spec.string()};
  for (std::string& arg : LogFormatArgs()) ranks.worker.push_back(std::move(arg));  // the server's --log-format
  const double heartbeat_interval_s =
      config_.heartbeat_timeout_s > 0 ? contract::HeartbeatIntervalFor(config_.heartbeat_timeout_s) : 0;
  std::map<std::string, std::string> env =
      contract::JobEnvironmentValues(server_address_, r.job.id(), token, attempt, heartbeat_interval_s);
  for (const auto& [name, roots] : storage_env) {
    env[name] = roots;
    ranks.environment.push_back(name);
  }
  if (IsTrialKey(r.idempotency_key)) {  // its evaluations decide whether it goes on: none is lost
    env[std::string(contract::kEnvEvaluationWait)] = std::to_string(contract::kTrialEvaluationWaitS);
    ranks.environment.emplace_back(contract::kEnvEvaluationWait);
  }
  if (config_.backend == "slurm") {
    PrepareSlurm(r, ranks, env, slurm);
    return;
  }
  // mpirun refuses root without these: the local backend's jobs run as root only when the server
  // does and has no run_as (the Slurm script says them only when configured, slurm_script.h).
  if (::geteuid() == 0 && job_user_.name.empty())
    env.insert({{"OMPI_ALLOW_RUN_AS_ROOT", "1"}, {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}});
  std::string hostfile_text;
  int left = r.requested_ranks;
  for (const HostSlots& h : config_.hosts) {
    if (left <= 0) break;
    hostfile_text += fmt::format("{} slots={}\n", h.host, h.slots);
    left -= h.slots;
  }
  WriteFileAtomic(dir / "hostfile", hostfile_text);
  ShareWithJobUser(dir, {spec, dir / "hostfile"});
  ranks.hostfile = (dir / "hostfile").string();
  ranks.extra_args = config_.mpirun_extra_args;
  std::vector<std::string> argv = {(SelfDirectory() / "shardtune-server").string(),
                                   "supervise",
                                   "--job",
                                   r.job.id(),
                                   "--exit-file",
                                   r.exit_file,
                                   "--log",
                                   AttemptFile(r, ".log").string(),
                                   "--umask",
                                   fmt::format("{:o}", job_user_.umask)};
  if (!job_user_.name.empty()) argv.insert(argv.end(), {"--run-as", job_user_.name});
  argv.push_back("--");
  for (std::string& word : RankCommandArgv(ranks)) argv.push_back(std::move(word));
  r.supervisor_pid = SpawnInNewSession(argv, env);
  spawned_.insert(static_cast<pid_t>(r.supervisor_pid));
  ExpectHeartbeats(r);
  // Its identity, for finding it again after a restart. One that has already exited (a zombie:
  // LiveProcess names none) gets start time 0, which matches no process: after a restart its exit
  // file tells how it ended.
  WritePidFile(AttemptFile(r, ".pid").string(),
               LiveProcess(r.supervisor_pid).value_or(ProcessIdentity{r.supervisor_pid, 0}));
  SetStatus(r, v1::JOB_STATUS_RUNNING,
            fmt::format("attempt {} on {} ranks (supervisor pid {})", attempt, r.requested_ranks, r.supervisor_pid));
}

void JobManager::Settle(JobRecord& r, int exit_code) {
  // How the attempt ended comes from the worker's result report and the attempt's exit status
  // (the supervisor's, or the batch script's exit file); never from what the output directory
  // holds. A supervisor that wrote its exit file has already killed whatever of the attempt was
  // left; one that was killed itself left the attempt's processes running (launcher/server/processes.h).
  if (r.backend_id.empty() && config_.backend != "slurm" && !ReadExitFile(r.exit_file)) {
    if (const int killed = KillAttemptProcesses(r.job.id(), r.job.attempt()); killed > 0)
      Event(r, v1::JOB_EVENT_KIND_NOTE,
            fmt::format("the attempt's supervisor was gone: killed {} processes left of it", killed));
  }
  ForwardLog(r);
  {
    std::lock_guard<std::mutex> lock(heartbeat_mutex_);
    heartbeats_.erase(r.job.id());
  }
  r.supervisor_pid = 0;
  r.backend_id.clear();
  AttemptEnd end;
  end.cancel_requested = r.cancel_requested;
  end.pause_requested = r.pause_requested;
  if (r.result_reported) {
    end.outcome = r.result_succeeded                                       ? v1::ATTEMPT_OUTCOME_FINISHED
                  : r.result_paused                                        ? v1::ATTEMPT_OUTCOME_PAUSED
                  : r.job.error().code() != v1::JOB_ERROR_CODE_UNSPECIFIED ? v1::ATTEMPT_OUTCOME_FAILED
                                                                           : v1::ATTEMPT_OUTCOME_STOPPED;
  }
  end.error = r.job.error().code();
  end.exit_code = exit_code;
  end.reached_last_step = r.job.total_steps() > 0 && r.job.step() >= r.job.total_steps();
  end.attempts_left = r.job.attempt() < config_.max_attempts;
  const AttemptVerdict verdict = DecideAttempt(end);
  if (end.error == v1::JOB_ERROR_CODE_UNSPECIFIED && verdict.error != v1::JOB_ERROR_CODE_UNSPECIFIED)
    SetError(r.job, verdict.error, r.job.error().message().empty() ? verdict.why : r.job.error().message());
  const std::string& error = r.job.error().message();
  switch (verdict.status) {
    case v1::JOB_STATUS_CANCELLED:
      return SetStatus(r, v1::JOB_STATUS_CANCELLED, "cancelled");
    case v1::JOB_STATUS_SUCCEEDED:
      // (A run Slurm requeued after the job had finished refuses to train again: still a success.)
      return SetStatus(
          r, v1::JOB_STATUS_SUCCEEDED,
          fmt::format("attempt {} finished{}", r.job.attempt(), verdict.why.empty() ? "" : " (" + verdict.why + ")"));
    case v1::JOB_STATUS_PAUSED:
      return SetStatus(r, v1::JOB_STATUS_PAUSED,
                       fmt::format("stopped at its checkpoint after step {}{}", r.job.step(),
                                   error.empty() ? "" : " (it failed while pausing: " + error + ")"));
    case v1::JOB_STATUS_QUEUED:
      return SetStatus(
          r, v1::JOB_STATUS_QUEUED,
          fmt::format("attempt {} failed ({}); retrying from the latest checkpoint", r.job.attempt(), error));
    default:
      if (IsUserError(r.job.error().code()))
        return SetStatus(r, v1::JOB_STATUS_FAILED, error + " (not retried: a user error)");
      return SetStatus(r, v1::JOB_STATUS_FAILED,
                       fmt::format("attempt {} of {} failed: {}", r.job.attempt(), config_.max_attempts, error));
  }
}

}  // namespace shardtune::server
