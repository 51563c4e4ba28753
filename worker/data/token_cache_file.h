#pragma once
// The token cache's file layout and its digests, shared by the reader (token_cache.cc) and the
// builder (token_cache_build.cc). Little-endian, as every machine shardtune runs on.
//
//   header        128 bytes (CacheHeader)
//   offsets       uint64 [examples + 1]: example i is tokens [offsets[i], offsets[i + 1])
//   tokens        uint16 or uint32 [tokens] (header.token_bytes)
//   labels        uint8 [tokens] (1: trained, the label is the token; 0: -100), or
//                 int32 [tokens] when header.full_labels (`tokens` and `ner` formats)
//   segments      uint8 [tokens], when header.has_segments (classification): token_type_ids
//   flags         uint8 [examples]: bit 0 = the example has segments
//   classes       int32 [examples]: the class of each example, -1 for none
//   meta          JSON [meta_bytes]: label_names, label_counts, the data file and format
//   digest        SHA-256 of everything before it (TreeDigest)
// Every section starts at a multiple of 8 bytes; the gaps are zeros.

#include <openssl/evp.h>

#include <bit>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "worker/data/token_cache.h"

namespace shardtune {

static_assert(std::endian::native == std::endian::little, "the token cache is little-endian");

inline constexpr char kTokenCacheMagic[8] = {'S', 'T', 'T', 'O', 'K', 'E', 'N', 'S'};

struct CacheHeader {
  char magic[8];
  uint32_t version;
  uint32_t token_bytes;   // 2 or 4
  uint32_t full_labels;   // 1: int32 labels; 0: a trained byte per token
  uint32_t has_segments;  // 1: a segment byte per token
  uint64_t examples;
  uint64_t tokens;
  uint64_t meta_bytes;
  uint8_t key[32];
  uint8_t reserved[48];
};
static_assert(sizeof(CacheHeader) == 128);

// Where each section starts, and the file's size; nullopt-like `valid` false when the header's
// counts are beyond any real file (a corrupt header).
struct CacheLayout {
  bool valid = false;
  uint64_t offsets = 0, tokens = 0, labels = 0, segments = 0, flags = 0, classes = 0, meta = 0, digest = 0, total = 0;
};
CacheLayout LayoutOf(const CacheHeader& header);

// SHA-256, streamed.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size);
  void Update(const std::string& text) { Update(text.data(), text.size()); }
  Sha256Digest Finish();

 private:
  EVP_MD_CTX* context_;
};

// The digest of a byte string of `total` bytes cut into 64 MiB chunks: SHA-256 of the total and
// the chunks' SHA-256s. Chunks can be hashed apart (by different processes) and combined.
inline constexpr uint64_t kDigestChunkBytes = uint64_t{64} << 20;
Sha256Digest CombineChunkDigests(uint64_t total, const std::vector<Sha256Digest>& chunks);

// TreeDigest of the first `size` bytes of `path`, the group's processes hashing a share of the
// chunks each (collective). Throws kNotFound when the file cannot be read.
Sha256Digest TreeDigest(const std::filesystem::path& path, uint64_t size, CacheGroup& group, const std::string& what);

std::string Hex(const Sha256Digest& digest);

}  // namespace shardtune
