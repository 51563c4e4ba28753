#pragma once
// `shardtune train --np N`: starts N workers through mpirun (never a shell: an argv array).

#include <string>

namespace shardtune {

struct LaunchOptions {
  int ranks = 1;
  std::string hostfile;  // optional MPI hostfile
  std::string log_level = "info";
};

// Replaces this process with mpirun running shardtune-worker (found beside this executable);
// returns only if that fails, with an exit code.
int LaunchMpirun(const std::string& job_path, const LaunchOptions& options);

}  // namespace shardtune
