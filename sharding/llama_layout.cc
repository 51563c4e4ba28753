#include "sharding/llama_layout.h"

#include <fmt/format.h>

namespace shardtune {

std::vector<ParameterSpec> LlamaParameterSpecs(const LlamaConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  const int64_t ff = c.intermediate_size;
  std::vector<ParameterSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    const bool decay = shape.size() >= 2;  // no weight decay on norms and biases
    specs.push_back(ParameterSpec{std::move(name), std::move(shape), decay});
  };
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    // A projection is its weight [out, in] and, where the config says so, its bias [out].
    auto add_linear = [&](const char* module, int64_t out, int64_t in, bool has_bias) {
      add(p + module + ".weight", {out, in});
      if (has_bias) add(p + module + ".bias", {out});
    };
    add(p + "input_layernorm.weight", {h});
    add_linear("self_attn.q_proj", q, h, c.qkv_bias);
    add_linear("self_attn.k_proj", kv, h, c.qkv_bias);
    add_linear("self_attn.v_proj", kv, h, c.qkv_bias);
    add_linear("self_attn.o_proj", h, q, c.o_bias);
    add(p + "post_attention_layernorm.weight", {h});
    add_linear("mlp.gate_proj", ff, h, c.mlp_bias);
    add_linear("mlp.up_proj", ff, h, c.mlp_bias);
    add_linear("mlp.down_proj", h, ff, c.mlp_bias);
  }
  add("model.norm.weight", {h});
  switch (c.task) {
    case ModelTask::kCausalLm:
      if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, h});
      break;
    case ModelTask::kSequenceClassification:
      add("score.weight", {c.num_labels(), h});
      break;
    case ModelTask::kTokenClassification:
      add("score.weight", {c.num_labels(), h});
      add("score.bias", {c.num_labels()});
      break;
  }
  return specs;
}

std::string LmHeadName(const LlamaConfig& c) {
  return c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

std::vector<UnitSpec> LlamaUnits(const LlamaConfig& c) {
  const std::vector<ParameterSpec> all = LlamaParameterSpecs(c);
  std::vector<UnitSpec> units;
  units.push_back(UnitSpec{"embed", {}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) units.push_back(UnitSpec{fmt::format("layer {}", i), {}});
  units.push_back(UnitSpec{"head", {}});
  for (const auto& spec : all) {
    size_t unit = units.size() - 1;  // model.norm, and lm_head or score
    if (spec.name == "model.embed_tokens.weight") {
      unit = 0;
    } else if (spec.name.rfind("model.layers.", 0) == 0) {
      unit = 1 + std::stoul(spec.name.substr(13));
    }
    units[unit].parameters.push_back(spec);
  }
  return units;
}

}  // namespace shardtune
