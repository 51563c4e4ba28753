#pragma once
// Checkpoints whose weights are already 4-bit: the layout transformers saves for a model loaded
// with bitsandbytes' load_in_4bit (Params4bit + QuantState.as_dict(packed=True)). For a weight W:
//   W                                   U8  [(n + 1) / 2, 1]  the codes, two per byte (quant4.h)
//   W.absmax                            U8  [blocks] with double quantization, else F32 [blocks]
//   W.quant_map                         F32 [16]              the code values (NF4 or FP4)
//   W.nested_absmax                     F32 [ceil(blocks / 256)]           (double quantization)
//   W.nested_quant_map                  F32 [256]  the signed dynamic map  (double quantization)
//   W.quant_state.bitsandbytes__<type>  U8  the UTF-8 bytes of a JSON object: quant_type,
//       blocksize, dtype (the original weights' torch dtype), shape, and with double
//       quantization nested_blocksize (256), nested_dtype and nested_offset (the absmax mean)
// and config.json's `quantization_config` (quant_method "bitsandbytes", load_in_4bit,
// bnb_4bit_quant_type, bnb_4bit_use_double_quant, bnb_4bit_quant_storage "uint8").
// These tensors cut at every 256 blocks are a ZeRO unit's records (quant4.h), so a rank reads
// the bytes of its records and nothing else. No LibTorch: the planner reads config.json too.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/safetensors.h"
#include "sharding/quant4.h"

namespace shardtune {

// One weight a checkpoint holds 4-bit, its tensors checked against each other.
struct PrequantizedWeight {
  std::string name;  // the weight's own name, e.g. "model.layers.0.mlp.up_proj.weight"
  Quant4Format format;
  std::vector<int64_t> shape;  // the weight's, from its quant_state
  float offset = 0;            // nested_offset (double quantization)
  SafetensorsCheckpoint::Entry packed, absmax;
  std::optional<SafetensorsCheckpoint::Entry> nested_absmax;
  std::vector<std::string> tensor_names;  // every tensor of the weight: the above, the maps, the quant_state

  int64_t numel() const;
  // Every tensor the weight is stored in (what a load must find whole in its files).
  std::vector<SafetensorsCheckpoint::Entry> entries() const;
};

// Every weight of `checkpoint` (from `dir`) stored 4-bit, by name: each one's companion tensors
// present, of the dtypes and sizes its quant_state implies, its maps bitsandbytes' own (within a
// rounding: bitsandbytes computes the dynamic map in fp32). Throws Error naming the file, the
// tensor and what was expected otherwise. Empty for an ordinary checkpoint. The weights' entries
// point into `checkpoint`'s files: valid while it lives.
std::map<std::string, PrequantizedWeight> FindPrequantizedWeights(const SafetensorsCheckpoint& checkpoint,
                                                                  const std::filesystem::path& dir);

// "nf4 (block size 64, double quantization)": a format as messages name it.
std::string Quant4FormatText(const Quant4Format& format);

// Throws Error naming the file and the tensor when `weight`'s shape (its quant_state's) is not
// `shape` (the one config.json implies).
void CheckPrequantizedShape(const PrequantizedWeight& weight, const std::vector<int64_t>& shape);

// The one weight `name`, when the checkpoint holds it 4-bit (checked as above).
std::optional<PrequantizedWeight> FindPrequantizedWeight(const SafetensorsCheckpoint& checkpoint,
                                                         const std::filesystem::path& dir, const std::string& name);

// Reads `size` bytes at `offset` of a tensor's bytes into `out`.
using TensorByteReader =
    std::function<void(const SafetensorsCheckpoint::Entry& entry, uint64_t offset, void* out, uint64_t size)>;

// Records [first, first + count) of a weight (quant4.h), as ZeroEngine holds them, from its
// tensors: only their bytes are read.
void ReadPrequantizedRecords(const PrequantizedWeight& weight, int64_t first, int64_t count,
                             const TensorByteReader& read, uint8_t* records);

// A whole 4-bit weight's values (fp32, numel of them) from its tensors as `checkpoint` maps them.
std::vector<float> DequantizePrequantized(const PrequantizedWeight& weight);

// The tensors transformers saves for `tensor`, the quantized value of weight `name` of `shape`
// whose original dtype was `torch_dtype` ("bfloat16"), their bytes owned by the result.
struct PrequantizedTensors {
  std::vector<TensorBytes> tensors;
  std::vector<std::vector<uint8_t>> storage;
};
PrequantizedTensors PrequantizedTensorsOf(const std::string& name, const std::vector<int64_t>& shape,
                                          const std::string& torch_dtype, const Quant4Tensor& tensor);

// config.json's quantization_config for `format`, as transformers writes it for a bitsandbytes
// 4-bit model computing in `compute_dtype` (a torch dtype name).
std::string QuantizationConfigJson(const Quant4Format& format, const std::string& compute_dtype);

// The 4-bit format config.json's quantization_config in `model_dir` declares (block size 64, as
// transformers always quantizes); nullopt when there is none. Throws Error naming the file for
// a quantization shardtune cannot read (8-bit, GPTQ/AWQ..., a quant_storage other than uint8).
std::optional<Quant4Format> DeclaredQuantization(const std::filesystem::path& model_dir);

// The quantization a job's base has: model.quantization, or else the one its checkpoint declares
// it was saved in (config.json's quantization_config; the block size its tensors'), as
// transformers loads a pre-quantized model. (A checkpoint stored 4-bit without that declaration
// is found by the trainer, which reads its tensors anyway.)
QuantizationSpec QuantizationOfJob(const JobSpec& spec);
QuantizationSpec QuantizationSpecOf(const Quant4Format& format);

}  // namespace shardtune
