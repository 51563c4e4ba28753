#pragma once
// Early termination: after a trial's intermediate evaluation, whether it goes on. Each rule is a
// pure function of the sweep's state (which already holds the new evaluation), so that replaying
// trials.jsonl reproduces every decision. docs/sweeps.md, "Early termination", states the rules.

#include <memory>
#include <string>

#include "launcher/sweep/sweep_state.h"

namespace shardtune::sweep {

struct StopDecision {
  bool stop = false;
  std::string reason;  // why (stop), for trials.jsonl and the table
};

class EarlyStopper {
 public:
  virtual ~EarlyStopper() = default;
  // Judges trial `trial` after its newest evaluation (the last in its record).
  virtual StopDecision Judge(const SweepState& state, int64_t trial) const = 0;
};

// ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", 2020): rungs at steps
// min_steps * reduction_factor^k. A trial's value at a rung is its best evaluation up to the first
// evaluation at or past the rung's step; when it reaches a rung it continues only if that value is
// among the top ceil(n / reduction_factor) of the n trials that have reached the rung so far
// (itself included; a tie counts in its favour). Decided once, on arrival.
class AshaStopper : public EarlyStopper {
 public:
  explicit AshaStopper(EarlyTermination config) : config_(config) {}
  StopDecision Judge(const SweepState& state, int64_t trial) const override;
  // The highest rung at or below `step` (-1 below the first).
  int Rung(int64_t step) const;
  int64_t RungStep(int rung) const;

 private:
  EarlyTermination config_;
};

// The median stopping rule (Golovin et al., "Google Vizier", 2017): at an evaluation at step s >=
// min_steps, a trial stops if its best value up to s is worse than the median of the best values
// up to s of the other trials that have reached s (an evaluation at or past s), once there are at
// least min_trials of them.
class MedianStopper : public EarlyStopper {
 public:
  explicit MedianStopper(EarlyTermination config) : config_(config) {}
  StopDecision Judge(const SweepState& state, int64_t trial) const override;

 private:
  EarlyTermination config_;
};

// The spec's rule; nullptr for type none.
std::unique_ptr<EarlyStopper> MakeEarlyStopper(const EarlyTermination& config);

}  // namespace shardtune::sweep
