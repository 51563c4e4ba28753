// YAML -> JobSpec. Every key is read through a MapReader, which knows the keys its section
// allows, so anything else is reported as unknown with the closest allowed key. Problems are
// collected, not thrown one at a time, so a user fixes a spec in one pass.

#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <utility>

#include "common/atomic_file.h"
#include "common/job_spec.h"
#include "common/text_distance.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

template <typename E>
using EnumTable = std::vector<std::pair<std::string, E>>;

const EnumTable<ComputeDType> kDTypes = {
    {"fp32", ComputeDType::kFp32}, {"bf16", ComputeDType::kBf16}, {"fp16", ComputeDType::kFp16}};
const EnumTable<ModelTask> kTasks = {{"causal_lm", ModelTask::kCausalLm},
                                     {"sequence_classification", ModelTask::kSequenceClassification},
                                     {"token_classification", ModelTask::kTokenClassification}};
const EnumTable<MethodType> kMethods = {{"full", MethodType::kFull},     {"lora", MethodType::kLora},
                                        {"dora", MethodType::kDora},     {"adapter", MethodType::kAdapter},
                                        {"prefix", MethodType::kPrefix}, {"prompt", MethodType::kPrompt},
                                        {"ia3", MethodType::kIa3}};
const EnumTable<DataFormat> kFormats = {
    {"chat", DataFormat::kChat},     {"completion", DataFormat::kCompletion},
    {"alpaca", DataFormat::kAlpaca}, {"sharegpt", DataFormat::kShareGpt},
    {"text", DataFormat::kText},     {"classification", DataFormat::kClassification},
    {"ner", DataFormat::kNer},       {"tokens", DataFormat::kTokens}};
const EnumTable<MetricMode> kMetricModes = {
    {"auto", MetricMode::kAuto}, {"min", MetricMode::kMin}, {"max", MetricMode::kMax}};
const EnumTable<OptimizerType> kOptimizers = {{"adamw", OptimizerType::kAdamW}};
const EnumTable<SchedulerType> kSchedulers = {
    {"constant", SchedulerType::kConstant}, {"linear", SchedulerType::kLinear}, {"cosine", SchedulerType::kCosine}};
const EnumTable<CommBackend> kBackends = {
    {"auto", CommBackend::kAuto}, {"nccl", CommBackend::kNccl}, {"mpi", CommBackend::kMpi}};
const EnumTable<OffloadTarget> kOffloads = {{"none", OffloadTarget::kNone}, {"cpu", OffloadTarget::kCpu}};
const EnumTable<ChatTemplateChoice> kChatTemplates = {
    {"auto", ChatTemplateChoice::kAuto},       {"llama3", ChatTemplateChoice::kLlama3},
    {"chatml", ChatTemplateChoice::kChatml},   {"llama2", ChatTemplateChoice::kLlama2},
    {"mistral", ChatTemplateChoice::kMistral}, {"plain", ChatTemplateChoice::kPlain}};
const EnumTable<ExportFormat> kExports = {{"hf", ExportFormat::kHf}, {"peft", ExportFormat::kPeft}};
const EnumTable<AdapterPlacement> kPlacements = {{"houlsby", AdapterPlacement::kHoulsby},
                                                 {"pfeiffer", AdapterPlacement::kPfeiffer}};
const EnumTable<AdapterActivation> kActivations = {
    {"relu", AdapterActivation::kRelu}, {"gelu", AdapterActivation::kGelu}, {"silu", AdapterActivation::kSilu}};

template <typename E>
const char* NameOf(const EnumTable<E>& table, E value) {
  for (const auto& [name, v] : table)
    if (v == value) return name.c_str();
  return "?";
}

std::string NodeKind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "nothing";
    default:
      return fmt::format("'{}'", node.Scalar());
  }
}

class SpecReader {
 public:
  SpecReader(std::string source, fs::path base_dir) : source_(std::move(source)), base_dir_(std::move(base_dir)) {}

  void Problem(const YAML::Mark& mark, const std::string& path, const std::string& message) {
    if (mark.is_null()) {
      problems_.push_back(fmt::format("{}: {}", path, message));
    } else {
      problems_.push_back(fmt::format("{} (line {}, column {}): {}", path, mark.line + 1, mark.column + 1, message));
    }
  }
  std::vector<std::string>& problems() { return problems_; }
  const std::string& source() const { return source_; }
  std::string Resolve(const std::string& path) const {
    if (path.empty() || fs::path(path).is_absolute()) return path;
    return (base_dir_ / path).lexically_normal().string();
  }

 private:
  std::string source_;
  fs::path base_dir_;
  std::vector<std::string> problems_;
};

class MapReader {
 public:
  MapReader(SpecReader& reader, const YAML::Node& node, std::string path, YAML::Mark mark)
      : reader_(reader), node_(node), path_(std::move(path)), mark_(mark) {
    if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) {
      reader_.Problem(node_.Mark(), path_.empty() ? "(top level)" : path_,
                      "expected a mapping, got " + NodeKind(node_));
      valid_ = false;
    }
    // yaml-cpp keeps one of two equal keys silently; a user who wrote both meant something.
    if (valid_ && node_ && node_.IsMap()) {
      std::map<std::string, int> first_line;
      for (const auto& entry : node_) {
        const std::string key = entry.first.Scalar();
        const auto [it, inserted] = first_line.emplace(key, entry.first.Mark().line + 1);
        if (!inserted) {
          reader_.Problem(entry.first.Mark(), Join(key),
                          fmt::format("duplicate key '{}' (first at line {})", key, it->second));
        }
      }
    }
  }

  // Each reader takes the key's value when present and valid, and keeps the default otherwise.
  void Int(const char* key, int64_t* out, int64_t min, int64_t max = std::numeric_limits<int64_t>::max()) {
    const YAML::Node value = Scalar(key, "an integer");
    if (!value) return;
    try {
      const auto v = value.as<int64_t>();
      if (v < min || v > max) {
        Problem(value, key,
                max == std::numeric_limits<int64_t>::max() ? fmt::format("must be >= {}, got {}", min, v)
                                                           : fmt::format("must be in [{}, {}], got {}", min, max, v));
        return;
      }
      *out = v;
    } catch (const YAML::Exception&) {
      Problem(value, key, "expected an integer, got " + NodeKind(value));
    }
  }
  void Int(const char* key, int* out, int min, int max) {
    int64_t v = *out;
    Int(key, &v, min, max);
    *out = static_cast<int>(v);
  }
  void Uint(const char* key, uint64_t* out) {
    const YAML::Node value = Scalar(key, "a non-negative integer");
    if (!value) return;
    try {
      if (!value.Scalar().empty() && value.Scalar()[0] == '-') throw YAML::Exception(value.Mark(), "negative");
      *out = value.as<uint64_t>();
    } catch (const YAML::Exception&) {
      Problem(value, key, "expected a non-negative integer, got " + NodeKind(value));
    }
  }
  // [min, max] with either end optionally open.
  void Double(const char* key, double* out, double min, double max, bool min_open = false, bool max_open = false) {
    const YAML::Node value = Scalar(key, "a number");
    if (!value) return;
    double v = 0;
    try {
      v = value.as<double>();
    } catch (const YAML::Exception&) {
      Problem(value, key, "expected a number, got " + NodeKind(value));
      return;
    }
    const bool below = min_open ? !(v > min) : !(v >= min);
    const bool above = max_open ? !(v < max) : !(v <= max);
    if (below || above) {
      const std::string upper =
          max == std::numeric_limits<double>::infinity() ? "inf)" : fmt::format("{}{}", max, max_open ? ")" : "]");
      Problem(value, key, fmt::format("must be in {}{}, {}, got {}", min_open ? "(" : "[", min, upper, v));
      return;
    }
    *out = v;
  }
  void Bool(const char* key, bool* out) {
    const YAML::Node value = Scalar(key, "true or false");
    if (!value) return;
    try {
      *out = value.as<bool>();
    } catch (const YAML::Exception&) {
      Problem(value, key, "expected true or false, got " + NodeKind(value));
    }
  }
  void String(const char* key, std::string* out, bool required = false) {
    const YAML::Node value = Scalar(key, "a string");
    if (!value) {
      if (required && !Present(key)) MissingProblem(key);
      return;
    }
    *out = value.Scalar();
  }
  void Path(const char* key, std::string* out, bool required = false) {
    String(key, out, required);
    *out = reader_.Resolve(*out);
  }
  template <typename E>
  void Enum(const char* key, E* out, const EnumTable<E>& table, bool required = false) {
    const YAML::Node value = Scalar(key, "a string");
    if (!value) {
      if (required && !Present(key)) MissingProblem(key, Choices(table));
      return;
    }
    if (auto parsed = ParseEnum(value, key, table)) *out = *parsed;
  }
  template <typename E>
  void EnumList(const char* key, std::vector<E>* out, const EnumTable<E>& table) {
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
  // A list of non-empty strings; with `single`, one string is accepted too (and *single set).
  void StringList(const char* key, std::vector<std::string>* out, bool* single = nullptr) {
    const YAML::Node value = Get(key);
    if (!value || value.IsNull()) return;
    std::vector<std::string> result;
    if (value.IsScalar() && single != nullptr) {
      result.push_back(value.Scalar());
      *single = true;
    } else if (value.IsSequence()) {
      for (size_t i = 0; i < value.size(); ++i) {
        if (!value[i].IsScalar() || value[i].Scalar().empty()) {
          Problem(value[i], fmt::format("{}[{}]", key, i), "expected a non-empty string, got " + NodeKind(value[i]));
          return;
        }
        result.push_back(value[i].Scalar());
      }
      if (single != nullptr) *single = false;
    } else {
      Problem(
          value, key,
          std::string("expected a list of strings") + (single ? " or one string" : "") + ", got " + NodeKind(value));
      return;
    }
    *out = result;
  }
  // An empty list given for a key whose absence means "the model's default".
  void NonEmptyIfGiven(const char* key, const std::vector<std::string>& list) {
    const YAML::Node value = Present(key) ? Get(key) : YAML::Node();
    if (value.IsSequence() && value.size() == 0 && list.empty())
      Problem(value, key, "is empty; name at least one module, or leave the key out for the model's defaults");
  }
  void StringMap(const char* key, std::map<std::string, std::string>* out) {
    const YAML::Node value = Get(key);
    if (!value || value.IsNull()) return;
    if (!value.IsMap()) {
      Problem(value, key, "expected a mapping of strings, got " + NodeKind(value));
      return;
    }
    for (const auto& entry : value) {
      if (!entry.second.IsScalar()) {
        Problem(entry.second, fmt::format("{}.{}", key, entry.first.Scalar()),
                "expected a string, got " + NodeKind(entry.second));
        continue;
      }
      (*out)[entry.first.Scalar()] = entry.second.Scalar();
    }
  }
  // The key's raw node (registered as known); undefined when absent.
  YAML::Node Raw(const char* key) { return Get(key); }
  bool Has(const char* key) const { return Present(key); }
  // A mapping inside a list under this section.
  MapReader Element(const YAML::Node& node, const std::string& name) {
    return MapReader(reader_, node, Join(name), node.Mark());
  }

  MapReader Section(const char* key) {
    const YAML::Node value = Get(key);
    return MapReader(reader_, value ? value : YAML::Node(), Join(key), value ? value.Mark() : mark_);
  }

  // Reports every key of this mapping that no reader asked for.
  void Finish() {
    if (!valid_ || !node_ || !node_.IsMap()) return;
    std::vector<std::string> known(known_.begin(), known_.end());
    for (const auto& entry : node_) {
      const std::string key = entry.first.Scalar();
      if (known_.count(key)) continue;
      const std::string suggestion = ClosestMatch(key, known);
      reader_.Problem(entry.first.Mark(), Join(key),
                      suggestion.empty() ? fmt::format("unknown key '{}'; expected one of: {}", key, JoinNames(known))
                                         : fmt::format("unknown key '{}' (did you mean '{}'?)", key, suggestion));
    }
  }

  const YAML::Mark& mark() const { return mark_; }
  void Problem(const YAML::Node& at, const std::string& key, const std::string& message) {
    reader_.Problem(at.Mark(), Join(key), message);
  }

 private:
  std::string Join(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  static std::string JoinNames(const std::vector<std::string>& names) {
    std::string joined;
    for (const auto& name : names) joined += (joined.empty() ? "" : ", ") + name;
    return joined;
  }
  template <typename E>
  static std::string Choices(const EnumTable<E>& table) {
    std::vector<std::string> names;
    for (const auto& [name, _] : table) names.push_back(name);
    return JoinNames(names);
  }

  bool Present(const char* key) const { return valid_ && node_ && node_.IsMap() && node_[key] && !node_[key].IsNull(); }
  YAML::Node Get(const char* key) {
    known_.insert(key);
    if (!valid_ || !node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node value = node_[key];
    return value ? value : YAML::Node(YAML::NodeType::Undefined);
  }
  // The key's scalar value, or an undefined node when absent, null or of the wrong kind.
  YAML::Node Scalar(const char* key, const char* expected) {
    const YAML::Node value = Get(key);
    if (!value || value.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
    if (!value.IsScalar()) {
      Problem(value, key, fmt::format("expected {}, got {}", expected, NodeKind(value)));
      return YAML::Node(YAML::NodeType::Undefined);
    }
    return value;
  }
  void MissingProblem(const char* key, const std::string& choices = "") {
    reader_.Problem(mark_, Join(key), choices.empty() ? "is required" : "is required (one of: " + choices + ")");
  }
  template <typename E>
  std::optional<E> ParseEnum(const YAML::Node& value, const std::string& key, const EnumTable<E>& table) {
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

  SpecReader& reader_;
  YAML::Node node_;
  std::string path_;
  YAML::Mark mark_;
  bool valid_ = true;
  std::set<std::string> known_;
};

void ReadModel(MapReader m, ModelSpec* model) {
  m.Path("path", &model->path, /*required=*/true);
  m.Path("tokenizer", &model->tokenizer);
  m.Enum("dtype", &model->dtype, kDTypes);
  m.Enum("task", &model->task, kTasks);
  m.StringList("labels", &model->labels);
  m.Finish();
}

void ReadMethod(MapReader m, MethodSpec* method) {
  m.Enum("type", &method->type, kMethods);
  const MethodType type = method->type;
  // The section of each method; a section for another method than `type` is a mistake.
  auto section = [&](const char* key, bool applies) {
    MapReader section = m.Section(key);
    if (!applies && m.Has(key)) {
      m.Problem(m.Raw(key), key, fmt::format("is for another method than method.type '{}'", NameOf(kMethods, type)));
    }
    return section;
  };
  MapReader lora = section("lora", type == MethodType::kLora || type == MethodType::kDora);
  lora.Int("r", &method->lora.r, 1, 1 << 16);
  lora.Double("alpha", &method->lora.alpha, 0.0, 1e6, /*min_open=*/true);
  lora.Double("dropout", &method->lora.dropout, 0.0, 1.0, false, /*max_open=*/true);
  lora.StringList("target_modules", &method->lora.target_modules, &method->lora.target_is_pattern);
  lora.NonEmptyIfGiven("target_modules", method->lora.target_modules);
  lora.Bool("use_rslora", &method->lora.use_rslora);
  lora.Finish();
  MapReader ia3 = section("ia3", type == MethodType::kIa3);
  ia3.StringList("target_modules", &method->ia3.target_modules);
  ia3.StringList("feedforward_modules", &method->ia3.feedforward_modules);
  method->ia3.feedforward_given = ia3.Has("feedforward_modules");  // [] given: none
  ia3.NonEmptyIfGiven("target_modules", method->ia3.target_modules);
  ia3.Finish();
  MapReader adapter = section("adapter", type == MethodType::kAdapter);
  adapter.Int("bottleneck", &method->adapter.bottleneck, 1, 1 << 20);
  adapter.Enum("placement", &method->adapter.placement, kPlacements);
  adapter.Enum("activation", &method->adapter.activation, kActivations);
  adapter.Finish();
  MapReader prefix = section("prefix", type == MethodType::kPrefix);
  prefix.Int("num_virtual_tokens", &method->prefix.num_virtual_tokens, 1, 1 << 16);
  prefix.Bool("projection", &method->prefix.projection);
  prefix.Int("encoder_hidden_size", &method->prefix.encoder_hidden_size, 0, 1 << 20);
  prefix.Finish();
  MapReader prompt = section("prompt", type == MethodType::kPrompt);
  prompt.Int("num_virtual_tokens", &method->prompt.num_virtual_tokens, 1, 1 << 16);
  prompt.Finish();
  m.StringList("modules_to_save", &method->modules_to_save);
  m.Path("init_from", &method->init_from);
  if (type == MethodType::kFull) {
    for (const char* key : {"modules_to_save", "init_from"}) {
      if (m.Has(key)) m.Problem(m.Raw(key), key, "applies to the parameter-efficient methods, not 'full'");
    }
  }
  if (method->lora.target_is_pattern && method->lora.target_modules[0] != "all-linear") {
    try {
      std::regex check(method->lora.target_modules[0]);
    } catch (const std::regex_error& e) {
      m.Problem(m.Section("lora").Raw("target_modules"), "lora.target_modules",
                fmt::format("'{}' is not a valid regular expression: {}", method->lora.target_modules[0], e.what()));
    }
  }
  m.Finish();
}

void ReadData(MapReader m, DataSpec* data) {
  const YAML::Node tasks = m.Raw("tasks");
  const bool multi_task = tasks && !tasks.IsNull();
  m.Path("train", &data->train, /*required=*/!multi_task);
  m.Path("validation", &data->validation);
  m.Double("validation_split", &data->validation_split, 0.0, 1.0, false, /*max_open=*/true);
  m.Enum("format", &data->format, kFormats, /*required=*/!multi_task);
  m.Double("mixing_temperature", &data->mixing_temperature, 0.0, 1e6);
  if (multi_task) {
    if (!tasks.IsSequence() || tasks.size() == 0) {
      m.Problem(tasks, "tasks", "expected a non-empty list of {name, train, validation?, format?, weight?}");
    } else {
      if (!data->train.empty()) m.Problem(tasks, "tasks", "give either data.train or data.tasks, not both");
      std::set<std::string> names;
      static const std::regex kTaskName("[a-z0-9_-]{1,64}");
      for (size_t i = 0; i < tasks.size(); ++i) {
        MapReader t = m.Element(tasks[i], fmt::format("tasks[{}]", i));
        TaskSpec task;
        task.format = data->format;
        t.String("name", &task.name, /*required=*/true);
        t.Path("train", &task.train, /*required=*/true);
        t.Path("validation", &task.validation);
        t.Enum("format", &task.format, kFormats, /*required=*/!m.Has("format"));
        t.Double("weight", &task.weight, 0.0, 1e9, /*min_open=*/true);
        t.Finish();
        if (!task.name.empty() && !std::regex_match(task.name, kTaskName)) {
          t.Problem(tasks[i]["name"], "name",
                    fmt::format("'{}' must be 1 to 64 characters of a-z, 0-9, '_' and '-'", task.name));
        } else if (!task.name.empty() && !names.insert(task.name).second) {
          t.Problem(tasks[i]["name"], "name", fmt::format("task '{}' is listed twice", task.name));
        }
        data->tasks.push_back(std::move(task));
      }
    }
  }
  m.Int("max_seq_len", &data->max_seq_len, 2, 1 << 24);
  m.Bool("packing", &data->packing);
  m.Bool("shuffle", &data->shuffle);
  m.Enum("chat_template", &data->chat_template, kChatTemplates);
  m.Bool("group_by_length", &data->group_by_length);
  m.Finish();
}

void ReadTraining(MapReader m, TrainingSpec* training) {
  m.Int("epochs", &training->epochs, 1);
  m.Int("max_steps", &training->max_steps, 0);
  m.Int("micro_batch_size", &training->micro_batch_size, 1);
  m.Int("global_batch_size", &training->global_batch_size, 0);
  MapReader optimizer = m.Section("optimizer");
  optimizer.Enum("type", &training->optimizer.type, kOptimizers);
  optimizer.Double("lr", &training->optimizer.lr, 0.0, 1e3, /*min_open=*/true);
  optimizer.Double("weight_decay", &training->optimizer.weight_decay, 0.0, 1e3);
  optimizer.Double("beta1", &training->optimizer.beta1, 0.0, 1.0, false, /*max_open=*/true);
  optimizer.Double("beta2", &training->optimizer.beta2, 0.0, 1.0, false, /*max_open=*/true);
  optimizer.Double("eps", &training->optimizer.eps, 0.0, 1.0, /*min_open=*/true);
  optimizer.Finish();
  MapReader scheduler = m.Section("scheduler");
  scheduler.Enum("type", &training->scheduler.type, kSchedulers);
  scheduler.Int("warmup_steps", &training->scheduler.warmup_steps, 0);
  scheduler.Double("min_lr_ratio", &training->scheduler.min_lr_ratio, 0.0, 1.0);
  scheduler.Finish();
  m.Double("grad_clip", &training->grad_clip, 0.0, std::numeric_limits<double>::infinity());
  m.Uint("seed", &training->seed);
  m.Int("eval_every", &training->eval_every, 0);
  m.Int("log_every", &training->log_every, 1);
  m.Bool("activation_checkpointing", &training->activation_checkpointing);
  m.Double("label_smoothing", &training->label_smoothing, 0.0, 1.0, false, /*max_open=*/true);
  for (const auto& [key, field] : {std::pair{"attention_dropout", &training->attention_dropout},
                                   std::pair{"hidden_dropout", &training->hidden_dropout},
                                   std::pair{"classifier_dropout", &training->classifier_dropout}}) {
    if (!m.Has(key)) continue;
    double p = 0.0;
    m.Double(key, &p, 0.0, 1.0, false, /*max_open=*/true);
    *field = p;
  }
  MapReader stopping = m.Section("early_stopping");
  stopping.Int("patience", &training->early_stopping.patience, 0);
  stopping.String("metric", &training->early_stopping.metric);
  stopping.Enum("mode", &training->early_stopping.mode, kMetricModes);
  stopping.Double("min_delta", &training->early_stopping.min_delta, 0.0, std::numeric_limits<double>::infinity());
  stopping.Finish();
  m.Finish();
}

void ReadSharding(MapReader m, ShardingSpec* sharding) {
  m.Int("zero_stage", &sharding->zero_stage, 0, 3);
  m.Enum("backend", &sharding->backend, kBackends);
  m.Int("shard_group_size", &sharding->shard_group_size, 0);
  m.Enum("offload_optimizer", &sharding->offload_optimizer, kOffloads);
  m.Double("collective_timeout_s", &sharding->collective_timeout_s, 0.0, 1e7, /*min_open=*/true);
  m.Int("prefetch_layers", &sharding->prefetch_layers, 0, 64);
  m.Int("persistence_threshold", &sharding->persistence_threshold, 0);
  m.Finish();
}

void ReadOutput(MapReader m, OutputSpec* output) {
  m.Path("dir", &output->dir, /*required=*/true);
  m.Int("checkpoint_every", &output->checkpoint_every, 0);
  m.Int("keep_checkpoints", &output->keep_checkpoints, 0);
  m.Bool("keep_best", &output->keep_best);
  m.Int("generations", &output->generations, 0, 100000);
  m.EnumList("export", &output->export_formats, kExports);
  m.Finish();
}

void ReadResources(MapReader m, ResourcesSpec* resources) {
  m.Int("nodes", &resources->nodes, 1, 1 << 20);
  m.Int("ranks_per_node", &resources->ranks_per_node, 1, 1 << 16);
  m.Finish();
}

// Checks that need more than one key, or the file system.
void CheckConsistency(const JobSpec& spec, const SpecOptions& options, const YAML::Node& root, SpecReader& reader) {
  auto mark_of = [&](std::initializer_list<const char*> path) {
    YAML::Node node;
    node.reset(root);  // reset, not =: assigning a YAML::Node overwrites what it refers to
    YAML::Mark mark = root.Mark();
    for (const char* key : path) {
      if (!node.IsMap() || !node[key]) break;
      node.reset(node[key]);
      mark = node.Mark();
    }
    return mark;
  };

  static const std::regex kNamePattern("[a-z0-9]([a-z0-9-]*[a-z0-9])?");
  if (!spec.name.empty() && (spec.name.size() > 64 || !std::regex_match(spec.name, kNamePattern))) {
    reader.Problem(
        mark_of({"name"}), "name",
        fmt::format("'{}' must be 1 to 64 characters of a-z, 0-9 and '-', not starting or ending with '-'", spec.name));
  }

  const TrainingSpec& t = spec.training;
  const int64_t ranks = spec.resources.world_size();
  // Checks against the rank count apply when the spec states its resources; otherwise the
  // worker checks them against the ranks it is started with.
  const bool ranks_known = root["resources"].IsDefined();
  if (t.global_batch_size > 0 && t.global_batch_size % (t.micro_batch_size * (ranks_known ? ranks : 1)) != 0) {
    reader.Problem(mark_of({"training", "global_batch_size"}), "training.global_batch_size",
                   fmt::format("{} is not divisible by micro_batch_size {} x data-parallel ranks {}",
                               t.global_batch_size, t.micro_batch_size, ranks_known ? ranks : 1));
  }
  if (t.max_steps > 0 && t.scheduler.warmup_steps > t.max_steps) {
    reader.Problem(mark_of({"training", "scheduler", "warmup_steps"}), "training.scheduler.warmup_steps",
                   fmt::format("{} exceeds training.max_steps {}", t.scheduler.warmup_steps, t.max_steps));
  }
  if (!spec.data.validation.empty() && spec.data.validation_split > 0) {
    reader.Problem(mark_of({"data", "validation_split"}), "data.validation_split",
                   "give either data.validation or data.validation_split, not both");
  }
  if (ranks_known && spec.sharding.shard_group_size > 0 && ranks % spec.sharding.shard_group_size != 0) {
    reader.Problem(
        mark_of({"sharding", "shard_group_size"}), "sharding.shard_group_size",
        fmt::format("{} does not divide the {} ranks of resources (nodes {} x ranks_per_node {})",
                    spec.sharding.shard_group_size, ranks, spec.resources.nodes, spec.resources.ranks_per_node));
  }
  for (ExportFormat format : spec.output.export_formats) {
    if (format == ExportFormat::kPeft && spec.method.type == MethodType::kFull) {
      reader.Problem(mark_of({"output", "export"}), "output.export",
                     "'peft' exports an adapter, but method.type is 'full' (there is no adapter); use [hf]");
    }
    const MethodType m = spec.method.type;
    if (format == ExportFormat::kHf &&
        (m == MethodType::kAdapter || m == MethodType::kPrefix || m == MethodType::kPrompt)) {
      reader.Problem(mark_of({"output", "export"}), "output.export",
                     fmt::format("'hf' merges the adapter into the base weights, which method '{}' cannot be (it "
                                 "adds computation, not weights); use [peft]",
                                 NameOf(kMethods, m)));
    }
  }
  bool has_validation = !spec.data.validation.empty() || spec.data.validation_split > 0;
  if (spec.output.generations > 0 &&
      (spec.model.task != ModelTask::kCausalLm || spec.data.format == DataFormat::kTokens)) {
    reader.Problem(mark_of({"output", "generations"}), "output.generations",
                   "generated answers need a language model (model.task causal_lm) trained on text data, not token "
                   "ids");
  }
  for (const auto& task : spec.data.tasks) has_validation = has_validation || !task.validation.empty();
  const EarlyStoppingSpec& stopping = spec.training.early_stopping;
  if ((stopping.patience > 0 || spec.output.keep_best) && !has_validation) {
    reader.Problem(mark_of({"training", "early_stopping"}),
                   stopping.patience > 0 ? "training.early_stopping" : "output.keep_best",
                   "needs validation data to judge by: give data.validation or data.validation_split");
  }
  const std::vector<std::string> metrics =
      spec.model.task == ModelTask::kCausalLm ? std::vector<std::string>{"val_loss", "perplexity"}
      : spec.model.task == ModelTask::kSequenceClassification
          ? std::vector<std::string>{"val_loss", "accuracy", "macro_f1", "micro_f1"}
          : std::vector<std::string>{"val_loss", "entity_f1", "token_accuracy"};
  if (std::find(metrics.begin(), metrics.end(), stopping.metric) == metrics.end()) {
    reader.Problem(mark_of({"training", "early_stopping", "metric"}), "training.early_stopping.metric",
                   fmt::format("'{}' is not a metric of a {} evaluation; expected one of: {}", stopping.metric,
                               NameOf(kTasks, spec.model.task), fmt::join(metrics, ", ")));
  }
  const bool classification = spec.model.task == ModelTask::kSequenceClassification;
  const bool ner = spec.model.task == ModelTask::kTokenClassification;
  std::vector<DataFormat> formats = {spec.data.format};
  for (const auto& task : spec.data.tasks) formats.push_back(task.format);
  for (DataFormat f : formats) {
    const bool ok = classification ? f == DataFormat::kClassification
                    : ner          ? f == DataFormat::kNer
                                   : f != DataFormat::kClassification && f != DataFormat::kNer;
    if (!ok) {
      reader.Problem(mark_of({"data", "format"}), "data.format",
                     fmt::format("'{}' does not fit model.task '{}' (sequence_classification reads classification, "
                                 "token_classification reads ner, causal_lm the others)",
                                 NameOf(kFormats, f), NameOf(kTasks, spec.model.task)));
      break;
    }
  }
  if ((classification || ner) && !spec.data.tasks.empty()) {
    reader.Problem(mark_of({"data", "tasks"}), "data.tasks",
                   "classification and NER train one dataset (one label set); give data.train");
  }
  if ((classification || ner) && spec.data.packing) {
    reader.Problem(mark_of({"data", "packing"}), "data.packing",
                   "applies to causal_lm: a classifier reads each example (its class, its tags) on its own; set "
                   "packing: false");
  }
  if (spec.data.packing && (spec.method.type == MethodType::kPrompt || spec.method.type == MethodType::kPrefix)) {
    reader.Problem(mark_of({"data", "packing"}), "data.packing",
                   fmt::format("method '{}' puts its virtual tokens before each sequence, which packing would share "
                               "between documents; set packing: false",
                               NameOf(kMethods, spec.method.type)));
  }
  if (spec.method.type == MethodType::kPrefix && spec.method.prefix.projection && !spec.method.init_from.empty()) {
    reader.Problem(mark_of({"method", "init_from"}), "method.init_from",
                   "a saved prefix holds the projected keys and values, not the MLP that made them; set "
                   "method.prefix.projection: false to continue from it");
  }
  if (!spec.method.init_from.empty() && options.check_files) {
    std::error_code ec;
    if (!fs::exists(fs::path(spec.method.init_from) / "adapter_config.json", ec)) {
      reader.Problem(
          mark_of({"method", "init_from"}), "method.init_from",
          fmt::format("'{}' has no adapter_config.json (expected a PEFT adapter directory)", spec.method.init_from));
    }
  }

  if (!options.check_files) return;
  std::error_code ec;
  if (!spec.model.path.empty()) {
    if (!fs::is_directory(spec.model.path, ec)) {
      reader.Problem(mark_of({"model", "path"}), "model.path", fmt::format("'{}' is not a directory", spec.model.path));
    } else if (!fs::exists(fs::path(spec.model.path) / "config.json", ec)) {
      reader.Problem(mark_of({"model", "path"}), "model.path",
                     fmt::format("'{}' has no config.json (expected a Hugging Face model directory)", spec.model.path));
    }
  }
  if (!spec.model.tokenizer.empty() && !fs::exists(spec.model.tokenizer, ec)) {
    reader.Problem(mark_of({"model", "tokenizer"}), "model.tokenizer",
                   fmt::format("'{}' does not exist", spec.model.tokenizer));
  }
  for (const auto& [key, path] : {std::pair{"train", spec.data.train}, std::pair{"validation", spec.data.validation}}) {
    if (path.empty()) continue;
    if (!fs::is_regular_file(path, ec)) {
      reader.Problem(mark_of({"data", key}), std::string("data.") + key, fmt::format("'{}' is not a file", path));
    }
  }
  for (size_t i = 0; i < spec.data.tasks.size(); ++i) {
    const TaskSpec& task = spec.data.tasks[i];
    for (const auto& [key, path] : {std::pair{"train", task.train}, std::pair{"validation", task.validation}}) {
      if (!path.empty() && !fs::is_regular_file(path, ec)) {
        reader.Problem(mark_of({"data", "tasks"}), fmt::format("data.tasks[{}].{}", i, key),
                       fmt::format("'{}' is not a file", path));
      }
    }
  }
}

// An empty list is left out: for the keys that may be empty, absence means the default.
void EmitStrings(YAML::Emitter& out, const char* key, const std::vector<std::string>& values) {
  if (values.empty()) return;
  out << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const auto& v : values) out << v;
  out << YAML::EndSeq;
}

void EmitMethod(YAML::Emitter& out, const MethodSpec& m) {
  out << YAML::Key << "method" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "type" << YAML::Value << NameOf(kMethods, m.type);
  switch (m.type) {
    case MethodType::kFull:
      break;
    case MethodType::kLora:
    case MethodType::kDora:
      out << YAML::Key << "lora" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "r" << YAML::Value << m.lora.r << YAML::Key << "alpha" << YAML::Value << m.lora.alpha;
      out << YAML::Key << "dropout" << YAML::Value << m.lora.dropout;
      if (m.lora.target_is_pattern) {
        out << YAML::Key << "target_modules" << YAML::Value << YAML::DoubleQuoted << m.lora.target_modules[0];
      } else {
        EmitStrings(out, "target_modules", m.lora.target_modules);
      }
      out << YAML::Key << "use_rslora" << YAML::Value << m.lora.use_rslora << YAML::EndMap;
      break;
    case MethodType::kIa3:
      out << YAML::Key << "ia3" << YAML::Value << YAML::BeginMap;
      EmitStrings(out, "target_modules", m.ia3.target_modules);
      if (m.ia3.feedforward_given) {  // even empty: given empty means none, absent the default
        out << YAML::Key << "feedforward_modules" << YAML::Value << YAML::Flow << YAML::BeginSeq;
        for (const auto& name : m.ia3.feedforward_modules) out << name;
        out << YAML::EndSeq;
      }
      out << YAML::EndMap;
      break;
    case MethodType::kAdapter:
      out << YAML::Key << "adapter" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "bottleneck" << YAML::Value << m.adapter.bottleneck;
      out << YAML::Key << "placement" << YAML::Value << NameOf(kPlacements, m.adapter.placement);
      out << YAML::Key << "activation" << YAML::Value << NameOf(kActivations, m.adapter.activation) << YAML::EndMap;
      break;
    case MethodType::kPrefix:
      out << YAML::Key << "prefix" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "num_virtual_tokens" << YAML::Value << m.prefix.num_virtual_tokens;
      out << YAML::Key << "projection" << YAML::Value << m.prefix.projection;
      out << YAML::Key << "encoder_hidden_size" << YAML::Value << m.prefix.encoder_hidden_size << YAML::EndMap;
      break;
    case MethodType::kPrompt:
      out << YAML::Key << "prompt" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "num_virtual_tokens" << YAML::Value << m.prompt.num_virtual_tokens << YAML::EndMap;
      break;
  }
  if (m.type != MethodType::kFull) EmitStrings(out, "modules_to_save", m.modules_to_save);
  if (!m.init_from.empty()) out << YAML::Key << "init_from" << YAML::Value << m.init_from;
  out << YAML::EndMap;
}

}  // namespace

JobSpec ParseJobSpec(const std::string& yaml_text, const std::string& source, const fs::path& base_dir,
                     const SpecOptions& options) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw SpecError(
        source, {fmt::format("(line {}, column {}): not valid YAML: {}", e.mark.line + 1, e.mark.column + 1, e.msg)});
  }
  if (!root.IsMap())
    throw SpecError(source,
                    {"(top level): expected a mapping of sections (name, model, data, ...), got " + NodeKind(root)});

  SpecReader reader(source, base_dir);
  JobSpec spec;
  MapReader top(reader, root, "", root.Mark());
  top.String("name", &spec.name, /*required=*/true);
  top.StringMap("labels", &spec.labels);
  ReadModel(top.Section("model"), &spec.model);
  ReadMethod(top.Section("method"), &spec.method);
  ReadData(top.Section("data"), &spec.data);
  ReadTraining(top.Section("training"), &spec.training);
  ReadSharding(top.Section("sharding"), &spec.sharding);
  if (spec.method.type != MethodType::kFull) spec.output.export_formats = {ExportFormat::kPeft};
  ReadOutput(top.Section("output"), &spec.output);
  ReadResources(top.Section("resources"), &spec.resources);
  top.Finish();
  if (reader.problems().empty()) CheckConsistency(spec, options, root, reader);
  if (!reader.problems().empty()) throw SpecError(source, reader.problems());
  return spec;
}

JobSpec LoadJobSpec(const fs::path& path, const SpecOptions& options) {
  const std::string text = ReadFile(path);
  const fs::path base = fs::absolute(path).parent_path();
  return ParseJobSpec(text, path.string(), base, options);
}

std::string JobSpecToYaml(const JobSpec& spec) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << spec.name;
  if (!spec.labels.empty()) {
    out << YAML::Key << "labels" << YAML::Value << YAML::BeginMap;
    for (const auto& [k, v] : spec.labels) out << YAML::Key << k << YAML::Value << v;
    out << YAML::EndMap;
  }
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "path" << YAML::Value << spec.model.path;
  if (!spec.model.tokenizer.empty()) out << YAML::Key << "tokenizer" << YAML::Value << spec.model.tokenizer;
  out << YAML::Key << "dtype" << YAML::Value << NameOf(kDTypes, spec.model.dtype);
  out << YAML::Key << "task" << YAML::Value << NameOf(kTasks, spec.model.task);
  if (!spec.model.labels.empty()) {
    out << YAML::Key << "labels" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const auto& label : spec.model.labels) out << label;
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
  EmitMethod(out, spec.method);

  const DataSpec& d = spec.data;
  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  if (!d.train.empty()) out << YAML::Key << "train" << YAML::Value << d.train;
  if (!d.validation.empty()) out << YAML::Key << "validation" << YAML::Value << d.validation;
  out << YAML::Key << "validation_split" << YAML::Value << d.validation_split;
  out << YAML::Key << "format" << YAML::Value << NameOf(kFormats, d.format);
  out << YAML::Key << "max_seq_len" << YAML::Value << d.max_seq_len;
  out << YAML::Key << "packing" << YAML::Value << d.packing;
  out << YAML::Key << "shuffle" << YAML::Value << d.shuffle;
  out << YAML::Key << "chat_template" << YAML::Value << NameOf(kChatTemplates, d.chat_template);
  out << YAML::Key << "group_by_length" << YAML::Value << d.group_by_length;
  if (!d.tasks.empty()) {
    out << YAML::Key << "mixing_temperature" << YAML::Value << d.mixing_temperature;
    out << YAML::Key << "tasks" << YAML::Value << YAML::BeginSeq;
    for (const TaskSpec& task : d.tasks) {
      out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << task.name << YAML::Key << "train" << YAML::Value
          << task.train;
      if (!task.validation.empty()) out << YAML::Key << "validation" << YAML::Value << task.validation;
      out << YAML::Key << "format" << YAML::Value << NameOf(kFormats, task.format) << YAML::Key << "weight"
          << YAML::Value << task.weight << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;

  const TrainingSpec& t = spec.training;
  out << YAML::Key << "training" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "epochs" << YAML::Value << t.epochs;
  out << YAML::Key << "max_steps" << YAML::Value << t.max_steps;
  out << YAML::Key << "micro_batch_size" << YAML::Value << t.micro_batch_size;
  out << YAML::Key << "global_batch_size" << YAML::Value << t.global_batch_size;
  out << YAML::Key << "optimizer" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "type" << YAML::Value << NameOf(kOptimizers, t.optimizer.type);
  out << YAML::Key << "lr" << YAML::Value << t.optimizer.lr;
  out << YAML::Key << "weight_decay" << YAML::Value << t.optimizer.weight_decay;
  out << YAML::Key << "beta1" << YAML::Value << t.optimizer.beta1;
  out << YAML::Key << "beta2" << YAML::Value << t.optimizer.beta2;
  out << YAML::Key << "eps" << YAML::Value << t.optimizer.eps;
  out << YAML::EndMap;
  out << YAML::Key << "scheduler" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "type" << YAML::Value << NameOf(kSchedulers, t.scheduler.type);
  out << YAML::Key << "warmup_steps" << YAML::Value << t.scheduler.warmup_steps;
  out << YAML::Key << "min_lr_ratio" << YAML::Value << t.scheduler.min_lr_ratio;
  out << YAML::EndMap;
  out << YAML::Key << "grad_clip" << YAML::Value << t.grad_clip;
  out << YAML::Key << "seed" << YAML::Value << t.seed;
  out << YAML::Key << "eval_every" << YAML::Value << t.eval_every;
  out << YAML::Key << "log_every" << YAML::Value << t.log_every;
  out << YAML::Key << "activation_checkpointing" << YAML::Value << t.activation_checkpointing;
  out << YAML::Key << "label_smoothing" << YAML::Value << t.label_smoothing;
  if (t.attention_dropout) out << YAML::Key << "attention_dropout" << YAML::Value << *t.attention_dropout;
  if (t.hidden_dropout) out << YAML::Key << "hidden_dropout" << YAML::Value << *t.hidden_dropout;
  if (t.classifier_dropout) out << YAML::Key << "classifier_dropout" << YAML::Value << *t.classifier_dropout;
  out << YAML::Key << "early_stopping" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "patience" << YAML::Value << t.early_stopping.patience;
  out << YAML::Key << "metric" << YAML::Value << t.early_stopping.metric;
  out << YAML::Key << "mode" << YAML::Value << NameOf(kMetricModes, t.early_stopping.mode);
  out << YAML::Key << "min_delta" << YAML::Value << t.early_stopping.min_delta;
  out << YAML::EndMap;
  out << YAML::EndMap;

  const ShardingSpec& s = spec.sharding;
  out << YAML::Key << "sharding" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "zero_stage" << YAML::Value << s.zero_stage;
  out << YAML::Key << "backend" << YAML::Value << NameOf(kBackends, s.backend);
  out << YAML::Key << "shard_group_size" << YAML::Value << s.shard_group_size;
  out << YAML::Key << "offload_optimizer" << YAML::Value << NameOf(kOffloads, s.offload_optimizer);
  out << YAML::Key << "collective_timeout_s" << YAML::Value << s.collective_timeout_s;
  out << YAML::Key << "prefetch_layers" << YAML::Value << s.prefetch_layers;
  out << YAML::Key << "persistence_threshold" << YAML::Value << s.persistence_threshold;
  out << YAML::EndMap;

  out << YAML::Key << "output" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "dir" << YAML::Value << spec.output.dir;
  out << YAML::Key << "checkpoint_every" << YAML::Value << spec.output.checkpoint_every;
  out << YAML::Key << "keep_checkpoints" << YAML::Value << spec.output.keep_checkpoints;
  out << YAML::Key << "keep_best" << YAML::Value << spec.output.keep_best;
  out << YAML::Key << "generations" << YAML::Value << spec.output.generations;
  out << YAML::Key << "export" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (ExportFormat f : spec.output.export_formats) out << NameOf(kExports, f);
  out << YAML::EndSeq << YAML::EndMap;

  out << YAML::Key << "resources" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "nodes" << YAML::Value << spec.resources.nodes;
  out << YAML::Key << "ranks_per_node" << YAML::Value << spec.resources.ranks_per_node;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

const char* ToString(ComputeDType v) { return NameOf(kDTypes, v); }
const char* ToString(ModelTask v) { return NameOf(kTasks, v); }
const char* ToString(MethodType v) { return NameOf(kMethods, v); }
const char* ToString(DataFormat v) { return NameOf(kFormats, v); }
const char* ToString(SchedulerType v) { return NameOf(kSchedulers, v); }
const char* ToString(CommBackend v) { return NameOf(kBackends, v); }
const char* ToString(OffloadTarget v) { return NameOf(kOffloads, v); }
const char* ToString(ExportFormat v) { return NameOf(kExports, v); }
const char* ToString(MetricMode v) { return NameOf(kMetricModes, v); }

std::optional<DataFormat> DataFormatNamed(const std::string& name) {
  for (const auto& [spelling, format] : kFormats)
    if (spelling == name) return format;
  return std::nullopt;
}

bool EarlyStoppingSpec::Minimizes() const {
  if (mode != MetricMode::kAuto) return mode == MetricMode::kMin;
  return metric.find("loss") != std::string::npos || metric == "perplexity";
}
const char* ToString(OptimizerType v) { return NameOf(kOptimizers, v); }
const char* ToString(ChatTemplateChoice v) { return NameOf(kChatTemplates, v); }
const char* ToString(AdapterPlacement v) { return NameOf(kPlacements, v); }
const char* ToString(AdapterActivation v) { return NameOf(kActivations, v); }

}  // namespace shardtune
