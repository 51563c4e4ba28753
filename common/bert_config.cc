#include "common/bert_config.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "common/error.h"
#include "common/hf_config.h"

namespace shardtune {

bool IsBertConfig(const std::string& text) {
  const auto root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return root.is_object() && root.value("model_type", "") == "bert";
}

BertConfig BertConfig::Parse(const std::string& text, const std::string& where) {
  const auto root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) Fail(ErrorCode::kInvalidArgument, "{}: not a JSON object", where);
  if (root.value("model_type", "") != "bert") Fail(ErrorCode::kInvalidArgument, "{}: model_type must be 'bert'", where);
  BertConfig c;
  // The sizes: each read, then (once every field has been read) required within their limits.
  const ConfigSize sizes[] = {{"vocab_size", &c.vocab_size, config_limits::kVocabSize},
                              {"hidden_size", &c.hidden_size, config_limits::kHiddenSize},
                              {"num_hidden_layers", &c.num_hidden_layers, config_limits::kLayers},
                              {"num_attention_heads", &c.num_attention_heads, config_limits::kHeads},
                              {"intermediate_size", &c.intermediate_size, config_limits::kIntermediateSize},
                              {"max_position_embeddings", &c.max_position_embeddings, config_limits::kPositions},
                              {"type_vocab_size", &c.type_vocab_size, config_limits::kTypeVocabSize}};
  for (const ConfigSize& size : sizes) ReadConfigField(root, size.key, size.value, where);
  ReadConfigField(root, "layer_norm_eps", &c.layer_norm_eps, where);
  ReadConfigField(root, "hidden_dropout_prob", &c.hidden_dropout_prob, where);
  ReadConfigField(root, "attention_probs_dropout_prob", &c.attention_probs_dropout_prob, where);
  ReadConfigField(root, "pad_token_id", &c.pad_token_id, where);
  ReadConfigField(root, "hidden_act", &c.hidden_act, where);
  if (root.contains("classifier_dropout") && !root["classifier_dropout"].is_null()) {
    double p = 0;
    ReadConfigField(root, "classifier_dropout", &p, where);
    c.classifier_dropout = p;
  }
  for (const ConfigSize& size : sizes) RequireSizeField(*size.value, size.key, size.max, where);
  if (c.hidden_size % c.num_attention_heads != 0) {
    Fail(ErrorCode::kInvalidArgument, "{}: hidden_size {} is not a multiple of num_attention_heads {}", where,
         c.hidden_size, c.num_attention_heads);
  }
  if (c.hidden_act != "gelu")
    Fail(ErrorCode::kUnimplemented, "{}: hidden_act '{}' is not supported (supported: gelu)", where, c.hidden_act);
  RequireTokenIdField(c.pad_token_id, "pad_token_id", c.vocab_size, /*allow_none=*/false, where);
  ReadHead(root, where, &c.task, &c.label_names);
  RequireParameterCount(c.num_parameters(), where);
  return c;
}

int64_t BertConfig::num_parameters() const {
  const int64_t h = hidden_size, ff = intermediate_size;
  const int64_t embeddings = (vocab_size + max_position_embeddings + type_vocab_size) * h + 2 * h;
  const int64_t layer = 4 * (h * h + h) + 2 * h + (ff * h + ff) + (h * ff + h) + 2 * h;
  int64_t n = embeddings + num_hidden_layers * layer;
  if (task != ModelTask::kTokenClassification) n += h * h + h;  // the pooler
  if (task != ModelTask::kCausalLm) n += num_labels() * h + num_labels();
  return n;
}

}  // namespace shardtune
