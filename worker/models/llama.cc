#include "worker/models/llama.h"

#include <ATen/core/Reduction.h>

#include <cmath>
#include <limits>

#include "common/error.h"
#include "worker/models/fused_ops.h"

namespace shardtune {

LlamaLayerWeights BindLlamaLayer(const LlamaConfig& c, int64_t i, const TensorLookup& lookup) {
  const std::string p = fmt::format("model.layers.{}.", i);
  LlamaLayerWeights layer;
  // A projection is its weight and, where the config says so, its bias.
  auto bind_linear = [&](const char* module, at::Tensor* weight, at::Tensor* bias, bool has_bias) {
    *weight = lookup(p + module + ".weight");
    if (has_bias) *bias = lookup(p + module + ".bias");
  };
  layer.input_layernorm = lookup(p + "input_layernorm.weight");
  bind_linear("self_attn.q_proj", &layer.q_proj, &layer.q_bias, c.qkv_bias);
  bind_linear("self_attn.k_proj", &layer.k_proj, &layer.k_bias, c.qkv_bias);
  bind_linear("self_attn.v_proj", &layer.v_proj, &layer.v_bias, c.qkv_bias);
  bind_linear("self_attn.o_proj", &layer.o_proj, &layer.o_bias, c.o_bias);
  layer.post_attention_layernorm = lookup(p + "post_attention_layernorm.weight");
  bind_linear("mlp.gate_proj", &layer.gate_proj, &layer.gate_bias, c.mlp_bias);
  bind_linear("mlp.up_proj", &layer.up_proj, &layer.up_bias, c.mlp_bias);
  bind_linear("mlp.down_proj", &layer.down_proj, &layer.down_bias, c.mlp_bias);
  return layer;
}

LlamaWeights BindLlamaWeights(const LlamaConfig& c, const TensorLookup& lookup) {
  LlamaWeights w;
  w.embed_tokens = lookup("model.embed_tokens.weight");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) w.layers.push_back(BindLlamaLayer(c, i, lookup));
  w.norm = lookup("model.norm.weight");
  if (c.task == ModelTask::kCausalLm) {
    w.lm_head = lookup(LmHeadName(c));
  } else {
    w.score = lookup("score.weight");
    if (c.task == ModelTask::kTokenClassification) w.score_bias = lookup("score.bias");
  }
  return w;
}

at::Tensor RopeInverseFrequencies(const LlamaConfig& c) {
  // As transformers computes it: 1 / theta^(arange(0, dim, 2) / dim), in fp32.
  const at::Tensor exponents = at::arange(0, c.head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(c.head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(c.rope_theta, exponents);
  const RopeScaling& s = c.rope_scaling;
  switch (s.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      inv_freq = inv_freq / s.factor;
      break;
    case RopeScalingType::kLlama3: {
      // Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
      const double old_context = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / s.low_freq_factor;
      const double high_freq_wavelen = old_context / s.high_freq_factor;
      const at::Tensor wavelen = 2 * M_PI / inv_freq;
      at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
      const at::Tensor smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      const at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
      const at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
      inv_freq = at::where(medium, smoothed, scaled);
      break;
    }
  }
  return inv_freq;
}

namespace {

// Additive mask (B or 1, 1, S, T): 0 where query i (at position past + i) may attend to key j,
// the dtype's lowest value elsewhere (causal, sliding window, padding).
at::Tensor AttentionMask(const at::Tensor& attention_mask, const at::Tensor& document_ids, int64_t batch, int64_t s,
                         int64_t past, const std::optional<int64_t>& window, at::ScalarType dtype) {
  const int64_t t = past + s;
  const at::Tensor query_pos = at::arange(past, t, at::kLong).unsqueeze(1);  // (S, 1)
  const at::Tensor key_pos = at::arange(0, t, at::kLong).unsqueeze(0);       // (1, T)
  at::Tensor allowed = key_pos <= query_pos;
  if (window) allowed = allowed.logical_and((query_pos - key_pos) < *window);
  allowed = allowed.view({1, 1, s, t});
  if (attention_mask.defined()) allowed = allowed.logical_and(attention_mask.to(at::kBool).view({batch, 1, 1, t}));
  if (document_ids.defined()) {  // packed: only within the same document (no past with packing)
    allowed = allowed.logical_and(document_ids.view({batch, 1, s, 1}) == document_ids.view({batch, 1, 1, t}));
  }
  const double lowest = dtype == at::kFloat      ? std::numeric_limits<float>::lowest()
                        : dtype == at::kBFloat16 ? -3.3895313892515355e38
                                                 : -65504.0;
  return at::zeros(allowed.sizes(), at::TensorOptions().dtype(dtype)).masked_fill_(allowed.logical_not(), lowest);
}

}  // namespace

LlamaBlocks::LlamaBlocks(LlamaConfig config) : config_(std::move(config)), inv_freq_(RopeInverseFrequencies(config_)) {}

Positions LlamaBlocks::PositionsFor(int64_t batch, int64_t seq, int64_t past, const at::Tensor& attention_mask,
                                    at::ScalarType dtype, const at::Tensor& position_ids,
                                    const at::Tensor& document_ids) const {
  // The angle of position p in frequency band i is p * inv_freq[i]; bands repeat across halves.
  at::Tensor angles;
  if (position_ids.defined()) {
    const at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq_;  // (B, S, D/2)
    angles = at::cat({freqs, freqs}, -1).unsqueeze(1);                               // (B, 1, S, D)
  } else {
    const at::Tensor positions = at::arange(past, past + seq, at::kLong).to(at::kFloat);
    const at::Tensor freqs = positions.unsqueeze(1) * inv_freq_.unsqueeze(0);
    angles = at::cat({freqs, freqs}, -1).view({1, 1, seq, config_.head_dim});
  }
  // An attention mask of all ones hides nothing: leaving it out keeps the mask one (1, 1, S, T)
  // for the whole batch instead of one per sequence (on a GPU, 64 MiB of bf16 a micro-batch at
  // 8 x 2048 tokens, built and copied for nothing).
  const at::Tensor padding =
      attention_mask.defined() && !attention_mask.all().item<bool>() ? attention_mask : at::Tensor();
  Positions result{angles.cos().to(dtype), angles.sin().to(dtype),
                   AttentionMask(padding, document_ids, batch, seq, past, std::nullopt, dtype), at::Tensor(),
                   /*causal=*/past == 0 && !document_ids.defined() && !padding.defined()};
  if (config_.sliding_window) {
    result.window_mask = AttentionMask(padding, document_ids, batch, seq, past, config_.sliding_window, dtype);
  }
  return result;
}

at::Tensor LlamaBlocks::Embed(const at::Tensor& input_ids, const at::Tensor& embed_tokens) const {
  return Embedding(embed_tokens, input_ids, config_.padding_idx.value_or(-1));
}

at::Tensor LlamaBlocks::Attention(const LlamaLayerWeights& layer, const at::Tensor& x, const Positions& positions,
                                  KvCache* cache, size_t layer_index) const {
  const int64_t b = x.size(0), s = x.size(1);
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads, d = config_.head_dim;
  const auto& adapters = layer.adapters;
  // (B, S, heads, D), the projections' own layout, which the attention reads in place.
  const at::Tensor q = Rotary(AdaptedLinear(x, layer.q_proj, layer.q_bias, adapters[kQProj]).view({b, s, heads, d}),
                              positions.cos, positions.sin);
  at::Tensor k = Rotary(AdaptedLinear(x, layer.k_proj, layer.k_bias, adapters[kKProj]).view({b, s, kv_heads, d}),
                        positions.cos, positions.sin);
  at::Tensor v = AdaptedLinear(x, layer.v_proj, layer.v_bias, adapters[kVProj]).view({b, s, kv_heads, d});
  const bool windowed = config_.UsesSlidingWindow(static_cast<int64_t>(layer_index));
  if (adapters.prefix_keys.defined()) {
    // Prefix tuning: keys and values in front of the sequence's, entering as cached keys do (not
    // rotated); the positions and the mask count them as a past of P tokens (PositionsFor).
    const int64_t p = adapters.prefix_keys.size(0);
    const bool cached = cache != nullptr && cache->keys.size() > layer_index && cache->keys[layer_index].defined();
    if (!cached) {
      auto expand = [&](const at::Tensor& t) {
        return t.to(k.scalar_type()).view({1, p, kv_heads, d}).expand({b, p, kv_heads, d});
      };
      k = at::cat({expand(adapters.prefix_keys), k}, 1);
      v = at::cat({expand(adapters.prefix_values), v}, 1);
    }
  }
  if (cache != nullptr) {
    if (cache->keys.size() <= layer_index) {
      cache->keys.resize(layer_index + 1);
      cache->values.resize(layer_index + 1);
    }
    if (cache->keys[layer_index].defined()) {
      k = at::cat({cache->keys[layer_index], k}, 1);
      v = at::cat({cache->values[layer_index], v}, 1);
    }
    cache->keys[layer_index] = k;
    cache->values[layer_index] = v;
  }
  const at::Tensor context = shardtune::Attention(q, k, v, windowed ? positions.window_mask : positions.mask,
                                                  positions.causal && !windowed, layer.attention_dropout);
  at::Tensor out = AdaptedLinear(context, layer.o_proj, layer.o_bias, adapters[kOProj]);
  return Bottleneck(out, adapters.attention);
}

at::Tensor LlamaBlocks::Layer(const LlamaLayerWeights& layer, const at::Tensor& hidden, const Positions& positions,
                              KvCache* cache, size_t layer_index) const {
  at::Tensor h = hidden + Attention(layer, RmsNorm(hidden, layer.input_layernorm, config_.rms_norm_eps), positions,
                                    cache, layer_index);
  const at::Tensor x = RmsNorm(h, layer.post_attention_layernorm, config_.rms_norm_eps);
  const auto& adapters = layer.adapters;
  const at::Tensor gated = SwiGlu(AdaptedLinear(x, layer.gate_proj, layer.gate_bias, adapters[kGateProj]),
                                  AdaptedLinear(x, layer.up_proj, layer.up_bias, adapters[kUpProj]));
  const at::Tensor mlp = AdaptedLinear(gated, layer.down_proj, layer.down_bias, adapters[kDownProj]);
  return h + Bottleneck(mlp, adapters.mlp);
}

at::Tensor LlamaBlocks::Classify(const at::Tensor& hidden, const at::Tensor& norm, const at::Tensor& score,
                                 const at::Tensor& score_bias, bool training) const {
  at::Tensor x = RmsNorm(hidden, norm, config_.rms_norm_eps);
  if (config_.task == ModelTask::kTokenClassification && training && config_.classifier_dropout > 0)
    x = at::dropout(x, config_.classifier_dropout, /*train=*/true);
  return Linear(x, score, score_bias).to(at::kFloat);
}

at::Tensor LlamaBlocks::Head(const at::Tensor& hidden, const at::Tensor& norm, const at::Tensor& lm_head) const {
  return Linear(RmsNorm(hidden, norm, config_.rms_norm_eps), lm_head, at::Tensor()).to(at::kFloat);
}

LlamaModel::LlamaModel(LlamaConfig config, LlamaWeights weights)
    : blocks_(std::move(config)), weights_(std::move(weights)) {}

at::Tensor LlamaModel::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache) const {
  ST_CHECK(input_ids.dim() == 2, "input_ids must be (batch, seq), got {} dims", input_ids.dim());
  const int64_t b = input_ids.size(0), s = input_ids.size(1);
  const int64_t past = cache != nullptr ? cache->length : 0;
  at::Tensor h = blocks_.Embed(input_ids, weights_.embed_tokens);
  at::Tensor mask = attention_mask;
  // Virtual tokens both methods put in front, which every real token sees: prompt tuning's are
  // real positions of the sequence (and of the cache); prefix tuning's a past of P tokens that
  // every layer holds (counted in the positions, not in the cache's length).
  int64_t prompt = 0, prefix = 0;
  if (weights_.prompt_embeddings.defined() && past == 0) {
    prompt = weights_.prompt_embeddings.size(0);
    h = PrependPrompt(h, weights_.prompt_embeddings);
  }
  if (!weights_.layers.empty() && weights_.layers[0].adapters.prefix_keys.defined())
    prefix = weights_.layers[0].adapters.prefix_keys.size(0);
  if (mask.defined() && prompt + prefix > 0) mask = at::cat({at::ones({b, prompt + prefix}, mask.options()), mask}, 1);
  const Positions positions = blocks_.PositionsFor(b, prompt + s, prefix + past, mask, h.scalar_type());
  for (size_t i = 0; i < weights_.layers.size(); ++i) h = blocks_.Layer(weights_.layers[i], h, positions, cache, i);
  if (cache != nullptr) cache->length += prompt + s;
  if (prompt > 0) h = h.narrow(1, prompt, s);
  if (weights_.score.defined())
    return blocks_.Classify(h, weights_.norm, weights_.score, weights_.score_bias, /*training=*/false);
  return blocks_.Head(h, weights_.norm, weights_.lm_head);
}

namespace {

// Labels that are not -100, counted where the labels are: the host, as the trainer and the
// evaluation pass them, so that counting waits for no device (the losses' targets move there).
int64_t CountTargets(const at::Tensor& labels) { return labels.ne(-100).sum().item<int64_t>(); }

// The class weights where the logits are, in their type; undefined stays undefined.
at::Tensor WeightsFor(const at::Tensor& class_weights, const at::Tensor& logits) {
  return class_weights.defined() ? class_weights.to(logits.device(), logits.scalar_type()) : class_weights;
}

}  // namespace

LossSum CausalLmLossSum(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing) {
  const int64_t b = logits.size(0), s = logits.size(1);
  LossSum loss;
  if (label_smoothing == 0.0) {
    // Position t predicts token t + 1: the targets shift left (the last position has none), so the
    // logits are read in place rather than copied out of a narrowed view.
    const at::Tensor targets =
        at::cat({labels.narrow(1, 1, s - 1), at::full({b, 1}, int64_t{-100}, labels.options())}, 1).reshape({-1});
    loss.tokens = CountTargets(targets);
    loss.sum = CrossEntropySum(logits.reshape({b * s, logits.size(2)}), ToDevice(targets, logits.device()));
    return loss;
  }
  const at::Tensor shifted_logits = logits.narrow(1, 0, s - 1).reshape({-1, logits.size(2)});
  const at::Tensor shifted_labels = labels.narrow(1, 1, s - 1).reshape({-1});
  loss.tokens = CountTargets(shifted_labels);
  loss.sum = at::cross_entropy_loss(shifted_logits, ToDevice(shifted_labels, logits.device()), {}, at::Reduction::Sum,
                                    -100, label_smoothing);
  return loss;
}

std::pair<at::Tensor, at::Tensor> CausalLmLossPerExample(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t b = logits.size(0), s = logits.size(1);
  const at::Tensor shifted_labels = labels.narrow(1, 1, s - 1);
  const at::Tensor per_token = at::cross_entropy_loss(logits.narrow(1, 0, s - 1).reshape({-1, logits.size(2)}),
                                                      shifted_labels.reshape({-1}), {}, at::Reduction::None, -100);
  return {per_token.view({b, s - 1}).sum(1), shifted_labels.ne(-100).sum(1)};
}

at::Tensor PooledLogits(const at::Tensor& logits, const at::Tensor& attention_mask) {
  const int64_t b = logits.size(0), labels = logits.size(2);
  const at::Tensor last = ToDevice((attention_mask.sum(1) - 1).clamp_min(0), logits.device());
  return logits.gather(1, last.view({b, 1, 1}).expand({b, 1, labels})).squeeze(1);
}

LossSum SequenceClassificationLossSum(const at::Tensor& pooled_logits, const at::Tensor& class_labels,
                                      double label_smoothing, const at::Tensor& class_weights) {
  LossSum loss;
  loss.tokens = CountTargets(class_labels);
  loss.sum =
      at::cross_entropy_loss(pooled_logits, ToDevice(class_labels, pooled_logits.device()),
                             WeightsFor(class_weights, pooled_logits), at::Reduction::Sum, -100, label_smoothing);
  return loss;
}

LossSum TokenClassificationLossSum(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing,
                                   const at::Tensor& class_weights) {
  const at::Tensor flat = labels.reshape({-1});
  LossSum loss;
  loss.tokens = CountTargets(flat);
  loss.sum = at::cross_entropy_loss(logits.reshape({-1, logits.size(2)}), ToDevice(flat, logits.device()),
                                    WeightsFor(class_weights, logits), at::Reduction::Sum, -100, label_smoothing);
  return loss;
}

}  // namespace shardtune
