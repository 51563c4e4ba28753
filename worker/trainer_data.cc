// The data a job trains on: every task's training and validation examples (tokenized, packed,
// mixed) and, each step, the global batch in the epoch's order.

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "worker/data/formats.h"
#include "worker/trainer_internal.h"

namespace shardtune {

void Trainer::LoadData() {
  // One source per task; a single-task job is one unnamed task.
  std::vector<TaskSpec> sources = spec_.data.tasks;
  if (sources.empty()) sources.push_back(TaskSpec{"", spec_.data.train, spec_.data.validation, spec_.data.format, 1.0});
  JobSpec probe = spec_;  // the tokenizer is needed when any source is text
  probe.data.max_seq_len = max_seq_len_;
  for (const TaskSpec& task : sources) {
    if (task.format != DataFormat::kTokens) probe.data.format = task.format;
  }
  JobDataOptions job_data = DataOptionsFor(probe, config_.vocab_size(), config_.eos_token_ids());
  tokenizer_ = std::move(job_data.tokenizer);
  if (rank0_ && !job_data.template_note.empty()) spdlog::info("{}", job_data.template_note);

  std::vector<int64_t> sizes;
  std::vector<double> weights;
  for (size_t t = 0; t < sources.size(); ++t) {
    const TaskSpec& task = sources[t];
    FormatOptions options = job_data.options;
    options.format = task.format;
    if (!spec_.model.labels.empty()) options.label_names = spec_.model.labels;
    TokenDataset train = ReadDataset(task.train, options);
    // Validation uses the training data's classes, whatever subset of them it holds.
    options.label_names = label_names_ = train.label_names;
    std::vector<Example> examples = std::move(train.examples);
    if (train.truncated > 0 && rank0_) {
      spdlog::warn("{}: {} examples are longer than {} tokens and were truncated", task.train, train.truncated,
                   max_seq_len_);
    }
    std::vector<Example> validation;
    if (!task.validation.empty()) {
      validation = ReadDataset(task.validation, options).examples;
    } else {
      SplitValidation(examples, validation, spec_.data.validation_split, spec_.training.seed + t);
    }
    if (spec_.data.packing) {
      const size_t documents = examples.size();
      examples = PackExamples(examples, max_seq_len_);  // within the task: task ranges stay whole
      if (rank0_) {
        spdlog::info("packing{}: {} examples in {} sequences of at most {} tokens",
                     task.name.empty() ? "" : " " + task.name, documents, examples.size(), max_seq_len_);
      }
    }
    tasks_.push_back(TaskRange{static_cast<int64_t>(train_.size()), static_cast<int64_t>(examples.size()), 0});
    task_names_.push_back(task.name);
    sizes.push_back(static_cast<int64_t>(examples.size()));
    weights.push_back(task.weight);
    for (auto& e : examples) train_.push_back(std::move(e));
    for (auto& e : validation) {
      validation_.push_back(std::move(e));
      validation_tasks_.push_back(static_cast<int64_t>(t));
    }
  }
  const std::vector<double> probabilities = MixtureProbabilities(sizes, weights, spec_.data.mixing_temperature);
  for (size_t t = 0; t < tasks_.size(); ++t) {
    tasks_[t].probability = probabilities[t];
    if (rank0_ && tasks_.size() > 1) {
      spdlog::info("task {}: {} training examples, drawn with probability {:.3f}", task_names_[t], sizes[t],
                   probabilities[t]);
    }
  }
  // A Llama extrapolates its rotary positions past max_position_embeddings (with a warning).
  if (spec_.data.max_seq_len > config_.max_positions() && config_.family != ModelFamily::kBert && rank0_) {
    spdlog::warn("data.max_seq_len {} exceeds the model's max_position_embeddings {}", spec_.data.max_seq_len,
                 config_.max_positions());
  }
  if (static_cast<int64_t>(train_.size()) < global_batch_) {
    Fail(ErrorCode::kInvalidArgument, "{}: {} training sequences are fewer than one global batch of {}",
         sources.size() == 1 ? sources[0].train : "data.tasks", train_.size(), global_batch_);
  }
  if (rank0_) spdlog::info("data: {} training examples, {} validation examples", train_.size(), validation_.size());
}

std::vector<const Example*> Trainer::GlobalBatch(int64_t step) {
  const int64_t epoch = step / steps_per_epoch_;
  if (epoch != cached_epoch_) {
    epoch_order_ =
        tasks_.size() > 1
            ? MixtureOrder(tasks_, static_cast<int64_t>(train_.size()), spec_.training.seed, epoch)
            : EpochOrder(static_cast<int64_t>(train_.size()), spec_.training.seed, epoch, spec_.data.shuffle);
    // As Hugging Face's length-grouped sampler: sorted within mega-batches of 50 global batches.
    if (spec_.data.group_by_length) GroupByLength(epoch_order_, train_, 50 * global_batch_);
    cached_epoch_ = epoch;
  }
  const int64_t begin = (step % steps_per_epoch_) * global_batch_;
  std::vector<const Example*> batch;
  for (int64_t i = begin; i < begin + global_batch_; ++i) batch.push_back(&train_[epoch_order_[i]]);
  return batch;
}

int64_t Trainer::TargetsOf(const Example& e) const {
  switch (config_.task()) {
    case ModelTask::kSequenceClassification:
      return e.class_label >= 0 ? 1 : 0;
    case ModelTask::kTokenClassification:
      return std::count_if(e.labels.begin(), e.labels.end(), [](int64_t l) { return l != -100; });
    case ModelTask::kCausalLm:
      break;
  }
  return e.target_tokens();
}

}  // namespace shardtune
