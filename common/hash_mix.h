#pragma once
// SplitMix64's finalizer: every input bit reaches every output bit. For hashes and seeds that must
// be the same on every machine and library (std::hash is neither promised).

#include <cstdint>

namespace shardtune {

inline uint64_t MixBits(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace shardtune
