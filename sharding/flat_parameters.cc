#include "sharding/flat_parameters.h"

#include "common/error.h"

namespace shardtune {

namespace {

int64_t AlignUp(int64_t n) { return (n + kFlatAlignment - 1) / kFlatAlignment * kFlatAlignment; }

}  // namespace

FlatParameters::FlatParameters(const std::vector<ParameterSpec>& specs) {
  int64_t offset = 0;
  for (const auto& spec : specs) {
    int64_t numel = 1;
    for (int64_t dim : spec.shape) numel *= dim;
    slots_.push_back(ParameterSlot{spec, offset, numel});
    numel_ += numel;
    offset = AlignUp(offset + numel);
  }
  padded_numel_ = offset;
  values_ = at::zeros({padded_numel_}, at::kFloat);
  grads_ = at::zeros({padded_numel_}, at::kFloat);
  for (const auto& slot : slots_)
    value_views_.push_back(values_.narrow(0, slot.offset, slot.numel).view(slot.spec.shape));
}

const ParameterSlot* FlatParameters::Find(const std::string& name) const {
  for (const auto& slot : slots_)
    if (slot.spec.name == name) return &slot;
  return nullptr;
}

at::Tensor FlatParameters::Value(const ParameterSlot& slot) const {
  return value_views_[static_cast<size_t>(&slot - slots_.data())];
}

at::Tensor FlatParameters::Grad(const ParameterSlot& slot) const {
  return grads_.narrow(0, slot.offset, slot.numel).view(slot.spec.shape);
}

void FlatParameters::AttachGradients() {
  for (size_t i = 0; i < slots_.size(); ++i) {
    at::Tensor& view = value_views_[i];
    view.requires_grad_(true);
    // A defined .grad() makes autograd accumulate in place (grad += new) instead of allocating,
    // so every backward lands in the flat gradient buffer, ready for one collective per bucket.
    view.mutable_grad() = Grad(slots_[i]);
  }
}

}  // namespace shardtune
