#include "launcher/rank_command.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace shardtune {

namespace {

bool StartsWithAny(const std::vector<std::string>& args, std::initializer_list<const char*> prefixes) {
  return std::any_of(args.begin(), args.end(), [&](const std::string& arg) {
    return std::any_of(prefixes.begin(), prefixes.end(), [&](const char* p) { return arg.rfind(p, 0) == 0; });
  });
}

std::vector<std::string> SrunArgv(const RankCommand& command) {
  // srun passes the whole environment on (--export=ALL is its default) and binds nothing under
  // task/none.
  std::vector<std::string> argv = {command.program, "--mpi=" + command.mpi};
  argv.insert(argv.end(), command.extra_args.begin(), command.extra_args.end());
  argv.push_back("--ntasks=" + std::to_string(command.ranks));
  return argv;
}

std::vector<std::string> MpirunArgv(const RankCommand& command) {
  std::vector<std::string> argv = {command.program};
  if (!StartsWithAny(command.extra_args, {"--bind-to", "-bind-to"})) {
    argv.insert(argv.end(), {"--bind-to", command.bind_to_cores && command.hostfile.empty() ? "core" : "none"});
  }
  argv.insert(argv.end(), command.extra_args.begin(), command.extra_args.end());
  if (!command.hostfile.empty()) {
    argv.insert(argv.end(), {"--hostfile", command.hostfile});
  } else if (command.oversubscribe && !StartsWithAny(command.extra_args, {"--oversubscribe", "-oversubscribe"})) {
    argv.push_back("--oversubscribe");
  }
  for (const std::string& name : command.environment) argv.insert(argv.end(), {"-x", name});
  // Ranks' output stays on mpirun's (the server's job log; each rank also writes
  // OUTPUT_DIR/logs/rank-NNNNN.log): Open MPI 5 and later would divert it to files alone under
  // --output-filename.
  argv.insert(argv.end(), {"-np", std::to_string(command.ranks)});
  return argv;
}

}  // namespace

std::vector<std::string> RankCommandArgv(const RankCommand& command) {
  const bool srun = std::filesystem::path(command.program).filename() == "srun";
  std::vector<std::string> argv = srun ? SrunArgv(command) : MpirunArgv(command);
  argv.insert(argv.end(), command.worker.begin(), command.worker.end());
  return argv;
}

bool RanksFillTheCores(int ranks) {
  const char* threads = std::getenv("OMP_NUM_THREADS");
  if (threads != nullptr && std::string(threads) != "1") return false;
  // Under a resource manager (or a default hostfile) mpirun may place ranks on other machines,
  // whose cores this one cannot count.
  for (const char* placer : {"SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "OMPI_MCA_orte_default_hostfile",
                             "OMPI_MCA_rmaps_base_default_hostfile", "PRTE_MCA_prte_default_hostfile"}) {
    if (std::getenv(placer) != nullptr) return false;
  }
  cpu_set_t allowed;
  if (::sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return false;
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (ranks < 2 || CPU_COUNT(&allowed) != online || online != ranks) return false;
  std::ifstream smt("/sys/devices/system/cpu/smt/active");
  std::string active;
  return std::getline(smt, active) && active == "0";
}

std::string JoinedCommandLine(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& word : argv) line += (line.empty() ? "" : " ") + word;
  return line;
}

std::string ShellQuote(const std::string& word) {
  std::string quoted = "'";
  for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string ShellCommandLine(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& word : argv) line += (line.empty() ? "" : " ") + ShellQuote(word);
  return line;
}

}  // namespace shardtune
