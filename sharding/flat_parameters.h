#pragma once
// Parameters live in one flat fp32 buffer; every model tensor is a view into it, and so is every
// gradient. Each parameter starts at an aligned offset (padding is recorded, and zero), which is
// what lets a shard be a plain {offset, size} range of the buffer for any world size.
//
// Ownership: FlatParameters owns the buffers; the views it hands out share their storage and
// stay valid while it lives. Not thread-safe; one instance per rank.

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace shardtune {

// Elements per alignment unit: 64 bytes of fp32, a cache line and an AVX-512 register.
inline constexpr int64_t kFlatAlignment = 16;

struct ParameterSpec {
  std::string name;  // Hugging Face key, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  bool weight_decay = true;  // false for norms and biases
};

struct ParameterSlot {
  ParameterSpec spec;
  int64_t offset = 0;  // into the flat buffer, a multiple of kFlatAlignment
  int64_t numel = 0;
};

class FlatParameters {
 public:
  explicit FlatParameters(const std::vector<ParameterSpec>& specs);

  const std::vector<ParameterSlot>& slots() const { return slots_; }
  int64_t numel() const { return numel_; }                // sum of parameter sizes
  int64_t padded_numel() const { return padded_numel_; }  // buffer length, padding included
  const ParameterSlot* Find(const std::string& name) const;

  at::Tensor& values() { return values_; }  // (padded_numel,) fp32
  at::Tensor& grads() { return grads_; }    // (padded_numel,) fp32

  // Views shaped like the parameter. Value views require grad, with their .grad() preset to the
  // gradient view, so backward accumulates straight into grads().
  at::Tensor Value(const ParameterSlot& slot) const;
  at::Tensor Grad(const ParameterSlot& slot) const;

  // Sets requires_grad on every value view and attaches its gradient view.
  void AttachGradients();
  void ZeroGradients() { grads_.zero_(); }

 private:
  std::vector<ParameterSlot> slots_;
  int64_t numel_ = 0;
  int64_t padded_numel_ = 0;
  at::Tensor values_;
  at::Tensor grads_;
  std::vector<at::Tensor> value_views_;
};

}  // namespace shardtune
