#pragma once
// The parts of the YAML -> JobSpec parser that its files share (common/job_spec_*.cc, and the
// sweep spec's reader, launcher/sweep/sweep_spec.cc, which reads its own file with the same
// MapReader): the spellings of the spec's enums, and the readers. A MapReader reads one mapping of the spec;
// it knows the keys its section allows, so that anything else is reported as unknown with the
// closest allowed key. Problems are collected in the SpecReader, not thrown one at a time, so
// that a user fixes a spec in one pass.

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/job_spec.h"
#include "common/text_distance.h"

namespace shardtune::spec_yaml {

// An enum's spellings in the spec, in the order error messages list them.
template <typename E>
using EnumTable = std::vector<std::pair<std::string, E>>;

inline const EnumTable<ComputeDType> kDTypes = {
    {"fp32", ComputeDType::kFp32}, {"bf16", ComputeDType::kBf16}, {"fp16", ComputeDType::kFp16}};
inline const EnumTable<QuantizationType> kQuantizationTypes = {
    {"none", QuantizationType::kNone}, {"nf4", QuantizationType::kNf4}, {"fp4", QuantizationType::kFp4}};
inline const EnumTable<ModelTask> kTasks = {{"causal_lm", ModelTask::kCausalLm},
                                            {"sequence_classification", ModelTask::kSequenceClassification},
                                            {"token_classification", ModelTask::kTokenClassification}};
inline const EnumTable<MethodType> kMethods = {{"full", MethodType::kFull},     {"lora", MethodType::kLora},
                                               {"dora", MethodType::kDora},     {"adapter", MethodType::kAdapter},
                                               {"prefix", MethodType::kPrefix}, {"prompt", MethodType::kPrompt},
                                               {"ia3", MethodType::kIa3}};
inline const EnumTable<DataFormat> kFormats = {
    {"chat", DataFormat::kChat},     {"completion", DataFormat::kCompletion},
    {"alpaca", DataFormat::kAlpaca}, {"sharegpt", DataFormat::kShareGpt},
    {"text", DataFormat::kText},     {"classification", DataFormat::kClassification},
    {"ner", DataFormat::kNer},       {"tokens", DataFormat::kTokens}};
inline const EnumTable<MetricMode> kMetricModes = {
    {"auto", MetricMode::kAuto}, {"min", MetricMode::kMin}, {"max", MetricMode::kMax}};
inline const EnumTable<OptimizerType> kOptimizers = {{"adamw", OptimizerType::kAdamW}};
inline const EnumTable<SchedulerType> kSchedulers = {
    {"constant", SchedulerType::kConstant}, {"linear", SchedulerType::kLinear}, {"cosine", SchedulerType::kCosine}};
inline const EnumTable<CommBackend> kBackends = {
    {"auto", CommBackend::kAuto}, {"nccl", CommBackend::kNccl}, {"mpi", CommBackend::kMpi}};
inline const EnumTable<OffloadTarget> kOffloads = {{"none", OffloadTarget::kNone}, {"cpu", OffloadTarget::kCpu}};
inline const EnumTable<ChatTemplateChoice> kChatTemplates = {
    {"auto", ChatTemplateChoice::kAuto},       {"llama3", ChatTemplateChoice::kLlama3},
    {"chatml", ChatTemplateChoice::kChatml},   {"llama2", ChatTemplateChoice::kLlama2},
    {"mistral", ChatTemplateChoice::kMistral}, {"plain", ChatTemplateChoice::kPlain}};
inline const EnumTable<DedupMode> kDedupModes = {
    {"none", DedupMode::kNone}, {"exact", DedupMode::kExact}, {"near", DedupMode::kNear}};
inline const EnumTable<ShingleUnit> kShingleUnits = {{"chars", ShingleUnit::kCharacters},
                                                     {"words", ShingleUnit::kWords}};
inline const EnumTable<BalanceMode> kBalanceModes = {{"none", BalanceMode::kNone},
                                                     {"oversample", BalanceMode::kOversample},
                                                     {"class_weights", BalanceMode::kClassWeights}};
inline const EnumTable<ExportFormat> kExports = {{"hf", ExportFormat::kHf}, {"peft", ExportFormat::kPeft}};
inline const EnumTable<AdapterPlacement> kPlacements = {{"houlsby", AdapterPlacement::kHoulsby},
                                                        {"pfeiffer", AdapterPlacement::kPfeiffer}};
inline const EnumTable<AdapterActivation> kActivations = {
    {"relu", AdapterActivation::kRelu}, {"gelu", AdapterActivation::kGelu}, {"silu", AdapterActivation::kSilu}};

template <typename E>
const char* NameOf(const EnumTable<E>& table, E value) {
  for (const auto& [name, v] : table)
    if (v == value) return name.c_str();
  return "?";
}

// The YAML of a spec file (`what`: "job spec", "sweep spec"), or SpecError naming the line and
// column of invalid UTF-8 or of the YAML syntax error.
YAML::Node LoadSpecYaml(const std::string& yaml_text, const std::string& source, const std::string& what);

// How a node reads in a message: "a mapping", "a list", "nothing" or its quoted scalar.
std::string NodeKind(const YAML::Node& node);

// One spec's problems, and how its relative paths resolve.
class SpecReader {
 public:
  SpecReader(std::string source, std::filesystem::path base_dir, const SpecOptions& options = {})
      : source_(std::move(source)), base_dir_(std::move(base_dir)), resolve_file_(options.resolve_file) {}

  // Adds "path (line L, column C): message" (without the position when `mark` is null).
  void Problem(const YAML::Mark& mark, const std::string& path, const std::string& message);
  std::vector<std::string>& problems() { return problems_; }
  const std::string& source() const { return source_; }
  // A relative path of the spec made absolute against the job file's directory.
  std::string Resolve(const std::string& path) const;
  // An uploaded file's path (SpecOptions::resolve_file); nullopt when unknown or not resolvable.
  std::optional<std::string> ResolveUploaded(const std::string& file_id) const {
    return resolve_file_ ? resolve_file_(file_id) : std::nullopt;
  }
  bool resolves_uploads() const { return static_cast<bool>(resolve_file_); }
  // Every key path a MapReader asked for ("training.optimizer.lr"), and those that were sections
  // (mappings read by MapReader::Section): the schema as the readers themselves define it.
  void NoteKey(const std::string& path) { key_paths_.insert(path); }
  void NoteSection(const std::string& path) { section_paths_.insert(path); }
  const std::set<std::string>& key_paths() const { return key_paths_; }
  const std::set<std::string>& section_paths() const { return section_paths_; }

 private:
  std::string source_;
  std::filesystem::path base_dir_;
  std::function<std::optional<std::string>(const std::string&)> resolve_file_;
  std::vector<std::string> problems_;
  std::set<std::string> key_paths_;
  std::set<std::string> section_paths_;
};

// Reads one mapping of the spec (`path` names it in problems; "" is the top level). Every reader
// registers its key as known, takes the key's value when present and valid, and keeps the default
// otherwise; Finish() then reports the keys no reader asked for.
class MapReader {
 public:
  MapReader(SpecReader& reader, const YAML::Node& node, std::string path, YAML::Mark mark);

  void Int(const char* key, int64_t* out, int64_t min, int64_t max = std::numeric_limits<int64_t>::max());
  void Int(const char* key, int* out, int min, int max);
  void Uint(const char* key, uint64_t* out);
  // [min, max] with either end optionally open.
  void Double(const char* key, double* out, double min, double max, bool min_open = false, bool max_open = false);
  void Bool(const char* key, bool* out);
  void String(const char* key, std::string* out, bool required = false);
  void Path(const char* key, std::string* out, bool required = false);
  // A data file's path, which may also be `file:ID`, an uploaded file (SpecOptions::resolve_file).
  void DataPath(const char* key, std::string* out, bool required = false);
  template <typename E>
  void Enum(const char* key, E* out, const EnumTable<E>& table, bool required = false);
  template <typename E>
  void EnumList(const char* key, std::vector<E>* out, const EnumTable<E>& table);
  // A list of non-empty strings; with `single`, one string is accepted too (and *single set).
  void StringList(const char* key, std::vector<std::string>* out, bool* single = nullptr);
  // An empty list given for a key whose absence means "the model's default".
  void NonEmptyIfGiven(const char* key, const std::vector<std::string>& list);
  void StringMap(const char* key, std::map<std::string, std::string>* out);
  // The key's raw node (registered as known); undefined when absent.
  YAML::Node Raw(const char* key) { return Get(key); }
  bool Has(const char* key) const { return Present(key); }
  // A mapping inside a list under this section.
  MapReader Element(const YAML::Node& node, const std::string& name) {
    return MapReader(reader_, node, Join(name), node.Mark());
  }
  MapReader Section(const char* key);

  // Reports every key of this mapping that no reader asked for.
  void Finish();

  const YAML::Mark& mark() const { return mark_; }
  void Problem(const YAML::Node& at, const std::string& key, const std::string& message) {
    reader_.Problem(at.Mark(), Join(key), message);
  }

 private:
  std::string Join(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  static std::string JoinNames(const std::vector<std::string>& names);
  template <typename E>
  static std::string Choices(const EnumTable<E>& table);

  bool Present(const char* key) const { return valid_ && node_ && node_.IsMap() && node_[key] && !node_[key].IsNull(); }
  YAML::Node Get(const char* key);
  // The key's scalar value, or an undefined node when absent, null or of the wrong kind.
  YAML::Node Scalar(const char* key, const char* expected);
  void MissingProblem(const char* key, const std::string& choices = "");
  template <typename E>
  std::optional<E> ParseEnum(const YAML::Node& value, const std::string& key, const EnumTable<E>& table);

  SpecReader& reader_;
  YAML::Node node_;
  std::string path_;
  YAML::Mark mark_;
  bool valid_ = true;
  std::set<std::string> known_;
};

template <typename E>
void MapReader::Enum(const char* key, E* out, const EnumTable<E>& table, bool required) {
  const YAML::Node value = Scalar(key, "a string");
  if (!value) {
    if (required && !Present(key)) MissingProblem(key, Choices(table));
    return;
  }
  if (auto parsed = ParseEnum(value, key, table)) *out = *parsed;
}

template <typename E>
void MapReader::EnumList(const char* key, std::vector<E>* out, const EnumTable<E>& table) {
  const YAML::Node value = Get(key);
  if (!value || value.IsNull()) return;
  std::vector<E> result;
  if (value.IsScalar()) {
    if (auto parsed = ParseEnum(value, key, table)) result.push_back(*parsed);
  } else if (value.IsSequence()) {
    for (size_t i = 0; i < value.size(); ++i) {
      if (!value[i].IsScalar()) {
        Problem(value[i], fmt::format("{}[{}]", key, i), "expected a string, got " + NodeKind(value[i]));
      } else if (auto parsed = ParseEnum(value[i], fmt::format("{}[{}]", key, i), table)) {
        result.push_back(*parsed);
      }
    }
  } else {
    Problem(value, key, "expected a list, got " + NodeKind(value));
    return;
  }
  for (size_t i = 0; i < result.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (result[i] == result[j]) {
        Problem(value, key, fmt::format("'{}' is listed twice", NameOf(table, result[i])));
        return;
      }
    }
  }
  *out = result;
}

template <typename E>
std::string MapReader::Choices(const EnumTable<E>& table) {
  std::vector<std::string> names;
  for (const auto& [name, _] : table) names.push_back(name);
  return JoinNames(names);
}

template <typename E>
std::optional<E> MapReader::ParseEnum(const YAML::Node& value, const std::string& key, const EnumTable<E>& table) {
  const std::string& text = value.Scalar();
  std::vector<std::string> names;
  for (const auto& [name, v] : table) {
    if (name == text) return v;
    names.push_back(name);
  }
  const std::string suggestion = ClosestMatch(text, names);
  Problem(value, key,
          suggestion.empty()
              ? fmt::format("'{}' is not one of: {}", text, JoinNames(names))
              : fmt::format("'{}' is not one of: {} (did you mean '{}'?)", text, JoinNames(names), suggestion));
  return std::nullopt;
}

// The checks that need more than one key, the evaluation's metrics, or the file system
// (job_spec_consistency.cc); run once every key has been read without a problem.
void CheckConsistency(const JobSpec& spec, const SpecOptions& options, const YAML::Node& root, SpecReader& reader);

}  // namespace shardtune::spec_yaml
