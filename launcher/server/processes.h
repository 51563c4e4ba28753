#pragma once
// The processes behind a job. Each attempt runs as
//   shardtune-server supervise --job ID --exit-file F --log L -- mpirun ... shardtune-worker job.yaml
// started in a session (and process group) of its own, with argument vectors, never a shell.
// The supervisor waits for mpirun and writes its exit status to F, so that a server restarted
// in the meantime still learns how the attempt ended.

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace shardtune::server {

// posix_spawn in a new session; `env` is added to this process's environment. Returns the pid.
pid_t SpawnInNewSession(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env);

// Whether `pid` is the supervisor of `job_id` (a recycled pid is not).
bool SupervisorAlive(int64_t pid, const std::string& job_id);

std::optional<int> ReadExitFile(const std::string& path);

// SIGKILL to every process whose environment says SHARDTUNE_JOB_ID=job_id; returns how many.
int KillJobProcesses(const std::string& job_id);
// The pids of those processes (for tests and diagnostics).
std::vector<pid_t> JobProcesses(const std::string& job_id);

std::filesystem::path SelfDirectory();

// Runs a command to completion (argument vector, no shell) with `env` added; its exit status
// (-1 if it could not start) and what it printed on stdout and stderr.
struct CommandResult {
  int status = -1;
  std::string output;
};
CommandResult RunCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {});

// A word for a POSIX shell script: single-quoted, with embedded quotes escaped.
std::string ShellQuote(const std::string& word);

// `shardtune-server supervise ...`: runs argv with stdout and stderr to `log`, forwards SIGTERM
// and SIGINT to it, writes its exit status to `exit_file` and exits with it.
int RunSupervisor(const std::vector<std::string>& argv, const std::string& log, const std::string& exit_file);

}  // namespace shardtune::server
