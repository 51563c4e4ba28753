#pragma once
// Multi-task mixing: which example comes next in an epoch when several datasets are mixed.

#include <cstdint>
#include <vector>

namespace shardtune {

struct TaskRange {
  int64_t begin = 0;  // the task's examples are [begin, begin + size) of the combined list
  int64_t size = 0;
  double probability = 0;  // of drawing this task for a slot
};

// Each task's probability: its weight's share, or with `temperature` > 0 its size^(1/T) share
// (T = 1: proportional to size; larger T flattens towards uniform).
std::vector<double> MixtureProbabilities(const std::vector<int64_t>& sizes, const std::vector<double>& weights,
                                         double temperature);

// The order of `total` examples in `epoch`: every slot draws a task by probability, then takes
// that task's next example (each task walks its own seeded permutation and starts a new one
// when used up). A function of (seed, epoch) alone, so a resumed run sees the same batches.
std::vector<int64_t> MixtureOrder(const std::vector<TaskRange>& tasks, int64_t total, uint64_t seed, int64_t epoch);

}  // namespace shardtune
