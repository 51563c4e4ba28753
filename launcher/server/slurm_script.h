#pragma once
// What the slurm backend submits for a job attempt: the sbatch argument vector (the resources the
// job asks for, as sbatch options) and the batch script rendered from the operator's template.
// Pure functions of their inputs (no files, no Slurm), so that unit tests check exactly what a
// cluster would be given (docs/server.md, "Slurm").

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/job_spec.h"
#include "launcher/server/server_config.h"

namespace shardtune::server {

// One attempt of one job, as the backend sees it.
struct SlurmAttempt {
  std::string job_id;
  int ranks = 1;                         // this attempt's rank count (a resumed job may change it)
  ResourcesSpec resources;               // the job spec's; what it leaves out comes from SlurmConfig
  std::string mpirun = "mpirun";         // server.yaml local.mpirun (launcher: mpirun)
  std::vector<std::string> worker;       // shardtune-worker and its arguments
  std::vector<std::string> environment;  // variables each rank takes (mpirun -x NAME)
  std::string script_path, log_path, exit_file;
  mode_t umask = 077;
  // When the server runs as root with run_as: the user and group the job is submitted as
  // (sbatch --uid/--gid); empty: the submitter's own.
  std::string run_as;
  gid_t run_as_gid = 0;
};

struct SlurmBatchJob {
  std::vector<std::string> sbatch_argv;  // sbatch ... SCRIPT_PATH
  std::string script;                    // the batch script's text
};

// sbatch --parsable --job-name=shardtune-ID --output=LOG --nodes=N --ntasks=R
// [--ntasks-per-node=R/N] [--gpus-per-node=G | --gres=gpu:G] [--cpus-per-task=C] [--time=T]
// [--partition=P] [--account=A] [--qos=Q] [--uid=USER --gid=GID] SCRIPT. nodes is the spec's,
// but never more than the ranks; --ntasks-per-node when the ranks divide evenly among the nodes.
// The script: the template with every {{NAME}} replaced by single-quoted shell words:
// {{COMMAND}} the rank command line (mpirun, or srun --mpi=MPI; no --oversubscribe unless
// configured), {{PREAMBLE}} the `umask` line and a line that exports Open MPI's root-only
// variables when slurm.allow_run_as_root, else unsets them (sbatch's default --export=ALL would
// pass on the server's own), {{EXIT_FILE}}, {{JOB_ID}}, {{RANKS}}; {{MPIRUN}},
// {{WORKER}} and {{SPEC}} are for templates that predate {{COMMAND}}.
SlurmBatchJob RenderSlurmBatchJob(const SlurmConfig& config, const std::string& template_text,
                                  const SlurmAttempt& attempt);

}  // namespace shardtune::server
