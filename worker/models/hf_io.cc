#include "worker/models/hf_io.h"

#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/run_dir.h"
#include "common/safetensors.h"
#include "sharding/prequantized.h"
#include "sharding/weight_source.h"

namespace shardtune {

namespace fs = std::filesystem;

DType SafetensorsDTypeOf(at::ScalarType type) {
  switch (type) {
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    default:
      return DType::kF32;
  }
}

const char* TorchDTypeName(ComputeDType dtype) {
  switch (dtype) {
    case ComputeDType::kBf16:
      return "bfloat16";
    case ComputeDType::kFp16:
      return "float16";
    default:
      return "float32";
  }
}

namespace {

// Files a Hugging Face model directory carries besides weights and config, copied on export so
// the result is usable on its own.
constexpr const char* kCompanionFiles[] = {
    "tokenizer.json", "tokenizer_config.json",  "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt",     "generation_config.json", "added_tokens.json",       "vocab.txt"};

}  // namespace

at::ScalarType ToScalarType(ComputeDType dtype) {
  switch (dtype) {
    case ComputeDType::kBf16:
      return at::kBFloat16;
    case ComputeDType::kFp16:
      return at::kHalf;
    default:
      return at::kFloat;
  }
}

at::Tensor ReadHfTensor(const SafetensorsCheckpoint& checkpoint, const fs::path& model_dir, const ParameterSpec& spec) {
  if (const auto quantized = FindPrequantizedWeight(checkpoint, model_dir, spec.name)) {
    // Stored 4-bit (a pre-quantized checkpoint): its dequantized values, as bitsandbytes' own.
    CheckPrequantizedShape(*quantized, spec.shape);
    std::vector<float> values = DequantizePrequantized(*quantized);
    return at::from_blob(values.data(), spec.shape, at::kFloat).clone();
  }
  const SafetensorsCheckpoint::Entry entry = CheckedWeightEntry(checkpoint, model_dir, spec);
  return ReadTensorFp32(*entry.file, *entry.info);
}

at::Tensor ReadTensorFp32(const SafetensorsFile& file, const TensorInfo& info) {
  const auto type = WeightScalarType(info.dtype);
  if (!type) {
    Fail(ErrorCode::kUnimplemented, "{}: tensor '{}' is {}; supported weight dtypes are F32, F16, BF16",
         file.path().string(), info.name, DTypeName(info.dtype));
  }
  void* bytes = const_cast<std::byte*>(file.Data(info));
  return at::from_blob(bytes, info.shape, at::TensorOptions().dtype(*type)).to(at::kFloat);
}

void LoadHfWeights(const fs::path& model_dir, FlatParameters& flat, const std::set<std::string>& elsewhere) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(model_dir);
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  for (const auto& slot : flat.slots()) {
    if (elsewhere.count(slot.spec.name)) continue;
    flat.Value(slot).copy_(ReadHfTensor(checkpoint, model_dir, slot.spec));
    used.insert(slot.spec.name);
    if (const auto quantized = FindPrequantizedWeight(checkpoint, model_dir, slot.spec.name))
      used.insert(quantized->tensor_names.begin(), quantized->tensor_names.end());
  }
  std::vector<std::string> unused;
  for (const auto& name : checkpoint.Names()) {
    // Tied checkpoints may still carry lm_head; old ones carry RoPE buffers. Neither is a weight.
    if (!used.count(name) && name != "lm_head.weight" && name.find("rotary_emb.inv_freq") == std::string::npos)
      unused.push_back(name);
  }
  if (!unused.empty()) {
    spdlog::warn("{}: {} tensors in the checkpoint are not used by the model, e.g. '{}'", model_dir.string(),
                 unused.size(), unused.front());
  }
}

void WriteHfModel(const fs::path& out_dir, const fs::path& source_dir, const FlatParameters& flat, ComputeDType dtype,
                  uint64_t max_shard_bytes) {
  const StagedDirectory staged(out_dir, StagedDirectory::Existing::kRefuse);
  staged.Begin();
  WriteHfCompanions(staged.staging(), source_dir, dtype);

  const at::ScalarType type = ToScalarType(dtype);
  std::vector<at::Tensor> converted;  // keeps converted copies alive during the write
  std::vector<TensorBytes> tensors;
  for (const auto& slot : flat.slots()) {
    at::Tensor value = flat.Value(slot).detach().to(type).contiguous();
    tensors.push_back(TensorBytes{slot.spec.name, SafetensorsDTypeOf(type), slot.spec.shape, value.data_ptr(),
                                  static_cast<size_t>(value.nbytes())});
    converted.push_back(std::move(value));
  }
  WriteSafetensorsModel(staged.staging(), tensors, max_shard_bytes);
  staged.Commit();
}

void WriteHfCompanions(const fs::path& dir, const fs::path& source, ComputeDType dtype) {
  WriteHfCompanions(dir, source, dtype, ModelConfig{});
}

void WriteHfCompanions(const fs::path& dir, const fs::path& source, ComputeDType dtype, const ModelConfig& model) {
  // `source`: a model directory, or a config file whose directory holds the other files.
  const bool is_dir = fs::is_directory(source);
  const fs::path source_dir = is_dir ? source : source.parent_path();
  nlohmann::json config = nlohmann::json::parse(ReadFile(is_dir ? source / "config.json" : source));
  config["torch_dtype"] = TorchDTypeName(dtype);
  if (model.task() != ModelTask::kCausalLm) {
    config["architectures"] = {model.Architecture()};
    config["id2label"] = nlohmann::json::object();
    config["label2id"] = nlohmann::json::object();
    const std::vector<std::string>& labels = model.label_names();
    for (size_t i = 0; i < labels.size(); ++i) {
      config["id2label"][std::to_string(i)] = labels[i];
      config["label2id"][labels[i]] = i;
    }
  }
  WriteFileAtomic(dir / "config.json", config.dump(2) + "\n");
  for (const char* name : kCompanionFiles) {
    if (fs::exists(source_dir / name)) WriteFileAtomic(dir / name, ReadFile(source_dir / name));
  }
}

void InitializeWeights(FlatParameters& flat, uint64_t seed, double std) {
  std::mt19937_64 rng(seed);
  // Box-Muller on our own uniform draws: the same numbers on every standard library.
  auto uniform = [&rng] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  at::NoGradGuard no_grad;
  for (const auto& slot : flat.slots()) {
    at::Tensor value = flat.Value(slot);
    const std::string& name = slot.spec.name;
    const bool norm = name.find("norm") != std::string::npos || name.find("LayerNorm") != std::string::npos;
    const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (norm && !bias) {
      value.fill_(1.0);
    } else if (slot.spec.shape.size() == 1) {
      value.zero_();
    } else {
      float* data = value.data_ptr<float>();
      for (int64_t i = 0; i < slot.numel; ++i) {
        data[i] = static_cast<float>(std * std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * M_PI * uniform()));
      }
    }
  }
}

}  // namespace shardtune
