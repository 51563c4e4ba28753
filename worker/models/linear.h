#pragma once
// x Wᵀ + b, the product every projection of the models runs.

#include <ATen/ATen.h>

namespace shardtune {

// x (..., in) W (out, in)ᵀ + b with `bias` optional (undefined: none). In training, W's gradient
// is written by its product straight into the engine's gradient buffer where the engine gives it
// a place (sharding/gradient_slots.h), and otherwise returned as LibTorch's linear would.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace shardtune
