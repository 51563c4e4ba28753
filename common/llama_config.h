#pragma once
// A Llama-family decoder's shape and numerics, read from Hugging Face's config.json for the
// model types "llama", "mistral" and "qwen2". Fields follow transformers' names and defaults.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"

namespace shardtune {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string model_type = "llama";  // llama | mistral | qwen2
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // < num_attention_heads: grouped-query attention
  int64_t head_dim = 128;            // config's head_dim, else hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // qwen2: always; llama/mistral: config.attention_bias
  bool o_bias = false;    // llama/mistral: config.attention_bias; qwen2: never
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // mistral (and qwen2 with use_sliding_window)
  int64_t max_window_layers = 0;          // qwen2: layers below this attend fully
  std::optional<int64_t> padding_idx;     // config.pad_token_id when given: its embedding gets no gradient
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids;
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";
  // The head: the language-model head, or a classifier `score` over num_labels classes, as
  // transformers' LlamaForSequenceClassification (no bias; read at each sequence's last token)
  // and LlamaForTokenClassification (with bias, after dropout) have. From config.json's
  // architectures and id2label; a training job sets it from model.task and its data's labels.
  ModelTask task = ModelTask::kCausalLm;
  std::vector<std::string> label_names;  // id2label, in id order
  double classifier_dropout = 0.1;       // token classification
  double attention_dropout = 0.0;        // on the attention probabilities, in training
  int64_t num_labels() const { return static_cast<int64_t>(label_names.size()); }

  // Parses config.json text; `where` names the file in errors. Throws Error naming the field.
  static LlamaConfig Parse(const std::string& json_text, const std::string& where);
  static LlamaConfig Load(const std::filesystem::path& model_dir);

  int64_t num_parameters() const;
  // Whether layer `i` attends within the sliding window (as transformers' layer_types say).
  bool UsesSlidingWindow(int64_t i) const { return sliding_window.has_value() && i >= max_window_layers; }
};

}  // namespace shardtune
