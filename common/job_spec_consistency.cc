// The job spec's checks that need more than one key, the evaluation's metrics or the file system,
// one function per concern. They run once every key has been read without a problem, so each may
// assume the values are in range.

#include <fmt/ranges.h>

#include <algorithm>
#include <regex>

#include "common/evaluation_metrics.h"
#include "common/generation_metrics.h"
#include "common/job_checks.h"
#include "common/job_spec_reader.h"

namespace shardtune::spec_yaml {

namespace fs = std::filesystem;

namespace {

// The spec being checked, and where its problems go.
struct Checks {
  const JobSpec& spec;
  const YAML::Node& root;
  SpecReader& reader;

  // Reports `message` under `key` ("training.scheduler.warmup_steps", "data.tasks[1].train"), at
  // the key's line and column, or its nearest enclosing key's where the YAML leaves it out.
  void Problem(const std::string& key, const std::string& message) { reader.Problem(MarkOf(key), key, message); }

  YAML::Mark MarkOf(const std::string& key) const {
    YAML::Node node;
    node.reset(root);  // reset, not =: assigning a YAML::Node overwrites what it refers to
    YAML::Mark mark = root.Mark();
    for (size_t begin = 0; begin <= key.size();) {
      const size_t end = std::min(key.find('.', begin), key.size());
      const std::string segment = key.substr(begin, end - begin);
      begin = end + 1;
      const size_t bracket = segment.find('[');
      const std::string name = segment.substr(0, bracket);
      if (!node.IsMap() || !node[name]) break;
      node.reset(node[name]);
      mark = node.Mark();
      if (bracket == std::string::npos) continue;
      const size_t index = std::stoul(segment.substr(bracket + 1));
      if (!node.IsSequence() || index >= node.size()) break;
      node.reset(node[index]);
      mark = node.Mark();
    }
    return mark;
  }
};

void CheckName(Checks& c) {
  static const std::regex kNamePattern("[a-z0-9]([a-z0-9-]*[a-z0-9])?");
  const std::string& name = c.spec.name;
  if (!name.empty() && (name.size() > 64 || !std::regex_match(name, kNamePattern))) {
    c.Problem(
        "name",
        fmt::format("'{}' must be 1 to 64 characters of a-z, 0-9 and '-', not starting or ending with '-'", name));
  }
}

// The batch sizes against the ranks the spec names (ProblemsForWorld); a spec without resources is
// checked against what any world needs, and again by the worker on the ranks it is started with.
void CheckWorldAndSchedule(Checks& c) {
  const bool ranks_known = c.root["resources"].IsDefined();
  for (const SpecProblem& problem :
       ranks_known ? ProblemsForWorld(c.spec, c.spec.resources.world_size()) : ProblemsForAnyWorld(c.spec)) {
    c.Problem(problem.key, problem.message);
  }
  const TrainingSpec& t = c.spec.training;
  if (t.max_steps > 0 && t.scheduler.warmup_steps > t.max_steps) {
    c.Problem("training.scheduler.warmup_steps",
              fmt::format("{} exceeds training.max_steps {}", t.scheduler.warmup_steps, t.max_steps));
  }
}

// Validation data, and what judges by it: early stopping, output.keep_best and the metric, which
// must be one that the task's evaluation reports (common/evaluation_metrics.h).
// evaluation.generate: answers of a language model to prompts with answers to score against.
void CheckGeneration(Checks& c, bool has_validation) {
  const JobSpec& spec = c.spec;
  const GenerateEvaluationSpec& g = spec.evaluation.generate;
  if (spec.model.task != ModelTask::kCausalLm) {
    c.Problem("evaluation.generate", fmt::format("generates a language model's answers; this job trains a {}",
                                                 NameOf(kTasks, spec.model.task)));
    return;
  }
  if (!has_validation) {
    c.Problem("evaluation.generate", "answers the validation prompts: give data.validation or data.validation_split");
  }
  bool runs_tests = false;
  try {
    runs_tests = GenerationScorer(g.metrics, g.num_samples).RunsTests();
  } catch (const Error& e) {
    c.Problem("evaluation.generate.metrics", e.what());
  }
  if (g.num_samples > 1 && g.temperature == 0.0) {
    c.Problem("evaluation.generate.num_samples",
              "greedy answers are all alike; give evaluation.generate.temperature > 0");
  }
  std::vector<DataFormat> formats = {spec.data.format};
  for (const TaskSpec& task : spec.data.tasks) formats.push_back(task.format);
  for (DataFormat format : formats) {
    if (runs_tests && format != DataFormat::kCompletion) {
      c.Problem("evaluation.generate.metrics",
                fmt::format("pass@k runs completion records with tests ({{\"prompt\", \"completion\"?, \"tests\"}}), "
                            "not {} data",
                            ToString(format)));
      break;
    }
    if (format == DataFormat::kText || format == DataFormat::kTokens) {
      c.Problem("evaluation.generate",
                fmt::format("needs prompts and answers (completion, alpaca, chat or sharegpt data), not {} data",
                            ToString(format)));
      break;
    }
  }
}

void CheckValidationAndMetric(Checks& c) {
  const JobSpec& spec = c.spec;
  if (!spec.data.validation.empty() && spec.data.validation_split > 0) {
    c.Problem("data.validation_split", "give either data.validation or data.validation_split, not both");
  }
  bool has_validation = !spec.data.validation.empty() || spec.data.validation_split > 0;
  for (const auto& task : spec.data.tasks) has_validation = has_validation || !task.validation.empty();
  const EarlyStoppingSpec& stopping = spec.training.early_stopping;
  if ((stopping.patience > 0 || spec.output.keep_best) && !has_validation) {
    c.Problem(stopping.patience > 0 ? "training.early_stopping" : "output.keep_best",
              "needs validation data to judge by: give data.validation or data.validation_split");
  }
  const std::vector<std::string> metrics = JudgingMetrics(spec.model.task);
  const std::vector<std::string>& generated = spec.evaluation.generate.metrics;
  const EvaluationMetric* known = FindEvaluationMetric(stopping.metric);
  if (std::find(metrics.begin(), metrics.end(), stopping.metric) == metrics.end()) {
    c.Problem("training.early_stopping.metric",
              fmt::format("'{}' is not a metric of a {} evaluation; expected one of: {}", stopping.metric,
                          NameOf(kTasks, spec.model.task), fmt::join(metrics, ", ")));
  } else if (known->generated && std::find(generated.begin(), generated.end(), stopping.metric) == generated.end()) {
    c.Problem("training.early_stopping.metric",
              fmt::format("'{}' is a generation metric: list it in evaluation.generate.metrics", stopping.metric));
  }
  const GenerateEvaluationSpec& g = spec.evaluation.generate;
  if (!g.metrics.empty()) CheckGeneration(c, has_validation);
}

// What the export formats can write for the method.
void CheckExports(Checks& c) {
  const MethodType m = c.spec.method.type;
  for (ExportFormat format : c.spec.output.export_formats) {
    if (format == ExportFormat::kPeft && m == MethodType::kFull) {
      c.Problem("output.export",
                "'peft' exports an adapter, but method.type is 'full' (there is no adapter); use [hf]");
    }
    if (format == ExportFormat::kHf &&
        (m == MethodType::kAdapter || m == MethodType::kPrefix || m == MethodType::kPrompt)) {
      c.Problem("output.export", fmt::format("'hf' merges the adapter into the base weights, which method '{}' cannot "
                                             "be (it adds computation, not weights); use [peft]",
                                             NameOf(kMethods, m)));
    }
  }
}

// The data each model task reads, and how it may be batched.
void CheckTaskAndData(Checks& c) {
  const JobSpec& spec = c.spec;
  const bool classification = spec.model.task == ModelTask::kSequenceClassification;
  const bool ner = spec.model.task == ModelTask::kTokenClassification;
  std::vector<DataFormat> formats = {spec.data.format};
  for (const auto& task : spec.data.tasks) formats.push_back(task.format);
  for (DataFormat f : formats) {
    const bool ok = classification ? f == DataFormat::kClassification
                    : ner          ? f == DataFormat::kNer
                                   : f != DataFormat::kClassification && f != DataFormat::kNer;
    if (!ok) {
      c.Problem("data.format", fmt::format("'{}' does not fit model.task '{}' (sequence_classification reads "
                                           "classification, token_classification reads ner, causal_lm the others)",
                                           NameOf(kFormats, f), NameOf(kTasks, spec.model.task)));
      break;
    }
  }
  // Several files of one classifier (real and synthetic data, mixed by weight) share one label
  // set: the spec names it, so that every file's ids mean the same classes.
  if ((classification || ner) && !spec.data.tasks.empty()) {
    if (spec.model.labels.empty()) {
      c.Problem("data.tasks", "a classifier's tasks share one label set: give it as model.labels");
    }
    if (spec.data.balance == BalanceMode::kClassWeights) {
      c.Problem("data.balance",
                "class_weights counts one training file's classes; with data.tasks use oversample "
                "or concatenate the files");
    }
  }
  if ((classification || ner) && spec.data.packing) {
    c.Problem("data.packing",
              "applies to causal_lm: a classifier reads each example (its class, its tags) on its own; set "
              "packing: false");
  }
  if (spec.data.balance != BalanceMode::kNone && !classification && !ner) {
    c.Problem("data.balance", "balances the classes of classification and ner data; a language model has none");
  }
  if (spec.data.balance == BalanceMode::kOversample && ner) {
    c.Problem("data.balance",
              "oversample repeats examples of rare classes, and an NER sentence holds many tags; use "
              "class_weights for ner");
  }
  if (spec.data.augment.copies > 0 && !classification && !ner) {
    c.Problem("data.augment.copies",
              "EDA's word operations keep a class or tags meaningful; they apply to "
              "classification and ner data, not to what a language model generates");
  }
  if (spec.output.generations > 0 && (classification || ner || spec.data.format == DataFormat::kTokens)) {
    c.Problem("output.generations",
              "generated answers need a language model (model.task causal_lm) trained on text data, not token ids");
  }
}

// What the method's virtual tokens and its starting adapter allow.
void CheckMethodCombinations(Checks& c) {
  const MethodSpec& method = c.spec.method;
  if (c.spec.data.packing && (method.type == MethodType::kPrompt || method.type == MethodType::kPrefix)) {
    c.Problem("data.packing", fmt::format("method '{}' puts its virtual tokens before each sequence, which packing "
                                          "would share between documents; set packing: false",
                                          NameOf(kMethods, method.type)));
  }
  if (c.spec.model.quantization.type != QuantizationType::kNone && method.type == MethodType::kFull) {
    c.Problem("model.quantization",
              "quantizes the frozen base of a parameter-efficient method (QLoRA), but method.type is 'full', which "
              "trains every weight; use method.type lora (or another parameter-efficient method), or remove "
              "model.quantization");
  }
  if (method.type == MethodType::kPrefix && method.prefix.projection && !method.init_from.empty()) {
    c.Problem("method.init_from",
              "a saved prefix holds the projected keys and values, not the MLP that made them; set "
              "method.prefix.projection: false to continue from it");
  }
}

// The files and directories the spec names exist and are of the right kind.
void CheckFiles(Checks& c) {
  const JobSpec& spec = c.spec;
  std::error_code ec;
  if (!spec.method.init_from.empty() && !fs::exists(fs::path(spec.method.init_from) / "adapter_config.json", ec)) {
    c.Problem("method.init_from", fmt::format("'{}' has no adapter_config.json (expected a PEFT adapter directory)",
                                              spec.method.init_from));
  }
  if (!spec.model.path.empty()) {
    if (!fs::is_directory(spec.model.path, ec)) {
      c.Problem("model.path", fmt::format("'{}' is not a directory", spec.model.path));
    } else if (!fs::exists(fs::path(spec.model.path) / "config.json", ec)) {
      c.Problem("model.path",
                fmt::format("'{}' has no config.json (expected a Hugging Face model directory)", spec.model.path));
    }
  }
  if (!spec.model.tokenizer.empty() && !fs::exists(spec.model.tokenizer, ec)) {
    c.Problem("model.tokenizer", fmt::format("'{}' does not exist", spec.model.tokenizer));
  }
  auto require_file = [&](const std::string& key, const std::string& path) {
    if (!path.empty() && !fs::is_regular_file(path, ec)) c.Problem(key, fmt::format("'{}' is not a file", path));
  };
  require_file("data.train", spec.data.train);
  require_file("data.validation", spec.data.validation);
  for (size_t i = 0; i < spec.data.tasks.size(); ++i) {
    require_file(fmt::format("data.tasks[{}].train", i), spec.data.tasks[i].train);
    require_file(fmt::format("data.tasks[{}].validation", i), spec.data.tasks[i].validation);
  }
}

}  // namespace

void CheckConsistency(const JobSpec& spec, const SpecOptions& options, const YAML::Node& root, SpecReader& reader) {
  Checks checks{spec, root, reader};
  CheckName(checks);
  CheckWorldAndSchedule(checks);
  CheckValidationAndMetric(checks);
  CheckExports(checks);
  CheckTaskAndData(checks);
  CheckMethodCombinations(checks);
  if (options.check_files) CheckFiles(checks);
}

}  // namespace shardtune::spec_yaml
