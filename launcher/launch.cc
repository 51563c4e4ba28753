#include "launcher/launch.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/exit_codes.h"

namespace shardtune {

namespace {

namespace fs = std::filesystem;

fs::path WorkerPath() { return fs::read_symlink("/proc/self/exe").parent_path() / "shardtune-worker"; }

int Exec(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  spdlog::error("cannot run {}: {}", args[0], std::strerror(errno));
  return kExitFailed;
}

}  // namespace

int ExecWorker(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {WorkerPath().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return Exec(argv);
}

int LaunchTraining(const std::string& job_path, const LaunchOptions& options) {
  if (options.ranks == 1 && options.hostfile.empty()) return ExecWorker({job_path, "--log-level", options.log_level});
  const char* mpirun_env = std::getenv("SHARDTUNE_MPIRUN");
  const std::string mpirun = mpirun_env != nullptr ? mpirun_env : "mpirun";
  // Unbound: a rank runs its own intra-op threads (cores / local ranks of them), which Open MPI's
  // default binding of small jobs would pin to one core; and Open MPI 5 and later refuse to bind
  // more ranks than cores at all.
  std::vector<std::string> args = {mpirun, "-np", std::to_string(options.ranks), "--bind-to", "none"};
  if (!options.hostfile.empty()) {
    args.insert(args.end(), {"--hostfile", options.hostfile});
  } else {
    // One machine: allow more ranks than Open MPI counts slots (it counts physical cores).
    args.push_back("--oversubscribe");
  }
  args.insert(args.end(), {WorkerPath().string(), fs::absolute(job_path).string(), "--log-level", options.log_level});
  if (::geteuid() == 0) {
    // Open MPI refuses root unless told twice; shardtune is often run as root in containers.
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  std::string line;
  for (const auto& arg : args) line += (line.empty() ? "" : " ") + arg;
  spdlog::info("starting: {}", line);
  return Exec(args);
}

}  // namespace shardtune
