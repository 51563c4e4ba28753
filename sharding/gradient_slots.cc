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

ScopedGradientSlots::ScopedGradientSlots(std::vector<GradientSlot>& slots) {
  Registry& registry = Slots();
  std::lock_guard<std::mutex> lock(registry.mutex);
  for (GradientSlot& slot : slots) {
    if (!slot.gradient.defined()) continue;
    const void* key = slot.parameter.unsafeGetTensorImpl();
    ST_CHECK(registry.slots.emplace(key, &slot).second, "a parameter's gradient slot is installed twice");
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
