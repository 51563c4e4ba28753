#pragma once
// A model loaded from a Hugging Face directory for inference (generation, `shardtune evaluate`,
// tests), owning its weights: a Llama-family model or a BERT, as its config.json says. With a
// PEFT adapter directory, the adapter is applied unmerged (as PEFT's PeftModel runs it).

#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "sharding/flat_parameters.h"
#include "sharding/quant4.h"
#include "worker/data/token_dataset.h"
#include "worker/models/bert.h"
#include "worker/models/llama.h"

namespace shardtune {

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<FlatParameters> weights;
  std::unique_ptr<FlatParameters> adapter;
  std::unique_ptr<LlamaModel> model;  // the Llama family
  std::unique_ptr<BertModel> bert;    // BERT
  int64_t virtual_tokens = 0;         // an adapter's prompt or prefix tokens (they take positions)

  // The task's logits of a collated batch: causal LM (B, S, vocab), sequence classification
  // (B, labels) (pooled as the family pools), token classification (B, S, labels).
  at::Tensor TaskLogits(const Batch& batch) const;
};

// `head`: the task and classes of a classifier adapter on a base model without that head (its
// run's job.yaml says them: a PEFT adapter holds its head's weights, not its classes).
struct ClassifierHead {
  ModelTask task = ModelTask::kCausalLm;
  std::vector<std::string> labels;
};
// `quantization`: the base computes with its linear weights rounded through this 4-bit format, as
// a QLoRA job trained its adapter (a checkpoint stored 4-bit computes with its values anyway).
LoadedModel LoadModelForInference(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir = {},
                                  const ClassifierHead& head = {},
                                  const std::optional<Quant4Format>& quantization = std::nullopt);

}  // namespace shardtune
