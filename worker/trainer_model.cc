// The model a job trains: the family's regularization as the spec overrides it, a classifier
// head over the data's classes, the adapter method.init_from names, and the initial weights.

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <set>

#include "common/error.h"
#include "common/safetensors.h"
#include "sharding/model_layout.h"
#include "sharding/prequantized.h"
#include "sharding/weight_source.h"
#include "worker/models/hf_io.h"
#include "worker/peft/adapter_io.h"
#include "worker/trainer_internal.h"

namespace shardtune {

namespace {

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

// The job's initial weights: the parameters named in `computed` (an adapter from
// method.init_from or initialized, a classifier head the checkpoint lacks) from whole tensors
// `compute` returns, every other one by range from the model's files.
class InitialWeights : public WeightSource {
 public:
  InitialWeights(SafetensorsWeightSource& files, std::set<std::string> computed,
                 std::function<at::Tensor(const ParameterSpec&)> compute)
      : files_(files), computed_(std::move(computed)), compute_(std::move(compute)) {}
  void Read(const ParameterSpec& parameter, int64_t begin, int64_t count, at::Tensor out) override {
    WeightSource& from = computed_.count(parameter.name) ? static_cast<WeightSource&>(compute_) : files_;
    from.Read(parameter, begin, count, std::move(out));
  }
  bool ReadRecords(const ParameterSpec& parameter, const Quant4Format& format, int64_t first, int64_t count,
                   uint8_t* records) override {
    return !computed_.count(parameter.name) && files_.ReadRecords(parameter, format, first, count, records);
  }

 private:
  SafetensorsWeightSource& files_;
  std::set<std::string> computed_;
  WholeTensorSource compute_;
};

}  // namespace

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

void Trainer::ResolveQuantization() {
  quantization_ = QuantizationOfJob(spec_);
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(spec_.model.path);
  const auto weights = FindPrequantizedWeights(checkpoint, spec_.model.path);
  if (weights.empty()) return;
  const std::string& example = weights.begin()->first;
  if (quantization_.type == QuantizationType::kNone && spec_.method.type != MethodType::kFull)
    quantization_ = QuantizationSpecOf(weights.begin()->second.format);  // no quantization_config said so
  if (spec_.method.type == MethodType::kFull) {
    Fail(ErrorCode::kInvalidArgument,
         "method.type 'full': {} holds its linear weights 4-bit ('{}' and {} more), which full fine-tuning cannot "
         "train; use a parameter-efficient method (QLoRA) or the original weights",
         spec_.model.path, example, weights.size() - 1);
  }
  const auto& formats = spec_.output.export_formats;
  if (std::find(formats.begin(), formats.end(), ExportFormat::kHf) != formats.end()) {
    Fail(ErrorCode::kInvalidArgument,
         "output.export: hf merges the adapter into the original weights, and {} holds only 4-bit ones ('{}', ...); "
         "export peft and merge the adapter into the original model",
         spec_.model.path, example);
  }
  const Quant4Format format = *Quant4FormatOf(quantization_);
  for (const auto& [name, weight] : weights) {
    if (weight.format != format) {
      Fail(ErrorCode::kInvalidArgument, "model.quantization is {}, but {}: tensor '{}' is stored 4-bit as {}",
           Quant4FormatText(format), weight.packed.file->path().string(), name, Quant4FormatText(weight.format));
    }
  }
  if (rank0_ && spec_.model.quantization.type == QuantizationType::kNone) {
    spdlog::info("{}: a 4-bit checkpoint ({} weights stored {}): QLoRA on it, as model.quantization would ask",
                 spec_.model.path, weights.size(), Quant4FormatText(format));
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
  const auto began = std::chrono::steady_clock::now();
  const ZeroEngine::Units which = resuming ? ZeroEngine::Units::kFrozen : ZeroEngine::Units::kAll;
  SafetensorsWeightSource files(spec_.model.path, spec_.sharding.load_buffer_mb << 20);
  std::map<std::string, ParameterSpec> base_specs;
  for (const auto& p : ModelParameterSpecs(config_)) base_specs[p.name] = p;
  // What an adapter's initialization sees of the base (DoRA's row norms): under QLoRA the
  // dequantized weight the layer computes with, as PEFT's DoRA dequantizes a 4-bit layer.
  auto base = [&](const std::string& name) {
    at::Tensor value = files.ReadWhole(base_specs.at(name));
    const std::optional<Quant4Format>& quant4 = engine_->layout().units[engine_->UnitOf(name)].quant4;
    if (!quant4 || files.prequantized().count(name)) return value;  // a stored 4-bit weight reads dequantized
    value = value.contiguous();
    at::Tensor dequantized = at::empty_like(value);
    Dequantize4(Quantize4(value.data_ptr<float>(), value.numel(), *quant4), dequantized.data_ptr<float>());
    return dequantized;
  };
  std::map<std::string, at::Tensor> start;
  if (!resuming) start = std::move(init_adapter_);
  std::set<std::string> adapter;
  for (const auto& p : peft_.parameters()) adapter.insert(p.name);

  // What the job computes rather than reads, and what it reads, checked before anything is.
  std::set<std::string> computed;
  std::vector<ParameterSpec> read;
  for (const UnitLayout& unit : engine_->layout().units) {
    if (which == ZeroEngine::Units::kFrozen && unit.trainable) continue;
    for (const ParameterSlot& slot : unit.parameters) {
      const ParameterSpec& p = slot.spec;
      if (start.count(p.name) || adapter.count(p.name) || IsNewHead(p, files.checkpoint())) {
        computed.insert(p.name);
      } else {
        read.push_back(p);
      }
    }
  }
  files.Check(read);
  InitialWeights source(files, computed, [&](const ParameterSpec& parameter) {
    if (const auto it = start.find(parameter.name); it != start.end()) return it->second;
    if (adapter.count(parameter.name)) return peft_.Initial(parameter, spec_.training.seed, base);
    return NewHeadTensor(parameter, spec_.training.seed);
  });
  // Whole units on every rank: the ranks of a host share the reading (MakeNodeGroup).
  std::unique_ptr<Communicator> node;
  if (!PolicyOfStage(engine_->config().stage).shards_parameters) node = MakeNodeGroup(world_);
  engine_->LoadWeights(source, which, node.get());
  RecordLoad(files.bytes_read(), std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
}

bool Trainer::IsNewHead(const ParameterSpec& parameter, const SafetensorsCheckpoint& checkpoint) const {
  // A head the checkpoint lacks, or one over other classes (another task's): new.
  if (!IsHeadParameter(parameter.name)) return false;
  const auto found = checkpoint.Find(parameter.name);
  if (found && found->info->shape == parameter.shape) return false;
  if (found && rank0_) {
    spdlog::info("{}: {} is [{}] in the checkpoint, [{}] for this job's classes: created new", spec_.model.path,
                 parameter.name, fmt::join(found->info->shape, ", "), fmt::join(parameter.shape, ", "));
  }
  return true;
}

void Trainer::RecordLoad(int64_t bytes_read, double seconds) {
  // Every rank's figures to rank 0, for metrics.jsonl's load record.
  const at::TensorOptions options = at::TensorOptions().dtype(at::kLong).device(device_);
  const at::Tensor mine =
      at::tensor(std::vector<int64_t>{bytes_read, static_cast<int64_t>(seconds * 1e9), PeakRssBytes()}, at::kLong)
          .to(device_);
  at::Tensor all = at::empty({3 * world_.size()}, options);
  world_.AllGather(mine, all, CollectiveTag{"load figures"})->Wait();
  if (!rank0_) return;
  const at::Tensor figures = all.cpu().view({world_.size(), 3});
  std::vector<int64_t> bytes, rss;
  std::vector<double> rank_seconds;
  for (int r = 0; r < world_.size(); ++r) {
    bytes.push_back(figures[r][0].item<int64_t>());
    rank_seconds.push_back(static_cast<double>(figures[r][1].item<int64_t>()) * 1e-9);
    rss.push_back(figures[r][2].item<int64_t>());
  }
  const int64_t total = std::accumulate(bytes.begin(), bytes.end(), int64_t{0});
  const double slowest = *std::max_element(rank_seconds.begin(), rank_seconds.end());
  load_record_ = {{"load",
                   {{"model", spec_.model.path},
                    {"seconds", slowest},
                    {"bytes_read", total},
                    {"per_rank", {{"bytes_read", bytes}, {"seconds", rank_seconds}, {"peak_rss_bytes", rss}}}}}};
  spdlog::info("loaded the weights of {} in {:.1f} s: {:.1f} MiB read, {:.1f} MiB by rank 0", spec_.model.path, slowest,
               static_cast<double>(total) / (1 << 20), static_cast<double>(bytes[0]) / (1 << 20));
}

}  // namespace shardtune
