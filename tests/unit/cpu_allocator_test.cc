#include "worker/cpu_allocator.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

namespace shardtune {
namespace {

TEST(CachingCpuAllocator, ReusesFreedBlocksOfTheSameSizeClass) {
  InstallCachingCpuAllocator();
  const CpuAllocatorStats before = CachingCpuAllocatorStats();
  void* first = nullptr;
  {
    at::Tensor t = at::empty({3 << 20}, at::kByte);
    first = t.data_ptr();
    t.fill_(7);
  }
  at::Tensor again = at::empty({(3 << 20) - 100}, at::kByte);  // the same size class
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(again.data_ptr()) % 64, 0u);
  const CpuAllocatorStats after = CachingCpuAllocatorStats();
  EXPECT_EQ(after.reused - before.reused, 1);
  at::Tensor small = at::zeros({100}, at::kFloat);  // below 1 MiB: the default allocator's
  EXPECT_EQ(CachingCpuAllocatorStats().fresh, after.fresh);
  EXPECT_EQ(small.sum().item<float>(), 0.0f);
}

TEST(CachingCpuAllocator, RawAllocationsOfEverySizeGoBackThroughTheRawDeleter) {
  // raw_allocate / raw_deleter, as LibTorch's kernels use them for scratch buffers (GELU's among
  // them): small blocks come from the fallback allocator and must be freed there; large ones are
  // this allocator's, kept when freed and handed out again.
  InstallCachingCpuAllocator();
  c10::Allocator* allocator = c10::GetCPUAllocator();
  const size_t large = size_t{3} << 20;  // a size class of its own: 3 MiB exactly
  const CpuAllocatorStats before = CachingCpuAllocatorStats();
  void* block = allocator->raw_allocate(large);
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(block) % 64, 0u);
  static_cast<char*>(block)[large - 1] = 1;
  const CpuAllocatorStats taken = CachingCpuAllocatorStats();
  EXPECT_EQ(taken.in_use_bytes - before.in_use_bytes, static_cast<int64_t>(large));
  allocator->raw_deleter()(block);
  const CpuAllocatorStats kept = CachingCpuAllocatorStats();
  EXPECT_EQ(kept.in_use_bytes, before.in_use_bytes);
  EXPECT_GE(kept.kept_bytes, static_cast<int64_t>(large));
  void* again = allocator->raw_allocate(large);
  EXPECT_EQ(again, block);
  EXPECT_EQ(CachingCpuAllocatorStats().reused - kept.reused, 1);
  allocator->raw_deleter()(again);

  // A small block never enters this allocator's accounting, and its deleter hands it back to the
  // fallback (glibc would abort on a block freed twice or into the wrong allocator).
  const CpuAllocatorStats small_before = CachingCpuAllocatorStats();
  void* small = allocator->raw_allocate(256);
  ASSERT_NE(small, nullptr);
  static_cast<char*>(small)[255] = 1;
  allocator->raw_deleter()(small);
  const CpuAllocatorStats small_after = CachingCpuAllocatorStats();
  EXPECT_EQ(small_after.in_use_bytes, small_before.in_use_bytes);
  EXPECT_EQ(small_after.kept_bytes, small_before.kept_bytes);
  EXPECT_EQ(small_after.fresh + small_after.reused, small_before.fresh + small_before.reused);
}

TEST(CachingCpuAllocator, KeepsNoMoreThanItsBoundAboveThePeak) {
  InstallCachingCpuAllocator();
  // Sizes that never repeat (as batches of varying length give): what is kept stays bounded.
  for (int64_t i = 0; i < 200; ++i) at::Tensor t = at::empty({(int64_t{4} << 20) + i * (int64_t{1} << 20)}, at::kByte);
  const CpuAllocatorStats s = CachingCpuAllocatorStats();
  EXPECT_LE(s.in_use_bytes + s.kept_bytes, static_cast<int64_t>(1.25 * s.peak_in_use_bytes) + (int64_t{64} << 20));
  EXPECT_GT(s.kept_bytes, 0);
}

}  // namespace
}  // namespace shardtune
