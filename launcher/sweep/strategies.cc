#include "launcher/sweep/strategies.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "launcher/sweep/gaussian_process.h"

namespace shardtune::sweep {

namespace {

// A standard normal draw (Box-Muller on UnitDraw: the same numbers on every platform).
double NormalDraw(std::mt19937_64& rng) {
  const double u1 = 1.0 - UnitDraw(rng);  // (0, 1]
  const double u2 = UnitDraw(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * M_PI * u2);
}

Eigen::VectorXd ToEigen(const std::vector<double>& v) { return Eigen::Map<const Eigen::VectorXd>(v.data(), v.size()); }

// A neighbour of `features`: each range moved by N(0, scale) (clamped to [0, 1]), each choice
// switched to a random value with probability 0.2; then snapped to valid values (integers).
std::vector<double> Perturb(const std::vector<Parameter>& parameters, const std::vector<double>& features, double scale,
                            std::mt19937_64& rng) {
  std::vector<double> out = features;
  size_t at = 0;
  for (const Parameter& p : parameters) {
    if (p.IsRange()) {
      out[at] = std::clamp(out[at] + scale * NormalDraw(rng), 0.0, 1.0);
      ++at;
      continue;
    }
    const size_t k = p.values.size();
    if (UnitDraw(rng) < 0.2) {
      const auto pick = static_cast<size_t>(std::floor(UnitDraw(rng) * static_cast<double>(k)));
      for (size_t i = 0; i < k; ++i) out[at + i] = i == pick ? 1.0 : 0.0;
    }
    at += k;
  }
  return Encode(parameters, Decode(parameters, out));
}

}  // namespace

int64_t GridStrategy::PointOf(const SweepSpec& spec, int64_t trial) {
  const int64_t size = GridSize(spec.parameters);
  if (spec.early_termination.type == TerminationType::kNone || size > kShuffledGridLimit) return trial;
  std::vector<int64_t> order(static_cast<size_t>(size));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::mt19937_64 rng = TrialRng(spec.seed, 0, 3);
  for (int64_t i = size - 1; i > 0; --i) {  // Fisher-Yates, with UnitDraw's exact draws
    const auto j = static_cast<int64_t>(UnitDraw(rng) * static_cast<double>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(std::min(j, i))]);
  }
  return order[static_cast<size_t>(trial)];
}

std::optional<TrialValues> GridStrategy::Propose(const SweepState& state) const {
  const auto trial = static_cast<int64_t>(state.trials().size());
  if (trial >= GridSize(state.spec().parameters)) return std::nullopt;
  return GridPoint(state.spec().parameters, PointOf(state.spec(), trial));
}

std::optional<TrialValues> RandomStrategy::Propose(const SweepState& state) const {
  std::mt19937_64 rng = TrialRng(state.spec().seed, static_cast<int64_t>(state.trials().size()), 0);
  return DrawValues(state.spec().parameters, rng);
}

int BayesianStrategy::InitialPoints(const SweepSpec& spec) const {
  return options_.initial_points > 0 ? options_.initial_points
                                     : std::max<int>(5, static_cast<int>(spec.parameters.size()) + 1);
}

std::optional<TrialValues> BayesianStrategy::Propose(const SweepState& state) const {
  const SweepSpec& spec = state.spec();
  const std::vector<Parameter>& parameters = spec.parameters;
  const auto trial = static_cast<int64_t>(state.trials().size());
  std::vector<const TrialRecord*> observed, running;
  for (const TrialRecord& t : state.trials()) {
    if (t.Finished() && t.objective) observed.push_back(&t);
    if (!t.Finished()) running.push_back(&t);
  }
  if (static_cast<int>(observed.size()) < InitialPoints(spec)) return RandomStrategy().Propose(state);

  const auto dims = static_cast<Eigen::Index>(FeatureCount(parameters));
  const auto n = static_cast<Eigen::Index>(observed.size());
  const auto m = static_cast<Eigen::Index>(running.size());
  Eigen::MatrixXd x(n + m, dims);
  Eigen::VectorXd y(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    x.row(i) = ToEigen(Encode(parameters, observed[i]->values)).transpose();
    // The GP minimizes: a maximized objective is negated.
    y[i] = spec.objective.goal == Goal::kMaximize ? -*observed[i]->objective : *observed[i]->objective;
  }
  const double mean = y.mean();
  const double spread = std::sqrt((y.array() - mean).square().mean());
  y = (y.array() - mean) / (spread > 1e-12 ? spread : 1.0);
  std::mt19937_64 fit_rng = TrialRng(spec.seed, trial, 1);
  // Equal objectives say nothing about the hyperparameters (the likelihood then favours a flat,
  // noiseless fit that leaves EI zero everywhere): the defaults make EI follow the posterior
  // variance, i.e. explore away from the trials so far.
  const GpHyperparameters h =
      spread > 1e-12 ? FitHyperparameters(x.topRows(n), y, fit_rng) : DefaultHyperparameters(static_cast<int>(dims));

  // The constant liar: each running trial as if it had finished at the worst value seen.
  Eigen::VectorXd y_all(n + m);
  y_all << y, Eigen::VectorXd::Constant(m, y.maxCoeff());
  for (Eigen::Index i = 0; i < m; ++i) x.row(n + i) = ToEigen(Encode(parameters, running[i]->values)).transpose();
  const GaussianProcess gp(x, y_all, h);
  const double best = y.minCoeff();
  auto score = [&](const std::vector<double>& features) {
    const GaussianProcess::Prediction p = gp.Predict(ToEigen(features));
    return ExpectedImprovement(p.mean, p.variance, best);
  };

  std::mt19937_64 rng = TrialRng(spec.seed, trial, 2);
  std::vector<std::pair<double, std::vector<double>>> candidates;
  for (int i = 0; i < options_.candidates; ++i) {
    std::vector<double> features = Encode(parameters, DrawValues(parameters, rng));
    const double ei = score(features);
    candidates.emplace_back(ei, std::move(features));
  }
  const auto top = std::min<size_t>(static_cast<size_t>(options_.refined), candidates.size());
  std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(top), candidates.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  std::pair<double, std::vector<double>> chosen = candidates[0];
  for (size_t c = 0; c < top; ++c) {
    std::pair<double, std::vector<double>> current = candidates[c];
    for (int step = 0; step < options_.refine_steps; ++step) {
      // From a tenth of each range down to a hundredth.
      const double scale = 0.1 - 0.09 * step / std::max(1, options_.refine_steps - 1);
      std::vector<double> next = Perturb(parameters, current.second, scale, rng);
      const double ei = score(next);
      if (ei > current.first) current = {ei, std::move(next)};
    }
    if (current.first > chosen.first) chosen = current;
  }
  return Decode(parameters, chosen.second);
}

std::unique_ptr<SearchStrategy> MakeStrategy(StrategyType type) {
  switch (type) {
    case StrategyType::kGrid:
      return std::make_unique<GridStrategy>();
    case StrategyType::kBayesian:
      return std::make_unique<BayesianStrategy>();
    default:
      return std::make_unique<RandomStrategy>();
  }
}

}  // namespace shardtune::sweep
