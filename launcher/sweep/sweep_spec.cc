// YAML -> SweepSpec, through the job spec's own readers (common/job_spec_reader.h): every problem
// of the file at once, each with its key path and line:column, unknown keys with a did-you-mean.
// The checks against the base job spec come last, so that one pass reports them all.

#include "launcher/sweep/sweep_spec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <regex>

#include "common/atomic_file.h"
#include "common/evaluation_metrics.h"
#include "common/job_spec_reader.h"
#include "launcher/sweep/trial_job.h"

namespace shardtune::sweep {

namespace fs = std::filesystem;
using spec_yaml::EnumTable;
using spec_yaml::MapReader;
using spec_yaml::NameOf;
using spec_yaml::SpecReader;

namespace {

const EnumTable<StrategyType> kStrategies = {
    {"grid", StrategyType::kGrid}, {"random", StrategyType::kRandom}, {"bayesian", StrategyType::kBayesian}};
const EnumTable<Goal> kGoals = {{"minimize", Goal::kMinimize}, {"maximize", Goal::kMaximize}};
const EnumTable<TerminationType> kTerminations = {
    {"none", TerminationType::kNone}, {"asha", TerminationType::kAsha}, {"median", TerminationType::kMedian}};
const EnumTable<Distribution> kDistributions = {{"log_uniform", Distribution::kLogUniform},
                                                {"uniform", Distribution::kUniform},
                                                {"int_uniform", Distribution::kIntUniform},
                                                {"choice", Distribution::kChoice},
                                                {"grid", Distribution::kGrid}};

// The most trials a sweep may ask for: each is a training run with a directory of its own.
constexpr int64_t kMaxTrials = 100000;
// Trial N's job is NAME-NNNNN at most: the job name's 64 characters leave the sweep's name 58.
constexpr size_t kMaxNameLength = 58;

// Keys the sweep itself sets in every trial's job.
const std::vector<std::string> kSetBySweep = {"name", "output.dir"};

// The job-spec key path closest to `path`: a typo of the whole path, else the paths that end in
// the same key ("lr" -> training.optimizer.lr).
std::string SuggestKeyPath(const std::string& path, const std::vector<std::string>& paths) {
  std::string closest = ClosestMatch(path, paths);
  if (!closest.empty()) return closest;
  const std::string last = path.substr(path.rfind('.') + 1);
  for (const std::string& candidate : paths) {
    if (candidate.size() > last.size() && candidate.compare(candidate.size() - last.size(), last.size(), last) == 0 &&
        candidate[candidate.size() - last.size() - 1] == '.')
      return candidate;
  }
  return "";
}

// [low, high] of a range; problems go to `p` under `key`.
bool ReadRange(MapReader& p, const YAML::Node& node, const char* key, bool integers, Parameter* parameter) {
  if (!node.IsSequence() || node.size() != 2 || !node[0].IsScalar() || !node[1].IsScalar()) {
    p.Problem(node, key, fmt::format("expected [low, high], got {}", spec_yaml::NodeKind(node)));
    return false;
  }
  double ends[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    int64_t whole = 0;
    if (integers) {
      if (!YAML::convert<int64_t>::decode(node[i], whole)) {
        p.Problem(node[i], key, fmt::format("expected an integer, got '{}'", node[i].Scalar()));
        return false;
      }
      ends[i] = static_cast<double>(whole);
    } else if (!YAML::convert<double>::decode(node[i], ends[i]) || !std::isfinite(ends[i])) {
      p.Problem(node[i], key, fmt::format("expected a finite number, got '{}'", node[i].Scalar()));
      return false;
    }
  }
  if (!(ends[0] < ends[1])) {
    p.Problem(node, key, fmt::format("low {} must be below high {}", ends[0], ends[1]));
    return false;
  }
  if (parameter->distribution == Distribution::kLogUniform && !(ends[0] > 0)) {
    p.Problem(node, key, fmt::format("a log range must be positive: low is {}", ends[0]));
    return false;
  }
  parameter->low = ends[0];
  parameter->high = ends[1];
  return true;
}

bool ReadValues(MapReader& p, const YAML::Node& node, const char* key, Parameter* parameter) {
  if (!node.IsSequence() || node.size() == 0) {
    p.Problem(node, key, fmt::format("expected a non-empty list of values, got {}", spec_yaml::NodeKind(node)));
    return false;
  }
  for (size_t i = 0; i < node.size(); ++i) {
    nlohmann::json value = YamlToJson(node[i]);
    try {
      (void)value.dump();  // trials.jsonl and every message write the value as JSON, which must be UTF-8
    } catch (const nlohmann::json::type_error&) {
      p.Problem(node[i], key, fmt::format("value {} is not UTF-8 text", i + 1));
      return false;
    }
    if (std::find(parameter->values.begin(), parameter->values.end(), value) != parameter->values.end()) {
      p.Problem(node[i], key, fmt::format("{} is listed twice", value.dump()));
      return false;
    }
    parameter->values.push_back(std::move(value));
  }
  return true;
}

// Where root[a][b] is, or the closest enclosing node that exists (a const yaml-cpp node throws on
// the Mark() of an absent key).
YAML::Mark MarkAt(const YAML::Node& root, const std::string& a, const std::string& b = "") {
  if (!root.IsMap() || !root[a]) return root.Mark();
  const YAML::Node first = root[a];
  if (b.empty() || !first.IsMap() || !first[b]) return first.Mark();
  return first[b].Mark();
}

// One entry of `parameters`: a key path and one distribution.
std::optional<Parameter> ReadParameter(MapReader& parameters, const YAML::Node& key, const YAML::Node& value) {
  Parameter parameter;
  parameter.path = key.Scalar();
  const std::vector<std::string>& paths = JobSpecKeyPaths();
  bool ok = true;
  if (std::find(kSetBySweep.begin(), kSetBySweep.end(), parameter.path) != kSetBySweep.end()) {
    parameters.Problem(key, parameter.path, "is set by the sweep for each trial (NAME-NNN, SWEEP_DIR/trials/NNN)");
    ok = false;
  } else if (!std::binary_search(paths.begin(), paths.end(), parameter.path)) {
    const std::string suggestion = SuggestKeyPath(parameter.path, paths);
    parameters.Problem(
        key, parameter.path,
        suggestion.empty()
            ? fmt::format("'{}' is not a key path of the job spec (docs/job-spec.md)", parameter.path)
            : fmt::format("'{}' is not a key path of the job spec (did you mean '{}'?)", parameter.path, suggestion));
    ok = false;
  }
  MapReader p = parameters.Element(value, parameter.path);
  std::vector<std::pair<std::string, Distribution>> given;
  for (const auto& [name, distribution] : kDistributions)
    if (p.Raw(name.c_str()) && !p.Raw(name.c_str()).IsNull()) given.emplace_back(name, distribution);
  p.Finish();
  if (!value.IsMap()) return std::nullopt;  // Element reported it
  if (given.size() != 1) {
    parameters.Problem(value, parameter.path,
                       given.empty()
                           ? "expected one of log_uniform, uniform, int_uniform, choice, grid"
                           : fmt::format("give one distribution, not both {} and {}", given[0].first, given[1].first));
    return std::nullopt;
  }
  const auto& [name, distribution] = given[0];
  parameter.distribution = distribution;
  const YAML::Node spec = p.Raw(name.c_str());
  ok = (parameter.IsRange() ? ReadRange(p, spec, name.c_str(), distribution == Distribution::kIntUniform, &parameter)
                            : ReadValues(p, spec, name.c_str(), &parameter)) &&
       ok;
  return ok ? std::optional<Parameter>(std::move(parameter)) : std::nullopt;
}

std::vector<std::string> AllJudgingMetrics() {
  std::vector<std::string> names;
  for (const EvaluationMetric& m : EvaluationMetrics())
    if (m.Judges()) names.emplace_back(m.name);
  return names;
}

// The sweep file's keys; `goal_given` says whether objective.goal was written.
struct ReadResult {
  SweepSpec spec;
  bool goal_given = false;
  bool max_trials_given = false;
};

ReadResult ReadSweep(const YAML::Node& root, SpecReader& reader) {
  ReadResult r;
  SweepSpec& spec = r.spec;
  MapReader top(reader, root, "", root.Mark());
  top.String("name", &spec.name, /*required=*/true);
  top.Path("base", &spec.base, /*required=*/true);
  top.Path("dir", &spec.dir);
  if (spec.dir.empty() && !spec.name.empty()) spec.dir = reader.Resolve("sweeps/" + spec.name);
  const YAML::Node parameters = top.Raw("parameters");
  if (!parameters || parameters.IsNull()) {
    reader.Problem(root.Mark(), "parameters", "is required: a mapping of job-spec key paths to their ranges or values");
  } else if (!parameters.IsMap() || parameters.size() == 0) {
    top.Problem(parameters, "parameters",
                "expected a non-empty mapping of job-spec key paths, got " + spec_yaml::NodeKind(parameters));
  } else {
    MapReader section = top.Section("parameters");
    for (const auto& entry : parameters) {
      if (auto parameter = ReadParameter(section, entry.first, entry.second)) spec.parameters.push_back(*parameter);
    }
  }
  top.Enum("strategy", &spec.strategy, kStrategies);
  MapReader objective = top.Section("objective");
  objective.String("metric", &spec.objective.metric, /*required=*/true);
  r.goal_given = objective.Has("goal");
  objective.Enum("goal", &spec.objective.goal, kGoals);
  objective.Finish();
  r.max_trials_given = top.Has("max_trials");
  top.Int("max_trials", &spec.max_trials, 1, kMaxTrials);
  top.Int("parallel_trials", &spec.parallel_trials, 1, 1024);
  MapReader stop = top.Section("early_termination");
  EarlyTermination& et = spec.early_termination;
  stop.Enum("type", &et.type, kTerminations);
  stop.Int("min_steps", &et.min_steps, 1);
  stop.Int("reduction_factor", &et.reduction_factor, 2, 1000);
  stop.Int("min_trials", &et.min_trials, 1, kMaxTrials);
  const std::pair<const char*, TerminationType> owners[] = {{"min_steps", TerminationType::kNone},
                                                            {"reduction_factor", TerminationType::kAsha},
                                                            {"min_trials", TerminationType::kMedian}};
  for (const auto& [key, owner] : owners) {
    const bool applies = owner == TerminationType::kNone ? et.type != TerminationType::kNone : et.type == owner;
    if (stop.Has(key) && !applies)
      stop.Problem(stop.Raw(key), key,
                   fmt::format("does not apply to early_termination.type '{}'", NameOf(kTerminations, et.type)));
  }
  stop.Finish();
  top.Uint("seed", &spec.seed);
  top.Finish();

  if (!spec.name.empty() && (spec.name.size() > kMaxNameLength ||
                             !std::regex_match(spec.name, std::regex("[a-z0-9]([a-z0-9-]*[a-z0-9])?")))) {
    reader.Problem(MarkAt(root, "name"), "name",
                   fmt::format("'{}' must be 1 to {} characters of a-z, 0-9 and '-' (trial N's job is NAME-NNN)",
                               spec.name, kMaxNameLength));
  }
  return r;
}

// The checks across keys of the sweep file alone.
void CheckSweep(ReadResult& r, const YAML::Node& root, SpecReader& reader) {
  SweepSpec& spec = r.spec;
  const std::string& metric = spec.objective.metric;
  const EvaluationMetric* known = FindEvaluationMetric(metric);
  if (!metric.empty() && (known == nullptr || !known->Judges())) {
    const std::vector<std::string> names = AllJudgingMetrics();
    const std::string suggestion = ClosestMatch(metric, names);
    reader.Problem(MarkAt(root, "objective", "metric"), "objective.metric",
                   fmt::format("'{}' is not a metric the evaluation reports{}; expected one of: {}", metric,
                               suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                               fmt::join(names, ", ")));
  } else if (known != nullptr) {
    const Goal own = known->goal == MetricGoal::kLower ? Goal::kMinimize : Goal::kMaximize;
    if (r.goal_given && spec.objective.goal != own) {
      reader.Problem(
          MarkAt(root, "objective", "goal"), "objective.goal",
          fmt::format("'{}' would search for the worst {}, which improves as it {}; write {} or leave goal out",
                      NameOf(kGoals, spec.objective.goal), metric, own == Goal::kMinimize ? "falls" : "rises",
                      NameOf(kGoals, own)));
    }
    spec.objective.goal = own;
  }
  if (spec.strategy == StrategyType::kGrid) {
    for (size_t i = 0; i < spec.parameters.size(); ++i) {
      const Parameter& p = spec.parameters[i];
      if (p.IsContinuous())
        reader.Problem(MarkAt(root, "parameters", p.path), "parameters." + p.path,
                       fmt::format("strategy grid cannot enumerate a continuous range ({}); give the values to try as "
                                   "{{grid: [...]}}",
                                   ToString(p.distribution)));
    }
    const int64_t size = GridSize(spec.parameters);
    if (!r.max_trials_given && size > kMaxTrials) {
      reader.Problem(
          root.Mark(), "max_trials",
          fmt::format("is required: the grid has {} points, more than the {} a sweep runs", size, kMaxTrials));
    }
    if (!r.max_trials_given) spec.max_trials = size;
  } else if (!r.max_trials_given) {
    reader.Problem(root.Mark(), "max_trials",
                   fmt::format("is required for strategy {} (grid defaults to the grid's size)",
                               NameOf(kStrategies, spec.strategy)));
  }
}

// "model.path (line 3, column 9): ..." -> "model.path: ...": the positions of a generated trial
// spec mean nothing to the user, whose file is the sweep's.
std::string WithoutPosition(const std::string& problem) {
  static const std::regex kPosition(R"( \(line \d+, column \d+\))");
  return std::regex_replace(problem, kPosition, "");
}

bool SetByParameter(const SweepSpec& spec, const std::string& prefix) {
  return std::any_of(spec.parameters.begin(), spec.parameters.end(),
                     [&](const Parameter& p) { return p.path.rfind(prefix, 0) == 0; });
}

// The checks against the base job spec: it is a valid job, it reports the objective, it evaluates
// when early termination needs it, and each parameter's values make valid jobs of it.
void CheckBase(SweepSpec& spec, const YAML::Node& root, const SweepOptions& options, SpecReader& reader) {
  const YAML::Mark base_mark = MarkAt(root, "base");
  std::string text;
  try {
    text = options.base_text ? *options.base_text : ReadFile(spec.base);
  } catch (const Error& e) {
    reader.Problem(base_mark, "base", fmt::format("cannot read the base job spec: {}", e.what()));
    return;
  }
  const fs::path base_dir = fs::path(spec.base).parent_path();
  JobSpec base;
  try {
    base = ParseJobSpec(text, spec.base, base_dir, options.job);
  } catch (const SpecError& e) {
    for (const std::string& problem : e.problems())
      reader.Problem(base_mark, "base", fmt::format("{}: {}", fs::path(spec.base).filename().string(), problem));
    return;
  }
  spec.base_yaml = text;
  const std::string task = ToString(base.model.task);
  const std::vector<std::string> reported = JudgingMetrics(base.model.task);
  if (!SetByParameter(spec, "model.task") && FindEvaluationMetric(spec.objective.metric) != nullptr &&
      std::find(reported.begin(), reported.end(), spec.objective.metric) == reported.end()) {
    reader.Problem(MarkAt(root, "objective", "metric"), "objective.metric",
                   fmt::format("'{}' is not reported by a {} evaluation (the base's model.task); expected one of: {}",
                               spec.objective.metric, task, fmt::join(reported, ", ")));
  }
  const EvaluationMetric* objective = FindEvaluationMetric(spec.objective.metric);
  const std::vector<std::string>& generated = base.evaluation.generate.metrics;
  if (objective != nullptr && objective->generated && !SetByParameter(spec, "evaluation.") &&
      std::find(generated.begin(), generated.end(), spec.objective.metric) == generated.end()) {
    reader.Problem(MarkAt(root, "objective", "metric"), "objective.metric",
                   fmt::format("'{}' is a generation metric: the base must list it in evaluation.generate.metrics",
                               spec.objective.metric));
  }
  bool has_validation = !base.data.validation.empty() || base.data.validation_split > 0;
  for (const auto& t : base.data.tasks) has_validation = has_validation || !t.validation.empty();
  if (!has_validation && !SetByParameter(spec, "data.")) {
    reader.Problem(base_mark, "base",
                   "the base job has no validation data (data.validation or data.validation_split): its trials would "
                   "report no objective");
  }
  if (spec.early_termination.type != TerminationType::kNone && base.training.eval_every == 0 &&
      !SetByParameter(spec, "training.eval_every")) {
    reader.Problem(MarkAt(root, "early_termination", "type"), "early_termination.type",
                   "needs evaluations during training, but the base's training.eval_every is 0 (it evaluates only "
                   "after its last step)");
  }
  // Each parameter's ends (and a point inside a range: an integer key refuses 3.7) as the job's value.
  SpecOptions trial_options = options.job;
  trial_options.check_files = false;  // the base's files were checked once above
  for (const Parameter& p : spec.parameters) {
    std::vector<nlohmann::json> probes = p.values;
    if (p.distribution == Distribution::kIntUniform) {
      probes = {static_cast<int64_t>(p.low), static_cast<int64_t>(p.high)};
    } else if (p.IsRange()) {
      const double middle = p.distribution == Distribution::kLogUniform
                                ? std::sqrt(p.low * p.high) * 1.0001
                                : (p.low + p.high) / 2 + (p.high - p.low) * 1e-4;
      probes = {p.low, p.high, middle};
    }
    for (const nlohmann::json& value : probes) {
      try {
        MakeTrialJob(text, base_dir, {{{p.path, value}}, "", ""}, "trial", trial_options);
      } catch (const SpecError& e) {
        std::vector<std::string> problems;
        for (const std::string& problem : e.problems()) problems.push_back(WithoutPosition(problem));
        reader.Problem(
            MarkAt(root, "parameters", p.path), "parameters." + p.path,
            fmt::format("the value {} makes the base job invalid: {}", value.dump(), fmt::join(problems, "; ")));
        break;
      }
    }
  }
}

}  // namespace

std::vector<std::string> SweepSpec::ParameterPaths() const {
  std::vector<std::string> paths;
  for (const Parameter& p : parameters) paths.push_back(p.path);
  return paths;
}

int64_t GridSize(const std::vector<Parameter>& parameters) {
  int64_t size = 1;
  for (const Parameter& p : parameters) {
    if (p.IsContinuous()) return 0;
    const double count = p.distribution == Distribution::kIntUniform ? p.high - p.low + 1 : double(p.values.size());
    if (count >= double(std::numeric_limits<int64_t>::max() / size)) return std::numeric_limits<int64_t>::max();
    size *= static_cast<int64_t>(count);
  }
  return size;
}

SweepSpec ParseSweepSpec(const std::string& yaml_text, const std::string& source, const fs::path& base_dir,
                         const SweepOptions& options) {
  const YAML::Node root = spec_yaml::LoadSpecYaml(yaml_text, source, "sweep spec");
  if (!root.IsMap())
    throw SpecError(source, {"(top level): expected a mapping (name, base, parameters, objective, ...), got " +
                             spec_yaml::NodeKind(root)});
  SpecReader reader(source, base_dir, options.job);
  ReadResult r = ReadSweep(root, reader);
  CheckSweep(r, root, reader);
  if (options.load_base && !r.spec.base.empty()) CheckBase(r.spec, root, options, reader);
  if (!reader.problems().empty()) throw SpecError(source, reader.problems());
  return r.spec;
}

SweepSpec LoadSweepSpec(const fs::path& path, const SweepOptions& options) {
  const std::string text = ReadFile(path);
  return ParseSweepSpec(text, path.string(), fs::absolute(path).parent_path(), options);
}

const char* ToString(Distribution v) { return NameOf(kDistributions, v); }
const char* ToString(StrategyType v) { return NameOf(kStrategies, v); }
const char* ToString(Goal v) { return NameOf(kGoals, v); }
const char* ToString(TerminationType v) { return NameOf(kTerminations, v); }

namespace {
template <typename E>
std::optional<E> ValueNamed(const EnumTable<E>& table, const std::string& name) {
  for (const auto& [spelling, value] : table)
    if (spelling == name) return value;
  return std::nullopt;
}
}  // namespace

std::optional<Distribution> DistributionNamed(const std::string& name) { return ValueNamed(kDistributions, name); }
std::optional<StrategyType> StrategyNamed(const std::string& name) { return ValueNamed(kStrategies, name); }
std::optional<Goal> GoalNamed(const std::string& name) { return ValueNamed(kGoals, name); }

nlohmann::json ParameterToJson(const Parameter& parameter) {
  nlohmann::json out = {{"path", parameter.path}, {"distribution", ToString(parameter.distribution)}};
  if (parameter.IsRange()) {
    out["low"] = parameter.low;
    out["high"] = parameter.high;
  } else {
    out["values"] = parameter.values;
  }
  return out;
}

Parameter ParameterFromJson(const nlohmann::json& object) {
  try {
    Parameter parameter;
    parameter.path = object.at("path").get<std::string>();
    const std::string distribution = object.at("distribution").get<std::string>();
    const auto named = DistributionNamed(distribution);
    if (!named) Fail(ErrorCode::kDataLoss, "parameter '{}': unknown distribution '{}'", parameter.path, distribution);
    parameter.distribution = *named;
    if (parameter.IsRange()) {
      parameter.low = object.at("low").get<double>();
      parameter.high = object.at("high").get<double>();
    } else {
      parameter.values = object.at("values").get<std::vector<nlohmann::json>>();
    }
    return parameter;
  } catch (const nlohmann::json::exception& e) {
    Fail(ErrorCode::kDataLoss, "a malformed parameter {}: {}", object.dump(), e.what());
  }
}

}  // namespace shardtune::sweep
