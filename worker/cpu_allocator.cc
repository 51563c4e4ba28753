#include "worker/cpu_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

// LibTorch 2.3 made Allocator::allocate non-const and added copy_data.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define SHARDTUNE_ALLOCATE_QUALIFIER
#else
#define SHARDTUNE_ALLOCATE_QUALIFIER const
#endif

namespace shardtune {
namespace {

constexpr size_t kMinCached = size_t{1} << 20;
constexpr size_t kSlack = size_t{64} << 20;
constexpr size_t kAlignment = 64;  // LibTorch's CPU alignment (AVX-512 loads)

// Rounds up to a multiple of 1/8 of the size's power of two (and of 4 KiB): at most 12.5% more.
size_t SizeClass(size_t n) {
  size_t power = 1;
  while (power <= n / 2) power *= 2;
  const size_t step = std::max<size_t>(4096, power / 8);
  return (n + step - 1) / step * step;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t n) SHARDTUNE_ALLOCATE_QUALIFIER override {
    if (n < kMinCached) return fallback_->allocate(n);
    void* data = Take(SizeClass(n));
    return {data, data, &Release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Release; }

  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  CpuAllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  static CachingCpuAllocator* instance;

 private:
  // The data pointer is its own context: Release finds the block's size in `in_use_`. It is also
  // raw_deleter(), which frees what raw_allocate() gave out: small blocks come from the fallback
  // allocator (data pointer and context the same), so a pointer not kept here goes back there.
  static void Release(void* data) {
    if (!instance->Keep(data)) instance->fallback_->raw_deleter()(data);
  }

  void* Take(size_t size) const {
    std::lock_guard<std::mutex> lock(mutex_);
    void* data = nullptr;
    if (auto it = kept_.find(size); it != kept_.end()) {
      data = it->second;
      kept_.erase(it);
      stats_.kept_bytes -= static_cast<int64_t>(size);
      ++stats_.reused;
    } else {
      data = std::aligned_alloc(kAlignment, size);
      if (data == nullptr) {  // give back what is kept, then try once more
        TrimLocked(0);
        data = std::aligned_alloc(kAlignment, size);
      }
      TORCH_CHECK(data != nullptr, "out of host memory: cannot allocate ", size, " bytes");
      ++stats_.fresh;
    }
    in_use_[data] = size;
    stats_.in_use_bytes += static_cast<int64_t>(size);
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
    return data;
  }

  // Keeps a block this allocator gave out; false for any other pointer.
  bool Keep(void* data) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = in_use_.find(data);
    if (it == in_use_.end()) return false;
    const size_t size = it->second;
    in_use_.erase(it);
    kept_.emplace(size, data);
    stats_.in_use_bytes -= static_cast<int64_t>(size);
    stats_.kept_bytes += static_cast<int64_t>(size);
    const auto bound = static_cast<int64_t>(static_cast<double>(stats_.peak_in_use_bytes) * 1.25 + kSlack);
    if (stats_.in_use_bytes + stats_.kept_bytes > bound) TrimLocked(bound - stats_.in_use_bytes);
    return true;
  }

  // Frees kept blocks, largest first, until at most `keep` bytes are kept.
  void TrimLocked(int64_t keep) const {
    while (stats_.kept_bytes > std::max<int64_t>(keep, 0) && !kept_.empty()) {
      auto last = std::prev(kept_.end());
      std::free(last->second);
      stats_.kept_bytes -= static_cast<int64_t>(last->first);
      kept_.erase(last);
    }
  }

  c10::Allocator* fallback_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<void*, size_t> in_use_;
  mutable std::multimap<size_t, void*> kept_;
  mutable CpuAllocatorStats stats_;
};

CachingCpuAllocator* CachingCpuAllocator::instance = nullptr;

}  // namespace

void InstallCachingCpuAllocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: tensors may be freed during static destruction.
    CachingCpuAllocator::instance = new CachingCpuAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(CachingCpuAllocator::instance, /*priority=*/100);
  });
}

CpuAllocatorStats CachingCpuAllocatorStats() {
  return CachingCpuAllocator::instance ? CachingCpuAllocator::instance->stats() : CpuAllocatorStats{};
}

}  // namespace shardtune
