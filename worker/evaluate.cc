#include "worker/evaluate.h"

#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/job_spec.h"
#include "common/run_dir.h"
#include "worker/data/formats.h"
#include "worker/evaluation.h"
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

}  // namespace

nlohmann::json EvaluateModel(const EvaluateOptions& o) {
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
  spdlog::info("{} examples of {}: {}", dataset.examples.size(), o.data.string(), Evaluation::Summary(result));
  return result;
}

}  // namespace shardtune
