#pragma once
// How the shardtune CLI runs what it does not do itself: it links no LibTorch, so model and data
// commands, and training, run in shardtune-worker (found beside this executable), in place of
// this process. Never through a shell: argv arrays only.

#include <string>
#include <vector>

namespace shardtune {

struct LaunchOptions {
  int ranks = 1;
  std::string hostfile;  // optional MPI hostfile
  std::string log_level = "info";
  std::string output = "table";     // json: rank 0 prints the run's outcome as JSON on stdout
  std::string log_format = "text";  // text | json, passed on to the worker
};

// Replaces this process with `shardtune-worker ARGS...`; returns only if that fails, with an
// exit code.
int ExecWorker(const std::vector<std::string>& args);

// A worker command run by `ranks` processes: one runs shardtune-worker directly (ExecWorker);
// more (or a hostfile) run it under mpirun, each process given `args`. Replaces this process;
// returns only if that fails, with an exit code. (`shardtune export --np N`.)
int LaunchWorkerRanks(const std::vector<std::string>& args, const LaunchOptions& options);

// `shardtune train`: one rank runs shardtune-worker directly; more (or a hostfile) run it under
// mpirun. Replaces this process; returns only if that fails, with an exit code.
int LaunchTraining(const std::string& job_path, const LaunchOptions& options);

}  // namespace shardtune
