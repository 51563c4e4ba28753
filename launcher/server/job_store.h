#pragma once
// The server's memory: jobs, their events and checkpoints, and API key hashes, in one SQLite
// file (WAL mode, synchronous=FULL: a change is on disk before the call that made it returns,
// which is what lets the server acknowledge a request only after committing it). The schema
// carries a version; opening an older file migrates it forward, a newer one is refused.
//
// Thread-safe: writes go through one connection under one mutex; reads through a small pool of
// read-only connections, which in WAL mode see the latest commit and never wait for a write's
// fsync (with a thousand jobs arriving, GetJob waited behind each CreateJob's commits).

#include <sqlite3.h>

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

using v1::JobStatus;

// What the server keeps about a job; `job` is what clients see.
struct JobRecord {
  v1::Job job;
  std::string idempotency_key;
  std::string worker_token_hash;  // sha256 of the current attempt's worker token
  int requested_ranks = 1;        // for the next attempt
  int64_t supervisor_pid = 0;     // the current attempt's supervisor process (0: none)
  std::string exit_file;          // where the supervisor writes mpirun's exit status
  std::string backend_id;         // Slurm job id, for the slurm backend
  bool cancel_requested = false;
  bool pause_requested = false;
  int64_t signal_sent_ms = 0;  // when the attempt was asked to stop (SIGTERM), for the SIGKILL deadline
  bool result_reported = false;
  bool result_succeeded = false;
  bool result_paused = false;
  int64_t log_offset = 0;  // bytes of the current attempt's log already sent as "log" events
  // What the OpenAI-compatible API keeps of a job it created (launcher/server/openai_json.h,
  // OpenAiFields as JSON: its model name, suffix, files, resolved hyperparameters); empty for a
  // job created over gRPC.
  std::string openai;
};

// The idempotency key of sweep SWEEP_ID's trial N's job, "sweep/SWEEP_ID/trial/N": how the sweep
// finds its trials' jobs again after a restart, and how the job manager knows a trial's job (a
// label alone is the job's own to set; this key is the sweep's).
inline std::string TrialKeyPrefix(const std::string& sweep_id) { return "sweep/" + sweep_id + "/trial/"; }
inline std::string TrialKey(const std::string& sweep_id, int64_t trial) {
  return TrialKeyPrefix(sweep_id) + std::to_string(trial);
}
inline bool IsTrialKey(const std::string& key) {
  return key.rfind("sweep/", 0) == 0 && key.find("/trial/") != std::string::npos;
}

// Where a page of List starts: after the row (created_ms, id) in the order newest first, created_ms
// the job's create_time in Unix milliseconds. A keyset, not an offset: rows inserted while a client
// pages (always newer than every row already listed: JobManager keeps created_ms strictly increasing) neither shift a
// later page (a row listed twice) nor push one out of it (a row never listed).
struct ListPosition {
  int64_t created_ms = 0;
  std::string id;
};

struct JobFilter {
  std::string tenant;  // empty: every tenant (admins)
  JobStatus status = v1::JOB_STATUS_UNSPECIFIED;
  std::string name;
  std::map<std::string, std::string> labels;
  std::optional<ListPosition> after;  // nullopt: from the newest
  int64_t limit = 50;
};

class JobStore {
 public:
  // 2: files and job_files (file_store.h); 3: checkpoints.metrics; 4: events.level, and the jobs'
  // times as Timestamps in their blobs (job_store_upgrade.h); 5: sweeps (sweep_store.h).
  static constexpr int kSchemaVersion = 5;

  explicit JobStore(const std::filesystem::path& path);  // throws Error naming the file
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  void Insert(const JobRecord& record);
  void Update(const JobRecord& record);
  // The same, with the job's event (as AddEvent) in one transaction: one commit, one fsync.
  void Insert(const JobRecord& record, v1::JobEventKind event_kind, const std::string& event_message);
  void Update(const JobRecord& record, v1::JobEventKind event_kind, const std::string& event_message);
  std::optional<JobRecord> Get(const std::string& id);
  std::optional<JobRecord> FindByIdempotencyKey(const std::string& tenant, const std::string& key);
  std::vector<JobRecord> List(const JobFilter& filter);  // newest first (created_ms, then id, descending)
  std::vector<JobRecord> Unfinished();                   // oldest first
  int64_t MaxCreatedMs();                                // 0 when there are no jobs
  // How many jobs each tenant has in each status (GET /metrics), in one query.
  std::map<std::pair<std::string, JobStatus>, int64_t> CountByTenantAndStatus();
  std::optional<JobRecord> Oldest(JobStatus status);

  // Appends an event (its seq is returned) with the job as it is now; level UNSPECIFIED: the
  // kind's default (event_fields.h).
  int64_t AddEvent(const v1::Job& job, v1::JobEventKind kind, const std::string& message,
                   v1::JobEventLevel level = v1::JOB_EVENT_LEVEL_UNSPECIFIED);
  // Events after `after_seq`, oldest first, at most `limit`; each with its level and data.
  std::vector<v1::JobEvent> Events(const std::string& job_id, int64_t after_seq, int64_t limit);
  // The newest events first: those before `before_seq` (0: from the newest), at most `limit`.
  std::vector<v1::JobEvent> EventsNewestFirst(const std::string& job_id, int64_t before_seq, int64_t limit);

  // `metrics`: the job's latest figures when the checkpoint was saved (loss, val_loss, ...).
  void AddCheckpoint(const std::string& job_id, int64_t step, const std::string& path,
                     const std::map<std::string, double>& metrics = {});
  // By step: those after `after_step`, at most `limit`; each with its figures (event_fields.h).
  std::vector<v1::Checkpoint> Checkpoints(const std::string& job_id, int64_t after_step = 0,
                                          int64_t limit = std::numeric_limits<int64_t>::max());
  // Each checkpoint's metrics by step (empty for one saved before schema version 3).
  std::map<int64_t, std::map<std::string, double>> CheckpointMetrics(const std::string& job_id);

  void PutApiKey(const std::string& sha256, const std::string& tenant, const std::string& role);

  // The connection, held under its lock, for the other tables of this database (file_store.h).
  struct Locked {
    sqlite3* db;
    std::unique_lock<std::mutex> lock;
  };
  Locked Lock() { return {db_, std::unique_lock<std::mutex>(mutex_)}; }

 private:
  void Open(const std::filesystem::path& path);
  void Close();
  void Exec(const std::string& sql);
  // Unlocked: the caller holds mutex_.
  void InsertRow(const JobRecord& record);
  void UpdateRow(const JobRecord& record);
  int64_t AppendEvent(const v1::Job& job, v1::JobEventKind kind, const std::string& message,
                      v1::JobEventLevel level = v1::JOB_EVENT_LEVEL_UNSPECIFIED);
  template <typename F>
  void InTransaction(F&& body);
  void Migrate();
  void EnsureIndexes();

  // A read-only connection of the pool, for one call; waits while all are lent.
  class ReadLease {
   public:
    explicit ReadLease(JobStore& store);
    ~ReadLease();
    ReadLease(const ReadLease&) = delete;
    ReadLease& operator=(const ReadLease&) = delete;
    sqlite3* db() const { return db_; }

   private:
    JobStore& store_;
    sqlite3* db_ = nullptr;
  };
  static constexpr int kReaders = 4;

  std::filesystem::path path_;
  sqlite3* db_ = nullptr;  // the writer
  std::mutex mutex_;       // held by each write
  std::vector<sqlite3*> readers_;
  std::vector<sqlite3*> idle_readers_;
  std::mutex readers_mutex_;
  std::condition_variable reader_returned_;
};

bool IsTerminal(JobStatus status);
int64_t NowMs();

}  // namespace shardtune::server
