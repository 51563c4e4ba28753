#pragma once
// The elementwise parts of a transformer step as single passes over memory on CPUs: RMSNorm,
// rotary embeddings, SwiGLU and the cross-entropy of a language-model head, each one autograd
// node with a hand-written forward and backward. LibTorch composes each of these from 5 to 10
// kernels (and as many passes over the activations); on a CPU, where a training step is bound by
// its matrix products, those passes were a fifth of the step (docs/PERFORMANCE.md).
//
// The fused kernels run for contiguous fp32 CPU tensors; anything else (CUDA, bf16) takes
// LibTorch's composite ops, the same math. Results equal the composite ones to rounding.

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

// The sum of -log softmax(logits)[target] over the rows of logits (N, V) whose target (N,) is
// not -100, and the number of those rows; fp32.
at::Tensor CrossEntropySum(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace shardtune
