#pragma once
// Learning rate as a function of the optimizer step, as Hugging Face's schedulers define it:
// step k (0-based, the k-th update) uses lr x factor(k). Warmup ramps k / warmup_steps from 0;
// then constant, linear, or cosine decay to lr x min_lr_ratio at total_steps.

#include <cstdint>

#include "common/job_spec.h"

namespace shardtune {

double LearningRateAt(const OptimizerSpec& optimizer, const SchedulerSpec& scheduler, int64_t step,
                      int64_t total_steps);

}  // namespace shardtune
