#include "worker/data/example_set.h"

#include <algorithm>

#include "common/error.h"

namespace shardtune {

int64_t ExampleSet::Add(std::shared_ptr<const TokenCache> cache, std::vector<int64_t> documents, int64_t max_len,
                        bool pack) {
  Part part;
  part.max_len = max_len;
  part.begin = size_;
  part.size = static_cast<int64_t>(documents.size());
  if (pack) {
    std::vector<int64_t> lengths;
    lengths.reserve(documents.size());
    for (int64_t d : documents) lengths.push_back(max_len > 0 ? std::min(cache->Length(d), max_len) : cache->Length(d));
    part.starts = PackBoundaries(lengths, max_len);
    part.size = static_cast<int64_t>(part.starts.size()) - 1;
  }
  part.cache = std::move(cache);
  part.documents = std::move(documents);
  size_ += part.size;
  parts_.push_back(std::move(part));
  return parts_.back().size;
}

int64_t ExampleSet::PartOf(int64_t i) const {
  ST_CHECK(i >= 0 && i < size_, "example {} of {}", i, size_);
  // The last part that begins at or before i and holds any example.
  const auto it = std::upper_bound(parts_.begin(), parts_.end(), i,
                                   [](int64_t index, const Part& p) { return index < p.begin + p.size; });
  return static_cast<int64_t>(it - parts_.begin());
}

Example ExampleSet::Get(int64_t i) const {
  const Part& part = parts_[static_cast<size_t>(PartOf(i))];
  const int64_t k = i - part.begin;
  if (part.starts.empty()) return part.cache->Read(part.documents[static_cast<size_t>(k)], part.max_len);
  Example sequence;
  for (int64_t d = part.starts[k]; d < part.starts[k + 1]; ++d) {
    AppendToPacked(sequence, part.cache->Read(part.documents[static_cast<size_t>(d)], part.max_len),
                   d - part.starts[k]);
  }
  return sequence;
}

std::vector<int64_t> ExampleSet::Lengths() const {
  std::vector<int64_t> lengths;
  lengths.reserve(static_cast<size_t>(size_));
  for (const Part& part : parts_) {
    const auto length = [&](int64_t d) {
      const int64_t whole = part.cache->Length(part.documents[static_cast<size_t>(d)]);
      return part.max_len > 0 ? std::min(whole, part.max_len) : whole;
    };
    for (int64_t k = 0; k < part.size; ++k) {
      if (part.starts.empty()) {
        lengths.push_back(length(k));
        continue;
      }
      int64_t n = 0;
      for (int64_t d = part.starts[k]; d < part.starts[k + 1]; ++d) n += length(d);
      lengths.push_back(n);
    }
  }
  return lengths;
}

}  // namespace shardtune
