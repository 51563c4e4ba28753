#include "sharding/model_layout.h"

#include "sharding/bert_layout.h"
#include "sharding/llama_layout.h"

namespace shardtune {

std::vector<ParameterSpec> ModelParameterSpecs(const ModelConfig& config) {
  return config.family == ModelFamily::kBert ? BertParameterSpecs(config.bert) : LlamaParameterSpecs(config.llama);
}

std::vector<UnitSpec> ModelUnits(const ModelConfig& config) {
  return config.family == ModelFamily::kBert ? BertUnits(config.bert) : LlamaUnits(config.llama);
}

}  // namespace shardtune
