#pragma once
// A whole model's parameters in one flat fp32 buffer, every model tensor a view into it: how a
// model is held for inference, initialization and export on one process. (Training holds them
// in ZeroEngine's sharded units.)
//
// Ownership: FlatParameters owns the buffers; the views it hands out share their storage and
// stay valid while it lives. Not thread-safe; one instance per rank.

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sharding/parameter_layout.h"

namespace shardtune {

class FlatParameters {
 public:
  explicit FlatParameters(const std::vector<ParameterSpec>& specs);

  const std::vector<ParameterSlot>& slots() const { return slots_; }
  int64_t numel() const { return numel_; }                // sum of parameter sizes
  int64_t padded_numel() const { return padded_numel_; }  // buffer length, padding included
  const ParameterSlot* Find(const std::string& name) const;

  at::Tensor& values() { return values_; }  // (padded_numel,) fp32

  // A view shaped like the parameter.
  at::Tensor Value(const ParameterSlot& slot) const;

 private:
  std::vector<ParameterSlot> slots_;
  int64_t numel_ = 0;
  int64_t padded_numel_ = 0;
  at::Tensor values_;
  std::vector<at::Tensor> value_views_;
};

}  // namespace shardtune
