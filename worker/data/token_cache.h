#pragma once
// The token cache (docs/data.md): a data file read and tokenized once per job, kept as flat
// arrays in one memory-mapped file, and reused by every rank of the job, by every resumed
// attempt and by `validate-data`.
//
// A cache file holds one data file's examples whole (not cut to max_seq_len, so another
// max_seq_len reuses it): the token ids in the narrowest unsigned type that holds the
// vocabulary, each example's offset, its labels (a byte per token saying whether the token is
// trained on, for the formats whose labels are the token or -100; the labels themselves, int32,
// for `tokens` and `ner`), BERT's segments and the class of each example (classification), and
// the label names and counts. Its name carries its key, a SHA-256 of the data file's bytes, the
// tokenizer's files, the format options and the cache format version; its header repeats the
// key and records the sizes, and it ends with a SHA-256 of everything before. A file that is
// short, stale or corrupt is never used: it is rebuilt.

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "worker/data/formats.h"
#include "worker/data/token_dataset.h"

namespace shardtune {

// Bumped whenever the file layout or what a cache holds changes: older caches are then rebuilt.
inline constexpr uint32_t kTokenCacheVersion = 1;

// The processes that build or check a cache together (a job's ranks; one process for
// validate-data). Every call is collective: made by every process of the group, in the same order.
class CacheGroup {
 public:
  virtual ~CacheGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void Barrier(const std::string& what) = 0;
  // Sums `values` elementwise over the group, in place.
  virtual void SumInt64(std::vector<int64_t>& values, const std::string& what) = 0;
};

// A group of one process.
class SoloGroup final : public CacheGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void Barrier(const std::string&) override {}
  void SumInt64(std::vector<int64_t>&, const std::string&) override {}
};

using Sha256Digest = std::array<uint8_t, 32>;

// One cache file, mapped read-only. Thread-compatible; every read is of the mapping.
class TokenCache {
 public:
  // Maps `path` and checks what is cheap to check: the header (magic, version, `key`) and that
  // the file has exactly the size the header implies. Returns null, with `problem` saying why,
  // when the file is missing or fails a check. The digest is checked by VerifyDigest.
  static std::unique_ptr<TokenCache> Open(const std::filesystem::path& path, const Sha256Digest& key,
                                          std::string* problem);
  ~TokenCache();
  TokenCache(const TokenCache&) = delete;
  TokenCache& operator=(const TokenCache&) = delete;

  // Whether the file's trailing digest matches its bytes; the group's processes share the
  // reading (collective).
  bool VerifyDigest(CacheGroup& group) const;

  const std::filesystem::path& path() const { return path_; }
  int64_t size() const { return examples_; }  // examples
  int64_t tokens() const { return tokens_; }
  // Example i's tokens, whole.
  int64_t Length(int64_t i) const { return static_cast<int64_t>(offsets_[i + 1] - offsets_[i]); }
  // Example i as ReadDataset gives it, cut to `max_len` tokens when max_len > 0.
  Example Read(int64_t i, int64_t max_len) const;
  // Example i's class (classification), -1 for none.
  int64_t ClassOf(int64_t i) const { return classes_[i]; }
  // How many examples are longer than `max_len` (and are cut by Read).
  int64_t LongerThan(int64_t max_len) const;
  // classification and ner: the label (or tag) names, index = id, and how often each occurs.
  const std::vector<std::string>& label_names() const { return label_names_; }
  const std::vector<int64_t>& label_counts() const { return label_counts_; }

 private:
  TokenCache() = default;

  std::filesystem::path path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
  int64_t examples_ = 0;
  int64_t tokens_ = 0;
  uint32_t token_bytes_ = 2;
  bool full_labels_ = false;  // int32 labels; else a trained byte per token
  const uint64_t* offsets_ = nullptr;
  const uint8_t* token_data_ = nullptr;
  const uint8_t* label_data_ = nullptr;
  const uint8_t* segments_ = nullptr;  // null when the format has none
  const uint8_t* flags_ = nullptr;     // per example: bit 0 = it has segments
  const int32_t* classes_ = nullptr;   // per example: the class, -1 for none
  std::vector<std::string> label_names_;
  std::vector<int64_t> label_counts_;
};

struct TokenCacheRequest {
  std::filesystem::path data_file;
  FormatOptions options;                   // of the data file; max_seq_len is not used
  std::filesystem::path tokenizer_source;  // what options.tokenizer was loaded from (file or directory)
  std::filesystem::path cache_dir;
};

struct TokenCacheResult {
  std::shared_ptr<const TokenCache> cache;
  bool built = false;
  std::string reason;  // built: why (none there, stale, truncated, corrupt)
  double seconds = 0;  // finding (and building) it
};

// The cache of request.data_file: the one in cache_dir when it is there and sound, else built
// now, each process of `group` tokenizing a slice of the file's records and writing it into the
// cache file, which process 0 renames into place when it is complete (a reader never sees part
// of one). Collective over `group`, whose
// processes must share cache_dir's filesystem. Throws DataError for bad data, after removing
// whatever it wrote (and the directories it made).
TokenCacheResult OpenOrBuildTokenCache(const TokenCacheRequest& request, CacheGroup& group);

// The cache file's name for a data file and key: the data file's name and the key's first 20
// hexadecimal digits.
std::string TokenCacheFileName(const std::filesystem::path& data_file, const Sha256Digest& key);

// The key of a request (collective: the group's processes share the hashing of the data file).
Sha256Digest TokenCacheKey(const TokenCacheRequest& request, CacheGroup& group);

}  // namespace shardtune
