// Hyperparameter sweeps (launcher/sweep/): the spec's problems with line:column, trial jobs, the
// grid's order, the random draws, the GP against its closed form, Bayesian against random on
// Branin, ASHA and median decisions on hand-made curves, resume from trials.jsonl, the header a
// report reads the spec back from, and how many trials share the machine's slots.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <fstream>
#include <iostream>
#include <numeric>

#include "launcher/sweep/early_termination.h"
#include "launcher/sweep/gaussian_process.h"
#include "launcher/sweep/strategies.h"
#include "launcher/sweep/sweep_search.h"
#include "launcher/sweep/sweep_spec.h"
#include "launcher/sweep/trial_job.h"
#include "launcher/sweep/trial_slots.h"
#include "test_util.h"

namespace shardtune::sweep {
namespace {

namespace fs = std::filesystem;
using shardtune::testing::ScratchDir;
using shardtune::testing::WriteText;

constexpr const char* kBase = R"(name: base
model: {path: model, task: sequence_classification}
method: {type: lora, lora: {r: 8}}
data: {train: data/train.jsonl, format: classification, validation_split: 0.1}
training: {epochs: 1, eval_every: 50, optimizer: {lr: 1.0e-4}}
output: {dir: runs/base}
)";

// The issue's example, with the metric the evaluation reports (accuracy, not val_accuracy).
constexpr const char* kSweep = R"(name: lora-lr-rank
base: job.yaml
parameters:
  training.optimizer.lr: {log_uniform: [1.0e-5, 1.0e-2]}
  method.lora.r: {choice: [4, 8, 16, 32]}
  training.scheduler.warmup_steps: {int_uniform: [0, 200]}
  training.epochs: {grid: [1, 2, 3]}
strategy: bayesian
objective: {metric: accuracy, goal: maximize}
max_trials: 24
parallel_trials: 4
early_termination: {type: asha, min_steps: 50, reduction_factor: 3}
seed: 7
)";

class SweepSpecTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteText(dir_ / "job.yaml", kBase); }

  SweepSpec Parse(const std::string& yaml) {
    SweepOptions options;
    options.job.check_files = false;
    return ParseSweepSpec(yaml, "sweep.yaml", dir_.path(), options);
  }

  std::vector<std::string> Problems(const std::string& yaml) {
    try {
      Parse(yaml);
    } catch (const SpecError& e) {
      return e.problems();
    }
    ADD_FAILURE() << "expected the sweep spec to be refused:\n" << yaml;
    return {};
  }

  ScratchDir dir_;
};

TEST(JobSpecKeyPathsTest, ListsTheParsersLeafKeys) {
  const std::vector<std::string>& paths = JobSpecKeyPaths();
  for (const char* path : {"name", "training.optimizer.lr", "method.lora.r", "training.scheduler.warmup_steps",
                           "training.attention_dropout", "data.validation_split", "output.dir", "resources.nodes"})
    EXPECT_TRUE(std::binary_search(paths.begin(), paths.end(), path)) << path;
  for (const char* section : {"training", "training.optimizer", "method.lora", "data.tasks[0].name"})
    EXPECT_FALSE(std::binary_search(paths.begin(), paths.end(), section)) << section;
  EXPECT_TRUE(std::is_sorted(paths.begin(), paths.end()));
}

TEST_F(SweepSpecTest, TheIssuesExampleParses) {
  const SweepSpec spec = Parse(kSweep);
  EXPECT_EQ(spec.name, "lora-lr-rank");
  EXPECT_EQ(spec.base, (dir_.path() / "job.yaml").string());
  EXPECT_EQ(spec.dir, (dir_.path() / "sweeps/lora-lr-rank").string());
  EXPECT_EQ(spec.base_yaml, kBase);
  ASSERT_EQ(spec.parameters.size(), 4u);
  EXPECT_EQ(spec.parameters[0].path, "training.optimizer.lr");
  EXPECT_EQ(spec.parameters[0].distribution, Distribution::kLogUniform);
  EXPECT_DOUBLE_EQ(spec.parameters[0].low, 1e-5);
  EXPECT_DOUBLE_EQ(spec.parameters[0].high, 1e-2);
  EXPECT_EQ(spec.parameters[1].values, (std::vector<nlohmann::json>{4, 8, 16, 32}));
  EXPECT_EQ(spec.parameters[2].distribution, Distribution::kIntUniform);
  EXPECT_EQ(spec.parameters[3].distribution, Distribution::kGrid);
  EXPECT_EQ(spec.strategy, StrategyType::kBayesian);
  EXPECT_EQ(spec.objective.metric, "accuracy");
  EXPECT_EQ(spec.objective.goal, Goal::kMaximize);
  EXPECT_EQ(spec.max_trials, 24);
  EXPECT_EQ(spec.parallel_trials, 4);
  EXPECT_EQ(spec.early_termination.type, TerminationType::kAsha);
  EXPECT_EQ(spec.early_termination.min_steps, 50);
  EXPECT_EQ(spec.early_termination.reduction_factor, 3);
  EXPECT_EQ(spec.seed, 7u);
}

TEST_F(SweepSpecTest, EveryProblemAtOnceWithLineAndColumn) {
  const auto problems = Problems(R"(name: bad
base: job.yaml
parameters:
  training.optimiser.lr: {log_uniform: [0, 1.0e-2]}
  method.lora.r: {choice: []}
  training.scheduler.warmup_steps: {int_uniform: [200, 10]}
  lr: {uniform: [0.1, 0.2]}
  training.epochs: {gird: [1, 2]}
strategy: bayesain
objective: {metric: val_accuracy}
max_trials: 8
)");
  const std::vector<std::string> expected = {
      "parameters.training.optimiser.lr (line 4, column 3): 'training.optimiser.lr' is not a key path of the job "
      "spec (did you mean 'training.optimizer.lr'?)",
      "parameters.training.optimiser.lr.log_uniform (line 4, column 40): a log range must be positive: low is 0",
      "parameters.method.lora.r.choice (line 5, column 27): expected a non-empty list of values, got a list",
      "parameters.training.scheduler.warmup_steps.int_uniform (line 6, column 50): low 200 must be below high 10",
      "parameters.lr (line 7, column 3): 'lr' is not a key path of the job spec (did you mean "
      "'training.optimizer.lr'?)",
      "parameters.training.epochs.gird (line 8, column 21): unknown key 'gird' (did you mean 'grid'?)",
      "parameters.training.epochs (line 8, column 20): expected one of log_uniform, uniform, int_uniform, choice, "
      "grid",
      "strategy (line 9, column 11): 'bayesain' is not one of: grid, random, bayesian (did you mean 'bayesian'?)",
      "objective.metric (line 10, column 21): 'val_accuracy' is not a metric the evaluation reports (did you mean "
      "'accuracy'?); expected one of: val_loss, perplexity, token_accuracy, accuracy, macro_f1, micro_f1, "
      "entity_precision, entity_recall, entity_f1, exact_match, rouge_l, bleu, json_parse_rate, json_field_f1",
  };
  EXPECT_EQ(problems, expected);
}

TEST_F(SweepSpecTest, ChecksAgainstTheBaseJob) {
  // A metric the base's task does not report; a range end the job refuses; the sweep's own keys.
  WriteText(dir_ / "lm.yaml", R"(name: lm
model: {path: model}
data: {train: data/train.jsonl, format: tokens}
output: {dir: runs/lm}
)");
  const auto problems = Problems(R"(name: lm-sweep
base: lm.yaml
parameters:
  training.optimizer.lr: {uniform: [0, 1.0e-3]}
  output.dir: {choice: [a, b]}
objective: {metric: accuracy}
early_termination: {type: median, min_trials: 2, reduction_factor: 2}
max_trials: 4
)");
  const std::vector<std::string> expected = {
      "parameters.output.dir (line 5, column 3): is set by the sweep for each trial (NAME-NNN, SWEEP_DIR/trials/NNN)",
      "early_termination.reduction_factor (line 7, column 68): does not apply to early_termination.type 'median'",
      "objective.metric (line 6, column 21): 'accuracy' is not reported by a causal_lm evaluation (the base's "
      "model.task); expected one of: val_loss, perplexity, token_accuracy, exact_match, rouge_l, bleu, "
      "json_parse_rate, json_field_f1",
      "base (line 2, column 7): the base job has no validation data (data.validation or data.validation_split): its "
      "trials would report no objective",
      "early_termination.type (line 7, column 27): needs evaluations during training, but the base's "
      "training.eval_every is 0 (it evaluates only after its last step)",
      "parameters.training.optimizer.lr (line 4, column 26): the value 0.0 makes the base job invalid: "
      "training.optimizer.lr: must be in (0, 1000], got 0",
  };
  EXPECT_EQ(problems, expected);
}

// A generation metric is an objective only when the base generates it (evaluation.generate).
TEST_F(SweepSpecTest, AGenerationMetricNeedsTheBaseToAskForIt) {
  WriteText(dir_ / "lm.yaml", R"(name: lm
model: {path: model}
data: {train: data/train.jsonl, format: completion, validation_split: 0.2}
output: {dir: runs/lm}
)");
  const auto problems = Problems(R"(name: lm-sweep
base: lm.yaml
parameters:
  training.optimizer.lr: {uniform: [1.0e-5, 1.0e-3]}
objective: {metric: rouge_l}
max_trials: 2
)");
  const std::vector<std::string> expected = {
      "objective.metric (line 5, column 21): 'rouge_l' is a generation metric: the base must list it in "
      "evaluation.generate.metrics"};
  EXPECT_EQ(problems, expected);
}

TEST_F(SweepSpecTest, GoalAgainstTheMetricAndGridOfARange) {
  const auto problems = Problems(R"(name: s
base: job.yaml
parameters:
  training.optimizer.lr: {log_uniform: [1.0e-5, 1.0e-2]}
strategy: grid
objective: {metric: val_loss, goal: maximize}
)");
  const std::vector<std::string> expected = {
      "objective.goal (line 6, column 37): 'maximize' would search for the worst val_loss, which improves as it "
      "falls; write minimize or leave goal out",
      "parameters.training.optimizer.lr (line 4, column 26): strategy grid cannot enumerate a continuous range "
      "(log_uniform); give the values to try as {grid: [...]}",
  };
  EXPECT_EQ(problems, expected);
}

TEST_F(SweepSpecTest, IntegerKeyRefusesAContinuousRange) {
  const auto problems = Problems(R"(name: s
base: job.yaml
parameters:
  method.lora.r: {uniform: [4, 64]}
objective: {metric: accuracy}
max_trials: 3
)");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("parameters.method.lora.r (line 4, column 18): the value 4.0 makes the base job invalid"),
            std::string::npos)
      << problems[0];
  EXPECT_NE(problems[0].find("expected an integer"), std::string::npos) << problems[0];
}

// A listed value is written to trials.jsonl as JSON, which holds UTF-8 only. The fuzzer found a
// file of valid UTF-8 whose list yaml-cpp reads into a value that is not (a NUL inside a flow
// sequence): that is a problem of the spec, not an exception out of the parse.
TEST_F(SweepSpecTest, ListedValuesMustBeUtf8Text) {
  std::ifstream in(fs::path(SHARDTUNE_SOURCE_DIR) /
                   "tests/fuzz/regressions/sweep_spec/invalid-utf8-in-a-choice-value.yaml");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(text.empty());
  const auto problems = Problems(text);
  const auto utf8 = std::find_if(problems.begin(), problems.end(),
                                 [](const std::string& p) { return p.find("is not UTF-8 text") != std::string::npos; });
  ASSERT_NE(utf8, problems.end()) << ::testing::PrintToString(problems);
  EXPECT_EQ(*utf8, "parameters.method.lora.target_modules.choice (line 7, column 41): value 1 is not UTF-8 text");
}

// The fuzz target's valid seeds (tests/fuzz/regressions/sweep_spec/valid-*) parse: the fuzzer
// starts from specs that reach the search.
TEST_F(SweepSpecTest, TheFuzzTargetsValidSeedsParse) {
  int seeds = 0;
  for (const auto& entry :
       fs::directory_iterator(fs::path(SHARDTUNE_SOURCE_DIR) / "tests/fuzz/regressions/sweep_spec")) {
    if (entry.path().filename().string().rfind("valid-", 0) != 0) continue;
    std::ifstream in(entry.path());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t cut = text.find("\n--base--\n");
    SweepOptions options;
    options.job.check_files = false;
    if (cut != std::string::npos) options.base_text = text.substr(cut + 10);
    EXPECT_NO_THROW(
        ParseSweepSpec(text.substr(0, cut == std::string::npos ? text.size() : cut + 1), "seed", dir_.path(), options))
        << entry.path();
    ++seeds;
  }
  EXPECT_GE(seeds, 3);
}

TEST_F(SweepSpecTest, MakeTrialJobRoundTrips) {
  const SweepSpec spec = Parse(kSweep);
  TrialSettings settings;
  settings.values = {{"training.optimizer.lr", 0.003},
                     {"method.lora.r", 16},
                     {"training.scheduler.warmup_steps", 25},
                     {"method.lora.target_modules", nlohmann::json::array({"q_proj", "v_proj"})},
                     {"training.label_smoothing", 0.0}};
  settings.name = "lora-lr-rank-003";
  settings.output_dir = "/sweeps/x/trials/003";
  SpecOptions options;
  options.check_files = false;
  const TrialJob job = MakeTrialJob(spec.base_yaml, dir_.path(), settings, "trial 3", options);
  EXPECT_EQ(job.spec.name, "lora-lr-rank-003");
  EXPECT_EQ(job.spec.output.dir, "/sweeps/x/trials/003");
  EXPECT_EQ(job.spec.training.optimizer.lr, 0.003);
  EXPECT_EQ(job.spec.method.lora.r, 16);
  EXPECT_EQ(job.spec.training.scheduler.warmup_steps, 25);
  EXPECT_EQ(job.spec.method.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(job.spec.training.eval_every, 50);  // the base's, untouched
  EXPECT_EQ(job.spec.model.path, (dir_.path() / "model").string());
  // The resolved spec reads back to itself.
  EXPECT_EQ(JobSpecToYaml(ParseJobSpec(job.yaml, "trial", "/", options)), job.yaml);
  // A value the job refuses is the job's error.
  settings.values = {{"method.lora.r", 0}};
  EXPECT_THROW(MakeTrialJob(spec.base_yaml, dir_.path(), settings, "trial", options), SpecError);
}

// --- strategies ----------------------------------------------------------------------------------

Parameter Range(const std::string& path, Distribution d, double low, double high) {
  Parameter p;
  p.path = path;
  p.distribution = d;
  p.low = low;
  p.high = high;
  return p;
}

Parameter Values(const std::string& path, Distribution d, std::vector<nlohmann::json> values) {
  Parameter p;
  p.path = path;
  p.distribution = d;
  p.values = std::move(values);
  return p;
}

TEST(SweepGridTest, EnumeratesTheProductLastParameterFastest) {
  SweepSpec spec;
  spec.strategy = StrategyType::kGrid;
  spec.parameters = {Values("a", Distribution::kGrid, {1, 2, 3}), Values("b", Distribution::kChoice, {"x", "y"}),
                     Range("c", Distribution::kIntUniform, 0, 1)};
  spec.max_trials = GridSize(spec.parameters);
  ASSERT_EQ(spec.max_trials, 12);
  SweepSearch search(spec, "");
  std::vector<std::string> seen;
  while (auto proposal = search.Propose()) seen.push_back(nlohmann::json(proposal->values).dump());
  const std::vector<std::string> expected = {
      R"([1,"x",0])", R"([1,"x",1])", R"([1,"y",0])", R"([1,"y",1])", R"([2,"x",0])", R"([2,"x",1])",
      R"([2,"y",0])", R"([2,"y",1])", R"([3,"x",0])", R"([3,"x",1])", R"([3,"y",0])", R"([3,"y",1])",
  };
  EXPECT_EQ(seen, expected);
}

SweepSpec RandomSpec(uint64_t seed) {
  SweepSpec spec;
  spec.strategy = StrategyType::kRandom;
  spec.seed = seed;
  spec.max_trials = 50;
  spec.parameters = {Range("lr", Distribution::kLogUniform, 1e-5, 1e-2), Range("u", Distribution::kUniform, -1, 1),
                     Range("i", Distribution::kIntUniform, 0, 200), Values("c", Distribution::kChoice, {4, 8, 16, 32})};
  return spec;
}

std::vector<TrialValues> Draw(const SweepSpec& spec, int count) {
  SweepSearch search(spec, "");
  std::vector<TrialValues> values;
  for (int i = 0; i < count; ++i) values.push_back(search.Propose()->values);
  return values;
}

// With early termination the grid is visited in a seeded order: every point once, the same for
// the same seed (a resumed sweep), not sorted (ASHA judges a trial by those before it).
TEST(SweepGridTest, WithEarlyTerminationAPermutationBySeed) {
  SweepSpec spec;
  spec.parameters = {Parameter{"a", Distribution::kGrid, 0, 0, {1, 2, 3, 4}},
                     Parameter{"b", Distribution::kGrid, 0, 0, {"x", "y", "z", "w"}}};
  spec.seed = 7;
  std::vector<int64_t> plain, shuffled, again;
  for (int64_t t = 0; t < 16; ++t) plain.push_back(GridStrategy::PointOf(spec, t));
  spec.early_termination.type = TerminationType::kAsha;
  for (int64_t t = 0; t < 16; ++t) shuffled.push_back(GridStrategy::PointOf(spec, t));
  for (int64_t t = 0; t < 16; ++t) again.push_back(GridStrategy::PointOf(spec, t));
  std::vector<int64_t> identity(16);
  std::iota(identity.begin(), identity.end(), int64_t{0});
  EXPECT_EQ(plain, identity);
  EXPECT_EQ(shuffled, again);
  EXPECT_NE(shuffled, identity);
  std::vector<int64_t> sorted = shuffled;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, identity);
  spec.seed = 8;
  std::vector<int64_t> other;
  for (int64_t t = 0; t < 16; ++t) other.push_back(GridStrategy::PointOf(spec, t));
  EXPECT_NE(other, shuffled);
  // The 2 x 2 grids of tests/e2e/sweep_test.sh (seed 0) and sweep_server_test.sh (seed 1) rely
  // on these orders.
  spec.parameters.resize(1);
  spec.parameters[0].values = {1, 2, 3, 4};
  for (const auto& [seed, expected] : {std::pair<uint64_t, std::string>{0, "1320"}, {1, "0321"}}) {
    spec.seed = seed;
    std::string order;
    for (int64_t t = 0; t < 4; ++t) order += std::to_string(GridStrategy::PointOf(spec, t));
    EXPECT_EQ(order, expected) << "seed " << seed;
  }
}

TEST(SweepRandomTest, ReproducibleBySeedAndAsDocumented) {
  const SweepSpec spec = RandomSpec(7);
  const auto first = Draw(spec, 50);
  EXPECT_EQ(first, Draw(spec, 50));
  EXPECT_NE(first, Draw(RandomSpec(8), 50));
  // Trial 3 by hand: mt19937_64 seeded by seed_seq{seed low, seed high, trial, 0}; u = top 53 bits / 2^53.
  std::seed_seq seq{7u, 0u, 3u, 0u};
  std::mt19937_64 rng(seq);
  auto u = [&] { return static_cast<double>(rng() >> 11) / 9007199254740992.0; };
  const double u0 = u(), u1 = u(), u2 = u(), u3 = u();
  EXPECT_DOUBLE_EQ(first[3][0].get<double>(), std::exp(std::log(1e-5) + u0 * (std::log(1e-2) - std::log(1e-5))));
  EXPECT_DOUBLE_EQ(first[3][1].get<double>(), -1 + u1 * 2);
  EXPECT_EQ(first[3][2].get<int64_t>(), static_cast<int64_t>(std::floor(u2 * 201)));
  EXPECT_EQ(first[3][3], (std::vector<nlohmann::json>{4, 8, 16, 32})[static_cast<size_t>(std::floor(u3 * 4))]);
  for (const TrialValues& v : first) {
    EXPECT_GE(v[0].get<double>(), 1e-5);
    EXPECT_LE(v[0].get<double>(), 1e-2);
    EXPECT_TRUE(v[2].is_number_integer());
  }
}

// --- the Gaussian process -----------------------------------------------------------------------

TEST(GaussianProcessTest, PosteriorEqualsTheClosedFormOnTwoPoints) {
  GpHyperparameters h;
  h.length_scales = Eigen::VectorXd::Constant(1, 0.5);
  h.signal_variance = 2.0;
  h.noise_variance = 0.1;
  auto k = [&](double a, double b) {
    const double r = std::fabs(a - b) / 0.5;
    return 2.0 * (1 + std::sqrt(5.0) * r + 5.0 / 3.0 * r * r) * std::exp(-std::sqrt(5.0) * r);
  };
  Eigen::MatrixXd x(2, 1);
  x << 0.0, 1.0;
  Eigen::VectorXd y(2);
  y << 1.0, -1.0;
  const GaussianProcess gp(x, y, h);
  // K = [[a, b], [b, a]] with a = s + noise: K^-1 = [[a, -b], [-b, a]] / (a^2 - b^2).
  const double a = 2.0 + 0.1, b = k(0, 1), det = a * a - b * b;
  for (const double at : {0.0, 0.3, 0.5, 2.0}) {
    const double k0 = k(at, 0), k1 = k(at, 1);
    const double mean = (k0 * (a * 1 - b * -1) + k1 * (-b * 1 + a * -1)) / det;
    const double variance = 2.0 - (k0 * (a * k0 - b * k1) + k1 * (-b * k0 + a * k1)) / det;
    const auto p = gp.Predict(Eigen::VectorXd::Constant(1, at));
    EXPECT_NEAR(p.mean, mean, 1e-10) << at;
    EXPECT_NEAR(p.variance, variance, 1e-10) << at;
  }
  // log p(y) = -y^T K^-1 y / 2 - log det K / 2 - log 2 pi.
  const double quadratic = (a * 1 + a * 1 - 2 * b * 1 * -1) / det;
  EXPECT_NEAR(gp.LogMarginalLikelihood(), -0.5 * quadratic - 0.5 * std::log(det) - std::log(2 * M_PI), 1e-10);
}

TEST(GaussianProcessTest, LogMarginalLikelihoodGradientMatchesFiniteDifferences) {
  Eigen::MatrixXd x(5, 2);
  x << 0.1, 0.9, 0.4, 0.2, 0.8, 0.5, 0.3, 0.3, 0.6, 0.7;
  Eigen::VectorXd y(5);
  y << 0.5, -1.2, 0.3, 1.1, -0.7;
  GpHyperparameters h;
  h.length_scales = Eigen::Vector2d(0.3, 0.6);
  h.signal_variance = 1.3;
  h.noise_variance = 0.05;
  Eigen::VectorXd gradient;
  GaussianProcess(x, y, h).LogMarginalLikelihood(&gradient);
  const Eigen::VectorXd theta = h.ToLog();
  for (Eigen::Index i = 0; i < theta.size(); ++i) {
    Eigen::VectorXd up = theta, down = theta;
    up[i] += 1e-6;
    down[i] -= 1e-6;
    const double numeric = (GaussianProcess(x, y, GpHyperparameters::FromLog(up)).LogMarginalLikelihood() -
                            GaussianProcess(x, y, GpHyperparameters::FromLog(down)).LogMarginalLikelihood()) /
                           2e-6;
    EXPECT_NEAR(gradient[i], numeric, 1e-6) << "parameter " << i;
  }
}

TEST(GaussianProcessTest, ExpectedImprovement) {
  EXPECT_NEAR(ExpectedImprovement(0, 1, 0), 1 / std::sqrt(2 * M_PI), 1e-15);  // sigma phi(0)
  EXPECT_DOUBLE_EQ(ExpectedImprovement(1, 0, 3), 2);                          // certain: the improvement
  // mean 1, sigma 2, best 0: -1 Phi(-0.5) + 2 phi(-0.5).
  EXPECT_NEAR(ExpectedImprovement(1, 4, 0), -1 * 0.3085375387259869 + 2 * 0.3520653267642995, 1e-12);
}

// --- Bayesian against random on Branin -----------------------------------------------------------

double Branin(double x1, double x2) {
  const double b = 5.1 / (4 * M_PI * M_PI), c = 5 / M_PI, t = 1 / (8 * M_PI);
  return std::pow(x2 - b * x1 * x1 + c * x1 - 6, 2) + 10 * (1 - t) * std::cos(x1) + 10;
}

// The best Branin value found in `trials` sequential evaluations.
double BestOnBranin(StrategyType strategy, uint64_t seed, int trials) {
  SweepSpec spec;
  spec.strategy = strategy;
  spec.seed = seed;
  spec.max_trials = trials;
  spec.objective = {"val_loss", Goal::kMinimize};
  spec.parameters = {Range("x1", Distribution::kUniform, -5, 10), Range("x2", Distribution::kUniform, 0, 15)};
  SweepSearch search(spec, "");
  double best = INFINITY;
  while (auto p = search.Propose()) {
    const double value = Branin(p->values[0].get<double>(), p->values[1].get<double>());
    search.Evaluated(p->trial, 1, value);
    search.Finished(p->trial, TrialStatus::kCompleted, 1);
    best = std::min(best, value);
  }
  return best;
}

TEST(SweepBayesianTest, BeatsRandomOnBraninIn30Evaluations) {
  constexpr double kMinimum = 0.397887357729738;  // Branin's global minimum
  double bayes_sum = 0, random_sum = 0;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    const double bayes = BestOnBranin(StrategyType::kBayesian, seed, 30);
    const double random = BestOnBranin(StrategyType::kRandom, seed, 30);
    std::printf("Branin, 30 evaluations, seed %d: bayesian %.6f, random %.6f (minimum %.6f)\n", int(seed), bayes,
                random, kMinimum);
    bayes_sum += bayes;
    random_sum += random;
    EXPECT_LT(bayes - kMinimum, 0.1) << "seed " << seed;
  }
  std::printf("Branin mean best over seeds 1-5: bayesian %.6f, random %.6f\n", bayes_sum / 5, random_sum / 5);
  EXPECT_LT(bayes_sum, random_sum);
}

TEST(SweepBayesianTest, ExpectedImprovementPicksTheMidpointBetweenTwoEqualObservations) {
  // y = 5 at x = 0 and x = 1: the posterior mean is flat, so EI grows with the posterior
  // variance, which a stationary kernel makes largest halfway between: x = 0.5.
  SweepSpec spec;
  spec.strategy = StrategyType::kBayesian;
  spec.seed = 1;
  spec.max_trials = 3;
  spec.objective = {"val_loss", Goal::kMinimize};
  spec.parameters = {Range("x", Distribution::kUniform, 0, 1)};
  SweepState state(spec);
  for (int t = 0; t < 2; ++t) {
    state.Apply(ProposedEvent(spec, t, {double(t)}));
    state.Apply(EvaluatedEvent(t, 1, 5.0));
    state.Apply({{"event", "finished"}, {"trial", t}, {"status", "completed"}, {"objective", 5.0}, {"steps", 1}});
  }
  BayesianStrategy::Options options;
  options.initial_points = 2;
  const TrialValues next = *BayesianStrategy(options).Propose(state);
  EXPECT_NEAR(next[0].get<double>(), 0.5, 0.01);
}

TEST(SweepBayesianTest, ExpectedImprovementFindsTheMinimumOfAParabola) {
  // (x - 0.3)^2 seen at 0, 0.2, ..., 1: the next point is the parabola's minimum.
  SweepSpec spec;
  spec.strategy = StrategyType::kBayesian;
  spec.seed = 1;
  spec.max_trials = 10;
  spec.objective = {"val_loss", Goal::kMinimize};
  spec.parameters = {Range("x", Distribution::kUniform, 0, 1)};
  SweepState state(spec);
  for (int t = 0; t < 6; ++t) {
    const double x = 0.2 * t, y = (x - 0.3) * (x - 0.3);
    state.Apply(ProposedEvent(spec, t, {x}));
    state.Apply({{"event", "finished"}, {"trial", t}, {"status", "completed"}, {"objective", y}, {"steps", 1}});
  }
  const TrialValues next = *BayesianStrategy().Propose(state);
  EXPECT_NEAR(next[0].get<double>(), 0.3, 0.03);
}

TEST(SweepBayesianTest, ConstantLiarSpreadsABatch) {
  // Six finished trials, then a batch of three proposed while the earlier ones run: the running
  // trials count as the worst value, so no two proposals of the batch coincide.
  SweepSpec spec;
  spec.strategy = StrategyType::kBayesian;
  spec.seed = 3;
  spec.max_trials = 20;
  spec.objective = {"val_loss", Goal::kMinimize};
  spec.parameters = {Range("x1", Distribution::kUniform, -5, 10), Range("x2", Distribution::kUniform, 0, 15)};
  SweepSearch search(spec, "");
  for (int i = 0; i < 6; ++i) {
    const Proposal p = *search.Propose();
    search.Evaluated(p.trial, 1, Branin(p.values[0].get<double>(), p.values[1].get<double>()));
    search.Finished(p.trial, TrialStatus::kCompleted, 1);
  }
  std::vector<std::vector<double>> batch;
  for (int i = 0; i < 3; ++i) batch.push_back(Encode(spec.parameters, search.Propose()->values));
  for (size_t i = 0; i < batch.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      EXPECT_GT(std::hypot(batch[i][0] - batch[j][0], batch[i][1] - batch[j][1]), 0.02) << i << " and " << j;
}

// --- early termination ---------------------------------------------------------------------------

SweepSpec CurveSpec(TerminationType type) {
  SweepSpec spec;
  spec.strategy = StrategyType::kRandom;
  spec.max_trials = 10;
  spec.objective = {"val_loss", Goal::kMinimize};
  spec.parameters = {Range("x", Distribution::kUniform, 0, 1)};
  spec.early_termination.type = type;
  spec.early_termination.min_steps = 10;
  spec.early_termination.reduction_factor = 3;
  spec.early_termination.min_trials = 2;
  return spec;
}

TEST(SweepEarlyTerminationTest, AshaKeepsTheTopOfEachRungOnArrival) {
  const SweepSpec spec = CurveSpec(TerminationType::kAsha);
  SweepSearch search(spec, "");
  for (int i = 0; i < 5; ++i) search.Propose();
  // Rungs at steps 10, 30, 90. Below the first rung nothing is judged.
  EXPECT_FALSE(search.Evaluated(0, 5, 9.0).stop);
  // Rung 0 in arrival order: n = 1 keeps 1, n = 2 keeps 1, n = 3 keeps 1, n = 4 keeps 2.
  EXPECT_FALSE(search.Evaluated(0, 10, 1.0).stop);          // 1.0 alone
  EXPECT_FALSE(search.Evaluated(1, 10, 0.8).stop);          // best of 2
  const StopDecision third = search.Evaluated(2, 10, 1.2);  // third of 3
  EXPECT_TRUE(third.stop);
  EXPECT_EQ(third.reason, "ASHA rung 0 (step 10): val_loss 1.2 is not in the top 1 of the 3 trials there");
  EXPECT_FALSE(search.Evaluated(3, 10, 0.9).stop);  // second of 4: top 2
  EXPECT_TRUE(search.Evaluated(4, 10, 1.1).stop);   // fourth of 5: top 2
  // Between rungs nothing is judged; trial 0's value at rung 1 is its best up to step 30.
  EXPECT_FALSE(search.Evaluated(0, 20, 5.0).stop);
  EXPECT_FALSE(search.Evaluated(1, 30, 0.7).stop);  // first at rung 1
  EXPECT_TRUE(search.Evaluated(0, 30, 0.95).stop);  // 0.95 after 0.7: n = 2 keeps 1
  // The stopped trials keep their best evaluation as the objective.
  search.Finished(2, TrialStatus::kStopped, 10);
  search.Finished(0, TrialStatus::kCompleted, 30);  // the runner's word after a stop: still stopped
  EXPECT_EQ(search.state().trial(0).status, TrialStatus::kStopped);
  EXPECT_EQ(*search.state().trial(0).objective, 0.95);
  EXPECT_EQ(*search.state().trial(2).objective, 1.2);
  // An evaluation already recorded (a rerun after a resume) is not judged again.
  EXPECT_FALSE(search.Evaluated(1, 30, 99).stop);
  EXPECT_EQ(search.state().trial(1).evaluations.back().value, 0.7);
}

TEST(SweepEarlyTerminationTest, MedianRuleAfterMinTrials) {
  const SweepSpec spec = CurveSpec(TerminationType::kMedian);
  SweepSearch search(spec, "");
  for (int i = 0; i < 5; ++i) search.Propose();
  EXPECT_FALSE(search.Evaluated(0, 10, 1.0).stop);
  EXPECT_FALSE(search.Evaluated(0, 20, 0.9).stop);
  EXPECT_FALSE(search.Evaluated(1, 10, 5.0).stop);  // only one other trial at step 10: min_trials is 2
  EXPECT_FALSE(search.Evaluated(1, 20, 0.7).stop);  // one other at step 20
  // Step 10: trial 0's best 1.0, trial 1's 5.0: median 3.0.
  const StopDecision worse = search.Evaluated(2, 10, 3.5);
  EXPECT_TRUE(worse.stop);
  EXPECT_EQ(worse.reason, "median rule at step 10: best val_loss 3.5 is worse than the median 3 of 2 other trials");
  EXPECT_FALSE(search.Evaluated(3, 10, 2.9).stop);
  // Step 20: trial 0 best 0.9, trial 1 best 0.7 (the others have not reached 20): median 0.8;
  // trial 3's best up to 20 is 0.85.
  EXPECT_TRUE(search.Evaluated(3, 20, 0.85).stop);
  EXPECT_FALSE(search.Evaluated(4, 10, 0.1).stop);
  search.Finished(3, TrialStatus::kStopped, 20);
  EXPECT_EQ(*search.state().trial(3).objective, 0.85);
}

// --- trials.jsonl: resume --------------------------------------------------------------------------

TEST(SweepResumeTest, ReplayGivesTheSameStateAndTheSameNextProposals) {
  ScratchDir dir;
  SweepSpec spec = CurveSpec(TerminationType::kAsha);
  spec.strategy = StrategyType::kBayesian;
  spec.seed = 11;
  spec.max_trials = 20;
  spec.parallel_trials = 3;
  spec.parameters = {Range("x1", Distribution::kUniform, -5, 10), Range("x2", Distribution::kUniform, 0, 15),
                     Values("c", Distribution::kChoice, {"a", "b"})};
  const fs::path journal = dir / "trials.jsonl";
  SweepSearch live(spec, journal);
  // Nine trials: the first seven finish (one stopped by ASHA, one failed), two stay running.
  for (int i = 0; i < 9; ++i) {
    const Proposal p = *live.Propose();
    if (i >= 7) continue;
    const double value = Branin(p.values[0].get<double>(), p.values[1].get<double>());
    live.Evaluated(p.trial, 10, value);
    if (i == 4) {
      live.Finished(p.trial, TrialStatus::kFailed, 10, "worker exited with 1");
      continue;
    }
    live.Finished(p.trial, TrialStatus::kCompleted, 10);
  }
  // A crash in the middle of a write leaves a torn line: dropped on replay.
  fs::copy_file(journal, dir / "copy.jsonl");
  std::ofstream(dir / "copy.jsonl", std::ios::app) << R"({"event":"evaluated","tri)";
  SweepSearch resumed(spec, dir / "copy.jsonl");
  EXPECT_EQ(resumed.Running(), (std::vector<int64_t>{7, 8}));
  ASSERT_EQ(resumed.state().trials().size(), live.state().trials().size());
  for (size_t i = 0; i < live.state().trials().size(); ++i) {
    const TrialRecord &a = live.state().trials()[i], &b = resumed.state().trials()[i];
    EXPECT_EQ(a.values, b.values);
    EXPECT_EQ(a.status, b.status);
    EXPECT_EQ(a.objective, b.objective);
  }
  EXPECT_EQ(resumed.state().Best(), live.state().Best());
  // The same next proposals (the constant liar sees trials 7 and 8 running in both).
  for (int i = 0; i < 3; ++i) {
    const Proposal a = *live.Propose(), b = *resumed.Propose();
    EXPECT_EQ(a.trial, b.trial);
    EXPECT_EQ(nlohmann::json(a.values).dump(), nlohmann::json(b.values).dump());
  }
  // Another sweep's file is refused.
  SweepSpec other = spec;
  other.seed = 12;
  try {
    SweepSearch wrong(other, journal);
    ADD_FAILURE() << "another sweep's trials.jsonl was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("trials.jsonl:1: it was written by another sweep: its seed is 11"),
              std::string::npos)
        << e.what();
  }
}

TEST(SweepHeaderTest, RecordsTheSpaceAndObjectiveAReportReadsBack) {
  SweepSpec spec = CurveSpec(TerminationType::kNone);
  spec.name = "header";
  spec.strategy = StrategyType::kBayesian;
  spec.seed = 5;
  spec.objective = {"accuracy", Goal::kMaximize};
  spec.parameters = {Range("training.optimizer.lr", Distribution::kLogUniform, 1e-5, 1e-2),
                     Range("training.scheduler.warmup_steps", Distribution::kIntUniform, 0, 200),
                     Values("method.lora.target_modules", Distribution::kChoice, {"all-linear", "q_proj"})};
  const nlohmann::json header = nlohmann::json::parse(HeaderEvent(spec).dump());
  const SweepSpec back = SpecFromHeader(header);
  EXPECT_EQ(back.name, "header");
  EXPECT_EQ(back.strategy, StrategyType::kBayesian);
  EXPECT_EQ(back.seed, 5u);
  EXPECT_EQ(back.objective.metric, "accuracy");
  EXPECT_EQ(back.objective.goal, Goal::kMaximize);
  ASSERT_EQ(back.parameters.size(), 3u);
  EXPECT_EQ(back.parameters[0].distribution, Distribution::kLogUniform);
  EXPECT_EQ(back.parameters[0].low, 1e-5);
  EXPECT_EQ(back.parameters[0].high, 1e-2);
  EXPECT_EQ(back.parameters[1].distribution, Distribution::kIntUniform);
  EXPECT_EQ(back.parameters[1].high, 200);
  EXPECT_EQ(back.parameters[2].distribution, Distribution::kChoice);
  EXPECT_EQ(back.parameters[2].values, (std::vector<nlohmann::json>{"all-linear", "q_proj"}));
  // The header still matches the spec on resume (the replay compares name, strategy, seed, paths).
  SweepState state(spec);
  EXPECT_NO_THROW(state.Apply(header));
  // A header written before "space" and "objective" existed: a report cannot read it.
  nlohmann::json old = header;
  old.erase("space");
  try {
    SpecFromHeader(old);
    ADD_FAILURE() << "a header without its space was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFailedPrecondition);
  }
}

TEST(TrialSlotsTest, TrialsShareTheSlotsLikeRanks) {
  // parallel_trials 4 on 2 cores, one rank each: 2 at once, one thread each.
  EXPECT_EQ(PlanTrialSlots(4, 2, 1).at_once, 2);
  EXPECT_EQ(PlanTrialSlots(4, 2, 1).threads_per_rank, 1);
  // Fewer trials than slots: each rank gets the rest as threads.
  EXPECT_EQ(PlanTrialSlots(2, 16, 2).at_once, 2);
  EXPECT_EQ(PlanTrialSlots(2, 16, 2).threads_per_rank, 4);
  EXPECT_EQ(PlanTrialSlots(1, 8, 1).threads_per_rank, 8);
  // Trials of 2 ranks on 5 slots: 2 at once, the odd slot left over.
  EXPECT_EQ(PlanTrialSlots(8, 5, 2).at_once, 2);
  EXPECT_EQ(PlanTrialSlots(8, 5, 2).threads_per_rank, 1);
  // A trial wider than the machine still runs, alone.
  EXPECT_EQ(PlanTrialSlots(4, 2, 4).at_once, 1);
  EXPECT_EQ(PlanTrialSlots(4, 2, 4).threads_per_rank, 1);
  EXPECT_GE(AvailableCores(), 1);
}

}  // namespace
}  // namespace shardtune::sweep
