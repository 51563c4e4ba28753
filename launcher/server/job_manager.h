#pragma once
// The server's job lifecycle: admission (the spec parsed and checked against the pool, the
// quotas and the memory plan; the job stored VALIDATING while a worker process checks its data,
// then QUEUED, or FAILED with the data's problems),
// scheduling (FIFO within priority onto a pool of slots, per-tenant quotas), running each
// attempt through a supervisor process (launcher/server/processes.h) that starts mpirun in its
// own session and outlives every process of the attempt, or as a Slurm batch job, and what
// happens when an attempt ends, as rank 0's result report and the exit status tell: success, a
// user error (fails at once), any other failure (retried from the latest checkpoint up to
// retry.max_attempts), each failure with the JobErrorCode where it happened (proto),
// cancel (SIGTERM, then SIGKILL after a grace period), pause (the job checkpoints and stops;
// resume requeues it, on any number of ranks). Every state change is committed to the store
// before it is acknowledged; after a restart the manager re-attaches to the supervisors still
// running and settles the attempts that ended while it was down.

#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "launcher/rank_command.h"
#include "launcher/server/file_store.h"
#include "launcher/server/job_store.h"
#include "launcher/server/processes.h"
#include "launcher/server/request_error.h"
#include "launcher/server/server_config.h"
#include "launcher/server/server_metrics.h"
#include "launcher/server/storage_policy.h"
#include "sharding/planner.h"

namespace shardtune::server {

struct Caller {
  std::string tenant;
  bool admin = false;      // sees and controls every tenant's jobs and files
  bool read_only = false;  // a viewer: lists and watches, changes nothing

  // The tenant whose jobs and files the caller sees; empty: every tenant's (an admin).
  std::string visible_tenant() const { return admin ? "" : tenant; }
};

// PERMISSION_DENIED for a viewer's key (a request that would change something).
void RequireWrite(const Caller& caller);

// The spec of a request as text: its YAML, or its structured fields as JSON (which is YAML).
std::string SpecText(const v1::CreateJobRequest& request);
std::string StructToJson(const google::protobuf::Struct& fields);

class JobManager {
 public:
  JobManager(ServerConfig config, std::string server_address);
  ~JobManager();

  JobStore& store() { return *store_; }
  ServerMetrics& metrics() { return metrics_; }
  FileStore& files() { return *files_; }
  // The checks of CreateJob's admission after the spec parsed: the tenant's storage roots
  // (PERMISSION_DENIED), scheduler options on a local backend (INVALID_ARGUMENT), the ranks
  // against the pool and the tenant's max_ranks and the memory plan (RESOURCE_EXHAUSTED).
  void RequireAdmissible(const Caller& caller, const JobSpec& spec) const;
  // The job's memory plan on `ranks` slots, when the configuration gives their memory.
  // RESOURCE_EXHAUSTED when `ranks` exceed the pool or the tenant's max_ranks.
  void RequireRanksAvailable(const std::string& tenant, int ranks) const;
  // kResourceExhausted with the plan when the memory planner says the job does not fit `ranks` slots.
  void RequirePlanFits(const JobSpec& spec, int ranks) const;
  std::optional<Plan> PlanFor(const JobSpec& spec, int64_t ranks) const;
  const ServerConfig& config() const { return config_; }
  const StoragePolicy& storage() const { return storage_; }

  // `shardtune-worker validate-data` on a spec, in a process of its own (the server links no
  // LibTorch): whether the data is good, and the worker's report (a summary, or the problems
  // with file:line). It runs as the job's user, with `tenant`'s storage roots (none: no re-check
  // of the paths by the worker).
  struct DataCheck {
    bool ok = false;
    std::string report;
  };
  DataCheck CheckData(const std::string& spec_yaml, const std::string& tenant = "") const;

  // The Files API's part that touches jobs (job_manager_files.cc).
  // `shardtune-worker check-file` on an uploaded file, in a process of its own; its report names
  // the file `filename` (not its temporary path).
  FileCheck CheckUploadedFile(const std::filesystem::path& path, const std::string& filename) const;
  // Starts an upload for the caller's tenant: PERMISSION_DENIED for a viewer; else FileStore's.
  std::unique_ptr<FileStore::Upload> BeginUpload(const Caller& caller, const v1::UploadFileRequest::Metadata& metadata);
  // Deletes the caller's file: NOT_FOUND (also another tenant's), PERMISSION_DENIED (a viewer),
  // FAILED_PRECONDITION while an unfinished job names it. Serialized with admission (mutex_), so
  // that a job admitted naming the file and the file's deletion cannot cross.
  void DeleteFile(const Caller& caller, const std::string& id);
  // Spec options that resolve `file:ID` to the caller's tenant's file, adding each ID to `used`.
  SpecOptions UploadedFilesOf(const Caller& caller, std::set<std::string>* used);

  // The pool as the scheduler sees it now, and the running jobs (GET /metrics; job_manager_metrics.cc).
  struct PoolState {
    int slots = 0;         // in all
    int slots_in_use = 0;  // held by running attempts and sbatch calls in flight
    std::vector<v1::Job> running;
  };
  PoolState Pool();

  // Starts the scheduling thread (after re-attaching to what is running).
  void Start();
  void Stop();

  // `openai`: what the OpenAI-compatible API keeps of a job it creates (JobRecord::openai).
  v1::Job Create(const Caller& caller, const v1::CreateJobRequest& request, const std::string& openai = "");
  v1::Job Get(const Caller& caller, const std::string& id);  // NOT_FOUND for another tenant's job
  v1::Job Cancel(const Caller& caller, const std::string& id);
  v1::Job Pause(const Caller& caller, const std::string& id);
  v1::Job Resume(const Caller& caller, const std::string& id, int ranks);

  // Called after an evaluation's figures (a METRICS event) are stored, without the manager's lock:
  // whether the job should stop at this step (a sweep's early termination; the job then ends
  // CANCELLED). Set before Start.
  using EvaluationListener = std::function<bool(const v1::Job& job_after)>;
  void SetEvaluationListener(EvaluationListener listener) { evaluation_listener_ = std::move(listener); }

  // Worker reports (already authenticated by token); returns whether the worker should stop.
  bool Progress(const v1::ProgressReport& report);
  void CheckpointSaved(const v1::CheckpointReport& report);
  void Result(const v1::ResultReport& report);
  bool WorkerTokenValid(const std::string& job_id, const std::string& token);
  // Rank 0 is alive (never waits on the scheduler's lock).
  void Heartbeat(const v1::HeartbeatReport& report);

  // Blocks until an event after `after_seq` exists for the job or `timeout_ms` passes.
  void WaitForEvent(const std::string& job_id, int64_t after_seq, int timeout_ms);

 private:
  JobRecord Owned(const Caller& caller, const std::string& id);
  std::string WorkerPath() const;
  // Makes `dir` (the server's, under DATA_DIR) traversable and `files` in it readable by the
  // job's user, when jobs run as another user than the server's.
  void ShareWithJobUser(const std::filesystem::path& dir, const std::vector<std::filesystem::path>& files) const;
  void ValidateLoop();
  void ForwardLog(JobRecord& record);
  void NoteHostLost(JobRecord& record, const std::string& mpirun_line);
  // Heartbeats: the attempt's clock starts at its launch (or at the server's start, for one it
  // re-attached to), and the first heartbeat may take kFirstHeartbeatGraceS at least (mpirun
  // and the worker's runtime starting). A Slurm attempt may wait in Slurm's queue: its clock
  // starts with its first heartbeat. Kills a silent attempt (TIMEOUT, retried); under mutex_.
  void ExpectHeartbeats(const JobRecord& record);
  void KillIfSilent(JobRecord& record);
  bool SupervisorRuns(const JobRecord& record) const;  // the current attempt's supervisor
  // DATA_DIR/JOB/attempt-N<suffix>: .log (mpirun's output), .pid (the supervisor), .sbatch.
  std::filesystem::path AttemptFile(const JobRecord& record, const std::string& suffix) const;

  // Slurm's commands (sbatch, squeue, scancel) can take seconds, and every RPC would wait on them
  // under mutex_: the scheduler collects them under the lock (Tick), makes them without it
  // (MakeSlurmCalls), and takes the lock again to apply each result to its job, if that is still
  // the attempt the call was made for (ApplySlurmResults).
  struct SlurmSubmission {
    std::string job_id;
    int attempt = 0;
    int64_t generation = 0;  // which launch of the attempt (submitting_)
    std::vector<std::string> argv;
    std::map<std::string, std::string> env;
    CommandResult result;
  };
  struct SlurmPoll {
    std::string job_id;
    int attempt = 0;
    std::string backend_id;
    std::optional<std::string> state;  // squeue's; nullopt: squeue no longer lists the job
    std::string end_state;             // then scontrol's (NODE_FAIL, TIMEOUT, ...), when it still knows it
  };
  struct SlurmCalls {
    std::vector<std::vector<std::string>> commands;  // scancel, whose output nothing reads
    std::vector<SlurmSubmission> submissions;
    std::vector<SlurmPoll> polls;
    bool empty() const { return commands.empty() && submissions.empty() && polls.empty(); }
  };
  void CancelUnrecordedSlurmJobs();  // at Start (job_manager_slurm.cc)
  void ScheduleLoop();
  void Tick(SlurmCalls& slurm);
  void Launch(JobRecord& record, SlurmCalls& slurm);
  void PrepareSlurm(JobRecord& record, const RankCommand& ranks, const std::map<std::string, std::string>& env,
                    SlurmCalls& slurm);
  static void MakeSlurmCalls(SlurmCalls& slurm);
  void ApplySlurmResults(SlurmCalls& slurm);
  void SettleIfSlurmEnded(JobRecord& record, const SlurmPoll& poll);
  // Each listed job's state (PENDING, RUNNING, ...) by Slurm job id; a job squeue no longer lists is absent.
  static std::map<std::string, std::string> SlurmStates(const std::vector<std::string>& backend_ids);
  static std::string SlurmEndState(const std::string& backend_id);
  void Settle(JobRecord& record, int exit_code);
  void SetStatus(JobRecord& record, v1::JobStatus status, const std::string& message);
  // Level UNSPECIFIED: the kind's default (event_fields.h).
  void Event(const JobRecord& record, v1::JobEventKind kind, const std::string& message,
             v1::JobEventLevel level = v1::JOB_EVENT_LEVEL_UNSPECIFIED);
  void NotifyEvents();  // wakes WatchJob streams after an event was stored
  void Signal(const JobRecord& record, int signal);
  bool GracePeriodOver(const JobRecord& record) const;  // SIGTERM sent longer than cancel_grace_s ago
  // The slots held by running attempts and sbatch calls in flight: in all, and per tenant (slots, jobs).
  struct SlotUse {
    int slots = 0;
    std::map<std::string, std::pair<int, int>> by_tenant;
    void Add(const std::string& tenant, int ranks) {
      slots += ranks;
      by_tenant[tenant].first += ranks;
      ++by_tenant[tenant].second;
    }
  };
  SlotUse UsedSlots(const std::vector<JobRecord>& unfinished) const;

  ServerConfig config_;
  EvaluationListener evaluation_listener_;
  ServerMetrics metrics_;  // counted by SetStatus; read by GET /metrics
  StoragePolicy storage_;
  JobUser job_user_;  // who the job's processes are (run_as, job_umask)
  std::string server_address_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<FileStore> files_;
  std::mutex mutex_;  // serializes state changes of jobs
  std::mutex events_mutex_;
  std::condition_variable events_;
  std::thread thread_;
  std::thread validator_;               // runs the data checks of VALIDATING jobs
  std::condition_variable validation_;  // wakes it (waits with mutex_)
  bool stopping_ = false;
  int64_t slurm_ticks_ = 0;
  std::set<pid_t> spawned_;                               // supervisors this process started and has not yet reaped
  std::vector<std::vector<std::string>> slurm_commands_;  // scancels to send (guarded by mutex_)
  // QUEUED jobs whose sbatch is running (their slots are taken), by the generation of that launch.
  std::map<std::string, int64_t> submitting_;
  int64_t submissions_ = 0;
  int64_t last_created_ms_ = 0;  // of the newest job (guarded by mutex_)
  // The output.dir of every unfinished job, and its id (guarded by mutex_; kept by Create and
  // SetStatus): admission asks this, not the store (a scan of every queued job per CreateJob).
  std::map<std::string, std::string> output_dirs_in_use_;
  // The latest heartbeat of each running attempt, by job id: in memory only (after a restart the
  // clock starts again).
  struct HeartbeatClock {
    int attempt = 0;
    int64_t since_ms = 0;  // the latest heartbeat, or when the clock started
    bool heard = false;    // a heartbeat came (else the first one's grace applies)
    bool fired = false;    // the attempt was killed for its silence
  };
  std::mutex heartbeat_mutex_;
  std::map<std::string, HeartbeatClock> heartbeats_;
};

}  // namespace shardtune::server
