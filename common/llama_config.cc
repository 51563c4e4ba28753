#include "common/llama_config.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/hf_config.h"

namespace shardtune {

using nlohmann::json;

namespace {

RopeScaling ParseRopeScaling(const json& node, const std::string& where) {
  RopeScaling scaling;
  if (node.is_null()) return scaling;
  if (!node.is_object()) Fail(ErrorCode::kInvalidArgument, "{}: 'rope_scaling' must be an object or null", where);
  std::string type;
  if (node.contains("rope_type"))
    ReadConfigField(node, "rope_type", &type, where + ": rope_scaling");
  else
    ReadConfigField(node, "type", &type, where + ": rope_scaling");
  if (type == "default" || type.empty()) return scaling;
  ReadConfigField(node, "factor", &scaling.factor, where + ": rope_scaling");
  if (scaling.factor <= 0)
    Fail(ErrorCode::kInvalidArgument, "{}: rope_scaling.factor must be positive, got {}", where, scaling.factor);
  if (type == "linear") {
    scaling.type = RopeScalingType::kLinear;
  } else if (type == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
    ReadConfigField(node, "low_freq_factor", &scaling.low_freq_factor, where + ": rope_scaling");
    ReadConfigField(node, "high_freq_factor", &scaling.high_freq_factor, where + ": rope_scaling");
    ReadConfigField(node, "original_max_position_embeddings", &scaling.original_max_position_embeddings,
                    where + ": rope_scaling");
    RequireSizeField(scaling.original_max_position_embeddings, "original_max_position_embeddings",
                     config_limits::kPositions, where + ": rope_scaling");
    if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
      Fail(ErrorCode::kInvalidArgument, "{}: rope_scaling.high_freq_factor {} must exceed low_freq_factor {}", where,
           scaling.high_freq_factor, scaling.low_freq_factor);
    }
  } else {
    Fail(ErrorCode::kUnimplemented, "{}: rope_scaling type '{}' is not supported (supported: linear, llama3)", where,
         type);
  }
  return scaling;
}

// The token ids config.json states name rows of the vocabulary (a padding_idx or an appended
// end token past it would fail inside LibTorch's embedding).
void CheckTokenIds(const json& root, const LlamaConfig& c, const std::string& where) {
  if (c.padding_idx) RequireTokenIdField(*c.padding_idx, "pad_token_id", c.vocab_size, /*allow_none=*/true, where);
  if (root.contains("bos_token_id") && !root["bos_token_id"].is_null())
    RequireTokenIdField(c.bos_token_id, "bos_token_id", c.vocab_size, /*allow_none=*/false, where);
  for (const int64_t eos : c.eos_token_ids)
    RequireTokenIdField(eos, "eos_token_id", c.vocab_size, /*allow_none=*/false, where);
}

}  // namespace

LlamaConfig LlamaConfig::Parse(const std::string& text, const std::string& where) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    Fail(ErrorCode::kInvalidArgument, "{}: not valid JSON: {}", where, e.what());
  }
  if (!root.is_object()) Fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object", where);

  LlamaConfig c;
  ReadConfigField(root, "model_type", &c.model_type, where);
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    Fail(ErrorCode::kUnimplemented, "{}: model_type '{}' is not supported (supported: llama, mistral, qwen2)", where,
         c.model_type);
  }
  const bool qwen2 = c.model_type == "qwen2";
  // The sizes: each read, then (once every field has been read) required within their limits.
  const ConfigSize sizes[] = {{"vocab_size", &c.vocab_size, config_limits::kVocabSize},
                              {"hidden_size", &c.hidden_size, config_limits::kHiddenSize},
                              {"intermediate_size", &c.intermediate_size, config_limits::kIntermediateSize},
                              {"num_hidden_layers", &c.num_hidden_layers, config_limits::kLayers},
                              {"num_attention_heads", &c.num_attention_heads, config_limits::kHeads},
                              {"num_key_value_heads", &c.num_key_value_heads, config_limits::kHeads},
                              {"max_position_embeddings", &c.max_position_embeddings, config_limits::kPositions}};
  for (const ConfigSize& size : sizes) ReadConfigField(root, size.key, size.value, where);
  // Without num_key_value_heads, every attention head has its own key/value head (no GQA).
  if (!root.contains("num_key_value_heads") || root["num_key_value_heads"].is_null())
    c.num_key_value_heads = c.num_attention_heads;
  ReadConfigField(root, "rms_norm_eps", &c.rms_norm_eps, where);
  ReadConfigField(root, "rope_theta", &c.rope_theta, where);
  ReadConfigField(root, "tie_word_embeddings", &c.tie_word_embeddings, where);
  // Qwen2 always has q/k/v biases and none on o_proj; Llama's attention_bias covers all four.
  if (qwen2) {
    c.qkv_bias = true;
  } else {
    ReadConfigField(root, "attention_bias", &c.qkv_bias, where);
    c.o_bias = c.qkv_bias;
  }
  ReadConfigField(root, "mlp_bias", &c.mlp_bias, where);
  ReadConfigField(root, "hidden_act", &c.hidden_act, where);
  ReadConfigField(root, "torch_dtype", &c.torch_dtype, where);
  ReadConfigField(root, "pad_token_id", &c.pad_token_id, where);
  if (root.contains("pad_token_id") && !root["pad_token_id"].is_null()) c.padding_idx = c.pad_token_id;
  ReadConfigField(root, "bos_token_id", &c.bos_token_id, where);
  if (const auto eos = root.find("eos_token_id"); eos != root.end() && !eos->is_null()) {
    if (eos->is_number_integer()) {
      c.eos_token_ids = {eos->get<int64_t>()};
    } else if (eos->is_array() &&
               std::all_of(eos->begin(), eos->end(), [](const json& v) { return v.is_number_integer(); })) {
      c.eos_token_ids = eos->get<std::vector<int64_t>>();
    } else {
      Fail(ErrorCode::kInvalidArgument, "{}: 'eos_token_id' must be an integer or a list of integers, got {}", where,
           eos->dump());
    }
  }
  if (const auto rope = root.find("rope_scaling"); rope != root.end()) c.rope_scaling = ParseRopeScaling(*rope, where);

  bool use_sliding_window = c.model_type == "mistral";
  if (qwen2) {
    ReadConfigField(root, "use_sliding_window", &use_sliding_window, where);
    c.max_window_layers = 28;  // transformers' Qwen2Config default
    ReadConfigField(root, "max_window_layers", &c.max_window_layers, where);
  }
  if (use_sliding_window) {
    if (const auto window = root.find("sliding_window"); window != root.end() && !window->is_null()) {
      int64_t w = 0;
      ReadConfigField(root, "sliding_window", &w, where);
      RequirePositiveField(w, "sliding_window", where);
      c.sliding_window = w;
    }
  }

  for (const ConfigSize& size : sizes) RequireSizeField(*size.value, size.key, size.max, where);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    Fail(ErrorCode::kInvalidArgument, "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", where,
         c.num_attention_heads, c.num_key_value_heads);
  }
  if (root.contains("head_dim") && !root["head_dim"].is_null()) {
    ReadConfigField(root, "head_dim", &c.head_dim, where);
    RequireSizeField(c.head_dim, "head_dim", config_limits::kHeadDim, where);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      Fail(ErrorCode::kInvalidArgument,
           "{}: hidden_size {} is not a multiple of num_attention_heads {} (and no head_dim is given)", where,
           c.hidden_size, c.num_attention_heads);
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    Fail(ErrorCode::kInvalidArgument, "{}: head_dim {} must be even for rotary embeddings", where, c.head_dim);
  if (c.hidden_act != "silu") {
    Fail(ErrorCode::kUnimplemented, "{}: hidden_act '{}' is not supported (supported: silu)", where, c.hidden_act);
  }
  if (!(c.rms_norm_eps > 0)) Fail(ErrorCode::kInvalidArgument, "{}: rms_norm_eps must be positive", where);
  if (!(c.rope_theta > 0)) Fail(ErrorCode::kInvalidArgument, "{}: rope_theta must be positive", where);
  CheckTokenIds(root, c, where);
  ReadHead(root, where, &c.task, &c.label_names);
  RequireParameterCount(c.num_parameters(), where);
  if (root.contains("classifier_dropout") && root["classifier_dropout"].is_number())
    c.classifier_dropout = root["classifier_dropout"].get<double>();
  if (root.contains("attention_dropout") && root["attention_dropout"].is_number())
    c.attention_dropout = root["attention_dropout"].get<double>();
  return c;
}

LlamaConfig LlamaConfig::Load(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "config.json";
  return Parse(ReadFile(path), path.string());
}

int64_t LlamaConfig::num_parameters() const {
  const int64_t h = hidden_size;
  const int64_t q = num_attention_heads * head_dim;
  const int64_t kv = num_key_value_heads * head_dim;
  int64_t per_layer = 2 * h + h * q + 2 * h * kv + q * h + 3 * h * intermediate_size;
  if (qkv_bias) per_layer += q + 2 * kv;
  if (o_bias) per_layer += h;
  if (mlp_bias) per_layer += 2 * intermediate_size + h;
  const int64_t labels = num_labels();
  const int64_t head = task == ModelTask::kCausalLm                 ? (tie_word_embeddings ? 0 : vocab_size * h)
                       : task == ModelTask::kSequenceClassification ? labels * h
                                                                    : labels * h + labels;
  return vocab_size * h + head + h + num_hidden_layers * per_layer;
}

}  // namespace shardtune
