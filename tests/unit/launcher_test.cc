// The server's parts that need no running server: the SQLite job store (schema, migrations,
// round trips, filters), the configuration file, digests and shell quoting, the command line that
// starts ranks, the attempt supervisor (real processes), the error-code mapping both sides share
// and how an ended attempt is settled.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/worker_contract.h"
#include "launcher/api_values.h"
#include "launcher/rank_command.h"
#include "launcher/server/attempt_end.h"
#include "launcher/server/job_store.h"
#include "launcher/server/page_token.h"
#include "launcher/server/processes.h"
#include "launcher/server/server_config.h"
#include "test_util.h"

namespace shardtune::server {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

JobRecord Job(const std::string& id, const std::string& tenant, int64_t created) {
  JobRecord r;
  r.job.set_id(id);
  r.job.set_name("n-" + id);
  r.job.set_tenant(tenant);
  r.job.set_status(v1::JOB_STATUS_QUEUED);
  *r.job.mutable_create_time() = api::TimeOfMs(created);
  (*r.job.mutable_labels())["team"] = tenant;
  r.requested_ranks = 2;
  return r;
}

TEST(JobStore, KeepsJobsEventsAndCheckpointsAcrossReopening) {
  ScratchDir dir;
  const fs::path db = dir / "state" / "jobs.db";
  {
    JobStore store(db);
    store.Insert(Job("a", "t1", 1));
    store.Insert(Job("b", "t2", 2));
    JobRecord c = Job("c", "t1", 3);
    c.idempotency_key = "k";
    store.Insert(c);
    JobRecord a = *store.Get("a");
    a.job.set_status(v1::JOB_STATUS_RUNNING);
    a.job.set_step(7);
    a.supervisor_pid = 1234;
    a.pause_requested = true;
    store.Update(a);
    EXPECT_EQ(store.AddEvent(a.job, v1::JOB_EVENT_KIND_STATUS, "running"), 1);
    EXPECT_EQ(store.AddEvent(a.job, v1::JOB_EVENT_KIND_PROGRESS, "step 7"), 2);
    store.AddCheckpoint("a", 5, "/out/checkpoints/step-5");
  }
  JobStore store(db);  // a new process would see the same
  const JobRecord a = *store.Get("a");
  EXPECT_EQ(a.job.status(), v1::JOB_STATUS_RUNNING);
  EXPECT_EQ(a.job.step(), 7);
  EXPECT_EQ(a.supervisor_pid, 1234);
  EXPECT_TRUE(a.pause_requested);
  EXPECT_EQ(a.requested_ranks, 2);
  EXPECT_FALSE(store.Get("zzz").has_value());
  EXPECT_EQ(store.FindByIdempotencyKey("t1", "k")->job.id(), "c");
  EXPECT_FALSE(store.FindByIdempotencyKey("t2", "k").has_value());  // keys are per tenant
  const auto events = store.Events("a", 1, 10);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].seq(), 2);
  EXPECT_EQ(events[0].message(), "step 7");
  EXPECT_EQ(events[0].job().step(), 7);
  ASSERT_EQ(store.Checkpoints("a").size(), 1u);
  EXPECT_EQ(store.Checkpoints("a")[0].path(), "/out/checkpoints/step-5");

  JobFilter t1;
  t1.tenant = "t1";
  const auto listed = store.List(t1);
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].job.id(), "c");  // newest first
  JobFilter page = t1;
  page.after = ListPosition{3, "c"};
  page.limit = 1;
  EXPECT_EQ(store.List(page)[0].job.id(), "a");
  JobFilter labelled;
  labelled.labels = {{"team", "t2"}};
  ASSERT_EQ(store.List(labelled).size(), 1u);
  EXPECT_EQ(store.List(labelled)[0].job.id(), "b");
  JobFilter running;
  running.status = v1::JOB_STATUS_RUNNING;
  EXPECT_EQ(store.List(running).size(), 1u);
  EXPECT_EQ(store.Unfinished().size(), 3u);
}

// Pages through every job of `filter` (page size 7), `between` called after each page; the ids in
// the order listed.
template <typename F>
std::vector<std::string> PageThrough(JobStore& store, JobFilter filter, F&& between) {
  std::vector<std::string> ids;
  filter.limit = 7 + 1;  // as ListJobs asks: one more tells whether there is a next page
  std::string token;
  do {
    filter.after = token.empty() ? std::nullopt : DecodePageToken(token, filter);
    EXPECT_TRUE(token.empty() || filter.after.has_value());
    auto page = store.List(filter);
    token.clear();
    if (page.size() == 8) {
      page.pop_back();
      token = EncodePageToken({api::Ms(page.back().job.create_time()), page.back().job.id()}, filter);
    }
    for (const auto& r : page) ids.push_back(r.job.id());
    between();
  } while (!token.empty());
  return ids;
}

TEST(JobStore, PagingWhileJobsAreCreatedNeitherRepeatsNorSkipsARow) {
  ScratchDir dir;
  JobStore store(dir / "jobs.db");
  // 100 jobs, several sharing a millisecond (the id breaks the tie), of two tenants.
  std::set<std::string> before;
  for (int i = 0; i < 100; ++i) {
    const std::string id = fmt::format("job-{:03}", (i * 37) % 100);
    store.Insert(Job(id, i % 4 == 0 ? "other" : "t1", 1000 + i / 3));
    if (i % 4 != 0) before.insert(id);
  }
  // Another thread creates jobs (newer, as the manager's created_ms is strictly increasing)
  // while this one pages, and a page is read between every few inserts.
  std::atomic<bool> done{false};
  std::atomic<int> inserted{0};
  std::thread creator([&] {
    for (int i = 0; !done && i < 2000; ++i) {
      store.Insert(Job(fmt::format("new-{:04}", i), i % 2 ? "t1" : "other", 5000 + i));
      ++inserted;
    }
  });
  JobFilter t1;
  t1.tenant = "t1";
  const std::vector<std::string> ids = PageThrough(store, t1, [&] {
    const int seen = inserted;
    while (inserted < seen + 3 && inserted < 2000) std::this_thread::yield();
  });
  done = true;
  creator.join();
  EXPECT_GT(inserted.load(), 3);
  const std::set<std::string> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size()) << "a row listed twice";
  for (const auto& id : before) EXPECT_TRUE(unique.count(id)) << id << " skipped";
  for (const auto& id : ids) EXPECT_TRUE(before.count(id) || id.rfind("new-", 0) == 0) << id;
  // Newest first throughout: each row older than the one before it.
  for (size_t i = 1; i < ids.size(); ++i) {
    const auto a = store.Get(ids[i - 1])->job, b = store.Get(ids[i])->job;
    const int64_t ta = api::Ms(a.create_time()), tb = api::Ms(b.create_time());
    EXPECT_TRUE(ta > tb || (ta == tb && a.id() > b.id()));
  }
}

TEST(PageToken, IsOpaqueAndBoundToItsFilter) {
  JobFilter f;
  f.tenant = "t1";
  f.labels = {{"team", "x"}};
  const std::string token = EncodePageToken({1234, "job-abc"}, f);
  EXPECT_EQ(token.find("job-abc"), std::string::npos) << token;
  const auto back = DecodePageToken(token, f);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->created_ms, 1234);
  EXPECT_EQ(back->id, "job-abc");
  JobFilter page_size_changed = f;
  page_size_changed.limit = 500;
  EXPECT_TRUE(DecodePageToken(token, page_size_changed).has_value());
  // Another filter, tenant, or bytes this server never gave: refused.
  JobFilter other = f;
  other.status = v1::JOB_STATUS_RUNNING;
  EXPECT_FALSE(DecodePageToken(token, other).has_value());
  other = f;
  other.tenant = "t2";
  EXPECT_FALSE(DecodePageToken(token, other).has_value());
  other = f;
  other.labels["team"] = "y";
  EXPECT_FALSE(DecodePageToken(token, other).has_value());
  for (const std::string& bad :
       std::vector<std::string>{"", "50", "!!!!", "cDE6eHg6MTI6", std::string(5000, 'A'), token.substr(1)})
    EXPECT_FALSE(DecodePageToken(bad, f).has_value()) << bad;
}

TEST(JobStore, RefusesADatabaseFromANewerServer) {
  ScratchDir dir;
  { JobStore store(dir / "jobs.db"); }
  {
    sqlite3* db = nullptr;
    sqlite3_open((dir / "jobs.db").c_str(), &db);
    sqlite3_exec(db, "UPDATE schema_version SET version = 99", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  try {
    JobStore store(dir / "jobs.db");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 99"), std::string::npos) << e.what();
  }
}

TEST(ServerConfig, ParsesHashesAndReportsEveryProblem) {
  ScratchDir dir;
  testing::WriteText(dir / "ok.yaml", R"(listen: 127.0.0.1:1234
database: state/jobs.db
api_keys: [{key: abc, tenant: a}, {sha256: 0123, tenant: ops, role: admin}]
local: {hosts: [{host: n1, slots: 4}, {host: n2, slots: 2}], extra_args: [--oversubscribe]}
retry: {max_attempts: 5}
quotas: {a: {max_running_jobs: 2, max_ranks: 8}}
)");
  const ServerConfig c = LoadServerConfig(dir / "ok.yaml");
  EXPECT_EQ(c.listen, "127.0.0.1:1234");
  EXPECT_EQ(c.database, (dir / "state" / "jobs.db").string());  // relative to the file
  ASSERT_EQ(c.api_keys.size(), 2u);
  // SHA-256("abc"), the FIPS 180-2 test vector: the key itself is not kept.
  EXPECT_EQ(c.api_keys[0].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(c.api_keys[1].role, "admin");
  EXPECT_EQ(c.total_slots(), 6);
  EXPECT_EQ(c.max_attempts, 5);
  EXPECT_EQ(c.quotas.at("a").max_ranks, 8);

  testing::WriteText(dir / "bad.yaml", R"(listen: 127.0.0.1:1234
lisen: x
api_keys: [{tenant: a}, {key: k, tenant: b, role: root}]
local: {hosts: [{host: "n1; rm -rf /", slots: 0}]}
backend: slurm
)");
  testing::ExpectRefusedWith([&] { LoadServerConfig(dir / "bad.yaml"); },
                             {"lisen (line 2): unknown key", "api_keys[0] (line 3): give the key or its sha256",
                              "api_keys[1].role (line 3): must be user, admin or viewer",
                              "local.hosts[0].host (line 4): must be a plain host name",
                              "local.hosts[0].slots (line 4): must be >= 1", "slurm.template", "6 problem(s)"});
}

TEST(ServerConfig, ReadsTheHttpListenersAndRefusesWhatIsNotHostPort) {
  ScratchDir dir;
  testing::WriteText(dir / "ok.yaml", R"(http: {listen: "[::1]:8080", tls: {cert: tls/c.pem, key: tls/k.pem}}
metrics_listen: 127.0.0.1:9464
)");
  const ServerConfig c = LoadServerConfig(dir / "ok.yaml");
  EXPECT_EQ(c.http.listen, "[::1]:8080");
  EXPECT_EQ(c.http.tls_cert, (dir / "tls" / "c.pem").string());  // relative to the file, as tls's
  EXPECT_EQ(c.http.tls_key, (dir / "tls" / "k.pem").string());
  EXPECT_EQ(c.metrics_listen, "127.0.0.1:9464");

  testing::WriteText(dir / "bad.yaml", R"(http: {listen: 8080, tls: {cert: c.pem}, port: 1}
metrics_listen: "localhost:http"
)");
  testing::ExpectRefusedWith([&] { LoadServerConfig(dir / "bad.yaml"); },
                             {"http.port (line 1): unknown key", "http.listen (line 1): '8080' is not HOST:PORT",
                              "http.tls (line 1): give both cert and key",
                              "metrics_listen (line 2): 'localhost:http' is not HOST:PORT", "4 problem(s)"});
}

TEST(Processes, ShellQuotingKeepsHostileWordsInert) {
  for (const std::string word : {"plain", "a b", "it's", "$(touch x)", "`id`; rm -rf /", "\"q\"", "back\\slash"}) {
    const CommandResult r = RunCommand({"/bin/sh", "-c", "printf %s " + ShellQuote(word)});
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(r.output, word);
  }
  EXPECT_EQ(RunCommand({"/nonexistent/program"}).status, -1);
  EXPECT_EQ(RunCommand({"/bin/sh", "-c", "exit 3"}).status, 3);
}

TEST(RankCommand, BuildsTheClisTheLocalBackendsAndSlurmsCommandLines) {
  RankCommand cli;  // shardtune train --np 4
  cli.ranks = 4;
  cli.worker = {"/bin/shardtune-worker", "/jobs/a.yaml", "--log-level", "info"};
  EXPECT_EQ(RankCommandArgv(cli),
            (std::vector<std::string>{"mpirun", "--bind-to", "none", "--oversubscribe", "-np", "4",
                                      "/bin/shardtune-worker", "/jobs/a.yaml", "--log-level", "info"}));
  cli.hostfile = "hosts";  // --hostfile replaces --oversubscribe
  EXPECT_EQ(JoinedCommandLine(RankCommandArgv(cli)),
            "mpirun --bind-to none --hostfile hosts -np 4 /bin/shardtune-worker /jobs/a.yaml --log-level info");

  cli.hostfile.clear();
  cli.ranks = 2;
  cli.bind_to_cores = true;  // shardtune train --np 2 on a machine of two cores
  EXPECT_EQ(JoinedCommandLine(RankCommandArgv(cli)),
            "mpirun --bind-to core --oversubscribe -np 2 /bin/shardtune-worker /jobs/a.yaml --log-level info");
  cli.hostfile = "hosts";  // other machines' cores are not this one's
  EXPECT_EQ(RankCommandArgv(cli)[2], "none");

  RankCommand server;  // the local backend: the operator's arguments, the worker contract's variables
  server.ranks = 2;
  server.hostfile = "/data/job-1/hostfile";
  server.extra_args = {"--oversubscribe", "--mca", "btl", "self,tcp"};
  server.environment = {std::string(contract::kEnvServer), std::string(contract::kEnvJobId)};
  server.worker = {"/bin/shardtune-worker", "/data/job-1/job.yaml"};
  EXPECT_EQ(JoinedCommandLine(RankCommandArgv(server)),
            "mpirun --bind-to none --oversubscribe --mca btl self,tcp --hostfile /data/job-1/hostfile "
            "-x SHARDTUNE_SERVER -x SHARDTUNE_JOB_ID -np 2 /bin/shardtune-worker /data/job-1/job.yaml");
  server.extra_args = {"--bind-to", "core"};  // the operator binds: no --bind-to none
  EXPECT_EQ(RankCommandArgv(server)[1], "--bind-to");
  EXPECT_EQ(RankCommandArgv(server)[2], "core");

  RankCommand slurm;  // inside an allocation: no hostfile, no --oversubscribe, a line for the batch script
  slurm.ranks = 2;
  slurm.oversubscribe = false;
  slurm.worker = {"/opt/my dir/shardtune-worker", "/data/it's.yaml"};
  EXPECT_EQ(ShellCommandLine(RankCommandArgv(slurm)),
            "'mpirun' '--bind-to' 'none' '-np' '2' '/opt/my dir/shardtune-worker' '/data/it'\\''s.yaml'");
  slurm.program = "/usr/bin/srun";
  EXPECT_EQ(JoinedCommandLine(RankCommandArgv(slurm)),
            "/usr/bin/srun --mpi=pmix --ntasks=2 /opt/my dir/shardtune-worker /data/it's.yaml");
  slurm.mpi = "pmi2";
  EXPECT_EQ(RankCommandArgv(slurm)[1], "--mpi=pmi2");
}

// Ranks are bound to cores only where they take the whole machine, a core each.
TEST(RankCommand, BindsRanksOnlyWhereTheyFillTheMachinesCores) {
  const int online = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  EXPECT_FALSE(RanksFillTheCores(online + 1));
  EXPECT_FALSE(RanksFillTheCores(1));
  std::ifstream smt("/sys/devices/system/cpu/smt/active");
  std::string active;
  const bool smt_off = std::getline(smt, active) && active == "0";
  const char* threads = std::getenv("OMP_NUM_THREADS");
  const std::string saved = threads != nullptr ? threads : "";
  ::setenv("OMP_NUM_THREADS", "1", 1);
  cpu_set_t all;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(all), &all), 0);
  const bool whole_machine = CPU_COUNT(&all) == online;
  EXPECT_EQ(RanksFillTheCores(online), online >= 2 && whole_machine && smt_off);
  ::setenv("OMP_NUM_THREADS", "2", 1);  // two threads a rank: a core each would halve them
  EXPECT_FALSE(RanksFillTheCores(online));
  ::setenv("OMP_NUM_THREADS", "1", 1);
  if (std::getenv("SLURM_JOB_ID") == nullptr) {  // in an allocation, mpirun may use other nodes
    ::setenv("SLURM_JOB_ID", "7", 1);
    EXPECT_FALSE(RanksFillTheCores(online));
    ::unsetenv("SLURM_JOB_ID");
  }
  if (online >= 2 && whole_machine) {  // confined to one CPU (as by taskset or an allocation)
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &all)) {
        CPU_SET(cpu, &one);
        break;
      }
    }
    ASSERT_EQ(::sched_setaffinity(0, sizeof(one), &one), 0);
    EXPECT_FALSE(RanksFillTheCores(online));
    ASSERT_EQ(::sched_setaffinity(0, sizeof(all), &all), 0);
  }
  if (threads != nullptr) {
    ::setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  } else {
    ::unsetenv("OMP_NUM_THREADS");
  }
}

TEST(Processes, APidFileNamesOneProcessNotItsPid) {
  ScratchDir dir;
  const auto self = LiveProcess(::getpid());
  ASSERT_TRUE(self.has_value());
  EXPECT_GT(self->start_time, 0u);
  WritePidFile((dir / "a.pid").string(), *self);
  const auto read = ReadPidFile((dir / "a.pid").string());
  ASSERT_TRUE(read.has_value());
  EXPECT_EQ(read->pid, ::getpid());
  EXPECT_EQ(read->start_time, self->start_time);
  EXPECT_TRUE(StillRuns(*read));
  EXPECT_FALSE(StillRuns({::getpid(), self->start_time + 1}));  // a recycled pid starts later
  EXPECT_FALSE(ReadPidFile((dir / "missing.pid").string()).has_value());
}

// Runs RunSupervisor in a child process (it makes its caller a subreaper and sets signal
// handlers); returns the child's pid.
pid_t StartSupervisor(const std::string& script, const fs::path& dir) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::_exit(RunSupervisor({"/bin/sh", "-c", script}, (dir / "log").string(), (dir / "exit").string()));
  }
  return pid;
}

// A shell command that starts `sleep 300` in a session (and process group) of its own, as
// mpirun's ranks and daemons leave its group, and writes its pid to `pid_file` once it is there.
std::string EscapeToNewSession(const fs::path& pid_file) {
  return "setsid /bin/sh -c 'echo $$ > " + pid_file.string() + "; exec sleep 300' &";
}

// The pid a script wrote to `path`, once it has.
int64_t PidWritten(const fs::path& path) {
  for (int i = 0; i < 500 && (!fs::exists(path) || ReadFile(path).find('\n') == std::string::npos); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return std::stoll(ReadFile(path));
}

TEST(Processes, TheSupervisorLeavesNothingOfTheAttemptBehind) {
  // A process that left mpirun's process group and session (setsid), whose parent then exits: it
  // is still the supervisor's descendant, and dies with the attempt.
  ScratchDir dir;
  const pid_t supervisor = StartSupervisor(EscapeToNewSession(dir / "orphan") + " sleep 1; exit 3", dir.path());
  const int64_t orphan = PidWritten(dir / "orphan");
  ASSERT_TRUE(LiveProcess(orphan).has_value());
  EXPECT_EQ(::getsid(static_cast<pid_t>(orphan)), orphan);  // a session of its own
  int status = 0;
  ASSERT_EQ(::waitpid(supervisor, &status, 0), supervisor);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_EQ(ReadExitFile((dir / "exit").string()), 3);
  EXPECT_FALSE(LiveProcess(orphan).has_value());
}

TEST(Processes, TheSupervisorKillsTheWholeAttemptWhenTold) {
  ScratchDir dir;
  const pid_t supervisor = StartSupervisor(EscapeToNewSession(dir / "escaped") + " sleep 300", dir.path());
  const int64_t escaped = PidWritten(dir / "escaped");
  ASSERT_TRUE(LiveProcess(escaped).has_value());
  EXPECT_EQ(::getsid(static_cast<pid_t>(escaped)), escaped);
  ::kill(supervisor, kSignalKillAttempt);
  int status = 0;
  ASSERT_EQ(::waitpid(supervisor, &status, 0), supervisor);
  EXPECT_EQ(ReadExitFile((dir / "exit").string()), 128 + SIGKILL);  // the script, killed
  EXPECT_FALSE(LiveProcess(escaped).has_value());
}

TEST(Processes, TheLastResortKillsOnlyTheAttemptNamed) {
  // A supervisor killed itself leaves its attempt's processes to init: the server finds them by
  // the job id and attempt in their environment, and spares another attempt's.
  const pid_t doomed = SpawnInNewSession({"/bin/sleep", "300"}, {{std::string(contract::kEnvJobId), "job-lastresort"},
                                                                 {std::string(contract::kEnvJobAttempt), "1"}});
  const pid_t spared = SpawnInNewSession({"/bin/sleep", "300"}, {{std::string(contract::kEnvJobId), "job-lastresort"},
                                                                 {std::string(contract::kEnvJobAttempt), "11"}});
  EXPECT_EQ(KillAttemptProcesses("job-lastresort", 1), 1);
  int status = 0;
  ASSERT_EQ(::waitpid(doomed, &status, 0), doomed);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_TRUE(LiveProcess(spared).has_value());
  EXPECT_EQ(KillAttemptProcesses("job-lastresort", 11), 1);
  ASSERT_EQ(::waitpid(spared, &status, 0), spared);
  EXPECT_EQ(KillAttemptProcesses("job-lastresort", 1), 0);
}

TEST(WorkerContract, OneMappingFromAnErrorToItsCodeAndExitStatus) {
  using contract::JobErrorKind;
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kInvalidArgument), JobErrorKind::kInvalidSpec);
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kFailedPrecondition), JobErrorKind::kInvalidSpec);
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kUnimplemented), JobErrorKind::kInvalidSpec);
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kNotFound), JobErrorKind::kInvalidInput);
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kDataLoss), JobErrorKind::kInvalidInput);
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kIo), JobErrorKind::kRankFailed);
  EXPECT_EQ(contract::JobErrorKindFor(ErrorCode::kInternal), JobErrorKind::kRankFailed);
  EXPECT_EQ(contract::ExitCodeFor(JobErrorKind::kInvalidSpec), kExitInvalidInput);
  EXPECT_EQ(contract::ExitCodeFor(JobErrorKind::kInvalidInput), kExitInvalidInput);
  EXPECT_EQ(contract::ExitCodeFor(JobErrorKind::kTimeout), kExitTimeout);
  EXPECT_EQ(contract::ExitCodeFor(JobErrorKind::kRankFailed), kExitFailed);
  EXPECT_EQ(contract::JobErrorKindForExit(kExitInvalidInput), JobErrorKind::kInvalidInput);
  EXPECT_EQ(contract::JobErrorKindForExit(kExitTimeout), JobErrorKind::kTimeout);
  EXPECT_EQ(contract::JobErrorKindForExit(137), JobErrorKind::kRankFailed);
  EXPECT_EQ(static_cast<int>(JobErrorKind::kNodeLost), v1::JOB_ERROR_CODE_NODE_LOST);
}

TEST(AttemptEnd, EveryWayAnAttemptEndsSettlesAsTheTableSays) {
  struct Row {
    const char* what;
    bool cancel, pause;
    v1::AttemptOutcome outcome;
    v1::JobErrorCode error;
    int exit_code;
    bool last_step, attempts_left;
    v1::JobStatus status;
    v1::JobErrorCode recorded;
  };
  constexpr auto kNone = v1::JOB_ERROR_CODE_UNSPECIFIED;
  constexpr auto kNoReport = v1::ATTEMPT_OUTCOME_UNSPECIFIED;
  const Row rows[] = {
      {"cancelled", true, false, kNoReport, kNone, 143, false, true, v1::JOB_STATUS_CANCELLED, kNone},
      {"finished", false, false, v1::ATTEMPT_OUTCOME_FINISHED, kNone, 0, true, true, v1::JOB_STATUS_SUCCEEDED, kNone},
      {"finished, a requeued run refused", false, false, v1::ATTEMPT_OUTCOME_FINISHED, kNone, 2, true, true,
       v1::JOB_STATUS_SUCCEEDED, kNone},
      {"paused", false, true, v1::ATTEMPT_OUTCOME_PAUSED, kNone, 0, false, true, v1::JOB_STATUS_PAUSED, kNone},
      {"exit 0, report lost", false, false, kNoReport, kNone, 0, true, true, v1::JOB_STATUS_SUCCEEDED, kNone},
      {"exit 0, report lost while pausing", false, true, kNoReport, kNone, 0, false, true, v1::JOB_STATUS_PAUSED,
       kNone},
      {"exit 0, report lost, the pause came too late", false, true, kNoReport, kNone, 0, true, true,
       v1::JOB_STATUS_SUCCEEDED, kNone},
      {"failed while pausing", false, true, v1::ATTEMPT_OUTCOME_FAILED, v1::JOB_ERROR_CODE_RANK_FAILED, 1, false, true,
       v1::JOB_STATUS_PAUSED, kNone},
      {"a user error while pausing", false, true, v1::ATTEMPT_OUTCOME_FAILED, v1::JOB_ERROR_CODE_INVALID_SPEC, 2, false,
       true, v1::JOB_STATUS_FAILED, kNone},
      {"stopped unasked", false, false, v1::ATTEMPT_OUTCOME_STOPPED, kNone, 0, false, true, v1::JOB_STATUS_QUEUED,
       v1::JOB_ERROR_CODE_RANK_FAILED},
      {"a rank killed", false, false, kNoReport, kNone, 137, false, true, v1::JOB_STATUS_QUEUED,
       v1::JOB_ERROR_CODE_RANK_FAILED},
      {"a rank killed, no attempts left", false, false, kNoReport, kNone, 137, false, false, v1::JOB_STATUS_FAILED,
       v1::JOB_ERROR_CODE_RANK_FAILED},
      {"processes vanished", false, false, kNoReport, kNone, -1, false, true, v1::JOB_STATUS_QUEUED,
       v1::JOB_ERROR_CODE_RANK_FAILED},
      {"exit 2 unreported", false, false, kNoReport, kNone, kExitInvalidInput, false, true, v1::JOB_STATUS_FAILED,
       v1::JOB_ERROR_CODE_INVALID_INPUT},
      {"exit 3 unreported: another rank timed out", false, false, kNoReport, kNone, kExitTimeout, false, true,
       v1::JOB_STATUS_QUEUED, v1::JOB_ERROR_CODE_TIMEOUT},
      {"timeout reported", false, false, v1::ATTEMPT_OUTCOME_FAILED, v1::JOB_ERROR_CODE_TIMEOUT, kExitTimeout, false,
       false, v1::JOB_STATUS_FAILED, kNone},
      {"a lost host", false, false, kNoReport, v1::JOB_ERROR_CODE_NODE_LOST, 1, false, true, v1::JOB_STATUS_QUEUED,
       kNone},
      {"invalid data", false, false, v1::ATTEMPT_OUTCOME_FAILED, v1::JOB_ERROR_CODE_INVALID_INPUT, 2, false, true,
       v1::JOB_STATUS_FAILED, kNone},
  };
  for (const Row& row : rows) {
    AttemptEnd end;
    end.cancel_requested = row.cancel;
    end.pause_requested = row.pause;
    end.outcome = row.outcome;
    end.error = row.error;
    end.exit_code = row.exit_code;
    end.reached_last_step = row.last_step;
    end.attempts_left = row.attempts_left;
    const AttemptVerdict verdict = DecideAttempt(end);
    EXPECT_EQ(v1::JobStatus_Name(verdict.status), v1::JobStatus_Name(row.status)) << row.what;
    if (row.recorded != kNone) {
      EXPECT_EQ(v1::JobErrorCode_Name(verdict.error), v1::JobErrorCode_Name(row.recorded)) << row.what;
    }
  }
}

}  // namespace
}  // namespace shardtune::server
