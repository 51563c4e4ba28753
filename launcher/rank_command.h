#pragma once
// The one builder of the command line that starts a job's ranks. `shardtune train --np`
// (launcher/launch.cc), the server's local backend and its Slurm batch script (the template's
// {{COMMAND}}, launcher/server/job_manager.cc) all start ranks through it, so that the three
// cannot drift apart. Argument vectors only: a shell sees the line only as single-quoted words
// (ShellCommandLine).

#include <string>
#include <vector>

namespace shardtune {

struct RankCommand {
  // mpirun (Open MPI; the default), or srun (Slurm), chosen by the program's file name.
  std::string program = "mpirun";
  int ranks = 1;
  // mpirun only: the hosts and their slots. Empty: this machine, or the Slurm allocation mpirun
  // runs in.
  std::string hostfile;
  // mpirun without a hostfile only: more ranks than Open MPI counts slots allowed
  // (--oversubscribe). Right on one machine, where Open MPI counts physical cores as slots; a
  // Slurm allocation has a slot per task, and its batch script says it only when configured
  // (server.yaml slurm.oversubscribe).
  bool oversubscribe = true;
  // srun only: its MPI plugin (--mpi=; one that `srun --mpi=list` names). Debian's Open MPI has
  // no PMI1/PMI2 support, only PMIx.
  std::string mpi = "pmix";
  // mpirun without a hostfile only: each rank bound to a core of its own (--bind-to core), for a
  // job whose ranks take every core of this machine, one each (RanksFillTheCores). A rank that
  // never leaves its core keeps its caches, and its communication thread's wake-ups take time
  // from its own computation, not the other ranks' (docs/PERFORMANCE.md).
  bool bind_to_cores = false;
  // The operator's own arguments for the program (server.yaml local.extra_args), placed before
  // the ones built here.
  std::vector<std::string> extra_args;
  // Names of variables each rank takes from the launcher's environment (mpirun -x NAME; srun
  // exports the whole environment).
  std::vector<std::string> environment;
  // shardtune-worker and its arguments.
  std::vector<std::string> worker;
};

// The argument vector, program first:
//   mpirun [--bind-to none|core] EXTRA... [--hostfile H | --oversubscribe] [-x NAME]... -np N WORKER...
//   srun --mpi=MPI EXTRA... --ntasks=N WORKER...
// mpirun leaves ranks unbound unless EXTRA binds them or bind_to_cores is set: a rank runs its own
// intra-op threads (cores / local ranks of them), which Open MPI's default binding of small jobs
// would pin to one core; and Open MPI 5 and later refuse to bind more ranks than cores at all.
std::vector<std::string> RankCommandArgv(const RankCommand& command);

// Whether `ranks` ranks started on this machine would each get one core of it, alone: this
// process may run on every online CPU, they are as many as the ranks, no two are hardware
// threads of one core (the kernel says SMT is off), and OMP_NUM_THREADS asks for no more than one
// thread a rank. Not when the process is confined to part of the machine (a Slurm allocation,
// taskset), where other jobs may hold the rest, nor under a resource manager (Slurm, PBS, LSF)
// or a default hostfile, where mpirun may place the ranks on other machines.
bool RanksFillTheCores(int ranks);

// The words joined by spaces, for logs.
std::string JoinedCommandLine(const std::vector<std::string>& argv);

// The words single-quoted (embedded quotes escaped) and joined by spaces: a line of a POSIX shell
// script that runs exactly argv, whatever the words hold.
std::string ShellCommandLine(const std::vector<std::string>& argv);

// A word for a POSIX shell script: single-quoted, with embedded quotes escaped.
std::string ShellQuote(const std::string& word);

}  // namespace shardtune
