#include "launcher/server/job_store.h"

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "launcher/api_values.h"
#include "launcher/server/event_fields.h"
#include "launcher/server/job_store_upgrade.h"
#include "launcher/server/sqlite_statement.h"

namespace shardtune::server {

namespace {

using nlohmann::json;

json ServerFields(const JobRecord& r) {
  return {{"idempotency_key", r.idempotency_key},
          {"worker_token_hash", r.worker_token_hash},
          {"requested_ranks", r.requested_ranks},
          {"supervisor_pid", r.supervisor_pid},
          {"exit_file", r.exit_file},
          {"backend_id", r.backend_id},
          {"cancel_requested", r.cancel_requested},
          {"pause_requested", r.pause_requested},
          {"signal_sent_ms", r.signal_sent_ms},
          {"result_reported", r.result_reported},
          {"result_succeeded", r.result_succeeded},
          {"result_paused", r.result_paused},
          {"log_offset", r.log_offset},
          {"openai", r.openai}};
}

JobRecord FromRow(const std::string& job_blob, const std::string& server_json) {
  JobRecord r;
  if (!r.job.ParseFromString(job_blob)) Fail(ErrorCode::kDataLoss, "job store: a job row does not parse");
  const json s = json::parse(server_json);
  r.idempotency_key = s.value("idempotency_key", "");
  r.worker_token_hash = s.value("worker_token_hash", "");
  r.requested_ranks = s.value("requested_ranks", 1);
  r.supervisor_pid = s.value("supervisor_pid", int64_t{0});
  r.exit_file = s.value("exit_file", "");
  r.backend_id = s.value("backend_id", "");
  r.cancel_requested = s.value("cancel_requested", false);
  r.pause_requested = s.value("pause_requested", false);
  r.signal_sent_ms = s.value("signal_sent_ms", int64_t{0});
  r.result_reported = s.value("result_reported", false);
  r.result_succeeded = s.value("result_succeeded", false);
  r.result_paused = s.value("result_paused", false);
  r.log_offset = s.value("log_offset", int64_t{0});
  r.openai = s.value("openai", "");
  return r;
}

constexpr const char* kJobColumns = "job, server";

}  // namespace

bool IsTerminal(JobStatus status) {
  return status == v1::JOB_STATUS_SUCCEEDED || status == v1::JOB_STATUS_FAILED || status == v1::JOB_STATUS_CANCELLED;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

JobStore::JobStore(const std::filesystem::path& path) : path_(path) {
  // A constructor that throws runs no destructor: what it opened is closed here.
  try {
    Open(path);
  } catch (...) {
    Close();
    throw;
  }
}

void JobStore::Open(const std::filesystem::path& path) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    const std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    Fail(ErrorCode::kFailedPrecondition, "{}: cannot open the job database: {}", path.string(), message);
  }
  sqlite3_busy_timeout(db_, 5000);
  Exec("PRAGMA journal_mode=WAL");
  Exec("PRAGMA synchronous=FULL");
  Exec("PRAGMA foreign_keys=ON");
  Migrate();
  EnsureIndexes();
  for (int i = 0; i < kReaders; ++i) {
    sqlite3* reader = nullptr;
    if (sqlite3_open_v2(path.c_str(), &reader, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
      const std::string message = reader ? sqlite3_errmsg(reader) : "out of memory";
      sqlite3_close(reader);
      Fail(ErrorCode::kFailedPrecondition, "{}: cannot open the job database for reading: {}", path.string(), message);
    }
    sqlite3_busy_timeout(reader, 5000);
    idle_readers_.push_back(reader);
    readers_.push_back(reader);
  }
}

JobStore::~JobStore() { Close(); }

void JobStore::Close() {
  for (sqlite3* reader : readers_) sqlite3_close(reader);
  readers_.clear();
  idle_readers_.clear();
  sqlite3_close(db_);
  db_ = nullptr;
}

JobStore::ReadLease::ReadLease(JobStore& store) : store_(store) {
  std::unique_lock<std::mutex> lock(store_.readers_mutex_);
  store_.reader_returned_.wait(lock, [&] { return !store_.idle_readers_.empty(); });
  db_ = store_.idle_readers_.back();
  store_.idle_readers_.pop_back();
}

JobStore::ReadLease::~ReadLease() {
  {
    std::lock_guard<std::mutex> lock(store_.readers_mutex_);
    store_.idle_readers_.push_back(db_);
  }
  store_.reader_returned_.notify_one();
}

void JobStore::Exec(const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    const std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    Fail(ErrorCode::kFailedPrecondition, "{}: {} (in: {})", path_.string(), message, sql.substr(0, 80));
  }
}

void JobStore::Migrate() {
  Exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
  int64_t version = 0;
  {
    Statement q(db_, "SELECT version FROM schema_version");
    if (q.Step()) version = q.Int(0);
  }
  if (version > kSchemaVersion) {
    Fail(ErrorCode::kFailedPrecondition,
         "{}: written by a newer shardtune-server (schema version {}, this one knows up to {})", path_.string(),
         version, kSchemaVersion);
  }
  // Each step moves the schema from version k to k + 1, in one transaction.
  const std::vector<std::string> migrations = {
      R"(CREATE TABLE jobs (
           id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, status INTEGER NOT NULL,
           priority INTEGER NOT NULL, created_ms INTEGER NOT NULL, idempotency_key TEXT,
           labels TEXT NOT NULL, job BLOB NOT NULL, server TEXT NOT NULL);
         CREATE INDEX jobs_by_tenant ON jobs (tenant, created_ms);
         CREATE UNIQUE INDEX jobs_by_key ON jobs (tenant, idempotency_key) WHERE idempotency_key <> '';
         CREATE TABLE events (job_id TEXT NOT NULL REFERENCES jobs(id), seq INTEGER NOT NULL,
           time_ms INTEGER NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL, job BLOB NOT NULL,
           PRIMARY KEY (job_id, seq));
         CREATE TABLE checkpoints (job_id TEXT NOT NULL REFERENCES jobs(id), step INTEGER NOT NULL,
           path TEXT NOT NULL, time_ms INTEGER NOT NULL, PRIMARY KEY (job_id, step));
         CREATE TABLE api_keys (sha256 TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL);)",
      // The Files API (file_store.h): uploaded files, and which jobs name them (file:ID).
      R"(CREATE TABLE files (
           id TEXT PRIMARY KEY, tenant TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
           bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created_ms INTEGER NOT NULL, status TEXT NOT NULL,
           status_details TEXT NOT NULL);
         CREATE INDEX files_by_tenant ON files (tenant);
         CREATE TABLE job_files (job_id TEXT NOT NULL REFERENCES jobs(id), file_id TEXT NOT NULL,
           PRIMARY KEY (job_id, file_id));
         CREATE INDEX job_files_by_file ON job_files (file_id);)",
      // The figures at each checkpoint (the OpenAI-compatible API's checkpoint metrics), as JSON.
      R"(ALTER TABLE checkpoints ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}';)",
      // Events carry a level (the short name: info, warning, error); the heartbeat's "error"
      // events become notes at level error. The job blobs are rewritten after (UpgradeJobBlobs).
      R"(ALTER TABLE events ADD COLUMN level TEXT NOT NULL DEFAULT 'info';
         UPDATE events SET level = 'error' WHERE kind = 'error'
           OR (kind = 'status' AND message LIKE 'FAILED:%');
         UPDATE events SET level = 'warning' WHERE kind = 'status' AND message LIKE 'CANCELLED:%';
         UPDATE events SET kind = 'note' WHERE kind = 'error';)",
      // Sweeps run by the server (sweep_store.h): one row each; their trials are jobs.
      R"(CREATE TABLE sweeps (
           id TEXT PRIMARY KEY, tenant TEXT NOT NULL, status INTEGER NOT NULL, created_ms INTEGER NOT NULL,
           idempotency_key TEXT NOT NULL, admin INTEGER NOT NULL, sweep BLOB NOT NULL);
         CREATE INDEX sweeps_by_tenant ON sweeps (tenant, created_ms, id);
         CREATE INDEX sweeps_by_created ON sweeps (created_ms, id);
         CREATE UNIQUE INDEX sweeps_by_key ON sweeps (tenant, idempotency_key) WHERE idempotency_key <> '';)",
  };
  for (int64_t v = version; v < kSchemaVersion; ++v) {
    Exec("BEGIN IMMEDIATE");
    try {
      Exec(migrations[static_cast<size_t>(v)]);
      if (v + 1 == 4) UpgradeJobBlobs(db_);
      Exec("DELETE FROM schema_version");
      Exec(fmt::format("INSERT INTO schema_version VALUES ({})", v + 1));
      Exec("COMMIT");
    } catch (...) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }
}

void JobStore::EnsureIndexes() {
  // Indexes change no row and every version reads a file that has them, so they are made at
  // open (no schema version): List pages by (created_ms, id) for every tenant (admins), and the
  // scheduler and the validator read the unfinished jobs by status, which stay few among many
  // finished ones.
  Exec("CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_ms, id)");
  Exec("CREATE INDEX IF NOT EXISTS jobs_by_tenant_created ON jobs (tenant, created_ms, id)");
  Exec("CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_ms)");
}

void JobStore::InsertRow(const JobRecord& r) {
  json labels = json::object();
  for (const auto& [k, v] : r.job.labels()) labels[k] = v;
  Statement q(db_,
              "INSERT INTO jobs (id, tenant, name, status, priority, created_ms, idempotency_key, labels, job, server) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  q.Bind(1, r.job.id()).Bind(2, r.job.tenant()).Bind(3, r.job.name()).Bind(4, int64_t{r.job.status()});
  q.Bind(5, int64_t{r.job.priority()})
      .Bind(6, api::Ms(r.job.create_time()))
      .Bind(7, r.idempotency_key)
      .Bind(8, labels.dump());
  q.BindBlob(9, r.job.SerializeAsString()).Bind(10, ServerFields(r).dump());
  q.Step();
}

void JobStore::UpdateRow(const JobRecord& r) {
  Statement q(db_, "UPDATE jobs SET status = ?, job = ?, server = ? WHERE id = ?");
  q.Bind(1, int64_t{r.job.status()}).BindBlob(2, r.job.SerializeAsString()).Bind(3, ServerFields(r).dump());
  q.Bind(4, r.job.id());
  q.Step();
}

int64_t JobStore::AppendEvent(const v1::Job& job, v1::JobEventKind kind, const std::string& message,
                              v1::JobEventLevel level) {
  if (level == v1::JOB_EVENT_LEVEL_UNSPECIFIED) level = DefaultEventLevel(kind, job);
  int64_t seq = 1;
  {
    Statement q(db_, "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?");
    q.Bind(1, job.id());
    if (q.Step()) seq = q.Int(0);
  }
  Statement q(db_, "INSERT INTO events (job_id, seq, time_ms, kind, message, job, level) VALUES (?, ?, ?, ?, ?, ?, ?)");
  q.Bind(1, job.id()).Bind(2, seq).Bind(3, NowMs()).Bind(4, api::ShortName(kind)).Bind(5, message);
  q.BindBlob(6, job.SerializeAsString()).Bind(7, api::ShortName(level));
  q.Step();
  return seq;
}

template <typename F>
void JobStore::InTransaction(F&& body) {
  Exec("BEGIN IMMEDIATE");
  try {
    body();
    Exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void JobStore::Insert(const JobRecord& r) {
  std::lock_guard<std::mutex> lock(mutex_);
  InsertRow(r);
}

void JobStore::Insert(const JobRecord& r, v1::JobEventKind kind, const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  InTransaction([&] {
    InsertRow(r);
    AppendEvent(r.job, kind, message);
  });
}

void JobStore::Update(const JobRecord& r) {
  std::lock_guard<std::mutex> lock(mutex_);
  UpdateRow(r);
}

void JobStore::Update(const JobRecord& r, v1::JobEventKind kind, const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  InTransaction([&] {
    UpdateRow(r);
    AppendEvent(r.job, kind, message);
  });
}

std::optional<JobRecord> JobStore::Get(const std::string& id) {
  ReadLease lease(*this);
  Statement q(lease.db(), fmt::format("SELECT {} FROM jobs WHERE id = ?", kJobColumns));
  q.Bind(1, id);
  if (!q.Step()) return std::nullopt;
  return FromRow(q.Blob(0), q.Text(1));
}

std::optional<JobRecord> JobStore::FindByIdempotencyKey(const std::string& tenant, const std::string& key) {
  ReadLease lease(*this);
  Statement q(lease.db(), fmt::format("SELECT {} FROM jobs WHERE tenant = ? AND idempotency_key = ?", kJobColumns));
  q.Bind(1, tenant).Bind(2, key);
  if (!q.Step()) return std::nullopt;
  return FromRow(q.Blob(0), q.Text(1));
}

std::vector<JobRecord> JobStore::List(const JobFilter& f) {
  ReadLease lease(*this);
  std::string sql = fmt::format("SELECT {}, labels FROM jobs WHERE 1 = 1", kJobColumns);
  if (!f.tenant.empty()) sql += " AND tenant = ?1";
  if (f.status != v1::JOB_STATUS_UNSPECIFIED) sql += " AND status = ?2";
  if (!f.name.empty()) sql += " AND name = ?3";
  if (f.after) sql += " AND (created_ms < ?4 OR (created_ms = ?4 AND id < ?5))";
  sql += " ORDER BY created_ms DESC, id DESC";
  Statement q(lease.db(), sql);
  q.Bind(1, f.tenant).Bind(2, int64_t{f.status}).Bind(3, f.name);
  if (f.after) q.Bind(4, f.after->created_ms).Bind(5, f.after->id);
  std::vector<JobRecord> result;
  while (static_cast<int64_t>(result.size()) < f.limit && q.Step()) {
    if (!f.labels.empty()) {
      const json labels = json::parse(q.Text(2));
      bool match = true;
      for (const auto& [k, v] : f.labels) match = match && labels.contains(k) && labels[k] == v;
      if (!match) continue;
    }
    result.push_back(FromRow(q.Blob(0), q.Text(1)));
  }
  return result;
}

std::optional<JobRecord> JobStore::Oldest(JobStatus status) {
  ReadLease lease(*this);
  Statement q(lease.db(),
              fmt::format("SELECT {} FROM jobs WHERE status = ? ORDER BY created_ms, id LIMIT 1", kJobColumns));
  q.Bind(1, int64_t{status});
  if (!q.Step()) return std::nullopt;
  return FromRow(q.Blob(0), q.Text(1));
}

int64_t JobStore::MaxCreatedMs() {
  ReadLease lease(*this);
  Statement q(lease.db(), "SELECT COALESCE(MAX(created_ms), 0) FROM jobs");
  return q.Step() ? q.Int(0) : 0;
}

std::map<std::pair<std::string, JobStatus>, int64_t> JobStore::CountByTenantAndStatus() {
  ReadLease lease(*this);
  Statement q(lease.db(), "SELECT tenant, status, COUNT(*) FROM jobs GROUP BY tenant, status");
  std::map<std::pair<std::string, JobStatus>, int64_t> counts;
  while (q.Step()) counts[{q.Text(0), static_cast<JobStatus>(q.Int(1))}] = q.Int(2);
  return counts;
}

std::vector<JobRecord> JobStore::Unfinished() {
  ReadLease lease(*this);
  Statement q(lease.db(),
              fmt::format("SELECT {} FROM jobs WHERE status IN (?, ?, ?, ?) ORDER BY created_ms, id", kJobColumns));
  // Named by what is unfinished (jobs_by_status finds those few among many finished jobs).
  q.Bind(1, int64_t{v1::JOB_STATUS_VALIDATING})
      .Bind(2, int64_t{v1::JOB_STATUS_QUEUED})
      .Bind(3, int64_t{v1::JOB_STATUS_RUNNING});
  q.Bind(4, int64_t{v1::JOB_STATUS_PAUSED});
  std::vector<JobRecord> result;
  while (q.Step()) result.push_back(FromRow(q.Blob(0), q.Text(1)));
  return result;
}

int64_t JobStore::AddEvent(const v1::Job& job, v1::JobEventKind kind, const std::string& message,
                           v1::JobEventLevel level) {
  std::lock_guard<std::mutex> lock(mutex_);
  return AppendEvent(job, kind, message, level);
}

namespace {

std::vector<v1::JobEvent> EventRows(Statement& q, const std::string& job_id) {
  std::vector<v1::JobEvent> events;
  while (q.Step()) {
    v1::JobEvent e;
    e.set_job_id(job_id);
    e.set_seq(q.Int(0));
    *e.mutable_create_time() = api::TimeOfMs(q.Int(1));
    e.set_kind(api::ParseName<v1::JobEventKind>(q.Text(2)).value_or(v1::JOB_EVENT_KIND_NOTE));
    e.set_message(q.Text(3));
    e.mutable_job()->ParseFromString(q.Blob(4));
    e.set_level(api::ParseName<v1::JobEventLevel>(q.Text(5)).value_or(v1::JOB_EVENT_LEVEL_INFO));
    *e.mutable_data() = ToStruct(EventData(e));
    events.push_back(std::move(e));
  }
  return events;
}

}  // namespace

std::vector<v1::JobEvent> JobStore::Events(const std::string& job_id, int64_t after_seq, int64_t limit) {
  ReadLease lease(*this);
  Statement q(lease.db(),
              "SELECT seq, time_ms, kind, message, job, level FROM events WHERE job_id = ? AND seq > ? ORDER BY seq "
              "LIMIT ?");
  q.Bind(1, job_id).Bind(2, after_seq).Bind(3, limit);
  return EventRows(q, job_id);
}

std::vector<v1::JobEvent> JobStore::EventsNewestFirst(const std::string& job_id, int64_t before_seq, int64_t limit) {
  ReadLease lease(*this);
  Statement q(lease.db(),
              "SELECT seq, time_ms, kind, message, job, level FROM events WHERE job_id = ?1 AND (?2 = 0 OR seq < ?2) "
              "ORDER BY seq DESC LIMIT ?3");
  q.Bind(1, job_id).Bind(2, before_seq).Bind(3, limit);
  return EventRows(q, job_id);
}

void JobStore::AddCheckpoint(const std::string& job_id, int64_t step, const std::string& path,
                             const std::map<std::string, double>& metrics) {
  json figures = json::object();
  for (const auto& [k, v] : metrics) figures[k] = v;
  std::lock_guard<std::mutex> lock(mutex_);
  Statement q(db_, "INSERT OR REPLACE INTO checkpoints (job_id, step, path, time_ms, metrics) VALUES (?, ?, ?, ?, ?)");
  q.Bind(1, job_id).Bind(2, step).Bind(3, path).Bind(4, NowMs()).Bind(5, figures.dump());
  q.Step();
}

namespace {

// A checkpoint row's metrics column: {} for one saved before schema version 3.
std::map<std::string, double> StoredFigures(const std::string& text) {
  std::map<std::string, double> figures;
  const json stored = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!stored.is_object()) return figures;
  for (const auto& [k, v] : stored.items())
    if (v.is_number()) figures[k] = v.get<double>();
  return figures;
}

}  // namespace

std::map<int64_t, std::map<std::string, double>> JobStore::CheckpointMetrics(const std::string& job_id) {
  ReadLease lease(*this);
  Statement q(lease.db(), "SELECT step, metrics FROM checkpoints WHERE job_id = ?");
  q.Bind(1, job_id);
  std::map<int64_t, std::map<std::string, double>> result;
  while (q.Step()) result[q.Int(0)] = StoredFigures(q.Text(1));
  return result;
}

std::vector<v1::Checkpoint> JobStore::Checkpoints(const std::string& job_id, int64_t after_step, int64_t limit) {
  ReadLease lease(*this);
  Statement q(lease.db(),
              "SELECT step, path, time_ms, metrics FROM checkpoints WHERE job_id = ? AND step > ? ORDER BY step "
              "LIMIT ?");
  q.Bind(1, job_id).Bind(2, after_step).Bind(3, limit);
  std::vector<v1::Checkpoint> result;
  while (q.Step()) {
    v1::Checkpoint c;
    c.set_step(q.Int(0));
    c.set_path(q.Text(1));
    *c.mutable_create_time() = api::TimeOfMs(q.Int(2));
    for (const auto& [name, value] : CheckpointFigures(c.step(), StoredFigures(q.Text(3))))
      (*c.mutable_metrics())[name] = value;
    result.push_back(std::move(c));
  }
  return result;
}

void JobStore::PutApiKey(const std::string& sha256, const std::string& tenant, const std::string& role) {
  std::lock_guard<std::mutex> lock(mutex_);
  Statement q(db_, "INSERT OR REPLACE INTO api_keys (sha256, tenant, role) VALUES (?, ?, ?)");
  q.Bind(1, sha256).Bind(2, tenant).Bind(3, role);
  q.Step();
}

}  // namespace shardtune::server
