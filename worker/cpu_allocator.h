#pragma once
// Training on CPUs allocates and frees the same large activation and gradient tensors every
// step. glibc serves blocks above its mmap threshold (32 MiB at most) with fresh mappings, so each
// step pays again for page faults and for the kernel zeroing every page: 15% of a step of a 125M
// Llama on one core, measured with perf (clear_page_erms alone 12%). This allocator keeps freed
// blocks of 1 MiB and more, by size class (at most 1/8 larger than asked for), and hands them out
// again; smaller ones go to LibTorch's default allocator. What it keeps is bounded: when the
// blocks in use plus those kept exceed 1.25x the most ever in use (plus 64 MiB), it returns kept
// blocks to the system, so a run's resident memory stays within that of its peak.

#include <cstdint>

namespace shardtune {

// Makes it LibTorch's CPU allocator for the rest of the process. Tensors allocated before keep
// their own deleters, so calling it at any time is safe; calling it twice does nothing more.
void InstallCachingCpuAllocator();

struct CpuAllocatorStats {
  int64_t in_use_bytes = 0;  // in blocks of the cached sizes
  int64_t kept_bytes = 0;    // freed, held for reuse
  int64_t peak_in_use_bytes = 0;
  int64_t reused = 0;  // allocations served from kept blocks
  int64_t fresh = 0;   // allocations that went to the system
};
CpuAllocatorStats CachingCpuAllocatorStats();

}  // namespace shardtune
