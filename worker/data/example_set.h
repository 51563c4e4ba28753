#pragma once
// The examples a trainer draws from, read from token caches (token_cache.h) on demand: only
// indices are held (which documents of which cache, and where packed sequences start), and an
// example is materialized when it is asked for, so a rank's memory for data is the mapped
// caches plus O(examples) of indices, not the dataset.

#include <cstdint>
#include <memory>
#include <vector>

#include "worker/data/token_cache.h"
#include "worker/data/token_dataset.h"

namespace shardtune {

// Examples in parts, each a list of documents of one cache (a task's training or validation
// examples). Get(i) equals what the in-memory pipeline built: ReadDataset's examples cut to
// max_len, selected, and packed by PackExamples.
class ExampleSet {
 public:
  // Appends a part: documents `documents` of `cache` (in this order), each cut to `max_len`
  // tokens; with `pack`, packed greedily into sequences of at most `max_len` tokens. Returns how
  // many examples the part holds (sequences when packed).
  int64_t Add(std::shared_ptr<const TokenCache> cache, std::vector<int64_t> documents, int64_t max_len, bool pack);

  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  Example Get(int64_t i) const;
  // Every example's tokens (Get(i).input_ids.size()), in order.
  std::vector<int64_t> Lengths() const;
  // The part (the Add call, from 0) that example i belongs to.
  int64_t PartOf(int64_t i) const;

 private:
  struct Part {
    std::shared_ptr<const TokenCache> cache;
    std::vector<int64_t> documents;
    std::vector<int64_t> starts;  // packed: sequence k is documents [starts[k], starts[k + 1]); else empty
    int64_t max_len = 0;
    int64_t begin = 0;  // its first example's index in the set
    int64_t size = 0;
  };
  std::vector<Part> parts_;
  int64_t size_ = 0;
};

}  // namespace shardtune
