#include "sharding/bert_layout.h"

#include <fmt/format.h>

namespace shardtune {

std::vector<ParameterSpec> BertParameterSpecs(const BertConfig& c) {
  const int64_t h = c.hidden_size, ff = c.intermediate_size;
  std::vector<ParameterSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    const bool decay = shape.size() >= 2;  // no weight decay on LayerNorms and biases
    specs.push_back(ParameterSpec{std::move(name), std::move(shape), decay});
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    add(name + ".weight", {out, in});
    add(name + ".bias", {out});
  };
  auto layer_norm = [&](const std::string& name) {
    add(name + ".weight", {h});
    add(name + ".bias", {h});
  };
  add("bert.embeddings.word_embeddings.weight", {c.vocab_size, h});
  add("bert.embeddings.position_embeddings.weight", {c.max_position_embeddings, h});
  add("bert.embeddings.token_type_embeddings.weight", {c.type_vocab_size, h});
  layer_norm("bert.embeddings.LayerNorm");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("bert.encoder.layer.{}.", i);
    linear(p + "attention.self.query", h, h);
    linear(p + "attention.self.key", h, h);
    linear(p + "attention.self.value", h, h);
    linear(p + "attention.output.dense", h, h);
    layer_norm(p + "attention.output.LayerNorm");
    linear(p + "intermediate.dense", ff, h);
    linear(p + "output.dense", h, ff);
    layer_norm(p + "output.LayerNorm");
  }
  // BertForTokenClassification has no pooler (add_pooling_layer=False).
  if (c.task != ModelTask::kTokenClassification) linear("bert.pooler.dense", h, h);
  if (c.task != ModelTask::kCausalLm) linear("classifier", c.num_labels(), h);
  return specs;
}

std::vector<UnitSpec> BertUnits(const BertConfig& c) {
  std::vector<UnitSpec> units;
  units.push_back(UnitSpec{"embed", {}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) units.push_back(UnitSpec{fmt::format("layer {}", i), {}});
  units.push_back(UnitSpec{"head", {}});
  const std::string layers = "bert.encoder.layer.";
  for (const auto& spec : BertParameterSpecs(c)) {
    size_t unit = units.size() - 1;  // the pooler and the classifier
    if (spec.name.rfind("bert.embeddings.", 0) == 0) {
      unit = 0;
    } else if (spec.name.rfind(layers, 0) == 0) {
      unit = 1 + std::stoul(spec.name.substr(layers.size()));
    }
    units[unit].parameters.push_back(spec);
  }
  return units;
}

}  // namespace shardtune
