#include "worker/data/example_selection.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "common/error.h"
#include "worker/data/token_dataset.h"

namespace shardtune {

namespace {

bool Removes(DedupMode mode, DuplicateMatch::Kind kind) {
  return mode == DedupMode::kNear || (mode == DedupMode::kExact && kind == DuplicateMatch::Kind::kExact);
}

std::vector<int64_t> Iota(int64_t n) {
  std::vector<int64_t> indices(static_cast<size_t>(n));
  std::iota(indices.begin(), indices.end(), int64_t{0});
  return indices;
}

}  // namespace

TaskSelection SelectExamples(const SelectionInputs& in) {
  TaskSelection selection;
  const bool dedup = in.dedup.mode != DedupMode::kNone;
  const bool check = dedup || in.find_duplicates;
  ST_CHECK(!check || (in.train_texts != nullptr && static_cast<int64_t>(in.train_texts->size()) == in.train_size),
           "duplicate checks need the training file's {} texts", in.train_size);

  // Duplicates within the training file; with dedup, they leave before the split.
  std::vector<int64_t> candidates;
  if (check) {
    const DuplicateReport report = FindDuplicates(*in.train_texts, in.dedup.similarity);
    selection.dedup.duplicates = report.duplicates;
    selection.dedup.exact = report.exact;
    selection.dedup.near = report.near;
    std::vector<bool> removed(static_cast<size_t>(in.train_size), false);
    for (const DuplicatePair& d : report.duplicates) {
      if (Removes(in.dedup.mode, d.kind)) removed[static_cast<size_t>(d.index)] = true;
    }
    for (int64_t i = 0; i < in.train_size; ++i) {
      if (!removed[static_cast<size_t>(i)]) candidates.push_back(i);
    }
    selection.dedup.removed_duplicates = in.train_size - static_cast<int64_t>(candidates.size());
  } else {
    candidates = Iota(in.train_size);
  }

  const std::vector<std::string>* held_texts = in.validation_texts;
  if (in.validation_size >= 0) {
    selection.validation = Iota(in.validation_size);
    selection.train = std::move(candidates);
  } else {
    selection.validation_from_train = true;
    held_texts = in.train_texts;
    const std::vector<bool> held =
        ValidationMask(static_cast<int64_t>(candidates.size()), in.validation_split, in.seed);
    for (size_t k = 0; k < candidates.size(); ++k)
      (held[k] ? selection.validation : selection.train).push_back(candidates[k]);
  }
  if (!check || selection.validation.empty()) return selection;

  // Leakage: training documents that copy a validation one.
  ST_CHECK(held_texts != nullptr, "duplicate checks need the validation file's texts");
  selection.dedup.copies =
      FindCopies(*in.train_texts, selection.train, *held_texts, selection.validation, in.dedup.similarity);
  std::set<int64_t> leaked, removed;
  for (const DuplicatePair& c : selection.dedup.copies) {
    leaked.insert(c.of);
    if (Removes(in.dedup.mode, c.kind)) removed.insert(c.index);
  }
  selection.dedup.leaked = static_cast<int64_t>(leaked.size());
  selection.dedup.removed_copies = static_cast<int64_t>(removed.size());
  if (!removed.empty()) {
    std::vector<int64_t> kept;
    for (const int64_t d : selection.train) {
      if (!removed.count(d)) kept.push_back(d);
    }
    selection.train = std::move(kept);
  }
  return selection;
}

std::vector<int64_t> Oversampled(const std::vector<int64_t>& train, const std::vector<int64_t>& classes,
                                 uint64_t seed) {
  std::map<int64_t, std::vector<size_t>> members;  // class -> positions in train
  for (size_t k = 0; k < train.size(); ++k) {
    const int64_t c = classes[static_cast<size_t>(train[k])];
    if (c >= 0) members[c].push_back(k);
  }
  size_t largest = 0;
  for (const auto& [c, positions] : members) largest = std::max(largest, positions.size());
  std::vector<int64_t> times(train.size(), 1);
  std::mt19937_64 rng(seed);
  for (auto& [c, positions] : members) {
    const size_t n = positions.size();
    for (const size_t k : positions) times[k] = static_cast<int64_t>(largest / n);
    // (largest mod n) of them once more: the first of a seeded shuffle.
    std::vector<size_t> shuffled = positions;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    for (size_t j = 0; j < largest % n; ++j) ++times[shuffled[j]];
  }
  std::vector<int64_t> out;
  for (size_t k = 0; k < train.size(); ++k) out.insert(out.end(), static_cast<size_t>(times[k]), train[k]);
  return out;
}

std::vector<double> BalancedClassWeights(const std::vector<int64_t>& counts) {
  int64_t total = 0, present = 0;
  for (const int64_t n : counts) {
    total += n;
    present += n > 0 ? 1 : 0;
  }
  std::vector<double> weights(counts.size(), 0.0);
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] > 0) weights[c] = static_cast<double>(total) / static_cast<double>(present * counts[c]);
  }
  return weights;
}

}  // namespace shardtune
