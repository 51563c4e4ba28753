#pragma once
// Any supported model's parameters and ZeRO units (llama_layout.h or bert_layout.h, as its
// family says). Arithmetic only, no LibTorch.

#include <vector>

#include "common/model_config.h"
#include "sharding/parameter_layout.h"

namespace shardtune {

std::vector<ParameterSpec> ModelParameterSpecs(const ModelConfig& config);
std::vector<UnitSpec> ModelUnits(const ModelConfig& config);

}  // namespace shardtune
