#include "sharding/gradient_slots.h"

#include <mutex>
#include <unordered_map>

#include "common/error.h"

namespace shardtune {

namespace {

struct Registry {
  std::mutex mutex;
  std::unordered_map<const void*, GradientSlot*> slots;  // by the parameter's TensorImpl
};

Registry& Slots() {
  static Registry registry;
  return registry;
}

}  // namespace

ScopedGradientSlots::ScopedGradientSlots(const std::vector<at::Tensor>& parameters, std::vector<GradientSlot>& slots) {
  ST_CHECK(parameters.size() == slots.size(), "{} parameters but {} gradient slots", parameters.size(), slots.size());
  Registry& registry = Slots();
  std::lock_guard<std::mutex> lock(registry.mutex);
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (!slots[i].tensor.defined()) continue;
    const void* key = parameters[i].unsafeGetTensorImpl();
    ST_CHECK(registry.slots.emplace(key, &slots[i]).second, "a parameter's gradient slot is installed twice");
    keys_.push_back(key);
  }
}

ScopedGradientSlots::~ScopedGradientSlots() {
  Registry& registry = Slots();
  std::lock_guard<std::mutex> lock(registry.mutex);
  for (const void* key : keys_) registry.slots.erase(key);
}

GradientSlot* FindGradientSlot(const at::Tensor& parameter) {
  Registry& registry = Slots();
  std::lock_guard<std::mutex> lock(registry.mutex);
  const auto it = registry.slots.find(parameter.unsafeGetTensorImpl());
  return it == registry.slots.end() ? nullptr : it->second;
}

}  // namespace shardtune
