// The token cache's reader (TokenCache) and digests; the builder is token_cache_build.cc.

#include "worker/data/token_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "worker/data/token_cache_file.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

uint64_t Align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

// Reads [offset, offset + size) of an open file into `out` (which it sizes).
void ReadAt(int fd, uint64_t offset, uint64_t size, std::vector<uint8_t>& out, const fs::path& path) {
  out.resize(size);
  uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out.data() + done, size - done, static_cast<off_t>(offset + done));
    if (n <= 0) Fail(ErrorCode::kIo, "{}: cannot read {} bytes at offset {}", path.string(), size, offset);
    done += static_cast<uint64_t>(n);
  }
}

}  // namespace

CacheLayout LayoutOf(const CacheHeader& h) {
  CacheLayout l;
  // Counts no real file reaches: a corrupt header, refused before any multiplication overflows.
  if (h.examples > (uint64_t{1} << 40) || h.tokens > (uint64_t{1} << 48) || h.meta_bytes > (uint64_t{1} << 40) ||
      (h.token_bytes != 2 && h.token_bytes != 4) || h.full_labels > 1 || h.has_segments > 1) {
    return l;
  }
  uint64_t at = sizeof(CacheHeader);
  const auto place = [&](uint64_t bytes) {
    const uint64_t here = at;
    at = Align8(at + bytes);
    return here;
  };
  l.offsets = place(8 * (h.examples + 1));
  l.tokens = place(h.token_bytes * h.tokens);
  l.labels = place((h.full_labels ? 4 : 1) * h.tokens);
  l.segments = place(h.has_segments ? h.tokens : 0);
  l.flags = place(h.examples);
  l.classes = place(4 * h.examples);
  l.meta = place(h.meta_bytes);
  l.digest = at;
  l.total = at + sizeof(Sha256Digest);
  l.valid = true;
  return l;
}

Sha256::Sha256() : context_(EVP_MD_CTX_new()) {
  if (context_ == nullptr || EVP_DigestInit_ex(context_, EVP_sha256(), nullptr) != 1) {
    Fail(ErrorCode::kInternal, "OpenSSL: cannot start a SHA-256");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(context_); }

void Sha256::Update(const void* data, size_t size) {
  if (EVP_DigestUpdate(context_, data, size) != 1) Fail(ErrorCode::kInternal, "OpenSSL: SHA-256 update failed");
}

Sha256Digest Sha256::Finish() {
  Sha256Digest digest{};
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(context_, digest.data(), &length) != 1 || length != digest.size()) {
    Fail(ErrorCode::kInternal, "OpenSSL: SHA-256 final failed");
  }
  return digest;
}

Sha256Digest CombineChunkDigests(uint64_t total, const std::vector<Sha256Digest>& chunks) {
  Sha256 root;
  root.Update(&total, sizeof(total));
  for (const Sha256Digest& c : chunks) root.Update(c.data(), c.size());
  return root.Finish();
}

Sha256Digest TreeDigest(const fs::path& path, uint64_t size, CacheGroup& group, const std::string& what) {
  const uint64_t chunks = (size + kDigestChunkBytes - 1) / kDigestChunkBytes;
  // Each chunk's digest as 4 int64 words, filled by the one process that hashes it and summed.
  std::vector<int64_t> words(4 * chunks, 0);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(ErrorCode::kNotFound, "{}: cannot open the data file", path.string());
  std::vector<uint8_t> buffer;
  try {
    for (uint64_t c = static_cast<uint64_t>(group.rank()); c < chunks; c += static_cast<uint64_t>(group.size())) {
      Sha256 chunk;
      const uint64_t end = std::min(size, (c + 1) * kDigestChunkBytes);
      for (uint64_t at = c * kDigestChunkBytes; at < end; at += buffer.size()) {
        ReadAt(fd, at, std::min<uint64_t>(end - at, uint64_t{4} << 20), buffer, path);
        chunk.Update(buffer.data(), buffer.size());
      }
      const Sha256Digest d = chunk.Finish();
      std::memcpy(&words[4 * c], d.data(), d.size());
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  group.SumInt64(words, what);
  std::vector<Sha256Digest> digests(chunks);
  for (uint64_t c = 0; c < chunks; ++c) std::memcpy(digests[c].data(), &words[4 * c], sizeof(Sha256Digest));
  return CombineChunkDigests(size, digests);
}

std::string Hex(const Sha256Digest& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t b : digest) {
    hex += kDigits[b >> 4];
    hex += kDigits[b & 15];
  }
  return hex;
}

std::unique_ptr<TokenCache> TokenCache::Open(const fs::path& path, const Sha256Digest& key, std::string* problem) {
  problem->clear();
  std::unique_ptr<TokenCache> cache(new TokenCache());
  cache->path_ = path;
  cache->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (cache->fd_ < 0) {
    *problem = "there is none";
    return nullptr;
  }
  struct stat st {};
  if (::fstat(cache->fd_, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(CacheHeader))) {
    *problem = fmt::format("it is truncated ({} bytes, shorter than its header)", st.st_size);
    return nullptr;
  }
  cache->map_bytes_ = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, cache->map_bytes_, PROT_READ, MAP_SHARED, cache->fd_, 0);
  if (map == MAP_FAILED) {
    *problem = fmt::format("it cannot be mapped: {}", std::strerror(errno));
    cache->map_bytes_ = 0;
    return nullptr;
  }
  cache->map_ = static_cast<const uint8_t*>(map);
  CacheHeader h{};
  std::memcpy(&h, cache->map_, sizeof(h));
  const CacheLayout l = LayoutOf(h);
  if (std::memcmp(h.magic, kTokenCacheMagic, sizeof(h.magic)) != 0) {
    *problem = "it is not a token cache (bad magic)";
  } else if (h.version != kTokenCacheVersion) {
    *problem = fmt::format("it has cache format version {}, this build writes {}", h.version, kTokenCacheVersion);
  } else if (std::memcmp(h.key, key.data(), key.size()) != 0) {
    *problem = "its header holds another key (stale)";
  } else if (!l.valid) {
    *problem = "its header is corrupt";
  } else if (l.total != cache->map_bytes_) {
    *problem =
        fmt::format("it is {} bytes where its header implies {} (truncated or corrupt)", cache->map_bytes_, l.total);
  }
  if (!problem->empty()) return nullptr;
  cache->examples_ = static_cast<int64_t>(h.examples);
  cache->tokens_ = static_cast<int64_t>(h.tokens);
  cache->token_bytes_ = h.token_bytes;
  cache->full_labels_ = h.full_labels == 1;
  cache->offsets_ = reinterpret_cast<const uint64_t*>(cache->map_ + l.offsets);
  cache->token_data_ = cache->map_ + l.tokens;
  cache->label_data_ = cache->map_ + l.labels;
  cache->segments_ = h.has_segments ? cache->map_ + l.segments : nullptr;
  cache->flags_ = cache->map_ + l.flags;
  cache->classes_ = reinterpret_cast<const int32_t*>(cache->map_ + l.classes);
  if (cache->offsets_[0] != 0 || cache->offsets_[h.examples] != h.tokens) {
    *problem = "its offsets do not span its tokens (corrupt)";
    return nullptr;
  }
  const json meta = json::parse(cache->map_ + l.meta, cache->map_ + l.meta + h.meta_bytes, nullptr, false);
  if (!meta.is_object() || !meta.contains("label_names") || !meta.contains("label_counts")) {
    *problem = "its metadata is corrupt";
    return nullptr;
  }
  try {
    cache->label_names_ = meta["label_names"].get<std::vector<std::string>>();
    cache->label_counts_ = meta["label_counts"].get<std::vector<int64_t>>();
  } catch (const json::exception&) {
    *problem = "its metadata is corrupt";
    return nullptr;
  }
  return cache;
}

TokenCache::~TokenCache() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
  if (fd_ >= 0) ::close(fd_);
}

bool TokenCache::VerifyDigest(CacheGroup& group) const {
  const uint64_t covered = map_bytes_ - sizeof(Sha256Digest);
  const Sha256Digest actual = TreeDigest(path_, covered, group, "token cache: verify " + path_.filename().string());
  return std::memcmp(actual.data(), map_ + covered, actual.size()) == 0;
}

Example TokenCache::Read(int64_t i, int64_t max_len) const {
  const uint64_t begin = offsets_[i];
  const auto n = static_cast<size_t>(max_len > 0 ? std::min(Length(i), max_len) : Length(i));
  Example e;
  e.input_ids.resize(n);
  e.labels.resize(n);
  for (size_t t = 0; t < n; ++t) {
    if (token_bytes_ == 2) {
      uint16_t id = 0;
      std::memcpy(&id, token_data_ + 2 * (begin + t), 2);
      e.input_ids[t] = id;
    } else {
      uint32_t id = 0;
      std::memcpy(&id, token_data_ + 4 * (begin + t), 4);
      e.input_ids[t] = id;
    }
    if (full_labels_) {
      int32_t label = 0;
      std::memcpy(&label, label_data_ + 4 * (begin + t), 4);
      e.labels[t] = label;
    } else {
      e.labels[t] = label_data_[begin + t] != 0 ? e.input_ids[t] : -100;
    }
  }
  if (segments_ != nullptr && (flags_[i] & 1) != 0) e.token_type_ids.assign(segments_ + begin, segments_ + begin + n);
  e.class_label = classes_[i];
  return e;
}

int64_t TokenCache::LongerThan(int64_t max_len) const {
  int64_t n = 0;
  for (int64_t i = 0; i < examples_; ++i) n += max_len > 0 && Length(i) > max_len;
  return n;
}

}  // namespace shardtune
