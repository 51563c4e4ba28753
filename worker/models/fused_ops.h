#pragma once
// The elementwise parts of a transformer step as single passes over memory on CPUs: RMSNorm,
// rotary embeddings, SwiGLU, attention's softmax and the cross-entropy of a language-model
// head, each one autograd node with a hand-written forward and backward. LibTorch composes each
// of these from 5 to 10 kernels (and as many passes over the activations); on a CPU, where a
// training step is bound by its matrix products, those passes were a fifth of the step
// (docs/PERFORMANCE.md).
//
// The fused kernels run for fp32 CPU tensors; anything else (CUDA, bf16) takes LibTorch's
// composite ops, the same math (for attention, LibTorch's fused attention where it has one).
// Results equal the composite ones to rounding.

#include <ATen/ATen.h>

namespace shardtune {

// weight * x / sqrt(mean(x^2) + eps) over the last dimension, normalized in fp32 (as
// transformers' LlamaRMSNorm).
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Rotary embeddings (rotate-half form) of x (B, S, heads, D) by cos and sin (B or 1, 1, S, D):
// x * cos + rotate_half(x) * sin, where rotate_half(x) = cat(-x2, x1) of x's halves.
at::Tensor Rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up.
at::Tensor SwiGlu(const at::Tensor& gate, const at::Tensor& up);

// Attention of queries q (B, S, H, D) over keys and values k, v (B, T, Hkv, D), with H a
// multiple of Hkv (grouped-query attention) and any strides but the last: per head,
// softmax(q kᵀ / √D + mask) v, the mask additive (B or 1, 1, S, T) in q's dtype. `causal` says
// the mask is exactly the causal one (S == T, nothing else hidden), which kernels that know
// causality (flash attention) use instead of reading it. `dropout` applies to the
// probabilities. The heads' outputs side by side: (B, S, H × D).
at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, bool causal,
                     double dropout);

// The sum of -log softmax(logits)[target] over the rows of logits (N, V) whose target (N,) is
// not -100, and the number of those rows; fp32.
at::Tensor CrossEntropySum(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace shardtune
