// Validation during training, early stopping and output.keep_best, and the exported model's
// answers to validation prompts (output.generations).

#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "worker/evaluation.h"
#include "worker/generate.h"
#include "worker/inference_model.h"
#include "worker/trainer_internal.h"

namespace shardtune {

using nlohmann::json;

std::optional<double> Trainer::Evaluate(int64_t step) {
  if (validation_.empty()) return std::nullopt;
  at::NoGradGuard no_grad;
  // Ranks take micro-batches round-robin; all run the same number of forwards (the collectives
  // of stage 3 must match), so a rank without examples left runs a one-token batch with no targets.
  const int64_t v = validation_.size();
  const int64_t rounds = (v + micro_ * ranks_ - 1) / (micro_ * ranks_);
  const Example idle{{config_.pad_token_id(), config_.pad_token_id()}, {-100, -100}, {}, {}};
  Evaluation evaluation(config_.task(), config_.label_names(), static_cast<int64_t>(tasks_.size()));
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t begin = (round * ranks_ + world_.rank()) * micro_;
    std::vector<Example> owned;
    std::vector<int64_t> example_tasks;
    for (int64_t i = begin; i < std::min(begin + micro_, v); ++i) {
      owned.push_back(validation_.Get(i));
      example_tasks.push_back(validation_.PartOf(i));
    }
    std::vector<const Example*> examples = Pointers(owned);
    if (examples.empty()) {
      examples.push_back(&idle);
      example_tasks.push_back(0);
    }
    const Batch batch = WithVirtualTokens(Collate(examples, config_.pad_token_id()), peft_.prompt_tokens());
    evaluation.Add(model_->Forward(batch, /*training=*/false), batch, examples, example_tasks);
  }
  at::Tensor sums = at::tensor(evaluation.sums(), at::kDouble).to(device_);
  AllReduceSumNow(world_, sums, CollectiveTag{"validation metrics", step});
  const at::Tensor host = sums.cpu();
  for (size_t i = 0; i < evaluation.sums().size(); ++i)
    evaluation.sums()[i] = host[static_cast<int64_t>(i)].item<double>();
  if (evaluation.targets() == 0) return std::nullopt;
  const json figures = evaluation.Metrics(task_names_);
  summary_.last_val_loss = figures.at("val_loss").get<double>();
  for (const auto& [key, value] : figures.items())
    if (value.is_number_float()) last_metrics_[key] = value.get<double>();
  const double metric = figures.at(spec_.training.early_stopping.metric).get<double>();
  if (!rank0_) return metric;
  json record = {{"step", step}, {"epoch", static_cast<double>(step) / static_cast<double>(steps_per_epoch_)}};
  record.update(figures);
  metrics_->Write(record);
  if (progress_->active()) std::fputs("\r\033[K", stderr);
  spdlog::info("step {}: {}", step, Evaluation::Summary(figures));
  return metric;
}

bool Trainer::AfterEvaluation(int64_t step, std::optional<double> metric) {
  const EarlyStoppingSpec& stopping = spec_.training.early_stopping;
  if (!metric || (stopping.patience == 0 && !spec_.output.keep_best)) return false;
  const bool improved = best_step_ == 0 || (stopping.Minimizes() ? *metric < best_value_ - stopping.min_delta
                                                                 : *metric > best_value_ + stopping.min_delta);
  if (improved) {
    best_step_ = step;
    best_value_ = *metric;
    evaluations_since_best_ = 0;
    best_unsaved_ = spec_.output.keep_best;  // the loop checkpoints it (DueCheckpoints)
  } else {
    ++evaluations_since_best_;
  }
  summary_.best_step = best_step_;
  if (stopping.patience == 0 || evaluations_since_best_ < stopping.patience) return false;
  if (rank0_) {
    spdlog::info("stopping early at step {}: {} has not improved on {:.6g} (step {}) for {} evaluations", step,
                 stopping.metric, best_value_, best_step_, evaluations_since_best_);
  }
  return true;
}

void Trainer::WriteGenerations() {
  const int64_t wanted = std::min<int64_t>(spec_.output.generations, validation_.size());
  if (wanted == 0 || !rank0_ || !tokenizer_ || config_.task() != ModelTask::kCausalLm) return;
  const std::filesystem::path final_dir = run_dir_.Final();
  const bool merged =
      std::count(spec_.output.export_formats.begin(), spec_.output.export_formats.end(), ExportFormat::kHf) > 0;
  // One process reads the exported model back: what a user of final/ would get.
  const LoadedModel loaded =
      merged ? LoadModelForInference(final_dir) : LoadModelForInference(spec_.model.path, final_dir);
  std::string lines;
  for (int64_t i = 0; i < wanted; ++i) {
    const auto [prompt, reference] = SplitAtTargets(validation_.Get(i));
    GenerateOptions options;
    options.max_new_tokens = std::min<int64_t>(256, 2 * static_cast<int64_t>(reference.size()) + 8);
    const std::vector<int64_t> answer = Generate(*loaded.model, prompt, options);
    lines += json({{"prompt", tokenizer_->Decode(prompt, /*skip_special_tokens=*/false)},
                   {"reference", tokenizer_->Decode(reference, /*skip_special_tokens=*/true)},
                   {"generated", tokenizer_->Decode(answer, /*skip_special_tokens=*/true)}})
                 .dump() +
             "\n";
  }
  WriteFileAtomic(run_dir_.Generations(), lines);
  spdlog::info("wrote the exported model's greedy answers to {} validation prompts to {}", wanted,
               run_dir_.Generations().string());
}

}  // namespace shardtune
