#pragma once
// Reading and writing Hugging Face model directories: config.json + safetensors weights.

#include <ATen/ATen.h>

#include <filesystem>
#include <set>
#include <string>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "sharding/flat_parameters.h"

namespace shardtune {

// One parameter from a checkpoint in `model_dir`, as fp32 shaped like `spec`. Throws Error
// naming the file and tensor when it is missing, has another shape than config.json implies,
// or has an unsupported dtype.
at::Tensor ReadHfTensor(const SafetensorsCheckpoint& checkpoint, const std::filesystem::path& model_dir,
                        const ParameterSpec& spec);

// A tensor of a safetensors file (F32, F16 or BF16) as fp32: for F32 a view of the mapped bytes,
// valid while `file` lives (clone it to keep it longer).
at::Tensor ReadTensorFp32(const SafetensorsFile& file, const TensorInfo& info);

// Copies every parameter of `flat` from the checkpoint in `model_dir` (model.safetensors or a
// sharded index), converting F16/BF16 to fp32. Throws Error naming the file and tensor when one
// is missing, has another shape than config.json implies, or has an unsupported dtype.
// `elsewhere`: parameters another source fills (an adapter's modules_to_save), not read here.
void LoadHfWeights(const std::filesystem::path& model_dir, FlatParameters& flat,
                   const std::set<std::string>& elsewhere = {});

// Writes `model_dir`-style output: config.json (the source config with torch_dtype set) and the
// weights in `dtype`, plus the tokenizer files found in `source_dir`. The directory is built
// under a temporary name and renamed into place, so `out_dir` is either absent or complete.
// Weights over `max_shard_bytes` are split into model-0000K-of-0000N.safetensors files and an index.
void WriteHfModel(const std::filesystem::path& out_dir, const std::filesystem::path& source_dir,
                  const FlatParameters& flat, ComputeDType dtype, uint64_t max_shard_bytes = 5'000'000'000ULL);

// Writes config.json (the source's, with torch_dtype set to `dtype`) and the tokenizer and
// generation files found beside it into `dir`: everything of a model directory but the weights.
// `source_dir` is a model directory, or the path of a config file.
void WriteHfCompanions(const std::filesystem::path& dir, const std::filesystem::path& source_dir, ComputeDType dtype);
// The same, for a model whose head `model` says (a classifier: config.json gets its architecture,
// id2label and label2id).
void WriteHfCompanions(const std::filesystem::path& dir, const std::filesystem::path& source_dir, ComputeDType dtype,
                       const ModelConfig& model);

// Initializes weights as transformers does for a new model: normal(0, 0.02) matrices and
// embeddings, ones for norms, zeros for biases; deterministic for a seed.
void InitializeWeights(FlatParameters& flat, uint64_t seed, double std = 0.02);

at::ScalarType ToScalarType(ComputeDType dtype);
// torch's name of a compute dtype, as config.json's torch_dtype says it: "bfloat16", "float16", "float32".
const char* TorchDTypeName(ComputeDType dtype);
DType SafetensorsDTypeOf(at::ScalarType type);

}  // namespace shardtune
