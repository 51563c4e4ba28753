#include "worker/trainer.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/job_checks.h"
#include "common/logging.h"
#include "sharding/lr_schedule.h"
#include "sharding/model_layout.h"
#include "sharding/unit_function.h"
#include "worker/blas_env.h"
#include "worker/export.h"
#include "worker/models/hf_io.h"
#include "worker/trainer_internal.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// What this build trains; everything else in the spec is valid but lands in later work.
void CheckSupported(const JobSpec& spec, at::Device device) {
  auto unsupported = [](const std::string& what) {
    Fail(ErrorCode::kUnimplemented, "{} is not supported by this build yet", what);
  };
  if (spec.model.dtype == ComputeDType::kFp16 && device.is_cpu()) {
    unsupported("model.dtype fp16 on CPU (LibTorch's CPU kernels have no fp16 matrix products; use bf16)");
  }
}

}  // namespace

int64_t PeakRssBytes() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

Trainer::Trainer(const JobSpec& spec, Communicator& world, const TrainerOptions& options)
    : spec_(spec),
      world_(world),
      options_(options),
      rank0_(world.rank() == 0),
      run_dir_(spec.output.dir),
      config_(ModelConfig::Load(spec.model.path)),
      peft_(config_, MethodSpec{}),  // the job's method once the data says the head (Prepare)
      compute_dtype_(ToScalarType(spec.model.dtype)),
      device_(world.device()),
      loss_scale_(spec.model.dtype == ComputeDType::kFp16) {}

void Trainer::Prepare() {
  CheckSpec();
  knobs_ = TestKnobs::FromEnvironment();
  // SHARDTUNE_PROFILE_STEP=N: LibTorch's profiler records step N (1-based) as a Chrome trace, for
  // finding where a step's time goes (docs/PERFORMANCE.md).
  if (const char* wanted = std::getenv("SHARDTUNE_PROFILE_STEP")) profile_step_ = std::atoll(wanted);
  micro_ = spec_.training.micro_batch_size;
  global_batch_ = spec_.GlobalBatchSize(ranks_);
  accumulation_ = spec_.GradientAccumulation(ranks_);

  // Before anything else is written: a refused job leaves no output behind, not even the token
  // caches LoadData writes (under the output directory unless data.cache_dir is elsewhere).
  const bool fresh_output = !std::filesystem::exists(run_dir_.root());
  JobSpec resolved;
  try {
    LoadData();
    resolved = ShapeModel();
  } catch (...) {
    std::error_code ec;
    if (fresh_output && rank0_) std::filesystem::remove_all(run_dir_.root(), ec);
    throw;
  }
  StartOutput(resolved);

  steps_per_epoch_ = train_.size() / global_batch_;  // the last partial batch is dropped
  total_steps_ = spec_.training.max_steps > 0 ? spec_.training.max_steps : spec_.training.epochs * steps_per_epoch_;
  groups_ = MakeProcessGroups(world_, spec_.sharding.shard_group_size);
  std::vector<UnitSpec> units = peft_.Units();
  if (const auto format = Quant4FormatOf(quantization_)) units = QuantizedBaseUnits(std::move(units), *format);
  engine_ = std::make_unique<ZeroEngine>(units, EngineConfig(), groups_.groups);
  model_ = MakeUnitModel(peft_, *engine_, compute_dtype_, device_);
  if (rank0_) {
    LogModel();
    LogPlan();
  }

  ResumeOrStart();
  ReserveCheckpointMemory();
  if (rank0_) {
    metrics_ = std::make_unique<MetricsLog>(run_dir_.root(), step_);
    if (!load_record_.is_null()) {  // the first line of this attempt: how its weights were read
      load_record_["step"] = step_;
      metrics_->Write(load_record_);
    }
    progress_ = std::make_unique<ProgressBar>(step_, total_steps_);
  }
}

void Trainer::CheckSpec() {
  CheckSupported(spec_, device_);
  if (config_.family == ModelFamily::kBert && spec_.model.task == ModelTask::kCausalLm) {
    Fail(ErrorCode::kInvalidArgument,
         "{}: a BERT encoder is not a causal language model; set model.task to sequence_classification or "
         "token_classification",
         spec_.model.path);
  }
  ApplyDropouts();
  ResolveQuantization();
  SetSequenceLimit();
  ranks_ = world_.size();
  RequireFitsWorld(spec_, ranks_);  // the ranks it runs on, which the spec may not name
  if (const auto problem = FinishedRunProblem(run_dir_.root())) Fail(ErrorCode::kFailedPrecondition, "{}", *problem);
}

void Trainer::SetSequenceLimit() {
  // A BERT truncates at its position table, as its tokenizer's model_max_length does.
  const int64_t virtual_tokens = spec_.method.VirtualTokens();
  max_seq_len_ = config_.SequenceLimit(spec_.data.max_seq_len, virtual_tokens);
  if (max_seq_len_ >= spec_.data.max_seq_len) return;
  if (max_seq_len_ < 2) {
    Fail(ErrorCode::kInvalidArgument, "method: {} virtual tokens leave no room in this BERT's {} positions",
         virtual_tokens, config_.max_positions());
  }
  if (rank0_) {
    spdlog::info("data.max_seq_len {}: this BERT has {} positions{}; sequences are truncated to {} tokens",
                 spec_.data.max_seq_len, config_.max_positions(),
                 virtual_tokens > 0 ? fmt::format(", {} of them virtual tokens", virtual_tokens) : "", max_seq_len_);
  }
}

JobSpec Trainer::ShapeModel() {
  JobSpec resolved = spec_;
  resolved.model.quantization = quantization_;
  if (spec_.model.task != ModelTask::kCausalLm) UseClassifierHead(resolved);
  peft_ = PeftMethod(config_, resolved.method);  // the model as this job shapes it
  resolved.method = peft_.spec();                // the target modules it applied (the family's defaults, if unset)
  ReadInitAdapter();
  return resolved;
}

void Trainer::StartOutput(const JobSpec& resolved) {
  fs::create_directories(run_dir_.Logs());
  AddLogFile(run_dir_.RankLog(world_.rank()));
  if (rank0_) WriteFileAtomic(run_dir_.JobYaml(), JobSpecToYaml(resolved));
}

ZeroConfig Trainer::EngineConfig() const {
  ZeroConfig zero;
  zero.stage = spec_.sharding.zero_stage;
  zero.compute_dtype = compute_dtype_;
  zero.optimizer = spec_.training.optimizer;
  zero.persistence_threshold = spec_.sharding.persistence_threshold;
  zero.prefetch_units = static_cast<int>(spec_.sharding.prefetch_layers);
  zero.recompute = spec_.training.activation_checkpointing;
  zero.device = device_;
  // Training on the CPU, the optimizer state is in host memory already.
  zero.offload_optimizer = spec_.sharding.offload_optimizer == OffloadTarget::kCpu && !device_.is_cpu();
  return zero;
}

void Trainer::LogModel() const {
  spdlog::info("model {}: {} {} layers, hidden {}, {} parameters", spec_.model.path, config_.model_type(),
               config_.num_layers(), config_.hidden_size(), config_.num_parameters());
  const auto& saved = spec_.method.modules_to_save;
  const bool tied = config_.family == ModelFamily::kLlama && config_.llama.tie_word_embeddings;
  if (tied && !peft_.saved_parameters().empty() &&
      std::any_of(peft_.saved_parameters().begin(), peft_.saved_parameters().end(),
                  [](const ParameterSpec& p) { return p.name == "model.embed_tokens.weight"; })) {
    spdlog::warn(
        "modules_to_save {}: this model ties lm_head to embed_tokens, so both train as one tensor; "
        "Hugging Face PEFT would train a copy of embed_tokens and keep lm_head as it was",
        fmt::join(saved, ", "));
  }
  if (!peft_.full()) {
    const int64_t trainable = engine_->layout().trainable_parameter_count();
    spdlog::info("method {}: {} trainable parameters ({:.3f}% of the model's {}); the base model is frozen",
                 ToString(spec_.method.type), trainable,
                 100.0 * static_cast<double>(trainable) / static_cast<double>(config_.num_parameters()),
                 config_.num_parameters());
  }
}

void Trainer::LogPlan() const {
  const ZeroConfig& zero = engine_->config();
  const MemoryAccount memory = engine_->memory();
  spdlog::info(
      "plan: {} ranks, ZeRO stage {}{}, {} steps ({} per epoch), global batch {} = micro-batch {} x {} ranks x "
      "accumulation {}",
      ranks_, zero.stage,
      groups_.groups.replica->size() > 1 ? fmt::format(" (hybrid: shard groups of {})", groups_.groups.shard->size())
                                         : "",
      total_steps_, steps_per_epoch_, global_batch_, micro_, ranks_, accumulation_);
  spdlog::info("device: {}, backend: {}", device_.str(),
               device_.is_cuda()   ? "nccl"
               : world_.size() > 1 ? "mpi"
                                   : "none");
  if (device_.is_cpu()) spdlog::info("BLAS: {}", BlasKernelDescription());
  spdlog::info("memory per rank: parameters {:.2f} MiB, gradients {:.2f} MiB, optimizer state {:.2f} MiB",
               memory.parameters / 1048576.0, memory.gradients / 1048576.0, memory.optimizer / 1048576.0);
  if (zero.offload_optimizer) {
    spdlog::info(
        "sharding.offload_optimizer: cpu: master weights and optimizer state in host memory, "
        "stepped by the CPU");
  } else if (spec_.sharding.offload_optimizer == OffloadTarget::kCpu) {
    spdlog::info("sharding.offload_optimizer: cpu: the optimizer state is in host memory already (CPU training)");
  }
}

void Trainer::ResumeOrStart() {
  const std::optional<StepCheckpoint> latest = AgreedLatestCheckpoint();
  if (!latest) {
    LoadInitialWeights(/*resuming=*/false);
    return;
  }
  const fs::path& dir = latest->dir.path();
  const TrainerState state = ReadTrainerState(dir);
  if (state.total_steps != total_steps_) {
    Fail(ErrorCode::kFailedPrecondition,
         "{}: written by a run of {} steps, but this spec plans {}; resume with the same plan", dir.string(),
         state.total_steps, total_steps_);
  }
  LoadInitialWeights(/*resuming=*/true);
  engine_->LoadShards(dir.string());
  step_ = state.step;
  tokens_ = state.tokens;
  loss_scale_.set_scale(state.loss_scale);
  best_step_ = state.best_step;
  best_value_ = state.best_value;
  evaluations_since_best_ = state.evaluations_since_best;
  summary_.resumed_from_step = step_;
  if (rank0_) spdlog::info("resuming from {} (step {})", dir.string(), step_);
}

std::optional<StepCheckpoint> Trainer::AgreedLatestCheckpoint() {
  // Rank 0 decides and tells the others: ranks must not take different resume paths (their
  // collectives would not match) even if their views of the directory differ.
  at::Tensor step = at::full({1}, int64_t{-1}, at::TensorOptions().dtype(at::kLong).device(device_));
  if (rank0_) {
    run_dir_.RemoveUnfinishedCheckpoints();  // a killed run's step-N.tmp: never resumed from
    if (const auto latest = run_dir_.LatestCheckpoint()) step.fill_(latest->step);
  }
  world_.Broadcast(step, 0, CollectiveTag{"resume step"})->Wait();
  const int64_t chosen = step.item<int64_t>();
  if (chosen < 0) return std::nullopt;
  StepCheckpoint agreed{chosen, run_dir_.Checkpoint(chosen)};
  if (!agreed.dir.HasIndex()) {
    Fail(ErrorCode::kFailedPrecondition,
         "rank {}: rank 0 resumes from {}, which this rank cannot see (is output.dir shared?)", world_.rank(),
         agreed.dir.path().string());
  }
  return agreed;
}

LossSum Trainer::TaskLossSum(const at::Tensor& logits, const Batch& batch) const {
  const double smoothing = spec_.training.label_smoothing;
  switch (config_.task()) {
    case ModelTask::kSequenceClassification:
      return SequenceClassificationLossSum(logits, batch.class_labels, smoothing, class_weights_);
    case ModelTask::kTokenClassification:
      return TokenClassificationLossSum(logits, batch.labels, smoothing, class_weights_);
    case ModelTask::kCausalLm:
      break;
  }
  return CausalLmLossSum(logits, batch.labels, smoothing);
}

void Trainer::TrainStep(int64_t step) {
  if (knobs_.stall && knobs_.stall->rank == world_.rank() && knobs_.stall->step == step + 1) {
    spdlog::warn("SHARDTUNE_TEST_STALL: rank {} stalls at step {}", world_.rank(), step + 1);
    std::this_thread::sleep_for(std::chrono::hours(1));  // as a hung GPU or process would
  }
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  if (profile_step_ == step + 1) {
    profile = std::make_unique<torch::autograd::profiler::RecordProfile>(
        run_dir_.ProfileTrace(step + 1, world_.rank()).string());
  }
  const auto start = std::chrono::steady_clock::now();
  const CommStats comm_before = engine_->comm_stats();
  StepFigures figures;  // data_s: time spent getting and collating examples, the step waiting for data
  auto data_start = std::chrono::steady_clock::now();
  const std::vector<int64_t> batch = GlobalBatch(step);
  const int64_t targets = TargetsOf(batch);
  figures.data_s += SecondsSince(data_start);

  // Per-step seeding makes any randomness a function of (seed, step), which is what lets a
  // resumed run continue exactly.
  at::manual_seed(static_cast<uint64_t>(spec_.training.seed) * 1000003ULL + static_cast<uint64_t>(step));
  DropPendingUnitCalls();
  engine_->BeginStep(step + 1);  // collectives are tagged with the 1-based step, as in metrics
  // This rank's part of the global batch: `accumulation_` micro-batches of `micro_` examples.
  const int64_t first = world_.rank() * accumulation_ * micro_;
  at::Tensor local = at::zeros({2}, at::TensorOptions().dtype(at::kDouble).device(device_));  // loss sum, input tokens
  for (int64_t a = 0; a < accumulation_; ++a) {
    engine_->BeginMicroBatch(a + 1 == accumulation_);
    data_start = std::chrono::steady_clock::now();
    const std::vector<Example> examples = BatchExamples(batch, first + a * micro_, micro_);
    const Batch micro_batch =
        WithVirtualTokens(Collate(Pointers(examples), config_.pad_token_id()), peft_.prompt_tokens());
    figures.data_s += SecondsSince(data_start);
    const LossSum loss = TaskLossSum(model_->Forward(micro_batch, /*training=*/true), micro_batch);
    // The loss is the mean over every target token of the global batch: each micro-batch on
    // each rank contributes its sum divided by the global count, and ranks sum gradients.
    // Backward runs even for a batch without targets (as a zero) so every rank's reductions run.
    const double factor = targets > 0 ? loss_scale_.scale() / static_cast<double>(targets) : 0.0;
    (loss.sum * factor).backward();
    local[0] += loss.sum.detach().to(at::kDouble);
    local[1] += static_cast<double>(micro_batch.input_tokens);
  }
  const double scale = loss_scale_.scale();
  figures.grad_norm = engine_->FinishGradients() / scale;
  AllReduceSumNow(world_, local, CollectiveTag{"loss", step + 1});

  bool update = targets > 0;
  if (!update && rank0_)
    spdlog::warn("step {}: the global batch has no target tokens (all labels -100); no update", step + 1);
  if (!loss_scale_.Update(figures.grad_norm * scale)) {
    update = false;
    if (rank0_) spdlog::warn("step {}: gradient overflow at loss scale {}; step skipped", step + 1, scale);
  }
  double grad_scale = 1.0 / scale;
  if (spec_.training.grad_clip > 0 && figures.grad_norm > spec_.training.grad_clip) {
    grad_scale *= spec_.training.grad_clip / (figures.grad_norm + 1e-6);
  }
  figures.lr = LearningRateAt(spec_.training.optimizer, spec_.training.scheduler, step, total_steps_);
  if (update) engine_->OptimizerStep(figures.lr, grad_scale);
  figures.tokens = static_cast<int64_t>(local[1].item<double>());
  tokens_ += figures.tokens;

  figures.loss = targets > 0 ? local[0].item<double>() / static_cast<double>(targets) : 0.0;
  summary_.last_loss = figures.loss;
  if (!rank0_) return;
  figures.seconds = SecondsSince(start);
  figures.comm = engine_->comm_stats();
  figures.comm.bytes_sent -= comm_before.bytes_sent;
  figures.comm.busy_s -= comm_before.busy_s;
  figures.comm.waited_s -= comm_before.waited_s;
  ReportStep(step, figures);
}

void Trainer::ReportStep(int64_t step, const StepFigures& f) {
  const double tokens_per_s = f.seconds > 0 ? static_cast<double>(f.tokens) / f.seconds : 0.0;
  last_metrics_ = {{"loss", f.loss}, {"lr", f.lr}, {"grad_norm", f.grad_norm}, {"tokens_per_s", tokens_per_s}};
  const double epoch = static_cast<double>(step + 1) / static_cast<double>(steps_per_epoch_);
  if ((step + 1) % spec_.training.log_every == 0 || step + 1 == total_steps_) {
    const MemoryAccount memory = engine_->memory();
    metrics_->Write({{"step", step + 1},
                     {"epoch", epoch},
                     {"loss", f.loss},
                     {"lr", f.lr},
                     {"grad_norm", f.grad_norm},
                     {"tokens", tokens_},
                     {"tokens_per_s", tokens_per_s},
                     {"param_bytes", memory.parameters},
                     {"grad_bytes", memory.gradients},
                     {"optimizer_bytes", memory.optimizer},
                     {"step_s", f.seconds},
                     {"data_s", f.data_s},
                     {"comm_bytes", f.comm.bytes_sent},
                     {"comm_s", f.comm.busy_s},
                     {"comm_exposed_s", f.comm.waited_s},
                     {"checkpoint_stall_s", checkpoint_stall_s_},
                     {"checkpoint_write_s", checkpoint_write_s_},
                     {"peak_rss_bytes", PeakRssBytes()}});
    checkpoint_stall_s_ = checkpoint_write_s_ = 0;  // each line counts what came after the last one
  }
  const std::string status =
      fmt::format("loss {:.4f}  lr {:.3g}  grad_norm {:.3f}  {:.0f} tok/s", f.loss, f.lr, f.grad_norm, tokens_per_s);
  if (progress_->active()) {
    progress_->Update(step + 1, status);
  } else {
    spdlog::info("step {}/{} epoch {:.2f} {}", step + 1, total_steps_, epoch, status);
  }
}

bool Trainer::StopRequested(int64_t step) {
  // Rank 0 reports and hears the server's answer; every rank must act on the same answer.
  at::Tensor stop = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(device_));
  if (rank0_ && options_.on_step) {
    const double epoch = static_cast<double>(step) / static_cast<double>(steps_per_epoch_);
    if (options_.on_step(step, total_steps_, epoch, tokens_, last_metrics_)) stop.fill_(1);
  }
  world_.Broadcast(stop, 0, CollectiveTag{"stop request", step})->Wait();
  return stop.item<int64_t>() != 0;
}

void Trainer::Export() {
  ExportModel(*engine_, world_, peft_, run_dir_.Final(), spec_.model.path, spec_.model.dtype,
              spec_.output.export_formats);
  if (rank0_) {
    std::string what;
    for (ExportFormat f : spec_.output.export_formats)
      what += std::string(what.empty() ? "" : " and ") + (f == ExportFormat::kHf ? "model" : "adapter");
    spdlog::info("exported the fine-tuned {} to {}", what, run_dir_.Final().string());
  }
}

TrainingSummary Trainer::Run() {
  Prepare();
  const int64_t stop = options_.stop_after_step > 0 ? std::min(options_.stop_after_step, total_steps_) : total_steps_;
  bool stop_early = false;
  for (; step_ < stop && !stop_early;) {
    TrainStep(step_);
    const int64_t done = ++step_;
    PollCheckpoint();
    if (spec_.training.eval_every > 0 && done % spec_.training.eval_every == 0)
      stop_early = AfterEvaluation(done, Evaluate(done));
    const bool checkpointed =
        spec_.output.checkpoint_every > 0 && done % spec_.output.checkpoint_every == 0 && done < total_steps_;
    Checkpoint(done, DueCheckpoints(done, checkpointed));
    if (options_.stop_check && done < total_steps_ && StopRequested(done)) {
      // Paused by the server, or stopped by a sweep's early termination: keep everything up to
      // this step, then stop.
      if (!checkpointed) Checkpoint(done, DueCheckpoints(done, /*periodic=*/true));
      FinishCheckpoint("the pause");
      if (progress_) progress_->Finish();
      if (rank0_) spdlog::info("stopping at step {} as asked (checkpointed)", done);
      summary_.steps = step_;
      summary_.paused = true;
      return summary_;
    }
  }
  if (progress_) progress_->Finish();
  summary_.steps = step_;
  if (step_ < total_steps_ && !stop_early) {
    FinishCheckpoint("the end of the run");
    return summary_;
  }

  if (!stop_early && (spec_.training.eval_every == 0 || total_steps_ % spec_.training.eval_every != 0))
    AfterEvaluation(total_steps_, Evaluate(total_steps_));
  // The last write went on during the final evaluation; best/ if that evaluation is the best.
  Checkpoint(step_, DueCheckpoints(step_, /*periodic=*/false));
  FinishCheckpoint("the export");
  if (spec_.output.keep_best && best_step_ > 0 && best_step_ != step_) {
    const fs::path best = run_dir_.BestCheckpoint().path();
    if (rank0_) spdlog::info("exporting the best evaluation's weights (step {}) from {}", best_step_, best.string());
    engine_->LoadShards(best.string());
  }
  summary_.stopped_early = stop_early;
  Export();
  WriteGenerations();
  if (rank0_ && options_.on_step) {  // the final figures, validation included
    options_.on_step(step_, total_steps_, static_cast<double>(step_) / steps_per_epoch_, tokens_, last_metrics_);
  }
  summary_.finished = true;
  return summary_;
}

TrainingSummary RunTraining(const JobSpec& spec, Communicator& world, const TrainerOptions& options) {
  Trainer trainer(spec, world, options);
  return trainer.Run();
}

TrainingSummary RunTraining(const JobSpec& spec, const TrainerOptions& options) {
  SingleProcessCommunicator world;
  return RunTraining(spec, world, options);
}

}  // namespace shardtune
