#pragma once
// The sweep spec (docs/sweeps.md): a base job spec, the parameters to search (job-spec key paths,
// each with a range or a list of values), how to search them, the objective, and when to stop a
// trial early. Parsed like the job spec (common/job_spec_reader.h's MapReader): every problem of
// the file at once, each with its key path and line:column. No LibTorch.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"

namespace shardtune::sweep {

// How one parameter's values are drawn. Ranges are inclusive of both ends.
enum class Distribution {
  kLogUniform,  // a double in [low, high], 0 < low < high, uniform in log space
  kUniform,     // a double in [low, high]
  kIntUniform,  // an integer in [low, high]
  kChoice,      // one of `values` (any YAML values: numbers, strings, lists)
  kGrid,        // one of `values`; what strategy grid enumerates (random and bayesian: as choice)
};

struct Parameter {
  std::string path;  // a job-spec key path, e.g. training.optimizer.lr
  Distribution distribution = Distribution::kUniform;
  double low = 0, high = 0;            // the ranges
  std::vector<nlohmann::json> values;  // choice and grid, in the file's order

  bool IsRange() const { return distribution != Distribution::kChoice && distribution != Distribution::kGrid; }
  // A range grid search cannot enumerate.
  bool IsContinuous() const {
    return distribution == Distribution::kLogUniform || distribution == Distribution::kUniform;
  }
};

enum class StrategyType { kGrid, kRandom, kBayesian };
enum class Goal { kMinimize, kMaximize };

struct Objective {
  std::string metric;  // a figure the evaluation reports (common/evaluation_metrics.h), e.g. accuracy
  Goal goal = Goal::kMinimize;
  // a is strictly better than b.
  bool Better(double a, double b) const { return goal == Goal::kMinimize ? a < b : a > b; }
};

enum class TerminationType { kNone, kAsha, kMedian };

struct EarlyTermination {
  TerminationType type = TerminationType::kNone;
  int64_t min_steps = 1;         // no trial is stopped before this step; ASHA's first rung
  int64_t reduction_factor = 3;  // ASHA: rungs at min_steps * reduction_factor^k; 1/reduction_factor continue
  int64_t min_trials = 3;        // median: other trials needed at a step before the rule judges
};

struct SweepSpec {
  std::string name;       // [a-z0-9-]; trial N's job is named NAME-NNN
  std::string base;       // the base job spec's absolute path
  std::string dir;        // SWEEP_DIR: trials.jsonl, trials/NNN/, best; default sweeps/NAME beside the sweep file
  std::string base_yaml;  // its text (read when the spec is loaded; the trials are made from it)
  std::vector<Parameter> parameters;  // in the file's order: the order of grid loops and random draws
  StrategyType strategy = StrategyType::kRandom;
  Objective objective;
  int64_t max_trials = 0;  // grid: defaults to the grid's size
  int64_t parallel_trials = 1;
  EarlyTermination early_termination;
  uint64_t seed = 0;

  std::vector<std::string> ParameterPaths() const;
};

struct SweepOptions {
  // How the base job spec (and each trial's) is read; check_files = false checks no paths.
  SpecOptions job;
  // Read the base job spec and check the sweep against it (the objective's task, validation data,
  // evaluations for early termination, each range's ends as the job's values). Off: the sweep
  // file alone (base_yaml left empty).
  bool load_base = true;
  // The base's text instead of the file `base` names (the fuzz target's; tests).
  std::optional<std::string> base_text;
};

// Parses and validates a sweep spec. `source` names it in errors; `base` resolves against
// `base_dir` (the sweep file's directory). Throws SpecError with every problem.
SweepSpec ParseSweepSpec(const std::string& yaml_text, const std::string& source, const std::filesystem::path& base_dir,
                         const SweepOptions& options = {});
SweepSpec LoadSweepSpec(const std::filesystem::path& path, const SweepOptions& options = {});

// The number of points the grid strategy enumerates (product of each parameter's values; an
// int_uniform counts its integers); 0 when a parameter is continuous. Saturates at INT64_MAX.
int64_t GridSize(const std::vector<Parameter>& parameters);

const char* ToString(Distribution v);
const char* ToString(StrategyType v);
const char* ToString(Goal v);
const char* ToString(TerminationType v);
// The value ToString spells `name`; nullopt for another word.
std::optional<Distribution> DistributionNamed(const std::string& name);
std::optional<StrategyType> StrategyNamed(const std::string& name);
std::optional<Goal> GoalNamed(const std::string& name);

// A parameter as trials.jsonl's header records it: {"path", "distribution", "low", "high"} for a
// range, {"path", "distribution", "values"} for a list; and back (throws Error(kDataLoss) naming
// what is missing or unknown).
nlohmann::json ParameterToJson(const Parameter& parameter);
Parameter ParameterFromJson(const nlohmann::json& object);

}  // namespace shardtune::sweep
