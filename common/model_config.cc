#include "common/model_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"

namespace shardtune {

ModelConfig ModelConfig::Parse(const std::string& text, const std::string& where) {
  const auto root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) Fail(ErrorCode::kInvalidArgument, "{}: not valid JSON", where);
  if (!root.is_object()) Fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object", where);
  const auto type = root.find("model_type");
  if (type == root.end() || !type->is_string()) {
    Fail(ErrorCode::kInvalidArgument, "{}: 'model_type' must be a string (llama, mistral, qwen2 or bert)", where);
  }
  ModelConfig config;
  const std::string name = type->get<std::string>();
  if (name == "bert") {
    config.family = ModelFamily::kBert;
    config.bert = BertConfig::Parse(text, where);
  } else if (name == "llama" || name == "mistral" || name == "qwen2") {
    config.llama = LlamaConfig::Parse(text, where);
  } else {
    Fail(ErrorCode::kUnimplemented, "{}: model_type '{}' is not supported (supported: llama, mistral, qwen2, bert)",
         where, name);
  }
  return config;
}

ModelConfig ModelConfig::Load(const std::filesystem::path& model_dir) {
  const std::filesystem::path file = model_dir / "config.json";
  if (!std::filesystem::exists(file)) {
    Fail(ErrorCode::kNotFound, "{}: no config.json (expected a Hugging Face model directory)", model_dir.string());
  }
  return Parse(ReadFile(file), file.string());
}

const std::string& ModelConfig::model_type() const {
  static const std::string kBert = "bert";
  return family == ModelFamily::kBert ? kBert : llama.model_type;
}

ModelTask ModelConfig::task() const { return family == ModelFamily::kBert ? bert.task : llama.task; }

const std::vector<std::string>& ModelConfig::label_names() const {
  return family == ModelFamily::kBert ? bert.label_names : llama.label_names;
}

void ModelConfig::SetHead(ModelTask task, std::vector<std::string> labels, std::optional<double> classifier_dropout) {
  if (family == ModelFamily::kBert) {
    bert.task = task;
    bert.label_names = std::move(labels);
    if (classifier_dropout) bert.classifier_dropout = *classifier_dropout;
  } else {
    llama.task = task;
    llama.label_names = std::move(labels);
    if (classifier_dropout) llama.classifier_dropout = *classifier_dropout;
  }
}

void ModelConfig::SetAttentionDropout(double p) {
  if (family == ModelFamily::kBert) {
    bert.attention_probs_dropout_prob = p;
  } else {
    llama.attention_dropout = p;
  }
}

int64_t ModelConfig::vocab_size() const { return family == ModelFamily::kBert ? bert.vocab_size : llama.vocab_size; }
int64_t ModelConfig::hidden_size() const { return family == ModelFamily::kBert ? bert.hidden_size : llama.hidden_size; }
int64_t ModelConfig::num_layers() const {
  return family == ModelFamily::kBert ? bert.num_hidden_layers : llama.num_hidden_layers;
}
int64_t ModelConfig::num_attention_heads() const {
  return family == ModelFamily::kBert ? bert.num_attention_heads : llama.num_attention_heads;
}
int64_t ModelConfig::num_key_value_heads() const {
  return family == ModelFamily::kBert ? bert.num_attention_heads : llama.num_key_value_heads;
}
int64_t ModelConfig::head_dim() const { return family == ModelFamily::kBert ? bert.head_dim() : llama.head_dim; }
int64_t ModelConfig::max_positions() const {
  return family == ModelFamily::kBert ? bert.max_position_embeddings : llama.max_position_embeddings;
}
int64_t ModelConfig::SequenceLimit(int64_t requested, int64_t virtual_tokens) const {
  if (family != ModelFamily::kBert) return requested;
  return std::min(requested, bert.max_position_embeddings - virtual_tokens);
}
int64_t ModelConfig::pad_token_id() const {
  return family == ModelFamily::kBert ? bert.pad_token_id : llama.pad_token_id;
}
std::vector<int64_t> ModelConfig::eos_token_ids() const {
  return family == ModelFamily::kBert ? std::vector<int64_t>{} : llama.eos_token_ids;
}
int64_t ModelConfig::num_parameters() const {
  return family == ModelFamily::kBert ? bert.num_parameters() : llama.num_parameters();
}

std::string ModelConfig::LayerPrefix(int64_t layer) const {
  return family == ModelFamily::kBert ? fmt::format("bert.encoder.layer.{}.", layer)
                                      : fmt::format("model.layers.{}.", layer);
}

std::vector<LinearModule> ModelConfig::LayerLinears() const {
  if (family == ModelFamily::kBert) {
    const int64_t h = bert.hidden_size, ff = bert.intermediate_size;
    return {{"attention.self.query", h, h},   {"attention.self.key", h, h},  {"attention.self.value", h, h},
            {"attention.output.dense", h, h}, {"intermediate.dense", h, ff}, {"output.dense", ff, h}};
  }
  const LlamaConfig& c = llama;
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  return {{"self_attn.q_proj", h, q},
          {"self_attn.k_proj", h, kv},
          {"self_attn.v_proj", h, kv},
          {"self_attn.o_proj", q, h},
          {"mlp.gate_proj", h, c.intermediate_size},
          {"mlp.up_proj", h, c.intermediate_size},
          {"mlp.down_proj", c.intermediate_size, h}};
}

std::string ModelConfig::WordEmbeddings() const {
  return family == ModelFamily::kBert ? "bert.embeddings.word_embeddings.weight" : "model.embed_tokens.weight";
}

std::string ModelConfig::ClassifierModule() const { return family == ModelFamily::kBert ? "classifier" : "score"; }

std::vector<std::string> ModelConfig::DefaultLoraTargets() const {
  if (family == ModelFamily::kBert) return {"query", "value"};
  return {"q_proj", "v_proj"};
}

std::vector<std::string> ModelConfig::DefaultIa3Targets() const {
  if (family == ModelFamily::kBert) return {"key", "value", "output.dense"};
  return {"k_proj", "v_proj", "down_proj"};
}

std::vector<std::string> ModelConfig::DefaultIa3Feedforward() const {
  if (family == ModelFamily::kBert) return {"output.dense"};
  return {"down_proj"};
}

std::string ModelConfig::Architecture() const {
  std::string name = family == ModelFamily::kBert    ? "Bert"
                     : llama.model_type == "qwen2"   ? "Qwen2"
                     : llama.model_type == "mistral" ? "Mistral"
                                                     : "Llama";
  switch (task()) {
    case ModelTask::kSequenceClassification:
      return name + "ForSequenceClassification";
    case ModelTask::kTokenClassification:
      return name + "ForTokenClassification";
    case ModelTask::kCausalLm:
      break;
  }
  return name + (family == ModelFamily::kBert ? "Model" : "ForCausalLM");
}

bool NamesModuleOf(const std::string& module, const std::string& parameter) {
  // Each ancestor module path: the parameter's name cut at each dot.
  for (size_t end = parameter.find('.'); end != std::string::npos; end = parameter.find('.', end + 1)) {
    if (end < module.size() || parameter.compare(end - module.size(), module.size(), module) != 0) continue;
    if (end == module.size() || parameter[end - module.size() - 1] == '.') return true;
  }
  return false;
}

}  // namespace shardtune
