#include "worker/trainer.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/logging.h"
#include "sharding/adamw.h"
#include "sharding/checkpoint.h"
#include "sharding/flat_parameters.h"
#include "sharding/lr_schedule.h"
#include "worker/data/token_dataset.h"
#include "worker/models/hf_io.h"
#include "worker/models/llama.h"
#include "worker/progress.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What this build trains; everything else in the spec is valid but lands in later work.
void CheckSupported(const JobSpec& spec) {
  auto unsupported = [](const std::string& what) {
    Fail(ErrorCode::kUnimplemented, "{} is not supported by this build yet", what);
  };
  if (spec.method.type != MethodType::kFull)
    unsupported(fmt::format("method.type '{}' (supported: full)", ToString(spec.method.type)));
  if (spec.data.format != DataFormat::kTokens)
    unsupported(fmt::format("data.format '{}' (supported: tokens)", ToString(spec.data.format)));
  if (spec.model.task != ModelTask::kCausalLm)
    unsupported(fmt::format("model.task '{}' (supported: causal_lm)", ToString(spec.model.task)));
  if (spec.model.dtype != ComputeDType::kFp32)
    unsupported(fmt::format("model.dtype '{}' for training (supported: fp32)", ToString(spec.model.dtype)));
  if (spec.data.packing) unsupported("data.packing: true");
  if (spec.sharding.offload_optimizer != OffloadTarget::kNone) unsupported("sharding.offload_optimizer: cpu");
}

std::vector<DecayRange> DecayRanges(const FlatParameters& flat) {
  std::vector<DecayRange> ranges;
  for (const auto& slot : flat.slots())
    if (slot.spec.weight_decay) ranges.push_back({slot.offset, slot.numel});
  return ranges;
}

// Appends one JSON object a line to metrics.jsonl, flushed at once so that tails see it.
class MetricsLog {
 public:
  // Drops lines after `resume_step` (written by the interrupted run past its last checkpoint).
  MetricsLog(const fs::path& path, int64_t resume_step) : path_(path) {
    if (fs::exists(path)) {
      std::ifstream in(path);
      std::string kept, line;
      while (std::getline(in, line)) {
        const json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (!record.is_discarded() && record.value("step", int64_t{0}) <= resume_step) kept += line + "\n";
      }
      WriteFileAtomic(path, kept);
    }
    out_.open(path, std::ios::app);
    if (!out_) FailErrno("open", path.string());
  }
  void Write(const json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
  }

 private:
  fs::path path_;
  std::ofstream out_;
};

class Trainer {
 public:
  Trainer(const JobSpec& spec, const TrainerOptions& options)
      : spec_(spec),
        options_(options),
        output_dir_(spec.output.dir),
        config_(LlamaConfig::Load(spec.model.path)),
        flat_(LlamaParameterSpecs(config_)),
        optimizer_(spec.training.optimizer, flat_.padded_numel(), DecayRanges(flat_)) {}

  TrainingSummary Run();

 private:
  void LoadData();
  void Evaluate(int64_t step);
  void TrainStep(int64_t step);
  std::vector<const Example*> GlobalBatch(int64_t step);

  const JobSpec& spec_;
  TrainerOptions options_;
  fs::path output_dir_;
  LlamaConfig config_;
  FlatParameters flat_;
  AdamW optimizer_;
  std::unique_ptr<LlamaModel> model_;
  std::vector<Example> train_;
  std::vector<Example> validation_;
  int64_t global_batch_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  int64_t tokens_ = 0;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> epoch_order_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<ProgressBar> progress_;
  TrainingSummary summary_;
};

void Trainer::LoadData() {
  const TokenDatasetOptions data_options{config_.vocab_size, spec_.data.max_seq_len};
  TokenDataset train = ReadTokenDataset(spec_.data.train, data_options);
  train_ = std::move(train.examples);
  if (train.truncated > 0) {
    spdlog::warn("{}: {} examples are longer than data.max_seq_len {} and were truncated", spec_.data.train,
                 train.truncated, spec_.data.max_seq_len);
  }
  if (!spec_.data.validation.empty()) {
    TokenDataset validation = ReadTokenDataset(spec_.data.validation, data_options);
    validation_ = std::move(validation.examples);
  } else {
    SplitValidation(train_, validation_, spec_.data.validation_split, spec_.training.seed);
  }
  if (spec_.data.max_seq_len > config_.max_position_embeddings) {
    spdlog::warn("data.max_seq_len {} exceeds the model's max_position_embeddings {}", spec_.data.max_seq_len,
                 config_.max_position_embeddings);
  }
  spdlog::info("data: {} training examples, {} validation examples", train_.size(), validation_.size());
}

std::vector<const Example*> Trainer::GlobalBatch(int64_t step) {
  const int64_t epoch = step / steps_per_epoch_;
  if (epoch != cached_epoch_) {
    epoch_order_ = EpochOrder(static_cast<int64_t>(train_.size()), spec_.training.seed, epoch, spec_.data.shuffle);
    cached_epoch_ = epoch;
  }
  const int64_t begin = (step % steps_per_epoch_) * global_batch_;
  const int64_t end = std::min<int64_t>(begin + global_batch_, static_cast<int64_t>(train_.size()));
  std::vector<const Example*> batch;
  for (int64_t i = begin; i < end; ++i) batch.push_back(&train_[epoch_order_[i]]);
  return batch;
}

void Trainer::TrainStep(int64_t step) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<const Example*> batch = GlobalBatch(step);
  int64_t targets = 0;
  for (const Example* e : batch) targets += e->target_tokens();

  // Per-step seeding makes any randomness (dropout, later) a function of (seed, step), which is
  // what lets a resumed run continue exactly.
  at::manual_seed(static_cast<uint64_t>(spec_.training.seed) * 1000003ULL + static_cast<uint64_t>(step));
  flat_.ZeroGradients();
  double loss_sum = 0.0;
  int64_t step_tokens = 0;
  const auto micro = static_cast<size_t>(spec_.training.micro_batch_size);
  for (size_t first = 0; first < batch.size(); first += micro) {
    const std::vector<const Example*> examples(batch.begin() + first,
                                               batch.begin() + std::min(first + micro, batch.size()));
    const Batch micro_batch = Collate(examples, config_.pad_token_id);
    const at::Tensor logits = model_->Forward(micro_batch.input_ids, micro_batch.attention_mask);
    LossSum loss = CausalLmLossSum(logits, micro_batch.labels);
    // The loss is the mean over every target token of the global batch: each micro-batch
    // contributes its sum divided by the global count.
    if (targets > 0) (loss.sum / static_cast<double>(targets)).backward();
    loss_sum += loss.sum.item<double>();
    step_tokens += micro_batch.input_tokens;
  }

  const double grad_norm = flat_.grads().norm().item<double>();
  if (spec_.training.grad_clip > 0 && grad_norm > spec_.training.grad_clip) {
    flat_.grads().mul_(spec_.training.grad_clip / (grad_norm + 1e-6));
  }
  const double lr = LearningRateAt(spec_.training.optimizer, spec_.training.scheduler, step, total_steps_);
  if (targets > 0) {
    optimizer_.Step(flat_.values(), flat_.grads(), lr);
  } else {
    spdlog::warn("step {}: the batch has no target tokens (all labels -100); no update", step + 1);
  }
  tokens_ += step_tokens;

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double loss = targets > 0 ? loss_sum / static_cast<double>(targets) : 0.0;
  summary_.last_loss = loss;
  const double epoch = static_cast<double>(step + 1) / static_cast<double>(steps_per_epoch_);
  if ((step + 1) % spec_.training.log_every == 0 || step + 1 == total_steps_) {
    metrics_->Write({{"step", step + 1},
                     {"epoch", epoch},
                     {"loss", loss},
                     {"lr", lr},
                     {"grad_norm", grad_norm},
                     {"tokens", tokens_},
                     {"tokens_per_s", seconds > 0 ? static_cast<double>(step_tokens) / seconds : 0.0}});
  }
  const std::string status = fmt::format("loss {:.4f}  lr {:.3g}  grad_norm {:.3f}  {:.0f} tok/s", loss, lr, grad_norm,
                                         seconds > 0 ? static_cast<double>(step_tokens) / seconds : 0.0);
  if (progress_->active()) {
    progress_->Update(step + 1, status);
  } else {
    spdlog::info("step {}/{} epoch {:.2f} {}", step + 1, total_steps_, epoch, status);
  }
}

void Trainer::Evaluate(int64_t step) {
  if (validation_.empty()) return;
  at::NoGradGuard no_grad;
  double loss_sum = 0.0;
  int64_t targets = 0;
  const auto micro = static_cast<size_t>(spec_.training.micro_batch_size);
  for (size_t first = 0; first < validation_.size(); first += micro) {
    std::vector<const Example*> examples;
    for (size_t i = first; i < std::min(first + micro, validation_.size()); ++i) examples.push_back(&validation_[i]);
    const Batch batch = Collate(examples, config_.pad_token_id);
    const LossSum loss = CausalLmLossSum(model_->Forward(batch.input_ids, batch.attention_mask), batch.labels);
    loss_sum += loss.sum.item<double>();
    targets += loss.tokens;
  }
  if (targets == 0) return;
  const double val_loss = loss_sum / static_cast<double>(targets);
  summary_.last_val_loss = val_loss;
  metrics_->Write({{"step", step},
                   {"epoch", static_cast<double>(step) / static_cast<double>(steps_per_epoch_)},
                   {"val_loss", val_loss},
                   {"perplexity", std::exp(val_loss)},
                   {"val_tokens", targets}});
  if (progress_->active()) std::fputs("\r\033[K", stderr);
  spdlog::info("step {}: val_loss {:.4f} perplexity {:.3f}", step, val_loss, std::exp(val_loss));
}

TrainingSummary Trainer::Run() {
  CheckSupported(spec_);
  if (fs::exists(output_dir_ / "final")) {
    Fail(ErrorCode::kFailedPrecondition,
         "{}: holds a finished run (final/); choose another output.dir, or move it away to train again",
         output_dir_.string());
  }
  fs::create_directories(output_dir_ / "logs");
  AddLogFile(output_dir_ / "logs" / "rank-00000.log");
  WriteFileAtomic(output_dir_ / "job.yaml", JobSpecToYaml(spec_));
  spdlog::info("model {}: {} {} layers, hidden {}, {} parameters", spec_.model.path, config_.model_type,
               config_.num_hidden_layers, config_.hidden_size, flat_.numel());

  LoadData();
  global_batch_ = spec_.GlobalBatchSize(/*data_parallel_ranks=*/1);
  steps_per_epoch_ = (static_cast<int64_t>(train_.size()) + global_batch_ - 1) / global_batch_;
  total_steps_ = spec_.training.max_steps > 0 ? spec_.training.max_steps : spec_.training.epochs * steps_per_epoch_;
  spdlog::info("plan: {} steps ({} per epoch), global batch {} = micro-batch {} x accumulation {}", total_steps_,
               steps_per_epoch_, global_batch_, spec_.training.micro_batch_size, spec_.GradientAccumulation(1));

  const fs::path checkpoints = output_dir_ / "checkpoints";
  int64_t start_step = 0;
  if (const auto latest = LatestCheckpoint(checkpoints)) {
    const TrainerState state = LoadCheckpoint(*latest, flat_, optimizer_);
    if (state.total_steps != total_steps_) {
      Fail(ErrorCode::kFailedPrecondition,
           "{}: written by a run of {} steps, but this spec plans {}; resume with the same plan", latest->string(),
           state.total_steps, total_steps_);
    }
    start_step = state.step;
    tokens_ = state.tokens;
    summary_.resumed_from_step = start_step;
    spdlog::info("resuming from {} (step {})", latest->string(), start_step);
  } else {
    LoadHfWeights(spec_.model.path, flat_);
  }
  flat_.AttachGradients();
  model_ = std::make_unique<LlamaModel>(
      config_, BindLlamaWeights(config_, [this](const std::string& name) { return flat_.Value(*flat_.Find(name)); }));
  metrics_ = std::make_unique<MetricsLog>(output_dir_ / "metrics.jsonl", start_step);
  progress_ = std::make_unique<ProgressBar>(start_step, total_steps_);

  const int64_t stop = options_.stop_after_step > 0 ? std::min(options_.stop_after_step, total_steps_) : total_steps_;
  int64_t step = start_step;
  for (; step < stop; ++step) {
    TrainStep(step);
    const int64_t done = step + 1;
    if (spec_.training.eval_every > 0 && done % spec_.training.eval_every == 0) Evaluate(done);
    if (spec_.output.checkpoint_every > 0 && done % spec_.output.checkpoint_every == 0 && done < total_steps_) {
      const TrainerState state{done, tokens_, spec_.training.seed, 1.0, total_steps_};
      SaveCheckpoint(checkpoints / fmt::format("step-{}", done), flat_, optimizer_, state);
      PruneCheckpoints(checkpoints, spec_.output.keep_checkpoints);
    }
  }
  progress_->Finish();
  summary_.steps = step;
  if (step < total_steps_) return summary_;

  if (spec_.training.eval_every == 0 || total_steps_ % spec_.training.eval_every != 0) Evaluate(total_steps_);
  for (ExportFormat format : spec_.output.export_formats) {
    if (format == ExportFormat::kHf) {
      WriteHfModel(output_dir_ / "final", spec_.model.path, flat_, ComputeDType::kFp32);
      spdlog::info("exported the fine-tuned model to {}", (output_dir_ / "final").string());
    }
  }
  summary_.finished = true;
  return summary_;
}

}  // namespace

TrainingSummary RunTraining(const JobSpec& spec, const TrainerOptions& options) {
  Trainer trainer(spec, options);
  return trainer.Run();
}

}  // namespace shardtune
