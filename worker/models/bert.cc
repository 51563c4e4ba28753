#include "worker/models/bert.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "common/error.h"

namespace shardtune {

BertEmbeddingWeights BindBertEmbeddings(const TensorLookup& lookup) {
  const std::string p = "bert.embeddings.";
  return BertEmbeddingWeights{lookup(p + "word_embeddings.weight"), lookup(p + "position_embeddings.weight"),
                              lookup(p + "token_type_embeddings.weight"), lookup(p + "LayerNorm.weight"),
                              lookup(p + "LayerNorm.bias")};
}

BertLayerWeights BindBertLayer(int64_t i, const TensorLookup& lookup) {
  const std::string p = fmt::format("bert.encoder.layer.{}.", i);
  BertLayerWeights w;
  auto bind = [&](const std::string& module, at::Tensor* weight, at::Tensor* bias) {
    *weight = lookup(p + module + ".weight");
    *bias = lookup(p + module + ".bias");
  };
  bind("attention.self.query", &w.query, &w.query_bias);
  bind("attention.self.key", &w.key, &w.key_bias);
  bind("attention.self.value", &w.value, &w.value_bias);
  bind("attention.output.dense", &w.attention_output, &w.attention_output_bias);
  bind("attention.output.LayerNorm", &w.attention_norm, &w.attention_norm_bias);
  bind("intermediate.dense", &w.intermediate, &w.intermediate_bias);
  bind("output.dense", &w.output, &w.output_bias);
  bind("output.LayerNorm", &w.output_norm, &w.output_norm_bias);
  return w;
}

BertHeadWeights BindBertHead(const BertConfig& c, const TensorLookup& lookup) {
  BertHeadWeights head;
  if (c.task != ModelTask::kTokenClassification) {
    head.pooler = lookup("bert.pooler.dense.weight");
    head.pooler_bias = lookup("bert.pooler.dense.bias");
  }
  if (c.task != ModelTask::kCausalLm) {
    head.classifier = lookup("classifier.weight");
    head.classifier_bias = lookup("classifier.bias");
  }
  return head;
}

namespace {

at::Tensor Dropout(const at::Tensor& x, double p, bool training) {
  return training && p > 0 ? at::dropout(x, p, /*train=*/true) : x;
}

}  // namespace

at::Tensor BertBlocks::WordEmbeddings(const at::Tensor& input_ids, const at::Tensor& word) const {
  return Embedding(word, input_ids, config_.pad_token_id);
}

at::Tensor BertBlocks::Embed(const at::Tensor& words, const at::Tensor& token_type_ids, int64_t past,
                             const BertEmbeddingWeights& w, bool training) const {
  const int64_t s = words.size(1);
  if (past + s > config_.max_position_embeddings) {
    Fail(ErrorCode::kInvalidArgument, "a sequence of {} positions exceeds this BERT's max_position_embeddings {}",
         past + s, config_.max_position_embeddings);
  }
  const at::Tensor types =
      token_type_ids.defined()
          ? token_type_ids.to(words.device())
          : at::zeros({words.size(0), s}, at::TensorOptions().dtype(at::kLong).device(words.device()));
  const at::Tensor sum = words + w.position.narrow(0, past, s).unsqueeze(0) + at::embedding(w.token_type, types);
  const at::Tensor normed = at::layer_norm(sum, {config_.hidden_size}, w.norm, w.norm_bias, config_.layer_norm_eps);
  return Dropout(normed, config_.hidden_dropout_prob, training);
}

at::Tensor BertBlocks::AttentionMask(const at::Tensor& attention_mask, int64_t past, at::ScalarType dtype) const {
  // As transformers: (1 - mask) * the dtype's lowest, broadcast over heads and queries.
  const double lowest = dtype == at::kFloat      ? std::numeric_limits<float>::lowest()
                        : dtype == at::kBFloat16 ? -3.3895313892515355e38
                                                 : -65504.0;
  const int64_t b = attention_mask.size(0);
  at::Tensor mask = attention_mask;
  if (past > 0) mask = at::cat({at::ones({b, past}, mask.options()), mask}, 1);
  const at::Tensor blocked = mask.eq(0).view({b, 1, 1, mask.size(1)});
  return at::zeros(blocked.sizes(), at::TensorOptions().dtype(dtype)).masked_fill_(blocked, lowest);
}

at::Tensor BertBlocks::Layer(const BertLayerWeights& w, const at::Tensor& hidden, const at::Tensor& mask,
                             bool training) const {
  const int64_t b = hidden.size(0), s = hidden.size(1);
  const int64_t heads = config_.num_attention_heads, d = config_.head_dim(), h = config_.hidden_size;
  const LayerAdapters& a = w.adapters;
  auto split = [&](const at::Tensor& x) { return x.view({b, -1, heads, d}).transpose(1, 2); };
  const at::Tensor q = split(AdaptedLinear(hidden, w.query, w.query_bias, a[kQuery]));
  at::Tensor k = split(AdaptedLinear(hidden, w.key, w.key_bias, a[kKey]));
  at::Tensor v = split(AdaptedLinear(hidden, w.value, w.value_bias, a[kValue]));
  if (a.prefix_keys.defined()) {  // prefix tuning: P keys and values before the sequence's
    const int64_t p = a.prefix_keys.size(0);
    auto expand = [&](const at::Tensor& t) {
      return t.to(k.scalar_type()).view({p, heads, d}).transpose(0, 1).unsqueeze(0).expand({b, heads, p, d});
    };
    k = at::cat({expand(a.prefix_keys), k}, 2);
    v = at::cat({expand(a.prefix_values), v}, 2);
  }
  const at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(d))) + mask;
  const at::Tensor probs =
      Dropout(at::softmax(scores, -1, at::kFloat).to(q.scalar_type()), config_.attention_probs_dropout_prob, training);
  const at::Tensor context = at::matmul(probs, v).transpose(1, 2).reshape({b, s, h});
  at::Tensor attended =
      Bottleneck(AdaptedLinear(context, w.attention_output, w.attention_output_bias, a[kAttentionOutput]), a.attention);
  attended = at::layer_norm(Dropout(attended, config_.hidden_dropout_prob, training) + hidden, {h}, w.attention_norm,
                            w.attention_norm_bias, config_.layer_norm_eps);
  const at::Tensor inner = at::gelu(AdaptedLinear(attended, w.intermediate, w.intermediate_bias, a[kIntermediate]));
  const at::Tensor out = Bottleneck(AdaptedLinear(inner, w.output, w.output_bias, a[kOutput]), a.mlp);
  return at::layer_norm(Dropout(out, config_.hidden_dropout_prob, training) + attended, {h}, w.output_norm,
                        w.output_norm_bias, config_.layer_norm_eps);
}

at::Tensor BertBlocks::Classify(const at::Tensor& hidden, const BertHeadWeights& head, bool training) const {
  ST_CHECK(config_.task != ModelTask::kCausalLm, "BERT has no language-model head here");
  const double dropout = config_.ClassifierDropout();
  if (config_.task == ModelTask::kSequenceClassification) {
    const at::Tensor first = hidden.select(1, 0);
    const at::Tensor pooled = at::tanh(Linear(first, head.pooler, head.pooler_bias));
    return Linear(Dropout(pooled, dropout, training), head.classifier, head.classifier_bias).to(at::kFloat);
  }
  return Linear(Dropout(hidden, dropout, training), head.classifier, head.classifier_bias).to(at::kFloat);
}

BertModel::BertModel(BertConfig config, BertEmbeddingWeights embeddings, std::vector<BertLayerWeights> layers,
                     BertHeadWeights head, at::Tensor prompt_embeddings)
    : blocks_(std::move(config)),
      embeddings_(std::move(embeddings)),
      layers_(std::move(layers)),
      head_(std::move(head)),
      prompt_embeddings_(std::move(prompt_embeddings)) {}

at::Tensor BertModel::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                              const at::Tensor& token_type_ids) const {
  ST_CHECK(input_ids.dim() == 2, "input_ids must be (batch, seq), got {} dims", input_ids.dim());
  const int64_t b = input_ids.size(0), s = input_ids.size(1);
  at::Tensor words = blocks_.WordEmbeddings(input_ids, embeddings_.word);
  at::Tensor mask = attention_mask.defined() ? attention_mask : at::ones({b, s}, at::kLong);
  at::Tensor types = token_type_ids;
  // Prompt tuning's virtual tokens go in front, as real positions of segment 0.
  const int64_t prompt = prompt_embeddings_.defined() ? prompt_embeddings_.size(0) : 0;
  if (prompt > 0) {
    words = PrependPrompt(words, prompt_embeddings_);
    mask = at::cat({at::ones({b, prompt}, mask.options()), mask}, 1);
    if (types.defined()) types = at::cat({at::zeros({b, prompt}, types.options()), types}, 1);
  }
  const int64_t prefix =
      layers_.empty() || !layers_[0].adapters.prefix_keys.defined() ? 0 : layers_[0].adapters.prefix_keys.size(0);
  at::Tensor h = blocks_.Embed(words, types, prefix, embeddings_, /*training=*/false);
  const at::Tensor additive = blocks_.AttentionMask(mask, prefix, h.scalar_type());
  for (const BertLayerWeights& layer : layers_) h = blocks_.Layer(layer, h, additive, /*training=*/false);
  const at::Tensor logits = blocks_.Classify(h, head_, /*training=*/false);
  return prompt > 0 && config().task == ModelTask::kTokenClassification ? logits.narrow(1, prompt, s) : logits;
}

}  // namespace shardtune
