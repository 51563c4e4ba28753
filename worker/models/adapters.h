#pragma once
// What parameter-efficient methods add to a transformer layer, for any model family: the
// family's layer holds a LayerAdapters, worker/peft/ binds it, and the family's math calls
// AdaptedLinear and Bottleneck where the methods act.

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "worker/models/weight_ops.h"

namespace shardtune {

// A model's tensors by their Hugging Face names (views of a flat buffer, or a unit's gathered
// parameters): how model code binds its weights.
using TensorLookup = std::function<at::Tensor(const std::string& name)>;

// What a method adds to one linear layer y = W x + b:
//   LoRA  y + scale * B A dropout(x)
//   DoRA  (m / |W + scale B A|) * (W x + scale * B A x) + b, the row norm taken as a constant
//   IA3   y * l (outputs), or W (x * l) + b (inputs, for feed-forward layers)
struct LinearAdapter {
  at::Tensor lora_a, lora_b;  // (r, in), (out, r)
  double lora_scale = 0.0;
  double lora_dropout = 0.0;  // applied when > 0 (the binder sets it only when training)
  at::Tensor magnitude;       // DoRA: (out,)
  at::Tensor ia3;             // IA3: (out, 1), or (1, in) with ia3_on_input
  bool ia3_on_input = false;
};

// x + up(act(down(x))) on a sublayer's output, before the residual sum.
struct BottleneckAdapter {
  at::Tensor down, down_bias;  // (bottleneck, hidden), (bottleneck)
  at::Tensor up, up_bias;      // (hidden, bottleneck), (hidden)
  AdapterActivation activation = AdapterActivation::kRelu;
};

struct LayerAdapters {
  // By the index of ModelConfig::LayerLinears(); empty when the method adapts no linear layer.
  std::vector<LinearAdapter> linear;
  BottleneckAdapter attention, mlp;       // Houlsby: both; Pfeiffer: mlp only
  at::Tensor prefix_keys, prefix_values;  // prefix tuning: (virtual tokens, kv_heads * head_dim)

  // The adapter of linear module `k` (an empty one where none is bound).
  const LinearAdapter& operator[](size_t k) const;
};

// Linear (weight_ops.h) with what a method adds to the layer.
at::Tensor AdaptedLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const LinearAdapter& adapter);
// Prompt tuning: the P virtual tokens' embeddings (P, hidden) before `hidden` (B, S, hidden).
at::Tensor PrependPrompt(const at::Tensor& hidden, const at::Tensor& prompt_embeddings);
// A sublayer's output through a bottleneck adapter, or unchanged when none is bound.
at::Tensor Bottleneck(const at::Tensor& x, const BottleneckAdapter& adapter);

}  // namespace shardtune
