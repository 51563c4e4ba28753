#pragma once
// The BERT encoder (Devlin et al., 2019) with Hugging Face's math, so outputs match
// transformers' BertModel, BertForSequenceClassification and BertForTokenClassification:
//   h = LayerNorm(word(ids) + position(p) + token_type(t)); per layer (post-LN):
//   h = LayerNorm(h + o(attn(q(h), k(h), v(h)))); h = LayerNorm(h + out(gelu(inter(h))));
//   sequence classification: classifier(tanh(pooler(h[:, 0]))); tokens: classifier(h).
// Dropout (hidden, attention, classifier) applies in training only. As the Llama code, the model
// holds no storage: weights are bound by name, so the trainer runs the same pieces as ZeRO units.

#include <ATen/ATen.h>

#include <vector>

#include "common/bert_config.h"
#include "worker/models/adapters.h"

namespace shardtune {

// The linear layers of an encoder layer in ModelConfig::LayerLinears()'s order.
enum BertLinear { kQuery, kKey, kValue, kAttentionOutput, kIntermediate, kOutput };

struct BertLayerWeights {
  at::Tensor query, query_bias, key, key_bias, value, value_bias;  // (hidden, hidden), (hidden)
  at::Tensor attention_output, attention_output_bias;              // (hidden, hidden), (hidden)
  at::Tensor attention_norm, attention_norm_bias;                  // (hidden) x 2
  at::Tensor intermediate, intermediate_bias;                      // (intermediate, hidden), (intermediate)
  at::Tensor output, output_bias;                                  // (hidden, intermediate), (hidden)
  at::Tensor output_norm, output_norm_bias;                        // (hidden) x 2
  LayerAdapters adapters;                                          // what a parameter-efficient method adds
};

struct BertEmbeddingWeights {
  at::Tensor word, position, token_type;  // (vocab | max positions | type vocab, hidden)
  at::Tensor norm, norm_bias;             // (hidden) x 2
};

struct BertHeadWeights {
  at::Tensor pooler, pooler_bias;          // sequence classification: (hidden, hidden), (hidden)
  at::Tensor classifier, classifier_bias;  // (labels, hidden), (labels)
};

BertEmbeddingWeights BindBertEmbeddings(const TensorLookup& lookup);
BertLayerWeights BindBertLayer(int64_t layer, const TensorLookup& lookup);
BertHeadWeights BindBertHead(const BertConfig& config, const TensorLookup& lookup);

// The encoder's math piece by piece, on weights given at each call.
class BertBlocks {
 public:
  explicit BertBlocks(BertConfig config) : config_(std::move(config)) {}
  const BertConfig& config() const { return config_; }

  // Word embeddings (B, S, hidden) of `input_ids`.
  at::Tensor WordEmbeddings(const at::Tensor& input_ids, const at::Tensor& word) const;
  // The embedding's sum and LayerNorm on word embeddings (B, S, hidden) (prompt tuning's virtual
  // tokens already in front). Positions start at `past` (prefix tuning's virtual tokens count as
  // a past, as in transformers); token_type_ids undefined: all 0. Hidden dropout when training.
  at::Tensor Embed(const at::Tensor& words, const at::Tensor& token_type_ids, int64_t past,
                   const BertEmbeddingWeights& weights, bool training) const;
  // Additive mask (B, 1, 1, past + S) of the keys each query may see: every real token (BERT
  // attends both ways), and prefix tuning's `past` virtual keys.
  at::Tensor AttentionMask(const at::Tensor& attention_mask, int64_t past, at::ScalarType dtype) const;
  // One encoder layer; dropout when training.
  at::Tensor Layer(const BertLayerWeights& layer, const at::Tensor& hidden, const at::Tensor& mask,
                   bool training) const;
  // The task's logits, fp32: sequence classification (B, labels) from the first token through
  // the pooler; token classification (B, S, labels) at every token. Classifier dropout when
  // training.
  at::Tensor Classify(const at::Tensor& hidden, const BertHeadWeights& head, bool training) const;

 private:
  BertConfig config_;
};

// A model with its weights, for inference.
class BertModel {
 public:
  BertModel(BertConfig config, BertEmbeddingWeights embeddings, std::vector<BertLayerWeights> layers,
            BertHeadWeights head, at::Tensor prompt_embeddings = at::Tensor());
  // The task's logits (BertBlocks::Classify) of input_ids (B, S); attention_mask (B, S) and
  // token_type_ids (B, S) may be undefined (all real, all segment 0).
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                     const at::Tensor& token_type_ids) const;
  const BertConfig& config() const { return blocks_.config(); }

 private:
  BertBlocks blocks_;
  BertEmbeddingWeights embeddings_;
  std::vector<BertLayerWeights> layers_;
  BertHeadWeights head_;
  at::Tensor prompt_embeddings_;
};

}  // namespace shardtune
