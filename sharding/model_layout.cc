#include "sharding/model_layout.h"

#include <algorithm>

#include "sharding/bert_layout.h"
#include "sharding/llama_layout.h"

namespace shardtune {

std::vector<ParameterSpec> ModelParameterSpecs(const ModelConfig& config) {
  return config.family == ModelFamily::kBert ? BertParameterSpecs(config.bert) : LlamaParameterSpecs(config.llama);
}

std::vector<UnitSpec> ModelUnits(const ModelConfig& config) {
  return config.family == ModelFamily::kBert ? BertUnits(config.bert) : LlamaUnits(config.llama);
}

std::vector<UnitSpec> QuantizedBaseUnits(std::vector<UnitSpec> units, const Quant4Format& format) {
  auto quantized = [](const ParameterSpec& p) {
    const std::string suffix = ".weight";
    return p.shape.size() == 2 && p.name.size() > suffix.size() &&
           p.name.compare(p.name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::vector<UnitSpec> result;
  for (UnitSpec& unit : units) {
    const bool layer = !unit.trainable && unit.name.rfind("layer ", 0) == 0;
    UnitSpec weights{unit.name + " 4-bit", {}, false, format};
    if (layer) {
      auto moved = std::stable_partition(unit.parameters.begin(), unit.parameters.end(),
                                         [&](const ParameterSpec& p) { return !quantized(p); });
      weights.parameters.assign(moved, unit.parameters.end());
      unit.parameters.erase(moved, unit.parameters.end());
    }
    if (!unit.parameters.empty()) result.push_back(std::move(unit));
    if (!weights.parameters.empty()) result.push_back(std::move(weights));
  }
  return result;
}

std::set<std::string> QuantizedWeightNames(const std::vector<UnitSpec>& units) {
  std::set<std::string> names;
  for (const UnitSpec& unit : QuantizedBaseUnits(units, Quant4Format{})) {
    if (!unit.quant4) continue;
    for (const ParameterSpec& p : unit.parameters) names.insert(p.name);
  }
  return names;
}

std::optional<Quant4Format> Quant4FormatOf(const QuantizationSpec& spec) {
  if (spec.type == QuantizationType::kNone) return std::nullopt;
  return Quant4Format{spec.type == QuantizationType::kNf4 ? Quant4Type::kNf4 : Quant4Type::kFp4, spec.block_size,
                      spec.double_quant};
}

}  // namespace shardtune
