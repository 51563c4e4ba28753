#pragma once
// The search strategies: given the sweep's state, the values of the next trial. Each is a pure
// function of the spec and the state (its random draws come from TrialRng(seed, trial, ...)), so a
// sweep resumed from trials.jsonl proposes what the uninterrupted one would have. docs/sweeps.md,
// "Strategies", states each.

#include <memory>
#include <optional>

#include "launcher/sweep/sweep_state.h"

namespace shardtune::sweep {

class SearchStrategy {
 public:
  virtual ~SearchStrategy() = default;
  // The values of trial number state.trials().size(); nullopt when the strategy has no more
  // (the grid is exhausted). Trials still running are in the state (the Bayesian strategy's
  // constant liar uses them).
  virtual std::optional<TrialValues> Propose(const SweepState& state) const = 0;
};

// The product of the values, in GridPoint's order; with early termination, in a seeded random
// order (a permutation of the points by Fisher-Yates with TrialRng(seed, 0, 3), for grids of at
// most kShuffledGridLimit points). ASHA and the median rule judge a trial against those that came
// before it: in GridPoint's order the first parameter's first values come first, and a sorted
// arrival (the lowest learning rates first, say) would promote every early trial for want of
// better ones.
class GridStrategy : public SearchStrategy {
 public:
  static constexpr int64_t kShuffledGridLimit = 1'000'000;
  std::optional<TrialValues> Propose(const SweepState& state) const override;
  // The GridPoint index trial `trial` gets.
  static int64_t PointOf(const SweepSpec& spec, int64_t trial);
};

// DrawValues with TrialRng(seed, trial, 0).
class RandomStrategy : public SearchStrategy {
 public:
  std::optional<TrialValues> Propose(const SweepState& state) const override;
};

// Gaussian-process Bayesian optimization (gaussian_process.h): random draws (as RandomStrategy)
// until `initial_points` trials have an objective; then a GP fitted by marginal likelihood to the
// finished trials (objective turned to minimization and standardized), with each running trial
// added at the worst observed value (the constant liar: a parallel batch spreads out instead of
// proposing the same point), and the point of largest expected improvement among `candidates`
// random points and `refine_steps` local perturbations of the best few.
class BayesianStrategy : public SearchStrategy {
 public:
  struct Options {
    int initial_points = 0;  // 0: max(5, parameters + 1)
    int candidates = 2000;
    int refined = 5;  // the best candidates refined locally
    int refine_steps = 40;
  };
  BayesianStrategy() = default;
  explicit BayesianStrategy(Options options) : options_(options) {}
  std::optional<TrialValues> Propose(const SweepState& state) const override;
  int InitialPoints(const SweepSpec& spec) const;

 private:
  Options options_;
};

std::unique_ptr<SearchStrategy> MakeStrategy(StrategyType type);

}  // namespace shardtune::sweep
