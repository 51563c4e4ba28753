// YAML -> JobSpec: one reader per section of the spec, each reading its keys through a MapReader
// (job_spec_reader.h), then the checks across keys (job_spec_consistency.cc). Every problem of the
// whole file is collected and thrown at once, so a user fixes a spec in one pass.

#include <algorithm>
#include <cctype>
#include <limits>
#include <regex>
#include <set>

#include "common/atomic_file.h"
#include "common/job_spec_reader.h"
#include "common/utf8.h"

namespace shardtune {
namespace spec_yaml {
namespace {

// std::regex compiles recursively and reads counts ("{n}", back-references "\1") into a long without an
// overflow check, so a hostile pattern can exhaust the stack or overflow before regex_error is thrown.
// Module-name patterns are short and their numbers small; bound both, then let the compiler judge the rest.
std::string TargetPatternProblem(const std::string& pattern) {
  constexpr size_t kMaxPattern = 512;
  constexpr int kMaxDigits = 4;
  if (pattern.size() > kMaxPattern)
    return fmt::format("a pattern of {} characters; at most {} are accepted", pattern.size(), kMaxPattern);
  int digits = 0;
  for (const char c : pattern) {
    digits = std::isdigit(static_cast<unsigned char>(c)) ? digits + 1 : 0;
    if (digits > kMaxDigits)
      return fmt::format("'{}' has a number of more than {} digits; counts and layer indices are smaller", pattern,
                         kMaxDigits);
  }
  try {
    std::regex check(pattern);
  } catch (const std::regex_error& e) {
    return fmt::format("'{}' is not a valid regular expression: {}", pattern, e.what());
  }
  return "";
}

// bitsandbytes' names (bnb_4bit_quant_type, bnb_4bit_use_double_quant, the blocksize of
// quantize_4bit, bnb_4bit_compute_dtype), shortened as the users write them.
void ReadQuantization(MapReader m, ModelSpec* model, bool dtype_given) {
  QuantizationSpec& q = model->quantization;
  m.Enum("type", &q.type, kQuantizationTypes, /*required=*/true);
  m.Int("block_size", &q.block_size, 1);
  if (q.block_size < 64 || q.block_size > 4096 || (q.block_size & (q.block_size - 1)) != 0) {
    m.Problem(m.Raw("block_size"), "block_size",
              fmt::format("{} is not a block size bitsandbytes supports: 64, 128, 256, 512, 1024, 2048 or 4096",
                          q.block_size));
  }
  m.Bool("double_quant", &q.double_quant);
  // The dtype the dequantized weights compute in is the model's: the key may set model.dtype,
  // or repeat it.
  ComputeDType compute = model->dtype;
  m.Enum("compute_dtype", &compute, kDTypes);
  if (m.Has("compute_dtype") && dtype_given && compute != model->dtype) {
    m.Problem(m.Raw("compute_dtype"), "compute_dtype",
              fmt::format("is '{}' but model.dtype is '{}': the dequantized weights compute in model.dtype; give one",
                          NameOf(kDTypes, compute), NameOf(kDTypes, model->dtype)));
  }
  model->dtype = compute;
  m.Finish();
}

void ReadModel(MapReader m, ModelSpec* model) {
  m.Path("path", &model->path, /*required=*/true);
  m.Path("tokenizer", &model->tokenizer);
  m.Enum("dtype", &model->dtype, kDTypes);
  m.Enum("task", &model->task, kTasks);
  m.StringList("labels", &model->labels);
  if (m.Has("quantization")) ReadQuantization(m.Section("quantization"), model, m.Has("dtype"));
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
    const std::string problem = TargetPatternProblem(method->lora.target_modules[0]);
    if (!problem.empty()) m.Problem(m.Section("lora").Raw("target_modules"), "lora.target_modules", problem);
  }
  m.Finish();
}

// data.dedup: a mode alone (`dedup: near`), or a mapping {mode, threshold, shingle, ngram}
// whose mode defaults to near (a threshold is only for near duplicates).
void ReadDedup(MapReader& m, DataSpec::Dedup* dedup) {
  const YAML::Node raw = m.Raw("dedup");
  if (raw && raw.IsScalar()) {
    m.Enum("dedup", &dedup->mode, kDedupModes);
    return;
  }
  MapReader d = m.Section("dedup");
  if (raw && raw.IsMap()) dedup->mode = DedupMode::kNear;
  d.Enum("mode", &dedup->mode, kDedupModes);
  d.Double("threshold", &dedup->similarity.threshold, 0.0, 1.0, /*min_open=*/true);
  d.Enum("shingle", &dedup->similarity.unit, kShingleUnits);
  d.Int("ngram", &dedup->similarity.ngram, 1, 64);
  d.Finish();
}

void ReadData(MapReader m, DataSpec* data) {
  const YAML::Node tasks = m.Raw("tasks");
  const bool multi_task = tasks && !tasks.IsNull();
  m.DataPath("train", &data->train, /*required=*/!multi_task);
  m.DataPath("validation", &data->validation);
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
        t.DataPath("train", &task.train, /*required=*/true);
        t.DataPath("validation", &task.validation);
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
  m.Path("cache_dir", &data->cache_dir);
  ReadDedup(m, &data->dedup);
  m.Enum("balance", &data->balance, kBalanceModes);
  MapReader augment = m.Section("augment");
  AugmentOptions& a = data->augment;
  augment.Int("copies", &a.copies, 0, 100);
  augment.Double("synonym_replacement", &a.synonym_replacement, 0.0, 1.0);
  augment.Double("random_insertion", &a.random_insertion, 0.0, 1.0);
  augment.Double("random_swap", &a.random_swap, 0.0, 1.0);
  augment.Double("random_deletion", &a.random_deletion, 0.0, 1.0);
  augment.Finish();
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
    m.Raw(key);  // registered even when absent: JobSpecKeyPaths() lists what the readers ask for
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

void ReadEvaluation(MapReader m, EvaluationSpec* evaluation) {
  MapReader g = m.Section("generate");
  GenerateEvaluationSpec& generate = evaluation->generate;
  g.StringList("metrics", &generate.metrics);
  g.Int("max_new_tokens", &generate.max_new_tokens, 1, 1 << 16);
  g.Int("num_samples", &generate.num_samples, 1, 1000);
  g.Double("temperature", &generate.temperature, 0.0, 100.0);
  g.Double("top_p", &generate.top_p, 0.0, 1.0, /*min_open=*/true);
  g.Int("max_examples", &generate.max_examples, 0);
  g.Double("test_timeout_s", &generate.test_timeout_s, 0.0, 3600.0, /*min_open=*/true);
  g.Finish();
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
  m.Int("load_buffer_mb", &sharding->load_buffer_mb, 1, 1 << 20);
  m.Finish();
}

void ReadOutput(MapReader m, OutputSpec* output) {
  m.Path("dir", &output->dir, /*required=*/true);
  m.Int("checkpoint_every", &output->checkpoint_every, 0);
  m.Int("keep_checkpoints", &output->keep_checkpoints, 0);
  m.Bool("async_checkpoint", &output->async_checkpoint);
  m.Bool("keep_best", &output->keep_best);
  m.Int("generations", &output->generations, 0, 100000);
  m.EnumList("export", &output->export_formats, kExports);
  m.Finish();
}

void ReadResources(MapReader m, ResourcesSpec* resources) {
  m.Int("nodes", &resources->nodes, 1, 1 << 20);
  m.Int("ranks_per_node", &resources->ranks_per_node, 1, 1 << 16);
  m.Int("gpus_per_node", &resources->gpus_per_node, 0, 1 << 10);
  m.Int("cpus_per_rank", &resources->cpus_per_rank, 0, 1 << 16);
  const std::pair<const char*, std::string*> names[] = {{"time_limit", &resources->time_limit},
                                                        {"partition", &resources->partition},
                                                        {"account", &resources->account},
                                                        {"qos", &resources->qos}};
  for (const auto& [key, out] : names) {
    m.String(key, out);
    const std::string problem = out->empty()                       ? ""
                                : key == std::string("time_limit") ? TimeLimitProblem(*out)
                                                                   : SchedulerNameProblem(*out);
    if (!problem.empty()) m.Problem(m.Raw(key), key, problem);
  }
  m.Finish();
}

// Reads every section of `root`, a mapping; problems go to `reader`.
JobSpec ReadSpec(const YAML::Node& root, const SpecOptions& options, SpecReader& reader) {
  JobSpec spec;
  MapReader top(reader, root, "", root.Mark());
  top.String("name", &spec.name, /*required=*/true);
  top.StringMap("labels", &spec.labels);
  ReadModel(top.Section("model"), &spec.model);
  ReadMethod(top.Section("method"), &spec.method);
  ReadData(top.Section("data"), &spec.data);
  ReadTraining(top.Section("training"), &spec.training);
  ReadEvaluation(top.Section("evaluation"), &spec.evaluation);
  ReadSharding(top.Section("sharding"), &spec.sharding);
  if (spec.method.type != MethodType::kFull) spec.output.export_formats = {ExportFormat::kPeft};
  ReadOutput(top.Section("output"), &spec.output);
  ReadResources(top.Section("resources"), &spec.resources);
  top.Finish();
  if (reader.problems().empty()) CheckConsistency(spec, options, root, reader);
  return spec;
}

}  // namespace
}  // namespace spec_yaml

namespace fs = std::filesystem;
using spec_yaml::NameOf;

namespace spec_yaml {

YAML::Node LoadSpecYaml(const std::string& yaml_text, const std::string& source, const std::string& what) {
  if (const size_t bad = FindInvalidUtf8(yaml_text); bad != std::string::npos) {
    const size_t line_start = yaml_text.rfind('\n', bad == 0 ? 0 : bad - 1);
    const size_t column = line_start == std::string::npos ? bad + 1 : bad - line_start;
    const auto line = 1 + std::count(yaml_text.begin(), yaml_text.begin() + static_cast<std::ptrdiff_t>(bad), '\n');
    throw SpecError(source, {fmt::format("(line {}, column {}): not UTF-8 text (byte 0x{:02x}); a {} is YAML, "
                                         "which is Unicode",
                                         line, column, static_cast<unsigned char>(yaml_text[bad]), what)});
  }
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw SpecError(
        source, {fmt::format("(line {}, column {}): not valid YAML: {}", e.mark.line + 1, e.mark.column + 1, e.msg)});
  }
  return root;
}

}  // namespace spec_yaml

JobSpec ParseJobSpec(const std::string& yaml_text, const std::string& source, const fs::path& base_dir,
                     const SpecOptions& options) {
  const YAML::Node root = spec_yaml::LoadSpecYaml(yaml_text, source, "job spec");
  if (!root.IsMap())
    throw SpecError(source, {"(top level): expected a mapping of sections (name, model, data, ...), got " +
                             spec_yaml::NodeKind(root)});
  spec_yaml::SpecReader reader(source, base_dir, options);
  JobSpec spec = spec_yaml::ReadSpec(root, options, reader);
  if (!reader.problems().empty()) throw SpecError(source, reader.problems());
  return spec;
}

std::vector<std::string> JobSpecKeyPaths() {
  // The readers run over an empty spec: each registers its key as it asks for it (a missing
  // required key is a problem, ignored here), so the list is the parser's own and cannot drift.
  // Keys inside list elements (data.tasks[i].*) are not paths of the spec and are not listed.
  static const std::vector<std::string> kPaths = [] {
    spec_yaml::SpecReader reader("(schema)", "/");
    const YAML::Node empty(YAML::NodeType::Map);
    spec_yaml::ReadSpec(empty, SpecOptions{}, reader);
    std::vector<std::string> paths;
    for (const std::string& path : reader.key_paths())
      if (!reader.section_paths().count(path) && path.find('[') == std::string::npos) paths.push_back(path);
    return paths;
  }();
  return kPaths;
}

JobSpec LoadJobSpec(const fs::path& path, const SpecOptions& options) {
  const std::string text = ReadFile(path);
  const fs::path base = fs::absolute(path).parent_path();
  return ParseJobSpec(text, path.string(), base, options);
}

const char* ToString(ComputeDType v) { return NameOf(spec_yaml::kDTypes, v); }
const char* ToString(ModelTask v) { return NameOf(spec_yaml::kTasks, v); }
const char* ToString(MethodType v) { return NameOf(spec_yaml::kMethods, v); }
const char* ToString(DataFormat v) { return NameOf(spec_yaml::kFormats, v); }
const char* ToString(SchedulerType v) { return NameOf(spec_yaml::kSchedulers, v); }
const char* ToString(CommBackend v) { return NameOf(spec_yaml::kBackends, v); }
const char* ToString(OffloadTarget v) { return NameOf(spec_yaml::kOffloads, v); }
const char* ToString(ExportFormat v) { return NameOf(spec_yaml::kExports, v); }
const char* ToString(MetricMode v) { return NameOf(spec_yaml::kMetricModes, v); }

std::optional<DataFormat> DataFormatNamed(const std::string& name) {
  for (const auto& [spelling, format] : spec_yaml::kFormats)
    if (spelling == name) return format;
  return std::nullopt;
}
const char* ToString(OptimizerType v) { return NameOf(spec_yaml::kOptimizers, v); }
const char* ToString(ChatTemplateChoice v) { return NameOf(spec_yaml::kChatTemplates, v); }
const char* ToString(DedupMode v) { return NameOf(spec_yaml::kDedupModes, v); }
const char* ToString(BalanceMode v) { return NameOf(spec_yaml::kBalanceModes, v); }
const char* ToString(ShingleUnit v) { return NameOf(spec_yaml::kShingleUnits, v); }
const char* ToString(AdapterPlacement v) { return NameOf(spec_yaml::kPlacements, v); }
const char* ToString(AdapterActivation v) { return NameOf(spec_yaml::kActivations, v); }

}  // namespace shardtune
