#include "worker/launch.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "worker/entry.h"

namespace shardtune {

int LaunchMpirun(const std::string& job_path, const LaunchOptions& options) {
  namespace fs = std::filesystem;
  const fs::path worker = fs::read_symlink("/proc/self/exe").parent_path() / "shardtune-worker";
  const char* mpirun_env = std::getenv("SHARDTUNE_MPIRUN");
  const std::string mpirun = mpirun_env != nullptr ? mpirun_env : "mpirun";
  std::vector<std::string> args = {mpirun, "-np", std::to_string(options.ranks)};
  if (!options.hostfile.empty()) {
    args.insert(args.end(), {"--hostfile", options.hostfile});
  } else {
    // One machine: allow more ranks than Open MPI counts slots (it counts physical cores).
    args.push_back("--oversubscribe");
  }
  args.insert(args.end(), {worker.string(), fs::absolute(job_path).string(), "--log-level", options.log_level});
  if (::geteuid() == 0) {
    // Open MPI refuses root unless told twice; shardtune is often run as root in containers.
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  std::string line;
  for (const auto& arg : args) line += (line.empty() ? "" : " ") + arg;
  spdlog::info("starting: {}", line);
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  spdlog::error("cannot run {}: {}", mpirun, std::strerror(errno));
  return kExitFailed;
}

}  // namespace shardtune
