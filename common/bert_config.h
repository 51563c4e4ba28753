#pragma once
// A BERT encoder's shape, read from Hugging Face's config.json (model_type "bert"). Fields follow
// transformers' names and defaults. The model is worker/models/bert.h; its parameters in
// transformers' names are sharding/bert_layout.h.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"

namespace shardtune {

struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t pad_token_id = 0;
  std::string hidden_act = "gelu";
  std::optional<double> classifier_dropout;  // before the classifier; unset: hidden_dropout_prob
  // BertForSequenceClassification (a pooler, then `classifier`) or BertForTokenClassification
  // (`classifier` at every token, no pooler), from architectures and id2label; else BertModel.
  ModelTask task = ModelTask::kCausalLm;
  std::vector<std::string> label_names;

  static BertConfig Parse(const std::string& json_text, const std::string& where);
  int64_t num_labels() const { return static_cast<int64_t>(label_names.size()); }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  double ClassifierDropout() const { return classifier_dropout.value_or(hidden_dropout_prob); }
  int64_t num_parameters() const;  // with the pooler and classifier its task has
};

// Whether config.json text is a BERT model's (model_type "bert").
bool IsBertConfig(const std::string& json_text);

}  // namespace shardtune
