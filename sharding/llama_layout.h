#pragma once
// A Llama-family model's parameters as ZeRO lays them out: names, shapes and units. Plain
// arithmetic on the config (no LibTorch), shared by the model (worker/models/llama.h) and the
// memory planner (sharding/planner.h).

#include <string>
#include <vector>

#include "common/llama_config.h"
#include "sharding/parameter_layout.h"

namespace shardtune {

// Every trainable tensor in Hugging Face's names and order. A tied lm_head is not listed: it is
// model.embed_tokens.weight. Classification models (config.task) have score.weight (and, for
// token classification, score.bias) instead of an lm_head.
std::vector<ParameterSpec> LlamaParameterSpecs(const LlamaConfig& config);

// The lm_head's key: "lm_head.weight", or the embedding's when tied.
std::string LmHeadName(const LlamaConfig& config);

// The units ZeRO gathers and reduces as one piece: "embed" (the embedding, and the tied head),
// "layer i" for each decoder layer, and "head" (the final norm and an untied lm_head, or score).
std::vector<UnitSpec> LlamaUnits(const LlamaConfig& config);

}  // namespace shardtune
