#include "sharding/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace shardtune {

double LearningRateAt(const OptimizerSpec& optimizer, const SchedulerSpec& scheduler, int64_t step,
                      int64_t total_steps) {
  const int64_t warmup = scheduler.warmup_steps;
  if (step < warmup) return optimizer.lr * static_cast<double>(step) / static_cast<double>(warmup);
  const double floor = scheduler.min_lr_ratio;
  const double progress =
      total_steps > warmup
          ? std::clamp(static_cast<double>(step - warmup) / static_cast<double>(total_steps - warmup), 0.0, 1.0)
          : 1.0;
  double factor = 1.0;
  switch (scheduler.type) {
    case SchedulerType::kConstant:
      factor = 1.0;
      break;
    case SchedulerType::kLinear:
      factor = floor + (1.0 - floor) * (1.0 - progress);
      break;
    case SchedulerType::kCosine:
      factor = floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
      break;
  }
  return optimizer.lr * factor;
}

}  // namespace shardtune
