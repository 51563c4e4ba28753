#pragma once
// Runs one fine-tuning job on this process: reads the model and data the spec names, trains,
// validates, checkpoints, and exports to output.dir/final. Restarting a job whose output.dir
// holds a checkpoint resumes from the newest one (weights, optimizer moments, schedule, data
// position) and reproduces the uninterrupted run bit for bit.

#include <cstdint>
#include <optional>

#include "common/job_spec.h"

namespace shardtune {

struct TrainerOptions {
  // > 0: stop after this many steps as if interrupted (the final checkpoint, if any, stays);
  // used by tests of resume. 0: run to the end.
  int64_t stop_after_step = 0;
};

struct TrainingSummary {
  int64_t steps = 0;              // optimizer steps done, in total
  int64_t resumed_from_step = 0;  // 0 when the run started fresh
  double last_loss = 0.0;
  std::optional<double> last_val_loss;
  bool finished = false;  // false when stopped by stop_after_step
};

// Throws Error for anything the spec, the model or the data get wrong.
TrainingSummary RunTraining(const JobSpec& spec, const TrainerOptions& options = {});

}  // namespace shardtune
