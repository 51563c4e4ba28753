#include "launcher/sweep/trial_slots.h"

#include <sched.h>

#include <algorithm>
#include <thread>

namespace shardtune::sweep {

TrialSlots PlanTrialSlots(int64_t parallel_trials, int slots, int ranks_per_trial) {
  const int ranks = std::max(1, ranks_per_trial);
  const int64_t fit = std::max(1, slots / ranks);
  TrialSlots plan;
  plan.at_once = static_cast<int>(std::clamp<int64_t>(parallel_trials, 1, fit));
  plan.threads_per_rank = std::max(1, slots / (plan.at_once * ranks));
  return plan;
}

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace shardtune::sweep
