#pragma once
// A BERT model's parameters in transformers' names and order, and its ZeRO units: "embed" (the
// word, position and token-type embeddings and their LayerNorm), "layer i", and "head" (the
// pooler of BertForSequenceClassification and BertModel, and a classifier's `classifier`).
// Encoder weights carry the "bert." prefix, as the BertFor* classes save them.

#include <vector>

#include "common/bert_config.h"
#include "sharding/parameter_layout.h"

namespace shardtune {

std::vector<ParameterSpec> BertParameterSpecs(const BertConfig& config);
std::vector<UnitSpec> BertUnits(const BertConfig& config);

}  // namespace shardtune
