#pragma once
// Runs one fine-tuning job on the ranks of `world`: reads the model and data the spec names,
// trains with the ZeRO stage it asks for, validates, checkpoints, and exports to
// output.dir/final. Every rank calls RunTraining with the same spec. With the same seed and
// global batch size, any number of ranks and any stage compute the same training run (up to the
// order of floating-point sums). Restarting a job whose output.dir holds a checkpoint resumes
// from the newest one, on any number of ranks; on the same number it continues bit for bit.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "common/job_spec.h"
#include "sharding/comm/communicator.h"

namespace shardtune {

struct TrainerOptions {
  // > 0: stop after this many steps as if interrupted (the checkpoints written so far stay);
  // used by tests of resume. 0: run to the end.
  int64_t stop_after_step = 0;
  // A job run by shardtune-server, or a trial of `shardtune sweep` (every rank sets stop_check;
  // only rank 0 gets the callbacks): after each step `on_step` reports progress and returns
  // whether to stop, in which case the ranks checkpoint at that step and return with `paused`.
  bool stop_check = false;
  using StepCallback = std::function<bool(int64_t step, int64_t total_steps, double epoch, int64_t tokens,
                                          const std::map<std::string, double>& metrics)>;
  StepCallback on_step;
  std::function<void(int64_t step, const std::string& path)> on_checkpoint;
};

struct TrainingSummary {
  int64_t steps = 0;              // optimizer steps done, in total
  int64_t resumed_from_step = 0;  // 0 when the run started fresh
  double last_loss = 0.0;
  std::optional<double> last_val_loss;
  bool finished = false;       // false when stopped by stop_after_step or a pause
  bool paused = false;         // stopped at a checkpoint because on_step asked
  bool stopped_early = false;  // training.early_stopping ended it (finished is true too)
  int64_t best_step = 0;       // the best evaluation's step (with early stopping or keep_best)
};

// Throws Error for anything the spec, the model or the data get wrong; CollectiveError when
// the ranks lose each other.
TrainingSummary RunTraining(const JobSpec& spec, Communicator& world, const TrainerOptions& options = {});

// On one process (no MPI).
TrainingSummary RunTraining(const JobSpec& spec, const TrainerOptions& options = {});

}  // namespace shardtune
