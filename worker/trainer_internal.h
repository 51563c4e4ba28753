#pragma once
// The Trainer behind RunTraining (worker/trainer.h), shared by the files that implement it, one
// concern each:
//   trainer.cc             setup (spec checks, engine, the plan's log lines, resume), the step
//                          loop and export
//   trainer_checkpoint.cc  checkpoints: written in the background, committed when every rank wrote
//   trainer_model.cc       the model this job trains: dropouts, classifier head, init adapter,
//                          initial weights
//   trainer_data.cc        the training and validation data, and each step's global batch
//   trainer_evaluation.cc  validation, early stopping and keep_best, generations
// Every rank runs one Trainer over the same spec; the comments say what only rank 0 does.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/background_task.h"
#include "common/job_spec.h"
#include "common/model_config.h"
#include "common/run_dir.h"
#include "common/test_knobs.h"
#include "sharding/checkpoint.h"
#include "sharding/comm/communicator.h"
#include "sharding/loss_scale.h"
#include "sharding/zero_engine.h"
#include "worker/data/example_selection.h"
#include "worker/data/example_set.h"
#include "worker/data/formats.h"
#include "worker/data/mixture.h"
#include "worker/data/record_texts.h"
#include "worker/data/token_dataset.h"
#include "worker/data/tokenizer/tokenizer.h"
#include "worker/metrics_log.h"
#include "worker/models/llama.h"
#include "worker/peft/peft.h"
#include "worker/progress.h"
#include "worker/trainer.h"
#include "worker/unit_model.h"

namespace shardtune {

// The most memory this process has held resident so far (the kernel's high-water mark).
int64_t PeakRssBytes();

class Trainer {
 public:
  Trainer(const JobSpec& spec, Communicator& world, const TrainerOptions& options);

  TrainingSummary Run();

 private:
  // What one step did, for metrics.jsonl, the progress bar and the server.
  struct StepFigures {
    double loss = 0;
    double lr = 0;
    double grad_norm = 0;
    int64_t tokens = 0;  // input tokens of this step's global batch
    double seconds = 0;
    double data_s = 0;  // of `seconds`, getting and collating examples
    CommStats comm;     // this step's collectives
  };

  // Setup (trainer.cc), in this order: nothing is written before the spec and the data are known
  // to be good.
  void Prepare();
  void CheckSpec();                           // what the parser cannot know: the model, this build, the world
  void SetSequenceLimit();                    // max_seq_len_: data.max_seq_len within the model's positions
  JobSpec ShapeModel();                       // head, PEFT method, init adapter; returns the spec as resolved
  void StartOutput(const JobSpec& resolved);  // logs/ and job.yaml
  ZeroConfig EngineConfig() const;
  void LogModel() const;  // rank 0
  void LogPlan() const;   // rank 0
  void ResumeOrStart();   // from the newest checkpoint all ranks agree on, or the initial weights
  std::optional<StepCheckpoint> AgreedLatestCheckpoint();

  // The model (trainer_model.cc).
  // The model's regularization as training.* overrides it; what a family lacks is refused.
  void ApplyDropouts();
  // quantization_: model.quantization, or the format a pre-quantized checkpoint was saved in;
  // refuses what such a checkpoint cannot do (full fine-tuning, an hf export of the original
  // weights, another format than the job asks for).
  void ResolveQuantization();
  void ReadInitAdapter();  // method.init_from, checked against the method
  // Classification and NER: the model gets its family's classifier (`score`, `classifier`) over
  // the data's classes (which `resolved` records); PEFT methods train it in full (modules_to_save).
  void UseClassifierHead(JobSpec& resolved);
  // The initial weights, each rank reading only its share (ZeroEngine::LoadWeights); the figures
  // go to load_record_.
  void LoadInitialWeights(bool resuming);
  bool IsNewHead(const ParameterSpec& parameter, const SafetensorsCheckpoint& checkpoint) const;
  // Gathers every rank's load figures; rank 0 keeps them as metrics.jsonl's load record.
  void RecordLoad(int64_t bytes_read, double seconds);

  // The data (trainer_data.cc).
  void LoadData();
  // The token cache of one data file: found or built by all ranks together (collective).
  std::shared_ptr<const TokenCache> CachedData(const std::string& file, const JobDataOptions& job_data,
                                               const FormatOptions& options);
  // A task's training and validation documents: split, deduplicated and oversampled as
  // data.dedup and data.balance say (collective only through the token caches before it).
  TaskSelection SelectTaskExamples(const TaskSpec& task, const TokenCache& train, const TokenCache* held,
                                   uint64_t seed) const;
  // data.augment: the task's augmented training examples, made from `documents` of its training
  // file, written into the cache directory and read back as a token cache (collective).
  std::shared_ptr<const TokenCache> AugmentedData(const TaskSpec& task, const std::vector<int64_t>& documents,
                                                  const JobDataOptions& job_data, const FormatOptions& options);
  // data.balance: class_weights: class_weights_ from the classes of `documents` of `train`.
  void UseClassWeights(const TokenCache& train, const std::vector<int64_t>& documents);
  // This step's global batch: its examples' indices in train_, rank by rank.
  std::vector<int64_t> GlobalBatch(int64_t step);
  // The target count of the whole global batch (each example materialized in turn).
  int64_t TargetsOf(const std::vector<int64_t>& batch) const;
  int64_t TargetsOf(const Example& e) const;
  // Examples [begin, begin + count) of the global batch, materialized.
  std::vector<Example> BatchExamples(const std::vector<int64_t>& batch, int64_t begin, int64_t count) const;

  // Training (trainer.cc).
  // The training loss of the task (causal LM, sequence or token classification; with
  // training.label_smoothing) and what it counts.
  LossSum TaskLossSum(const at::Tensor& logits, const Batch& batch) const;
  void TrainStep(int64_t step);
  void ReportStep(int64_t step, const StepFigures& figures);  // rank 0
  bool StopRequested(int64_t step);                           // reports the step to the server (rank 0); true: pause
  void Export();
  void Barrier(const std::string& what) { world_.Barrier(CollectiveTag{what, step_}); }

  // Checkpoints (trainer_checkpoint.cc). One is in flight at a time: a host snapshot of every
  // rank's shard, taken between steps (what the step waits for), is written and fsynced into
  // DIR.tmp by a background task (output.async_checkpoint; in the step otherwise); once every rank's
  // write has finished, which the ranks agree on at step boundaries, rank 0 writes
  // trainer_state.json and index.json last and renames DIR.tmp to DIR. Only then is a periodic one
  // (checkpoints/step-N) pruned among the others and reported to the server. Every rank calls
  // these at the same points of the loop (their collectives must match).
  // Asynchronous checkpoints: takes a first snapshot before training, so that the host memory the
  // snapshots reuse is allocated and touched now (a rank that cannot hold it fails at once, and no
  // step pays the first touch's page faults).
  void ReserveCheckpointMemory();
  // The checkpoints due after `step`: checkpoints/step-N when `periodic`, checkpoints/best when the
  // last evaluation was the best so far (output.keep_best).
  std::vector<CheckpointDir> DueCheckpoints(int64_t step, bool periodic);
  // Starts writing the checkpoint of `step` into `dirs` (none: nothing to do), after finishing the
  // one in flight.
  void Checkpoint(int64_t step, const std::vector<CheckpointDir>& dirs);
  // At every step boundary: commits the checkpoint in flight if every rank has written it.
  void PollCheckpoint();
  // Waits for the checkpoint in flight to be written on every rank and commits it; a wait is logged
  // with what it came before ("the pause", "the end of training").
  void FinishCheckpoint(const char* before);
  // Whether every rank's write of the checkpoint in flight has finished (a collective); with
  // `wait`, waits for this rank's first. Throws if any rank's write failed.
  bool EveryRankWroteCheckpoint(bool wait);
  void CommitCheckpoint();
  TrainerState State(int64_t step) const;

  // Evaluation (trainer_evaluation.cc).
  // The early-stopping metric of the evaluation, on every rank.
  std::optional<double> Evaluate(int64_t step);
  // evaluation.generate: the generation metrics' figures, on every rank (collective).
  nlohmann::json GenerationFigures(int64_t step);
  // After an evaluation that gave `metric` (none without validation targets): tracks the best
  // one, keeps its weights with output.keep_best, and says whether training stops early.
  bool AfterEvaluation(int64_t step, std::optional<double> metric);
  // output.generations: greedy answers of the exported model to validation prompts (rank 0).
  void WriteGenerations();

  const JobSpec& spec_;
  Communicator& world_;
  TrainerOptions options_;
  bool rank0_;
  RunDir run_dir_;
  TestKnobs knobs_;           // read once, in Prepare
  int64_t profile_step_ = 0;  // SHARDTUNE_PROFILE_STEP (0: none), read once, in Prepare
  ModelConfig config_;
  QuantizationSpec quantization_;  // the base's (ResolveQuantization)
  PeftMethod peft_;
  at::ScalarType compute_dtype_;
  at::Device device_;  // the world communicator's: the CPU under MPI, this rank's GPU under NCCL
  OwnedProcessGroups groups_;
  std::unique_ptr<ZeroEngine> engine_;
  std::unique_ptr<UnitModel> model_;
  std::map<std::string, at::Tensor> init_adapter_;  // method.init_from's tensors, until loaded
  std::map<std::string, double> last_metrics_;      // rank 0: the latest step's (and evaluation's) figures
  std::unique_ptr<Tokenizer> tokenizer_;
  // The examples, read from the token caches on demand: a part per task in each, so a
  // validation example's part is its task.
  ExampleSet train_;
  ExampleSet validation_;
  // evaluation.generate with pass@K: each validation example's record's tests (record_texts.h).
  std::vector<CodeTests> validation_tests_;
  std::vector<int64_t> train_lengths_;  // with data.group_by_length: each training example's tokens
  std::vector<TaskRange> tasks_;        // where each task's examples are in train_
  std::vector<std::string> task_names_;
  std::vector<std::string> label_names_;  // classification and NER: the classes (or tags), by id
  at::Tensor class_weights_;              // data.balance: class_weights: each class's loss weight (else undefined)
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
  nlohmann::json load_record_;  // rank 0: how the initial weights were read, until written
  std::unique_ptr<ProgressBar> progress_;
  TrainingSummary summary_;
  int64_t best_step_ = 0;  // the best evaluation (TrainerState)
  double best_value_ = 0.0;
  int64_t evaluations_since_best_ = 0;
  bool best_unsaved_ = false;  // output.keep_best: the latest evaluation is the best, not in checkpoints/best yet

  // The checkpoint being written, from its snapshot to its commit.
  struct CheckpointInFlight {
    int64_t step = 0;
    std::vector<StagedDirectory> dirs;  // written alike: checkpoints/step-N and/or checkpoints/best
    TrainerState state;
    std::optional<TaskOutcome> written;  // this rank's write, once collected
  };
  std::optional<CheckpointInFlight> checkpoint_;
  ShardSnapshot snapshot_;            // the host copy being written, reused by the next checkpoint
  BackgroundTask checkpoint_writer_;  // after snapshot_: destroyed (joined) before it
  double checkpoint_stall_s_ = 0;     // the training thread's time on checkpoints since the last metrics line
  double checkpoint_write_s_ = 0;     // rank 0: writes committed since the last metrics line
};

}  // namespace shardtune
