#pragma once
// The two ops that compute a weight's gradient from activations: x Wᵀ + b and the embedding
// lookup. In training each writes its weight's gradient straight into the engine's gradient
// buffer where the engine gives it a place (sharding/gradient_slots.h), and otherwise returns it
// as LibTorch's op would.

#include <ATen/ATen.h>

#include <cstdint>

namespace shardtune {

// x (..., in) W (out, in)ᵀ + b with `bias` optional (undefined: none).
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// The rows of `weight` (vocabulary, hidden) that `ids` name; a `padding_idx` row (-1: none)
// gets no gradient.
at::Tensor Embedding(const at::Tensor& weight, const at::Tensor& ids, int64_t padding_idx);

}  // namespace shardtune
