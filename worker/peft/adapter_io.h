#pragma once
// Hugging Face PEFT adapter directories: adapter_config.json and adapter_model.safetensors,
// with PEFT's key names ("base_model.model.<module>.lora_A.weight", "prompt_embeddings") and
// config fields (peft_type, r, lora_alpha, target_modules, ...), so that PEFT's
// PeftModel.from_pretrained loads what shardtune writes, and shardtune loads what PEFT writes
// for the methods both know. Bottleneck adapters have no PEFT type: they are written as
// peft_type "BOTTLENECK" in the same layout (docs/peft.md).

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "common/job_spec.h"
#include "sharding/quant4.h"
#include "worker/peft/peft.h"

namespace shardtune {

// Writes the adapter into `dir` (which exists), and a README.md model card as PEFT's
// save_pretrained does (front matter `base_model`, `library_name: peft`; for a 4-bit base,
// `quantization` set, the bitsandbytes config it was trained on, in PEFT's words). `tensors` maps
// every one of the method's parameters and saved parameters (shardtune's names) to its fp32 value;
// a missing or empty one is an error, and nothing is written then.
void WritePeftAdapter(const std::filesystem::path& dir, const PeftMethod& method, const std::string& base_model,
                      const std::map<std::string, at::Tensor>& tensors, ComputeDType dtype,
                      const std::optional<Quant4Format>& quantization = std::nullopt);

struct LoadedAdapter {
  MethodSpec method;                          // as adapter_config.json describes it
  std::map<std::string, at::Tensor> tensors;  // shardtune's names, fp32
};
// Reads and checks an adapter for a model of `config`: every tensor the config implies is
// present with its shape, and no other. Throws Error naming the file and key.
LoadedAdapter ReadPeftAdapter(const std::filesystem::path& dir, const ModelConfig& config);

}  // namespace shardtune
