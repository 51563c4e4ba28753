#include "worker/evaluate.h"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/generation_metrics.h"
#include "common/job_spec.h"
#include "common/run_dir.h"
#include "worker/data/formats.h"
#include "worker/data/record_texts.h"
#include "worker/evaluation.h"
#include "worker/generate.h"
#include "worker/inference_model.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

DataFormat FormatFor(const std::string& name, ModelTask task) {
  if (name.empty()) {
    if (task == ModelTask::kSequenceClassification) return DataFormat::kClassification;
    if (task == ModelTask::kTokenClassification) return DataFormat::kNer;
    Fail(ErrorCode::kInvalidArgument,
         "--format: give the data's format (chat, completion, alpaca, sharegpt, text or tokens) for a language model");
  }
  const std::optional<DataFormat> format = DataFormatNamed(name);
  if (!format) {
    Fail(ErrorCode::kInvalidArgument,
         "--format {}: not a data format (chat, completion, alpaca, sharegpt, text, classification, ner, tokens)",
         name);
  }
  const bool classifier_data = *format == DataFormat::kClassification || *format == DataFormat::kNer;
  const DataFormat expected =
      task == ModelTask::kSequenceClassification ? DataFormat::kClassification : DataFormat::kNer;
  if (task == ModelTask::kCausalLm ? classifier_data : *format != expected) {
    Fail(ErrorCode::kInvalidArgument, "--format {} does not fit this model's task, {}", name, ToString(task));
  }
  return *format;
}

// Each example's answers to its prompt, scored against its reference; with pass@K, each answer
// also run against the record's tests in the sandbox.
nlohmann::json ScoreGenerations(const EvaluateOptions& o, const LoadedModel& loaded, const TokenDataset& dataset,
                                const Tokenizer& tokenizer, DataFormat format) {
  if (loaded.config.task() != ModelTask::kCausalLm || !loaded.model) {
    Fail(ErrorCode::kInvalidArgument, "--metrics: generation metrics need a language model (this one is {})",
         ToString(loaded.config.task()));
  }
  GenerationScorer scorer(o.generation_metrics, o.num_samples);
  // The examples' lines in the file, for errors (the file rendered whole, so they align).
  const RecordTexts records = ReadRecordTexts(o.data, format);
  std::vector<CodeTests> tests;
  if (scorer.RunsTests()) {
    if (format != DataFormat::kCompletion) {
      Fail(ErrorCode::kInvalidArgument,
           "--metrics pass@k: runs completion records with tests ({{\"prompt\", \"completion\"?, \"tests\"}}), not "
           "{} data",
           ToString(format));
    }
    tests = ReadCodeTests(o.data);
  }
  std::string lines;
  for (size_t i = 0; i < dataset.examples.size(); ++i) {
    const auto [prompt, reference_ids] = SplitAtTargets(dataset.examples[i]);
    const int64_t line = i < records.lines.size() ? records.lines[i] : static_cast<int64_t>(i + 1);
    const std::string where = fmt::format("{}:{}", o.data.string(), line);
    if (reference_ids.empty())
      Fail(ErrorCode::kInvalidArgument, "{}: the example has no trained tokens to score", where);
    if (prompt.empty()) {
      Fail(ErrorCode::kInvalidArgument,
           "{}: nothing to answer: the example's trained tokens start at its first token (format {}); generation "
           "metrics need prompts and answers (completion, alpaca, chat or sharegpt data)",
           where, ToString(format));
    }
    const std::vector<int64_t>& eos = loaded.config.eos_token_ids();
    const std::string reference = tokenizer.Decode(WithoutEos(reference_ids, eos), /*skip_special_tokens=*/true);
    int64_t passed = 0;
    for (int64_t k = 0; k < o.num_samples; ++k) {
      GenerateOptions options = o.generate;
      options.seed = o.generate.seed + static_cast<uint64_t>(i) * 1000003ULL + static_cast<uint64_t>(k);
      const std::string generated =
          tokenizer.Decode(WithoutEos(Generate(*loaded.model, prompt, options), eos), /*skip_special_tokens=*/true);
      scorer.Add(generated, reference, where);
      nlohmann::json record = {{"line", line},
                               {"prompt", tokenizer.Decode(prompt, /*skip_special_tokens=*/false)},
                               {"reference", reference},
                               {"generated", generated}};
      if (scorer.RunsTests()) {
        const SandboxResult run = RunPythonSandboxed(TestProgram(tests.at(i), generated), o.sandbox);
        passed += run.passed ? 1 : 0;
        record["passed"] = run.passed;
        record["outcome"] = run.outcome;
      }
      if (!o.generations_out.empty()) lines += record.dump() + "\n";
    }
    if (scorer.RunsTests()) scorer.AddTested(passed);
  }
  if (!o.generations_out.empty()) WriteFileAtomic(o.generations_out, lines);
  return scorer.Metrics();
}

}  // namespace

nlohmann::json EvaluateModel(const EvaluateOptions& o) {
  // The generation options are checked before anything is loaded.
  if (!o.generation_metrics.empty()) {
    GenerationScorer check(o.generation_metrics, o.num_samples);
    if (o.num_samples > 1 && o.generate.temperature == 0.0) {
      Fail(ErrorCode::kInvalidArgument, "--num-samples {}: greedy answers are all alike; give --temperature > 0",
           o.num_samples);
    }
  }
  ClassifierHead head;
  if (!o.adapter.empty()) {
    const nlohmann::json adapter =
        nlohmann::json::parse(ReadFile(o.adapter / "adapter_config.json"), nullptr, /*allow_exceptions=*/false);
    if (!adapter.is_discarded() && adapter.value("task_type", "CAUSAL_LM") != "CAUSAL_LM") {
      // A classifier's adapter holds the head's weights but not its classes: the run that wrote
      // it (OUTPUT_DIR/final) recorded them in OUTPUT_DIR/job.yaml.
      const fs::path job = RunDir(fs::absolute(o.adapter).parent_path()).JobYaml();
      if (!fs::exists(job)) {
        Fail(ErrorCode::kInvalidArgument,
             "{}: a {} adapter holds no class names, and there is no job.yaml of the run that wrote it beside it "
             "({}); evaluate the model exported with `shardtune export CHECKPOINT --to hf` instead",
             o.adapter.string(), adapter.value("task_type", ""), job.string());
      }
      SpecOptions names_only;  // the run's head is wanted, not its files
      names_only.check_files = false;
      const JobSpec run = ParseJobSpec(ReadFile(job), job.string(), job.parent_path(), names_only);
      head = {run.model.task, run.model.labels};
    }
  }
  const LoadedModel loaded = LoadModelForInference(o.model, o.adapter, head);
  const ModelConfig& config = loaded.config;
  JobSpec spec;
  spec.model.path = o.model.string();
  spec.model.tokenizer = o.tokenizer.string();
  spec.data.format = FormatFor(o.format, config.task());
  spec.data.max_seq_len = config.SequenceLimit(o.max_seq_len, loaded.virtual_tokens);
  JobDataOptions data = DataOptionsFor(spec, config.vocab_size(), config.eos_token_ids());
  data.options.format = spec.data.format;
  data.options.label_names = config.label_names();
  const TokenDataset dataset = ReadDataset(o.data, data.options);
  if (dataset.examples.empty()) Fail(ErrorCode::kInvalidArgument, "{}: no examples", o.data.string());

  at::NoGradGuard no_grad;
  Evaluation evaluation(config.task(), config.label_names());
  for (size_t begin = 0; begin < dataset.examples.size(); begin += static_cast<size_t>(o.batch_size)) {
    std::vector<const Example*> examples;
    for (size_t i = begin; i < std::min(dataset.examples.size(), begin + static_cast<size_t>(o.batch_size)); ++i)
      examples.push_back(&dataset.examples[i]);
    const Batch batch = Collate(examples, config.pad_token_id());
    evaluation.Add(loaded.TaskLogits(batch), batch, examples);
  }
  nlohmann::json result = {{"model", o.model.string()},
                           {"data", o.data.string()},
                           {"examples", static_cast<int64_t>(dataset.examples.size())}};
  if (!o.adapter.empty()) result["adapter"] = o.adapter.string();
  result.update(evaluation.Metrics());
  if (!o.generation_metrics.empty()) {
    if (!data.tokenizer)
      Fail(ErrorCode::kInvalidArgument, "--metrics: generation metrics need text data, not token ids");
    // Whole examples: a reference cut at --max-seq-len would be scored as if it were the answer.
    FormatOptions whole = data.options;
    whole.max_seq_len = 0;
    result["generation"] = ScoreGenerations(o, loaded, ReadDataset(o.data, whole), *data.tokenizer, spec.data.format);
  }
  spdlog::info("{} examples of {}: {}", dataset.examples.size(), o.data.string(), Evaluation::Summary(result));
  return result;
}

}  // namespace shardtune
