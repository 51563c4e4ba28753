#pragma once
// How many of a sweep's trials run at once on this machine (docs/sweeps.md, "Running a sweep"):
// like mpirun's ranks, trials share the machine's slots (cores) instead of oversubscribing them,
// and each rank gets its share of the cores as threads. No LibTorch.

#include <cstdint>

namespace shardtune::sweep {

struct TrialSlots {
  int at_once = 1;           // min(parallel_trials, max(1, slots / ranks_per_trial))
  int threads_per_rank = 1;  // max(1, slots / (at_once x ranks_per_trial))
};

// `slots`: the cores (MPI slots) the trials share; a trial of more ranks than slots still runs,
// alone (mpirun decides whether it may).
TrialSlots PlanTrialSlots(int64_t parallel_trials, int slots, int ranks_per_trial);

// The cores this process may run on: its CPU affinity mask (a container's or taskset's limit),
// hardware_concurrency when that cannot be read.
int AvailableCores();

}  // namespace shardtune::sweep
