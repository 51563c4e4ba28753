#include "sharding/flat_parameters.h"

#include "common/error.h"

namespace shardtune {

FlatParameters::FlatParameters(const std::vector<ParameterSpec>& specs) {
  int64_t offset = 0;
  for (const auto& spec : specs) {
    int64_t numel = 1;
    for (int64_t dim : spec.shape) numel *= dim;
    slots_.push_back(ParameterSlot{spec, offset, numel});
    numel_ += numel;
    offset = AlignUp(offset + numel, kFlatAlignment);
  }
  padded_numel_ = offset;
  values_ = at::zeros({padded_numel_}, at::kFloat);
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

}  // namespace shardtune
