#pragma once
// The job spec: what a user asks shardtune to do, as typed structs. Parsed from YAML by
// ParseJobSpec (job_spec_yaml.cc), which checks every key, type and range of the whole file and
// reports all problems at once, each with its key path and line:column. docs/job-spec.md
// documents every field; the defaults below are the documented ones.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/near_duplicates.h"
#include "common/text_augmentation.h"

namespace shardtune {

enum class ComputeDType { kFp32, kBf16, kFp16 };
enum class ModelTask { kCausalLm, kSequenceClassification, kTokenClassification };
enum class MethodType { kFull, kLora, kDora, kAdapter, kPrefix, kPrompt, kIa3 };
enum class DataFormat { kChat, kCompletion, kAlpaca, kShareGpt, kText, kClassification, kNer, kTokens };
enum class OptimizerType { kAdamW };
enum class SchedulerType { kConstant, kLinear, kCosine };
enum class CommBackend { kAuto, kNccl, kMpi };
enum class OffloadTarget { kNone, kCpu };
enum class ExportFormat { kHf, kPeft };
enum class MetricMode { kAuto, kMin, kMax };
enum class ChatTemplateChoice { kAuto, kLlama3, kChatml, kLlama2, kMistral, kPlain };
enum class DedupMode { kNone, kExact, kNear };
enum class BalanceMode { kNone, kOversample, kClassWeights };

enum class QuantizationType { kNone, kNf4, kFp4 };

// QLoRA (Dettmers et al., 2023): the frozen base's linear layers held in 4 bits, quantized at
// load as bitsandbytes' quantize_4bit does (sharding/quant4.h) and dequantized into the compute
// dtype (model.dtype) one unit at a time, just before use. Only under a parameter-efficient method.
struct QuantizationSpec {
  QuantizationType type = QuantizationType::kNone;
  int64_t block_size = 64;   // elements per absmax: 64, 128, ..., 4096
  bool double_quant = true;  // the absmax themselves quantized to 8 bits in blocks of 256
};

struct ModelSpec {
  std::string path;       // Hugging Face directory: config.json + *.safetensors (required)
  std::string tokenizer;  // (optional) defaults to the tokenizer in `path`
  ComputeDType dtype = ComputeDType::kFp32;
  QuantizationSpec quantization;  // (optional) type none: the base in `dtype`
  ModelTask task = ModelTask::kCausalLm;
  // Classification and NER: the class (or BIO tag) names in id order. Default: config.json's
  // id2label, else the sorted names of the training data; the job.yaml a run writes records them.
  std::vector<std::string> labels;
};

enum class AdapterPlacement { kHoulsby, kPfeiffer };
enum class AdapterActivation { kRelu, kGelu, kSilu };

// LoRA (Hu et al., 2021) and DoRA (Liu et al., 2024): W x + scale * B A dropout(x), scale =
// alpha / r (alpha / sqrt(r) with use_rslora); DoRA also learns each output row's magnitude.
struct LoraSpec {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0.0;
  // Module names (q_proj, v_proj, ...) matched against the end of each linear layer's path; or,
  // when written as one string, "all-linear" or a regex the whole path must match. Empty: the
  // model family's default (PEFT's: q_proj and v_proj for Llama, query and value for BERT).
  std::vector<std::string> target_modules;
  bool target_is_pattern = false;
  bool use_rslora = false;
};

// IA3 (Liu et al., 2022): learned vectors scaling the outputs of the target modules, and the
// inputs of the feed-forward ones. Unset lists: the model family's defaults (PEFT's: k_proj,
// v_proj, down_proj and down_proj for Llama; key, value, output.dense and output.dense for BERT).
struct Ia3Spec {
  std::vector<std::string> target_modules;  // empty: the family's
  std::vector<std::string> feedforward_modules;
  bool feedforward_given = false;  // false: the family's feed-forward modules among the targets
};

// Bottleneck adapters (Houlsby et al., 2019): x + up(act(down(x))) on a sublayer's output;
// Houlsby places one after attention and one after the MLP, Pfeiffer only after the MLP.
struct AdapterSpec {
  int64_t bottleneck = 64;
  AdapterPlacement placement = AdapterPlacement::kPfeiffer;
  AdapterActivation activation = AdapterActivation::kRelu;
};

// Prefix tuning (Li & Liang, 2021): trainable keys and values before every layer's own.
struct PrefixSpec {
  int64_t num_virtual_tokens = 20;
  bool projection = false;          // reparameterize through an MLP during training
  int64_t encoder_hidden_size = 0;  // the MLP's width; 0: the key/value width
};

// Prompt tuning (Lester et al., 2021): trainable embeddings before the input's.
struct PromptSpec {
  int64_t num_virtual_tokens = 20;
};

struct MethodSpec {
  MethodType type = MethodType::kFull;
  LoraSpec lora;  // lora and dora
  Ia3Spec ia3;
  AdapterSpec adapter;
  PrefixSpec prefix;
  PromptSpec prompt;
  std::vector<std::string> modules_to_save;  // trained in full besides the adapter (e.g. lm_head)
  std::string init_from;                     // a PEFT adapter directory to start from

  // Prompt or prefix tuning's virtual tokens, which take positions of the model (0 otherwise).
  int64_t VirtualTokens() const {
    return type == MethodType::kPrompt   ? prompt.num_virtual_tokens
           : type == MethodType::kPrefix ? prefix.num_virtual_tokens
                                         : 0;
  }
};

// One dataset of a multi-task mixture (data.tasks).
struct TaskSpec {
  std::string name;                         // [a-z0-9_-], unique
  std::string train;                        // (required)
  std::string validation;                   // (optional); else data.validation_split of `train`
  DataFormat format = DataFormat::kTokens;  // defaults to data.format
  double weight = 1.0;                      // share of the mixture (with mixing_temperature 0)
};

struct DataSpec {
  std::string train;              // JSONL file (required unless `tasks` is given)
  std::string validation;         // (optional) JSONL file
  double validation_split = 0.0;  // fraction of train held out when `validation` is not given
  DataFormat format = DataFormat::kTokens;
  int64_t max_seq_len = 2048;  // longer examples are truncated
  bool packing = false;
  bool shuffle = true;                                           // reshuffled every epoch from training.seed
  ChatTemplateChoice chat_template = ChatTemplateChoice::kAuto;  // chat and sharegpt formats
  bool group_by_length = false;   // batches of similar lengths (less padding), still shuffled
  std::vector<TaskSpec> tasks;    // multi-task: mixed by weight, or by temperature
  double mixing_temperature = 0;  // > 0: task i drawn with probability proportional to size_i^(1/T)
  // Where the token cache (the data tokenized once per job, shared by its ranks and attempts)
  // is kept; empty: OUTPUT_DIR/cache.
  std::string cache_dir;
  // Duplicates removed from the training examples before training (docs/data.md, "Duplicates
  // and leakage"): none, exact copies, or exact and near copies (MinHash at `similarity`), and
  // with them the training copies of validation examples. Validation is never changed.
  struct Dedup {
    DedupMode mode = DedupMode::kNone;
    NearDuplicateOptions similarity;
  } dedup;
  // classification and ner: none, minority classes' training examples repeated (classification),
  // or the loss weighted by class (docs/data.md, "Class balance").
  BalanceMode balance = BalanceMode::kNone;
  // classification and ner: `copies` new sentences per training example, made by EDA's
  // operations (docs/data.md, "Augmentation"), synonyms from the system's WordNet; the seed is
  // training.seed.
  AugmentOptions augment;
};

struct OptimizerSpec {
  OptimizerType type = OptimizerType::kAdamW;
  double lr = 5.0e-5;
  double weight_decay = 0.0;  // decoupled; never applied to norms and biases
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1.0e-8;
};

struct SchedulerSpec {
  SchedulerType type = SchedulerType::kLinear;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;  // linear and cosine decay to lr x min_lr_ratio
};

// Stops training when the validation metric has not improved for `patience` evaluations.
struct EarlyStoppingSpec {
  int64_t patience = 0;                 // evaluations without improvement before stopping; 0: never stop early
  std::string metric = "val_loss";      // a figure the evaluation reports (common/evaluation_metrics.h)
  MetricMode mode = MetricMode::kAuto;  // min or max; auto: the metric's own (min for val_loss, perplexity)
  double min_delta = 0.0;               // an improvement must beat the best by more than this
  bool Minimizes() const;
};

struct TrainingSpec {
  int64_t epochs = 1;
  int64_t max_steps = 0;          // > 0 overrides epochs
  int64_t micro_batch_size = 1;   // examples per rank per forward/backward
  int64_t global_batch_size = 0;  // 0: micro_batch_size x data-parallel ranks (no accumulation)
  OptimizerSpec optimizer;
  SchedulerSpec scheduler;
  double grad_clip = 1.0;  // global L2 norm; 0 disables clipping
  uint64_t seed = 42;
  int64_t eval_every = 0;                 // steps between validations; 0: only after the last step
  int64_t log_every = 1;                  // steps between metrics.jsonl lines
  bool activation_checkpointing = false;  // recompute each layer's forward in its backward
  EarlyStoppingSpec early_stopping;
  // Regularization (LoRA's dropout is method.lora.dropout): label smoothing of the training
  // loss; dropout of the attention probabilities, of the hidden states (BERT's; Llama-family
  // models have none) and before a classifier head (unset: the model's config.json values).
  double label_smoothing = 0.0;
  std::optional<double> attention_dropout;
  std::optional<double> hidden_dropout;
  std::optional<double> classifier_dropout;
};

// Answers generated to the validation prompts at every evaluation (training.eval_every and the
// end), scored against the validation answers by `metrics` (common/generation_metrics.h; a
// language model's job only). The figures join the evaluation's in metrics.jsonl and TensorBoard,
// and early stopping, output.keep_best and a sweep's objective can judge by them.
struct GenerateEvaluationSpec {
  std::vector<std::string> metrics;  // none: no generation
  int64_t max_new_tokens = 64;
  int64_t num_samples = 1;   // answers per prompt; more than one needs temperature > 0
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  int64_t max_examples = 0;    // the first N validation examples; 0: all
  double test_timeout_s = 10;  // pass@K: seconds an answer's tests may run (common/code_sandbox.h)
};

struct EvaluationSpec {
  GenerateEvaluationSpec generate;
};

struct ShardingSpec {
  int zero_stage = 0;
  CommBackend backend = CommBackend::kAuto;
  int64_t shard_group_size = 0;  // 0: shard over all ranks
  OffloadTarget offload_optimizer = OffloadTarget::kNone;
  double collective_timeout_s = 600;
  int64_t prefetch_layers = 1;        // stage 3: units gathered ahead of their use
  int64_t persistence_threshold = 0;  // stage 3: units with fewer elements stay gathered
  int64_t load_buffer_mb = 256;       // staging buffer for reading the model's weights
};

struct OutputSpec {
  std::string dir;               // (required)
  int64_t checkpoint_every = 0;  // steps between checkpoints; 0: none besides the final export
  int64_t keep_checkpoints = 0;  // newest checkpoints kept; 0 keeps all
  // Checkpoints written by a background thread from a host copy (one in flight), so that
  // training goes on while they are written.
  bool async_checkpoint = true;
  // Keep the weights of the best evaluation (training.early_stopping's metric) in
  // checkpoints/best and export those as final/, not the last step's.
  bool keep_best = false;
  // After the final export: the model's greedy answers to the first N validation prompts, beside
  // the references, in generations.jsonl (causal LM on text data; 0: none).
  int64_t generations = 0;
  // Default: [hf] for full fine-tuning, [peft] for the parameter-efficient methods.
  std::vector<ExportFormat> export_formats = {ExportFormat::kHf};
};

// What the job asks of its machines. nodes and ranks_per_node make the rank count everywhere; the
// others are for a batch scheduler (shardtune-server's slurm backend renders them to sbatch
// options, launcher/server/slurm_script.h; the local backend refuses the scheduler-only ones).
struct ResourcesSpec {
  int64_t nodes = 1;
  int64_t ranks_per_node = 1;
  int64_t gpus_per_node = 0;  // 0: none asked for (or the server's slurm.gpus_per_node)
  int64_t cpus_per_rank = 0;  // 0: the scheduler's default (or the server's slurm.cpus_per_rank)
  std::string time_limit;     // Slurm's --time forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
  std::string partition, account, qos;
  int64_t world_size() const { return nodes * ranks_per_node; }
  // Any of time_limit, partition, account, qos given: only a batch scheduler can honour them.
  bool NamesSchedulerOptions() const {
    return !time_limit.empty() || !partition.empty() || !account.empty() || !qos.empty();
  }
};

// What is wrong with a value for Slurm's --time (the forms above; "" when it is one), or with a
// partition, account or QOS name (letters, digits, '_', '-', '.'; at most 64 characters). The job
// spec and the server's config (slurm:) check their values with these.
std::string TimeLimitProblem(const std::string& value);
std::string SchedulerNameProblem(const std::string& value);

struct JobSpec {
  std::string name;  // [a-z0-9-], at most 64 characters (required)
  std::map<std::string, std::string> labels;
  ModelSpec model;
  MethodSpec method;
  DataSpec data;
  TrainingSpec training;
  EvaluationSpec evaluation;
  ShardingSpec sharding;
  OutputSpec output;
  ResourcesSpec resources;

  // Gradient accumulation steps for `data_parallel_ranks` ranks (the spec must be valid for it).
  int64_t GradientAccumulation(int64_t data_parallel_ranks) const;
  int64_t GlobalBatchSize(int64_t data_parallel_ranks) const;
};

// All problems found in a spec, one line each: "training.lr (line 12, column 7): ...".
class SpecError : public Error {
 public:
  SpecError(const std::string& source, std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

// How a data path names an uploaded file: file:ID (shardtune-server's Files API).
inline constexpr char kUploadedFilePrefix[] = "file:";

struct SpecOptions {
  bool check_files = true;  // model.path, data.train, ... must exist
  // A data path (data.train, data.validation, data.tasks[].train, ...) may name an uploaded file
  // as `file:ID` (shardtune-server's Files API): this maps the ID to the file's path, or to
  // nullopt when the caller has no such file. Unset: `file:` paths are refused (only a server
  // resolves them; the spec it stores and hands to the worker holds the resolved path).
  std::function<std::optional<std::string>(const std::string& file_id)> resolve_file;
};

// Parses and validates YAML text. `source` names it in errors; relative paths in the spec are
// resolved against `base_dir` (the directory of the job file). Throws SpecError.
JobSpec ParseJobSpec(const std::string& yaml_text, const std::string& source, const std::filesystem::path& base_dir,
                     const SpecOptions& options = {});
JobSpec LoadJobSpec(const std::filesystem::path& path, const SpecOptions& options = {});

// Every key path of the job spec that holds a value ("training.optimizer.lr", "method.lora.r"),
// sorted; sections ("training.optimizer") are not listed. Taken from the parser's own readers.
std::vector<std::string> JobSpecKeyPaths();

// The resolved spec (every default filled in, absolute paths) as YAML; ParseJobSpec reads it back
// to an equal spec.
std::string JobSpecToYaml(const JobSpec& spec);

const char* ToString(ComputeDType v);
const char* ToString(ModelTask v);
const char* ToString(MethodType v);
const char* ToString(DataFormat v);
const char* ToString(SchedulerType v);
const char* ToString(CommBackend v);
const char* ToString(OffloadTarget v);
const char* ToString(ExportFormat v);
const char* ToString(MetricMode v);
// The format a name in the spec's spelling stands for ("chat", "ner", ...); nullopt if none.
std::optional<DataFormat> DataFormatNamed(const std::string& name);
const char* ToString(OptimizerType v);
const char* ToString(ChatTemplateChoice v);
const char* ToString(DedupMode v);
const char* ToString(BalanceMode v);
const char* ToString(ShingleUnit v);
const char* ToString(AdapterPlacement v);
const char* ToString(AdapterActivation v);

}  // namespace shardtune
