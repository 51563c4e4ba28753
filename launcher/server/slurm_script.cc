#include "launcher/server/slurm_script.h"

#include <fmt/format.h>

#include <map>

#include "launcher/rank_command.h"

namespace shardtune::server {

namespace {

std::vector<std::string> ResourceOptions(const SlurmConfig& config, const SlurmAttempt& attempt) {
  const ResourcesSpec& wanted = attempt.resources;
  const int64_t nodes = std::max<int64_t>(1, std::min<int64_t>(wanted.nodes, attempt.ranks));
  std::vector<std::string> options = {fmt::format("--nodes={}", nodes), fmt::format("--ntasks={}", attempt.ranks)};
  if (attempt.ranks % nodes == 0) options.push_back(fmt::format("--ntasks-per-node={}", attempt.ranks / nodes));
  const int64_t gpus = wanted.gpus_per_node > 0 ? wanted.gpus_per_node : config.gpus_per_node;
  if (gpus > 0)
    options.push_back(config.gres ? fmt::format("--gres=gpu:{}", gpus) : fmt::format("--gpus-per-node={}", gpus));
  const int64_t cpus = wanted.cpus_per_rank > 0 ? wanted.cpus_per_rank : config.cpus_per_rank;
  if (cpus > 0) options.push_back(fmt::format("--cpus-per-task={}", cpus));
  const std::pair<const char*, std::string> named[] = {
      {"time", wanted.time_limit.empty() ? config.time_limit : wanted.time_limit},
      {"partition", wanted.partition.empty() ? config.partition : wanted.partition},
      {"account", wanted.account.empty() ? config.account : wanted.account},
      {"qos", wanted.qos.empty() ? config.qos : wanted.qos}};
  for (const auto& [option, value] : named) {
    if (!value.empty()) options.push_back(fmt::format("--{}={}", option, value));
  }
  return options;
}

std::string Preamble(const SlurmConfig& config, const SlurmAttempt& attempt) {
  // Unset unless allowed: sbatch's --export=ALL would otherwise pass on the server's own.
  std::string lines = fmt::format("umask {:04o}\n", attempt.umask);
  return lines + (config.allow_run_as_root ? "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
                                           : "unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM");
}

}  // namespace

SlurmBatchJob RenderSlurmBatchJob(const SlurmConfig& config, const std::string& template_text,
                                  const SlurmAttempt& attempt) {
  RankCommand ranks;
  ranks.program = config.launcher == "srun" ? "srun" : attempt.mpirun;
  ranks.mpi = config.mpi;
  ranks.oversubscribe = config.oversubscribe;
  ranks.ranks = attempt.ranks;
  ranks.environment = attempt.environment;
  ranks.worker = attempt.worker;
  const std::map<std::string, std::string> values = {
      {"RANKS", std::to_string(attempt.ranks)},     {"COMMAND", ShellCommandLine(RankCommandArgv(ranks))},
      {"PREAMBLE", Preamble(config, attempt)},      {"MPIRUN", ShellQuote(ranks.program)},
      {"WORKER", ShellQuote(attempt.worker.at(0))}, {"SPEC", ShellQuote(attempt.worker.at(1))},
      {"EXIT_FILE", ShellQuote(attempt.exit_file)}, {"JOB_ID", ShellQuote(attempt.job_id)}};
  SlurmBatchJob submission;
  submission.script = template_text;
  std::string& script = submission.script;
  for (const auto& [name, word] : values) {
    const std::string placeholder = "{{" + name + "}}";
    for (size_t at = script.find(placeholder); at != std::string::npos; at = script.find(placeholder, at + word.size()))
      script.replace(at, placeholder.size(), word);
  }
  submission.sbatch_argv = {"sbatch", "--parsable", "--job-name=shardtune-" + attempt.job_id,
                            "--output=" + attempt.log_path};
  for (std::string& option : ResourceOptions(config, attempt)) submission.sbatch_argv.push_back(std::move(option));
  if (!attempt.run_as.empty()) {
    submission.sbatch_argv.push_back("--uid=" + attempt.run_as);
    submission.sbatch_argv.push_back(fmt::format("--gid={}", attempt.run_as_gid));
  }
  submission.sbatch_argv.push_back(attempt.script_path);
  return submission;
}

}  // namespace shardtune::server
