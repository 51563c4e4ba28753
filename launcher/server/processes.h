#pragma once
// The processes behind a job. Each attempt runs as
//   shardtune-server supervise --job ID --exit-file F --log L -- mpirun ... shardtune-worker job.yaml
// started in a session of its own, with argument vectors, never a shell. The supervisor waits for
// mpirun and writes its exit status to F, so that a server restarted in the meantime still learns
// how the attempt ended.
//
// How the server finds an attempt's processes without looking at anyone else's: the supervisor
// is a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process the attempt starts stays
// its descendant even when its parent exits (mpirun's ranks and daemons each take a process group
// of their own, so neither a group nor an environment variable encloses them reliably). The
// server signals only the supervisor, by an identity a recycled pid cannot fake (pid and start
// time, kept in a pid file beside the attempt's log); the supervisor passes SIGTERM on to mpirun,
// and on kSignalKillAttempt, or once mpirun has exited, SIGKILLs every descendant left before it
// writes the exit file. An attempt whose supervisor wrote its exit file has ended with nothing of
// it left. A supervisor that was itself killed (OOM killer, kill -9) writes none and kills
// nothing: its orphans go to init and run on, so the server, finding no exit file, kills what is
// left of the attempt by the job id and attempt number every rank carries in its environment
// (KillAttemptProcesses), the only place that scans /proc/*/environ. Supervisors of servers
// before pid files existed know no kSignalKillAttempt: they are signalled as a process group.

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "launcher/rank_command.h"  // ShellQuote

namespace shardtune::server {

// Who a job's processes are (docs/server.md, "Storage and tenants"): every one of them (the
// supervisor's mpirun and the ranks, `shardtune-worker validate-data`) starts with `umask` and,
// when the server runs as root and `run_as` names a user, as that user with its groups; never as
// root when run_as is set.
struct JobUser {
  std::string name;  // empty: the server's own user
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups (initgroups' list, looked up beforehand)
  mode_t umask = 077;
};

// `run_as` (empty: none) and `job_umask` as a JobUser; a user that does not exist, or is root,
// throws Error naming run_as.
JobUser ResolveJobUser(const std::string& run_as, int umask);

// In a child between fork and exec (async-signal-safe: system calls only): the umask, then the
// groups, group and user. Returns false, errno set, when the identity cannot be taken.
bool BecomeJobUser(const JobUser& user);

// posix_spawn in a new session; `env` is added to this process's environment. Returns the pid.
pid_t SpawnInNewSession(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env);

// Signals the supervisor understands: stop the attempt (passed on to mpirun, which passes it to
// the ranks), and end it now (SIGKILL to every process of the attempt).
inline constexpr int kSignalStopAttempt = SIGTERM;
inline constexpr int kSignalKillAttempt = SIGUSR1;

// A process named so that a recycled pid does not match: its pid and its start time (clock ticks
// after boot, field 22 of /proc/PID/stat).
struct ProcessIdentity {
  int64_t pid = 0;
  uint64_t start_time = 0;
};

// The identity of the live process `pid`; nullopt when there is none (or only its zombie).
std::optional<ProcessIdentity> LiveProcess(int64_t pid);
// Whether the process `id` names still runs (the same pid and start time, not a zombie).
bool StillRuns(const ProcessIdentity& id);

// "PID START_TIME\n", written atomically; nullopt when missing or malformed.
void WritePidFile(const std::string& path, const ProcessIdentity& id);
std::optional<ProcessIdentity> ReadPidFile(const std::string& path);

// A supervisor started before pid files existed: whether `pid`'s command line is
// `shardtune-server supervise --job JOB_ID ...` (a recycled pid's is not).
bool LegacySupervisorAlive(int64_t pid, const std::string& job_id);

std::optional<int> ReadExitFile(const std::string& path);

// Up to `max_bytes` of a file a job's user may write (an attempt's log, its exit file), from
// `offset`; nullopt when it is missing, a symbolic link or not a regular file (opened with
// O_NOFOLLOW, checked with fstat): the server reads these as root, and must never follow a job's
// link to a file only root may read.
std::optional<std::string> ReadJobWrittenFile(const std::string& path, int64_t offset, size_t max_bytes);

// Creates `path` empty (replacing what was there) with mode 0666 & ~user.umask, owned by the
// job's user when there is one: a file the job writes (a Slurm job's log and exit file) although
// it may not write the directory holding it.
void CreateForJobUser(const std::string& path, const JobUser& user);

// The last resort when an attempt's supervisor is gone without its exit file: SIGKILL to every
// process on this machine whose environment holds both SHARDTUNE_JOB_ID=job_id and
// SHARDTUNE_JOB_ATTEMPT=attempt (common/worker_contract.h); returns how many.
int KillAttemptProcesses(const std::string& job_id, int attempt);

std::filesystem::path SelfDirectory();

// Runs a command to completion (argument vector, no shell) with `env` added; its exit status
// (-1 if it could not start) and what it printed on stdout and stderr.
struct CommandResult {
  int status = -1;
  std::string output;
};
CommandResult RunCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {});
// The same as one of a job's processes (`user`, argv[0] an absolute path), for validate-data.
CommandResult RunJobCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                            const JobUser& user = {});

// `shardtune-server supervise ...`: runs argv with stdout and stderr to `log` as a child
// subreaper, forwards SIGTERM and SIGINT to it, kills every descendant on kSignalKillAttempt or
// once argv's process has exited, writes that exit status to `exit_file` and returns it. argv's
// process runs as `user` (the supervisor itself stays the server's user: its exit file is the
// server's to trust); the log is opened before, by the supervisor.
int RunSupervisor(const std::vector<std::string>& argv, const std::string& log, const std::string& exit_file,
                  const JobUser& user = {});

}  // namespace shardtune::server
