#pragma once
// Any supported model's parameters and ZeRO units (llama_layout.h or bert_layout.h, as its
// family says). Arithmetic only, no LibTorch.

#include <set>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "sharding/parameter_layout.h"

namespace shardtune {

std::vector<ParameterSpec> ModelParameterSpecs(const ModelConfig& config);
std::vector<UnitSpec> ModelUnits(const ModelConfig& config);

// QLoRA's split of a frozen base (`units` as a PEFT method leaves them): each frozen decoder
// layer's linear weights (its 2-D ".weight" parameters: not norms or biases; the embedding and
// the head are not layers) move to a unit of their own, "layer N 4-bit", right after the layer's,
// held as 4-bit records of `format`. The layer's computation uses both units.
std::vector<UnitSpec> QuantizedBaseUnits(std::vector<UnitSpec> units, const Quant4Format& format);

// The parameters QuantizedBaseUnits holds 4-bit among `units`.
std::set<std::string> QuantizedWeightNames(const std::vector<UnitSpec>& units);

// The 4-bit format model.quantization asks for; nullopt for none.
std::optional<Quant4Format> Quant4FormatOf(const QuantizationSpec& spec);

}  // namespace shardtune
