#include "launcher/launch.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/exit_codes.h"
#include "launcher/rank_command.h"

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

int LaunchWorkerRanks(const std::vector<std::string>& args, const LaunchOptions& options) {
  if (options.ranks == 1 && options.hostfile.empty()) return ExecWorker(args);
  RankCommand command;
  if (const char* mpirun = std::getenv("SHARDTUNE_MPIRUN")) command.program = mpirun;
  command.ranks = options.ranks;
  command.hostfile = options.hostfile;
  command.bind_to_cores = RanksFillTheCores(options.ranks);  // applies without a hostfile only
  command.worker = {WorkerPath().string()};
  command.worker.insert(command.worker.end(), args.begin(), args.end());
  const std::vector<std::string> argv = RankCommandArgv(command);
  if (::geteuid() == 0) {
    // Open MPI refuses root unless told twice; shardtune is often run as root in containers.
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  spdlog::info("starting: {}", JoinedCommandLine(argv));
  return Exec(argv);
}

int LaunchTraining(const std::string& job_path, const LaunchOptions& options) {
  // Under mpirun the ranks may start elsewhere: the spec's path must not depend on this directory.
  const std::string job = options.ranks == 1 && options.hostfile.empty() ? job_path : fs::absolute(job_path).string();
  return LaunchWorkerRanks(
      {job, "--log-level", options.log_level, "--log-format", options.log_format, "--output", options.output}, options);
}

}  // namespace shardtune
