#include "worker/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/job_checks.h"
#include "common/logging.h"
#include "common/safetensors.h"
#include "sharding/checkpoint.h"
#include "sharding/loss_scale.h"
#include "sharding/lr_schedule.h"
#include "sharding/model_layout.h"
#include "sharding/unit_function.h"
#include "sharding/zero_engine.h"
#include "worker/blas_env.h"
#include "worker/data/formats.h"
#include "worker/data/mixture.h"
#include "worker/data/token_dataset.h"
#include "worker/data/tokenizer/tokenizer.h"
#include "worker/evaluation.h"
#include "worker/export.h"
#include "worker/generate.h"
#include "worker/metrics_log.h"
#include "worker/models/hf_io.h"
#include "worker/models/llama.h"
#include "worker/peft/adapter_io.h"
#include "worker/peft/peft.h"
#include "worker/progress.h"
#include "worker/unit_model.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The most memory this process has held resident (the kernel's high-water mark).
int64_t PeakRssBytes() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

// A classifier the base checkpoint does not have, created as transformers initializes one
// (normal, std 0.02; biases 0), from a generator of its own seeded by training.seed: the same
// head on every rank and every run.
at::Tensor NewHeadTensor(const ParameterSpec& spec, uint64_t seed) {
  if (spec.shape.size() == 1) return at::zeros(spec.shape, at::kFloat);
  uint64_t name_hash = 1469598103934665603ULL;  // FNV-1a: each new matrix draws its own numbers
  for (unsigned char c : spec.name) name_hash = (name_hash ^ c) * 1099511628211ULL;
  at::Generator generator = at::detail::createCPUGenerator(seed * 1000003ULL + 0x5c0e + name_hash);
  return at::normal(0.0, 0.02, spec.shape, generator);
}

// A classifier's parameters: the head (and BERT's pooler), new when the checkpoint lacks them.
bool IsHeadParameter(const std::string& name) {
  for (const char* head : {"score.", "classifier.", "bert.pooler."})
    if (name.rfind(head, 0) == 0) return true;
  return false;
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

class Trainer {
 public:
  Trainer(const JobSpec& spec, Communicator& world, const TrainerOptions& options)
      : spec_(spec),
        world_(world),
        options_(options),
        rank0_(world.rank() == 0),
        output_dir_(spec.output.dir),
        config_(ModelConfig::Load(spec.model.path)),
        peft_(config_, MethodSpec{}),  // the job's method once the data says the head (Prepare)
        compute_dtype_(ToScalarType(spec.model.dtype)),
        device_(world.device()),
        loss_scale_(spec.model.dtype == ComputeDType::kFp16) {}

  TrainingSummary Run();

 private:
  void Prepare();
  void LoadData();
  // The model's regularization as training.* overrides it; what a family lacks is refused.
  void ApplyDropouts();
  // The training loss of the task (causal LM, sequence or token classification; with
  // training.label_smoothing) and what it counts.
  LossSum TaskLossSum(const at::Tensor& logits, const Batch& batch) const;
  int64_t TargetsOf(const Example& e) const;
  void ReadInitAdapter();  // method.init_from, checked against the method
  // Classification and NER: the model gets its family's classifier (`score`, `classifier`) over
  // the data's classes (which `resolved` records); PEFT methods train it in full (modules_to_save).
  void UseClassifierHead(JobSpec& resolved);
  bool StopRequested(int64_t step);  // reports the step to the server (rank 0); true: pause
  void LoadInitialWeights(bool resuming);
  void TrainStep(int64_t step);
  // The early-stopping metric of the evaluation, on every rank.
  std::optional<double> Evaluate(int64_t step);
  // Writes checkpoints/step-N (or checkpoints/`name`, not pruned: the best evaluation's).
  void Checkpoint(int64_t step, const std::string& name = "");
  // After an evaluation that gave `metric` (none without validation targets): tracks the best
  // one, keeps its weights with output.keep_best, and says whether training stops early.
  bool AfterEvaluation(int64_t step, std::optional<double> metric);
  TrainerState State(int64_t step) const;
  void Export();
  // output.generations: greedy answers of the exported model to validation prompts (rank 0).
  void WriteGenerations();
  std::vector<const Example*> GlobalBatch(int64_t step);
  std::optional<fs::path> AgreedLatestCheckpoint(const fs::path& checkpoints);
  void Barrier(const std::string& what) { world_.Barrier(CollectiveTag{what, step_}); }

  const JobSpec& spec_;
  Communicator& world_;
  TrainerOptions options_;
  bool rank0_;
  fs::path output_dir_;
  ModelConfig config_;
  PeftMethod peft_;
  at::ScalarType compute_dtype_;
  at::Device device_;  // the world communicator's: the CPU under MPI, this rank's GPU under NCCL
  OwnedProcessGroups groups_;
  std::unique_ptr<ZeroEngine> engine_;
  std::unique_ptr<UnitModel> model_;
  std::map<std::string, at::Tensor> init_adapter_;  // method.init_from's tensors, until loaded
  std::map<std::string, double> last_metrics_;      // rank 0: the latest step's (and evaluation's) figures
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<Example> train_;
  std::vector<Example> validation_;
  std::vector<int64_t> validation_tasks_;  // the task of each validation example
  std::vector<TaskRange> tasks_;           // where each task's examples are in train_
  std::vector<std::string> task_names_;
  std::vector<std::string> label_names_;  // classification and NER: the classes (or tags), by id
  int64_t max_seq_len_ = 0;               // data.max_seq_len, or fewer where the model has fewer positions
  int64_t ranks_ = 1;
  int64_t micro_ = 1;
  int64_t accumulation_ = 1;
  int64_t global_batch_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  int64_t step_ = 0;
  int64_t tokens_ = 0;
  DynamicLossScale loss_scale_{false};
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> epoch_order_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<ProgressBar> progress_;
  TrainingSummary summary_;
  int64_t best_step_ = 0;  // the best evaluation (TrainerState)
  double best_value_ = 0.0;
  int64_t evaluations_since_best_ = 0;
};

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

void Trainer::ApplyDropouts() {
  const TrainingSpec& t = spec_.training;
  if (t.attention_dropout) config_.SetAttentionDropout(*t.attention_dropout);
  if (t.hidden_dropout) {
    if (config_.family != ModelFamily::kBert) {
      Fail(ErrorCode::kInvalidArgument,
           "training.hidden_dropout: a {} model has no hidden-state dropout (transformers' Llama family has none); "
           "use attention_dropout, classifier_dropout or method.lora.dropout",
           config_.model_type());
    }
    config_.bert.hidden_dropout_prob = *t.hidden_dropout;
  }
}

void Trainer::Prepare() {
  CheckSupported(spec_, device_);
  if (config_.family == ModelFamily::kBert && spec_.model.task == ModelTask::kCausalLm) {
    Fail(ErrorCode::kInvalidArgument,
         "{}: a BERT encoder is not a causal language model; set model.task to sequence_classification or "
         "token_classification",
         spec_.model.path);
  }
  ApplyDropouts();
  // A BERT truncates at its position table, as its tokenizer's model_max_length does.
  const int64_t virtual_tokens = spec_.method.VirtualTokens();
  max_seq_len_ = config_.SequenceLimit(spec_.data.max_seq_len, virtual_tokens);
  if (max_seq_len_ < spec_.data.max_seq_len) {
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
  ranks_ = world_.size();
  RequireFitsWorld(spec_, ranks_);  // the ranks it runs on, which the spec may not name
  if (const auto problem = FinishedRunProblem(output_dir_)) Fail(ErrorCode::kFailedPrecondition, "{}", *problem);
  micro_ = spec_.training.micro_batch_size;
  global_batch_ = spec_.GlobalBatchSize(ranks_);
  accumulation_ = spec_.GradientAccumulation(ranks_);

  LoadData();  // before anything is written: bad data leaves no output behind
  JobSpec resolved = spec_;
  if (spec_.model.task != ModelTask::kCausalLm) UseClassifierHead(resolved);
  peft_ = PeftMethod(config_, resolved.method);  // the model as this job shapes it
  resolved.method = peft_.spec();                // the target modules it applied (the family's defaults, if unset)
  ReadInitAdapter();
  fs::create_directories(output_dir_ / "logs");
  AddLogFile(output_dir_ / "logs" / fmt::format("rank-{:05d}.log", world_.rank()));
  if (rank0_) WriteFileAtomic(output_dir_ / "job.yaml", JobSpecToYaml(resolved));

  steps_per_epoch_ = static_cast<int64_t>(train_.size()) / global_batch_;  // the last partial batch is dropped
  total_steps_ = spec_.training.max_steps > 0 ? spec_.training.max_steps : spec_.training.epochs * steps_per_epoch_;

  groups_ = MakeProcessGroups(world_, spec_.sharding.shard_group_size);
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
  engine_ = std::make_unique<ZeroEngine>(peft_.Units(), zero, groups_.groups);
  model_ = MakeUnitModel(peft_, *engine_, compute_dtype_, device_);

  if (rank0_) {
    const MemoryAccount memory = engine_->memory();
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

  const fs::path checkpoints = output_dir_ / "checkpoints";
  if (const auto latest = AgreedLatestCheckpoint(checkpoints)) {
    const TrainerState state = ReadTrainerState(*latest);
    if (state.total_steps != total_steps_) {
      Fail(ErrorCode::kFailedPrecondition,
           "{}: written by a run of {} steps, but this spec plans {}; resume with the same plan", latest->string(),
           state.total_steps, total_steps_);
    }
    LoadInitialWeights(/*resuming=*/true);
    engine_->LoadShards(latest->string());
    step_ = state.step;
    tokens_ = state.tokens;
    loss_scale_.set_scale(state.loss_scale);
    best_step_ = state.best_step;
    best_value_ = state.best_value;
    evaluations_since_best_ = state.evaluations_since_best;
    summary_.resumed_from_step = step_;
    if (rank0_) spdlog::info("resuming from {} (step {})", latest->string(), step_);
  } else {
    LoadInitialWeights(/*resuming=*/false);
  }
  if (rank0_) {
    metrics_ = std::make_unique<MetricsLog>(output_dir_, step_);
    progress_ = std::make_unique<ProgressBar>(step_, total_steps_);
  }
}

void Trainer::UseClassifierHead(JobSpec& resolved) {
  const auto classes = static_cast<int64_t>(label_names_.size());
  if (classes < 2) {
    Fail(ErrorCode::kInvalidArgument, "{}: a classifier needs at least 2 classes; the data has {}", spec_.data.train,
         classes);
  }
  config_.SetHead(spec_.model.task, label_names_, spec_.training.classifier_dropout);
  resolved.model.labels = label_names_;
  // The head is new: a parameter-efficient method trains it in full, as PEFT's task types do.
  // So does a BERT pooler the checkpoint lacks (a BertModel saved without one): transformers
  // would leave it random and, under PEFT, frozen.
  std::vector<std::string> trained = {config_.ClassifierModule()};
  const bool pooler = config_.family == ModelFamily::kBert && config_.task() == ModelTask::kSequenceClassification;
  if (pooler && !SafetensorsCheckpoint::Open(spec_.model.path).Find("bert.pooler.dense.weight")) {
    trained.push_back("pooler");
    if (rank0_) spdlog::warn("{} has no pooler (bert.pooler.dense): it is created new and trained", spec_.model.path);
  }
  auto& saved = resolved.method.modules_to_save;
  for (const std::string& module : trained) {
    if (resolved.method.type != MethodType::kFull && std::find(saved.begin(), saved.end(), module) == saved.end())
      saved.push_back(module);
  }
  if (rank0_) {
    spdlog::info("{} head `{}` over {} classes: {}", ToString(config_.task()), config_.ClassifierModule(), classes,
                 fmt::join(label_names_, ", "));
  }
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

LossSum Trainer::TaskLossSum(const at::Tensor& logits, const Batch& batch) const {
  const double smoothing = spec_.training.label_smoothing;
  switch (config_.task()) {
    case ModelTask::kSequenceClassification:
      return SequenceClassificationLossSum(logits, batch.class_labels, smoothing);
    case ModelTask::kTokenClassification:
      return TokenClassificationLossSum(logits, batch.labels, smoothing);
    case ModelTask::kCausalLm:
      break;
  }
  return CausalLmLossSum(logits, batch.labels, smoothing);
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

void Trainer::ReadInitAdapter() {
  if (spec_.method.init_from.empty()) return;
  LoadedAdapter loaded = ReadPeftAdapter(spec_.method.init_from, config_);
  if (loaded.method.type != spec_.method.type) {
    Fail(ErrorCode::kInvalidArgument, "method.init_from: {} holds a {} adapter, but method.type is '{}'",
         spec_.method.init_from, ToString(loaded.method.type), ToString(spec_.method.type));
  }
  for (const auto& p : peft_.parameters()) {
    const auto it = loaded.tensors.find(p.name);
    if (it == loaded.tensors.end() || it->second.sizes().vec() != p.shape) {
      Fail(ErrorCode::kInvalidArgument,
           "method.init_from: {} has no tensor '{}' of shape [{}]; its adapter_config.json must match the job's "
           "method",
           spec_.method.init_from, p.name, fmt::join(p.shape, ", "));
    }
  }
  const LoraSpec &have = loaded.method.lora, &want = spec_.method.lora;
  if (rank0_ && (have.alpha != want.alpha || have.use_rslora != want.use_rslora)) {
    spdlog::warn(
        "method.init_from: the adapter was made with lora alpha {} (rslora {}); this job scales by its own "
        "alpha {} (rslora {})",
        have.alpha, have.use_rslora, want.alpha, want.use_rslora);
  }
  init_adapter_ = std::move(loaded.tensors);
  if (rank0_) spdlog::info("method.init_from: starting from the adapter in {}", spec_.method.init_from);
}

void Trainer::LoadInitialWeights(bool resuming) {
  // The base model from model.path; a new adapter from method.init_from or initialized. On
  // resume only the frozen base: the checkpoint holds everything trained.
  if (resuming && peft_.full()) return;
  const SafetensorsCheckpoint weights = SafetensorsCheckpoint::Open(spec_.model.path);
  std::map<std::string, ParameterSpec> base_specs;
  for (const auto& p : ModelParameterSpecs(config_)) base_specs[p.name] = p;
  auto base = [&](const std::string& name) { return ReadHfTensor(weights, spec_.model.path, base_specs.at(name)); };
  std::map<std::string, at::Tensor> start;
  if (!resuming) start = std::move(init_adapter_);
  std::set<std::string> adapter;
  for (const auto& p : peft_.parameters()) adapter.insert(p.name);
  engine_->LoadWeights(
      [&](const ParameterSpec& parameter) {
        if (const auto it = start.find(parameter.name); it != start.end()) return it->second;
        if (adapter.count(parameter.name)) return peft_.Initial(parameter, spec_.training.seed, base);
        if (IsHeadParameter(parameter.name)) {
          // A head the checkpoint lacks, or one over other classes (another task's): new.
          const auto found = weights.Find(parameter.name);
          if (!found || found->info->shape != parameter.shape) {
            if (found && rank0_) {
              spdlog::info("{}: {} is [{}] in the checkpoint, [{}] for this job's classes: created new",
                           spec_.model.path, parameter.name, fmt::join(found->info->shape, ", "),
                           fmt::join(parameter.shape, ", "));
            }
            return NewHeadTensor(parameter, spec_.training.seed);
          }
        }
        return ReadHfTensor(weights, spec_.model.path, parameter);
      },
      resuming ? ZeroEngine::Units::kFrozen : ZeroEngine::Units::kAll);
}

std::optional<fs::path> Trainer::AgreedLatestCheckpoint(const fs::path& checkpoints) {
  // Rank 0 decides and tells the others: ranks must not take different resume paths (their
  // collectives would not match) even if their views of the directory differ.
  at::Tensor step = at::full({1}, int64_t{-1}, at::TensorOptions().dtype(at::kLong).device(device_));
  if (rank0_) {
    if (const auto latest = LatestCheckpoint(checkpoints))
      step.fill_(static_cast<int64_t>(std::stoll(latest->filename().string().substr(5))));
  }
  world_.Broadcast(step, 0, CollectiveTag{"resume step"})->Wait();
  const int64_t chosen = step.item<int64_t>();
  if (chosen < 0) return std::nullopt;
  const fs::path dir = checkpoints / fmt::format("step-{}", chosen);
  if (!fs::exists(dir / "index.json")) {
    Fail(ErrorCode::kFailedPrecondition,
         "rank {}: rank 0 resumes from {}, which this rank cannot see (is output.dir shared?)", world_.rank(),
         dir.string());
  }
  return dir;
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

// Fault injection for the tests of collective timeouts: SHARDTUNE_TEST_STALL=RANK:STEP makes that
// rank stop responding when it reaches that step (1-based), as a hung GPU or process would.
void StallIfAsked(int rank, int64_t step) {
  const char* stall = std::getenv("SHARDTUNE_TEST_STALL");
  if (stall == nullptr || fmt::format("{}:{}", rank, step) != stall) return;
  spdlog::warn("SHARDTUNE_TEST_STALL: rank {} stalls at step {}", rank, step);
  std::this_thread::sleep_for(std::chrono::hours(1));
}

void Trainer::TrainStep(int64_t step) {
  StallIfAsked(world_.rank(), step + 1);
  // SHARDTUNE_PROFILE_STEP=N: LibTorch's profiler records step N (1-based) as a Chrome trace, for
  // finding where a step's time goes (docs/PERFORMANCE.md).
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  if (const char* wanted = std::getenv("SHARDTUNE_PROFILE_STEP"); wanted && std::atoll(wanted) == step + 1) {
    const fs::path trace =
        output_dir_ / "logs" / fmt::format("profile-step-{}-rank-{:05d}.json", step + 1, world_.rank());
    profile = std::make_unique<torch::autograd::profiler::RecordProfile>(trace.string());
  }
  const auto start = std::chrono::steady_clock::now();
  const CommStats comm_before = engine_->comm_stats();
  double data_s = 0;  // time spent getting and collating examples: the step waiting for data
  auto data_start = std::chrono::steady_clock::now();
  const std::vector<const Example*> batch = GlobalBatch(step);
  data_s += SecondsSince(data_start);
  int64_t targets = 0;
  for (const Example* e : batch) targets += TargetsOf(*e);

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
    const std::vector<const Example*> examples(batch.begin() + first + a * micro_,
                                               batch.begin() + first + (a + 1) * micro_);
    data_start = std::chrono::steady_clock::now();
    const Batch micro_batch = WithVirtualTokens(Collate(examples, config_.pad_token_id()), peft_.prompt_tokens());
    data_s += SecondsSince(data_start);
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
  const double grad_norm = engine_->FinishGradients() / scale;
  AllReduceSumNow(world_, local, CollectiveTag{"loss", step + 1});

  bool update = targets > 0;
  if (!update && rank0_)
    spdlog::warn("step {}: the global batch has no target tokens (all labels -100); no update", step + 1);
  if (!loss_scale_.Update(grad_norm * scale)) {
    update = false;
    if (rank0_) spdlog::warn("step {}: gradient overflow at loss scale {}; step skipped", step + 1, scale);
  }
  double grad_scale = 1.0 / scale;
  if (spec_.training.grad_clip > 0 && grad_norm > spec_.training.grad_clip) {
    grad_scale *= spec_.training.grad_clip / (grad_norm + 1e-6);
  }
  const double lr = LearningRateAt(spec_.training.optimizer, spec_.training.scheduler, step, total_steps_);
  if (update) engine_->OptimizerStep(lr, grad_scale);
  const auto step_tokens = static_cast<int64_t>(local[1].item<double>());
  tokens_ += step_tokens;

  const double loss = targets > 0 ? local[0].item<double>() / static_cast<double>(targets) : 0.0;
  summary_.last_loss = loss;
  if (!rank0_) return;
  last_metrics_ = {{"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}};
  const double seconds = SecondsSince(start);
  const double tokens_per_s = seconds > 0 ? static_cast<double>(step_tokens) / seconds : 0.0;
  last_metrics_["tokens_per_s"] = tokens_per_s;
  const double epoch = static_cast<double>(step + 1) / static_cast<double>(steps_per_epoch_);
  if ((step + 1) % spec_.training.log_every == 0 || step + 1 == total_steps_) {
    const MemoryAccount memory = engine_->memory();
    CommStats comm = engine_->comm_stats();
    comm.bytes_sent -= comm_before.bytes_sent;
    comm.busy_s -= comm_before.busy_s;
    comm.waited_s -= comm_before.waited_s;
    metrics_->Write({{"step", step + 1},
                     {"epoch", epoch},
                     {"loss", loss},
                     {"lr", lr},
                     {"grad_norm", grad_norm},
                     {"tokens", tokens_},
                     {"tokens_per_s", tokens_per_s},
                     {"param_bytes", memory.parameters},
                     {"grad_bytes", memory.gradients},
                     {"optimizer_bytes", memory.optimizer},
                     {"step_s", seconds},
                     {"data_s", data_s},
                     {"comm_bytes", comm.bytes_sent},
                     {"comm_s", comm.busy_s},
                     {"comm_exposed_s", comm.waited_s},
                     {"peak_rss_bytes", PeakRssBytes()}});
  }
  const std::string status =
      fmt::format("loss {:.4f}  lr {:.3g}  grad_norm {:.3f}  {:.0f} tok/s", loss, lr, grad_norm, tokens_per_s);
  if (progress_->active()) {
    progress_->Update(step + 1, status);
  } else {
    spdlog::info("step {}/{} epoch {:.2f} {}", step + 1, total_steps_, epoch, status);
  }
}

std::optional<double> Trainer::Evaluate(int64_t step) {
  if (validation_.empty()) return std::nullopt;
  at::NoGradGuard no_grad;
  // Ranks take micro-batches round-robin; all run the same number of forwards (the collectives
  // of stage 3 must match), so a rank without examples left runs a one-token batch with no targets.
  const auto v = static_cast<int64_t>(validation_.size());
  const int64_t rounds = (v + micro_ * ranks_ - 1) / (micro_ * ranks_);
  const Example idle{{config_.pad_token_id(), config_.pad_token_id()}, {-100, -100}, {}, {}};
  Evaluation evaluation(config_.task(), config_.label_names(), static_cast<int64_t>(tasks_.size()));
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t begin = (round * ranks_ + world_.rank()) * micro_;
    std::vector<const Example*> examples;
    std::vector<int64_t> example_tasks;
    for (int64_t i = begin; i < std::min(begin + micro_, v); ++i) {
      examples.push_back(&validation_[i]);
      example_tasks.push_back(validation_tasks_[i]);
    }
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
    if (spec_.output.keep_best) Checkpoint(step, "best");
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

TrainerState Trainer::State(int64_t step) const {
  TrainerState state{step, tokens_, spec_.training.seed, loss_scale_.scale(), total_steps_};
  state.best_step = best_step_;
  state.best_value = best_value_;
  state.evaluations_since_best = evaluations_since_best_;
  return state;
}

void Trainer::Checkpoint(int64_t step, const std::string& name) {
  const fs::path checkpoints = output_dir_ / "checkpoints";
  const std::string base = name.empty() ? fmt::format("step-{}", step) : name;
  const fs::path dir = checkpoints / base;
  const fs::path staging = checkpoints / (base + ".tmp");
  if (rank0_) {
    fs::remove_all(staging);
    fs::create_directories(staging);
  }
  Barrier("checkpoint directory");
  engine_->SaveShards(staging.string());
  Barrier("checkpoint shards");
  if (rank0_) {
    WriteTrainerState(staging, State(step));
    fs::remove_all(dir);
    RenameDirectoryAtomic(staging, dir);
    if (name.empty()) {
      PruneCheckpoints(checkpoints, spec_.output.keep_checkpoints);
      if (options_.on_checkpoint) options_.on_checkpoint(step, dir.string());
    }
  }
  Barrier("checkpoint commit");
}

void Trainer::Export() {
  ExportModel(*engine_, world_, peft_, output_dir_ / "final", spec_.model.path, spec_.model.dtype,
              spec_.output.export_formats);
  if (rank0_) {
    std::string what;
    for (ExportFormat f : spec_.output.export_formats)
      what += std::string(what.empty() ? "" : " and ") + (f == ExportFormat::kHf ? "model" : "adapter");
    spdlog::info("exported the fine-tuned {} to {}", what, (output_dir_ / "final").string());
  }
}

void Trainer::WriteGenerations() {
  const int64_t wanted = std::min<int64_t>(spec_.output.generations, static_cast<int64_t>(validation_.size()));
  if (wanted == 0 || !rank0_ || !tokenizer_ || config_.task() != ModelTask::kCausalLm) return;
  const fs::path final_dir = output_dir_ / "final";
  const bool merged =
      std::count(spec_.output.export_formats.begin(), spec_.output.export_formats.end(), ExportFormat::kHf) > 0;
  // One process reads the exported model back: what a user of final/ would get.
  const LoadedModel loaded =
      merged ? LoadModelForInference(final_dir) : LoadModelForInference(spec_.model.path, final_dir);
  std::string lines;
  for (int64_t i = 0; i < wanted; ++i) {
    const Example& e = validation_[i];
    // The prompt is everything before the first trained token; the reference what is trained.
    const auto first = std::find_if(e.labels.begin(), e.labels.end(), [](int64_t l) { return l != -100; });
    const auto split = static_cast<size_t>(first - e.labels.begin());
    const std::vector<int64_t> prompt(e.input_ids.begin(), e.input_ids.begin() + static_cast<int64_t>(split));
    std::vector<int64_t> reference;
    for (size_t t = split; t < e.labels.size(); ++t)
      if (e.labels[t] != -100) reference.push_back(e.labels[t]);
    GenerateOptions options;
    options.max_new_tokens = std::min<int64_t>(256, 2 * static_cast<int64_t>(reference.size()) + 8);
    const std::vector<int64_t> answer = Generate(*loaded.model, prompt, options);
    lines += json({{"prompt", tokenizer_->Decode(prompt, /*skip_special_tokens=*/false)},
                   {"reference", tokenizer_->Decode(reference, /*skip_special_tokens=*/true)},
                   {"generated", tokenizer_->Decode(answer, /*skip_special_tokens=*/true)}})
                 .dump() +
             "\n";
  }
  WriteFileAtomic(output_dir_ / "generations.jsonl", lines);
  spdlog::info("wrote the exported model's greedy answers to {} validation prompts to {}", wanted,
               (output_dir_ / "generations.jsonl").string());
}

TrainingSummary Trainer::Run() {
  Prepare();
  const int64_t stop = options_.stop_after_step > 0 ? std::min(options_.stop_after_step, total_steps_) : total_steps_;
  bool stop_early = false;
  for (; step_ < stop && !stop_early;) {
    TrainStep(step_);
    const int64_t done = ++step_;
    if (spec_.training.eval_every > 0 && done % spec_.training.eval_every == 0)
      stop_early = AfterEvaluation(done, Evaluate(done));
    const bool checkpointed =
        spec_.output.checkpoint_every > 0 && done % spec_.output.checkpoint_every == 0 && done < total_steps_;
    if (checkpointed) Checkpoint(done);
    if (options_.stop_check && done < total_steps_ && StopRequested(done)) {
      // Paused by the server: keep everything up to this step, then stop.
      if (!checkpointed) Checkpoint(done);
      if (progress_) progress_->Finish();
      if (rank0_) spdlog::info("stopping at step {} as the server asked (checkpointed)", done);
      summary_.steps = step_;
      summary_.paused = true;
      return summary_;
    }
  }
  if (progress_) progress_->Finish();
  summary_.steps = step_;
  if (step_ < total_steps_ && !stop_early) return summary_;

  if (!stop_early && (spec_.training.eval_every == 0 || total_steps_ % spec_.training.eval_every != 0))
    AfterEvaluation(total_steps_, Evaluate(total_steps_));
  if (spec_.output.keep_best && best_step_ > 0 && best_step_ != step_) {
    const fs::path best = output_dir_ / "checkpoints" / "best";
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

}  // namespace

TrainingSummary RunTraining(const JobSpec& spec, Communicator& world, const TrainerOptions& options) {
  Trainer trainer(spec, world, options);
  return trainer.Run();
}

TrainingSummary RunTraining(const JobSpec& spec, const TrainerOptions& options) {
  SingleProcessCommunicator world;
  return RunTraining(spec, world, options);
}

}  // namespace shardtune
