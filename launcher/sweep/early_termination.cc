#include "launcher/sweep/early_termination.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace shardtune::sweep {

namespace {

// Trial t's value at the rung of `rung_step`: its best evaluation up to the first one at or past
// the step, and that evaluation's arrival; nullopt if it has not reached the step.
struct RungEntry {
  double value;
  int64_t arrival;
};

std::optional<RungEntry> AtRung(const TrialRecord& t, int64_t rung_step, const Objective& objective) {
  for (size_t i = 0; i < t.evaluations.size(); ++i) {
    if (t.evaluations[i].step >= rung_step)
      return RungEntry{*t.BestUpTo(t.evaluations[i].step, objective), t.sequence[i]};
  }
  return std::nullopt;
}

}  // namespace

int64_t AshaStopper::RungStep(int rung) const {
  int64_t step = config_.min_steps;
  for (int k = 0; k < rung; ++k) step *= config_.reduction_factor;
  return step;
}

int AshaStopper::Rung(int64_t step) const {
  int rung = -1;
  for (int64_t at = config_.min_steps; at <= step; at *= config_.reduction_factor) {
    ++rung;
    if (at > std::numeric_limits<int64_t>::max() / config_.reduction_factor) break;
  }
  return rung;
}

StopDecision AshaStopper::Judge(const SweepState& state, int64_t trial) const {
  const TrialRecord& t = state.trial(trial);
  if (t.evaluations.empty()) return {};
  const int64_t step = t.evaluations.back().step;
  const int rung = Rung(step);
  if (rung < 0) return {};
  // Judged only on arrival: the previous evaluation had not reached this rung.
  if (t.evaluations.size() >= 2 && Rung(t.evaluations[t.evaluations.size() - 2].step) >= rung) return {};
  const int64_t rung_step = RungStep(rung);
  const Objective& objective = state.spec().objective;
  const RungEntry mine = *AtRung(t, rung_step, objective);
  int64_t reached = 0, better = 0;
  for (const TrialRecord& other : state.trials()) {
    const auto entry = AtRung(other, rung_step, objective);
    if (!entry || entry->arrival > mine.arrival) continue;
    ++reached;
    if (other.number != trial && objective.Better(entry->value, mine.value)) ++better;
  }
  const int64_t keep = (reached + config_.reduction_factor - 1) / config_.reduction_factor;
  if (better < keep) return {};
  return {true, fmt::format("ASHA rung {} (step {}): {} {} is not in the top {} of the {} trials there", rung,
                            rung_step, objective.metric, mine.value, keep, reached)};
}

StopDecision MedianStopper::Judge(const SweepState& state, int64_t trial) const {
  const TrialRecord& t = state.trial(trial);
  if (t.evaluations.empty()) return {};
  const int64_t step = t.evaluations.back().step;
  if (step < config_.min_steps) return {};
  const Objective& objective = state.spec().objective;
  std::vector<double> others;
  for (const TrialRecord& other : state.trials()) {
    if (other.number == trial || other.evaluations.empty() || other.evaluations.back().step < step) continue;
    if (const auto best = other.BestUpTo(step, objective)) others.push_back(*best);
  }
  if (static_cast<int64_t>(others.size()) < config_.min_trials) return {};
  std::sort(others.begin(), others.end());
  const size_t n = others.size();
  const double median = n % 2 == 1 ? others[n / 2] : (others[n / 2 - 1] + others[n / 2]) / 2;
  const double mine = *t.BestUpTo(step, objective);
  if (!objective.Better(median, mine)) return {};
  return {true, fmt::format("median rule at step {}: best {} {} is worse than the median {} of {} other trials", step,
                            objective.metric, mine, median, n)};
}

std::unique_ptr<EarlyStopper> MakeEarlyStopper(const EarlyTermination& config) {
  switch (config.type) {
    case TerminationType::kAsha:
      return std::make_unique<AshaStopper>(config);
    case TerminationType::kMedian:
      return std::make_unique<MedianStopper>(config);
    default:
      return nullptr;
  }
}

}  // namespace shardtune::sweep
