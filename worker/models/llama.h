#pragma once
// The Llama-family decoder (llama, mistral, qwen2) with Hugging Face's math, so logits match
// transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM to rounding:
//   h = embed(ids); per layer: h += o(attn(rope(q(n1(h))), rope(k(n1(h))), v(n1(h))));
//   h += down(silu(gate(n2(h))) * up(n2(h))); logits = lm_head(norm(h)).
// The model holds no storage of its own: weights are tensors bound by name (views into a flat
// buffer when training), so the same code runs on one rank or on gathered shards.

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/llama_config.h"
#include "sharding/llama_layout.h"
#include "sharding/parameter_layout.h"
#include "worker/models/adapters.h"

namespace shardtune {

// The linear layers of a decoder layer in ModelConfig::LayerLinears()'s order: the index of
// their adapters in LayerAdapters.
enum LlamaLinear { kQProj, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj };

struct LlamaLayerWeights {
  at::Tensor input_layernorm;                // (hidden)
  at::Tensor q_proj, k_proj, v_proj;         // (heads*head_dim, hidden), (kv_heads*head_dim, hidden) x 2
  at::Tensor q_bias, k_bias, v_bias;         // undefined unless config.qkv_bias
  at::Tensor o_proj, o_bias;                 // (hidden, heads*head_dim); o_bias unless config.o_bias
  at::Tensor post_attention_layernorm;       // (hidden)
  at::Tensor gate_proj, up_proj;             // (intermediate, hidden)
  at::Tensor down_proj;                      // (hidden, intermediate)
  at::Tensor gate_bias, up_bias, down_bias;  // undefined unless config.mlp_bias
  LayerAdapters adapters;                    // what a parameter-efficient method adds
  double attention_dropout = 0.0;            // set in training only
};

struct LlamaWeights {
  at::Tensor embed_tokens;  // (vocab, hidden)
  std::vector<LlamaLayerWeights> layers;
  at::Tensor norm;               // (hidden)
  at::Tensor lm_head;            // (vocab, hidden); the same tensor as embed_tokens when tied
  at::Tensor score, score_bias;  // classifiers instead of lm_head: (labels, hidden), (labels) or undefined
  at::Tensor prompt_embeddings;  // prompt tuning: (virtual tokens, hidden), before the input's
};

LlamaWeights BindLlamaWeights(const LlamaConfig& config, const TensorLookup& lookup);
LlamaLayerWeights BindLlamaLayer(const LlamaConfig& config, int64_t layer, const TensorLookup& lookup);

// Keys and values of the positions seen so far, per layer, after RoPE: (batch, T, kv_heads, head_dim).
struct KvCache {
  std::vector<at::Tensor> keys;
  std::vector<at::Tensor> values;
  int64_t length = 0;  // positions cached (prompt tuning's virtual tokens included, a prefix's not)
};

// RoPE inverse frequencies (head_dim / 2,) fp32, with linear or llama3 scaling applied.
at::Tensor RopeInverseFrequencies(const LlamaConfig& config);

// Rotary angles and the attention mask of one forward: shared by every layer.
struct Positions {
  at::Tensor cos, sin;     // (1, 1, S, head_dim)
  at::Tensor mask;         // additive, (B or 1, 1, S, past + S)
  at::Tensor window_mask;  // the same within the sliding window, for the layers that use it
  bool causal = false;     // `mask` hides exactly the later keys (no padding, packing or past)
};

// The decoder's math, piece by piece, on weights given at each call: the trainer runs the
// pieces as ZeRO units, inference runs them all through LlamaModel::Forward.
class LlamaBlocks {
 public:
  explicit LlamaBlocks(LlamaConfig config);
  const LlamaConfig& config() const { return config_; }

  // attention_mask (B, past + S): 1 for real tokens, 0 for padding; undefined: all real. Prefix
  // tuning's P keys count as a past of P tokens: the real tokens' positions start at P, as in
  // Hugging Face, where the prefix enters as past_key_values.
  // With `position_ids` (B, S) each token's rotary position comes from it (packed documents
  // restart at 0); with `document_ids` (B, S) attention stays within a document.
  Positions PositionsFor(int64_t batch, int64_t seq, int64_t past, const at::Tensor& attention_mask,
                         at::ScalarType dtype, const at::Tensor& position_ids = at::Tensor(),
                         const at::Tensor& document_ids = at::Tensor()) const;
  at::Tensor Embed(const at::Tensor& input_ids, const at::Tensor& embed_tokens) const;
  // One decoder layer; with a cache, appends this call's keys and values to it.
  at::Tensor Layer(const LlamaLayerWeights& weights, const at::Tensor& hidden, const Positions& positions,
                   KvCache* cache = nullptr, size_t layer_index = 0) const;
  // Final norm and lm_head: logits (B, S, vocab) fp32.
  at::Tensor Head(const at::Tensor& hidden, const at::Tensor& norm, const at::Tensor& lm_head) const;
  // Final norm and the classifier `score` (bias: token classification only, else undefined):
  // logits (B, S, labels) fp32 at every position; dropout before score when `training`.
  at::Tensor Classify(const at::Tensor& hidden, const at::Tensor& norm, const at::Tensor& score,
                      const at::Tensor& score_bias, bool training) const;

 private:
  at::Tensor Attention(const LlamaLayerWeights& layer, const at::Tensor& x, const Positions& positions, KvCache* cache,
                       size_t layer_index) const;

  LlamaConfig config_;
  at::Tensor inv_freq_;
};

// A model with its weights, for inference.
class LlamaModel {
 public:
  LlamaModel(LlamaConfig config, LlamaWeights weights);

  // input_ids (B, S) int64. attention_mask (B, past + S), 1 for real tokens and 0 for padding,
  // or undefined when every token is real. With a cache, positions continue after its length
  // and the new keys and values are appended. Returns logits (B, S, vocab) fp32.
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache = nullptr) const;

  const LlamaConfig& config() const { return blocks_.config(); }

 private:
  LlamaBlocks blocks_;
  LlamaWeights weights_;
};

// `host` on `device` without waiting for the device: a copy to a GPU from pageable memory is
// staged at once, whereas a blocking one first waits for all the work queued before it.
inline at::Tensor ToDevice(const at::Tensor& host, at::Device device) {
  return host.defined() ? host.to(device, host.scalar_type(), /*non_blocking=*/true) : host;
}

// Sum of token cross-entropies of next-token prediction (labels shifted left by one, -100
// ignored), and the number of tokens it covers. logits (B, S, V), labels (B, S) on the host.
struct LossSum {
  at::Tensor sum;  // scalar fp32, differentiable
  int64_t tokens = 0;
};
// `label_smoothing` (training only): the target distribution is (1 - e) one-hot + e uniform.
LossSum CausalLmLossSum(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing = 0.0);
// The same per example: (B,) loss sums and (B,) target counts.
std::pair<at::Tensor, at::Tensor> CausalLmLossPerExample(const at::Tensor& logits, const at::Tensor& labels);

// Sequence classification reads each sequence's class at its last token (right padding: the
// mask's length minus one), as LlamaForSequenceClassification does: (B, S, L) -> (B, L).
at::Tensor PooledLogits(const at::Tensor& logits, const at::Tensor& attention_mask);
// Cross-entropy sums of the heads: over the examples with a class (-100: none), of pooled logits
// (B, L); and over the tokens with a tag (labels aligned with the tokens, not shifted; -100
// ignored), of logits (B, S, L). `class_weights` (L,), when defined, weighs each target's
// cross-entropy by its class (data.balance: class_weights); `tokens` still counts the targets.
LossSum SequenceClassificationLossSum(const at::Tensor& pooled_logits, const at::Tensor& class_labels,
                                      double label_smoothing = 0.0, const at::Tensor& class_weights = {});
LossSum TokenClassificationLossSum(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing = 0.0,
                                   const at::Tensor& class_weights = {});

}  // namespace shardtune
