#include "worker/data/token_dataset.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "common/error.h"

namespace shardtune {

int64_t Example::target_tokens() const {
  int64_t n = 0;
  for (size_t t = 1; t < labels.size(); ++t) n += labels[t] != -100;
  return n;
}

Batch Collate(const std::vector<const Example*>& examples, int64_t pad_id) {
  const int64_t b = static_cast<int64_t>(examples.size());
  int64_t s = 0;
  for (const Example* e : examples) s = std::max<int64_t>(s, static_cast<int64_t>(e->input_ids.size()));
  Batch batch;
  batch.input_ids = at::full({b, s}, pad_id, at::kLong);
  batch.labels = at::full({b, s}, -100, at::kLong);
  batch.attention_mask = at::zeros({b, s}, at::kLong);
  batch.class_labels = at::full({b}, -100, at::kLong);
  batch.token_type_ids = at::zeros({b, s}, at::kLong);
  auto segments = batch.token_type_ids.accessor<int64_t, 2>();
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto labels = batch.labels.accessor<int64_t, 2>();
  auto mask = batch.attention_mask.accessor<int64_t, 2>();
  const bool packed =
      std::any_of(examples.begin(), examples.end(), [](const Example* e) { return !e->document_ids.empty(); });
  if (packed) {
    batch.position_ids = at::zeros({b, s}, at::kLong);
    batch.document_ids = at::full({b, s}, -1, at::kLong);
  }
  // Accessors of the packed tensors (of a dummy when unpacked: never written then).
  const at::Tensor none = at::zeros({1, 1}, at::kLong);
  at::Tensor position_target = packed ? batch.position_ids : none;
  at::Tensor document_target = packed ? batch.document_ids : none;
  auto positions = position_target.accessor<int64_t, 2>();
  auto documents = document_target.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const Example& e = *examples[i];
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      ids[i][t] = e.input_ids[t];
      labels[i][t] = e.labels[t];
      mask[i][t] = 1;
      if (packed) {
        positions[i][static_cast<int64_t>(t)] = e.position_ids.empty() ? static_cast<int64_t>(t) : e.position_ids[t];
        documents[i][static_cast<int64_t>(t)] = e.document_ids.empty() ? 0 : e.document_ids[t];
      }
    }
    batch.input_tokens += static_cast<int64_t>(e.input_ids.size());
    if (e.class_label >= 0) batch.class_labels[i] = e.class_label;
    for (size_t t = 0; t < e.token_type_ids.size(); ++t) segments[i][static_cast<int64_t>(t)] = e.token_type_ids[t];
  }
  return batch;
}

std::vector<const Example*> Pointers(const std::vector<Example>& examples) {
  std::vector<const Example*> pointers;
  pointers.reserve(examples.size());
  for (const Example& e : examples) pointers.push_back(&e);
  return pointers;
}

std::vector<int64_t> PackBoundaries(const std::vector<int64_t>& lengths, int64_t max_len) {
  std::vector<int64_t> starts = {0};
  int64_t tokens = 0;  // of the sequence being filled
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (tokens > 0 && tokens + lengths[i] > max_len) {
      starts.push_back(static_cast<int64_t>(i));
      tokens = 0;
    }
    tokens += lengths[i];
  }
  if (!lengths.empty()) starts.push_back(static_cast<int64_t>(lengths.size()));
  return starts;
}

void AppendToPacked(Example& sequence, const Example& document, int64_t index) {
  for (size_t t = 0; t < document.input_ids.size(); ++t) {
    sequence.input_ids.push_back(document.input_ids[t]);
    sequence.labels.push_back(t == 0 ? -100 : document.labels[t]);
    sequence.position_ids.push_back(static_cast<int64_t>(t));
    sequence.document_ids.push_back(index);
  }
}

std::vector<Example> PackExamples(const std::vector<Example>& examples, int64_t max_len) {
  std::vector<int64_t> lengths;
  for (const Example& e : examples) lengths.push_back(static_cast<int64_t>(e.input_ids.size()));
  const std::vector<int64_t> starts = PackBoundaries(lengths, max_len);
  std::vector<Example> packed(starts.size() - 1);
  for (size_t k = 0; k + 1 < starts.size(); ++k) {
    for (int64_t d = starts[k]; d < starts[k + 1]; ++d) AppendToPacked(packed[k], examples[d], d - starts[k]);
  }
  return packed;
}

void GroupByLength(std::vector<int64_t>& order, const std::vector<Example>& examples, int64_t group) {
  std::vector<int64_t> lengths;
  for (const Example& e : examples) lengths.push_back(static_cast<int64_t>(e.input_ids.size()));
  GroupByLength(order, lengths, group);
}

void GroupByLength(std::vector<int64_t>& order, const std::vector<int64_t>& lengths, int64_t group) {
  for (size_t begin = 0; begin < order.size(); begin += static_cast<size_t>(group)) {
    const auto end =
        order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), begin + static_cast<size_t>(group)));
    std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(begin), end,
                     [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  }
}

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (!shuffle) return order;
  // Fisher-Yates with our own index draws: std::shuffle's sequence differs between libraries.
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch) + 1);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<bool> ValidationMask(int64_t n, double fraction, uint64_t seed) {
  std::vector<bool> is_validation(static_cast<size_t>(n), false);
  if (fraction <= 0 || n < 2) return is_validation;
  const int64_t held =
      std::clamp<int64_t>(static_cast<int64_t>(std::llround(fraction * static_cast<double>(n))), 1, n - 1);
  const std::vector<int64_t> order = EpochOrder(n, seed, /*epoch=*/-1, /*shuffle=*/true);
  for (int64_t i = n - held; i < n; ++i) is_validation[order[i]] = true;
  return is_validation;
}

void SplitValidation(std::vector<Example>& train, std::vector<Example>& validation, double fraction, uint64_t seed) {
  const auto n = static_cast<int64_t>(train.size());
  const std::vector<bool> is_validation = ValidationMask(n, fraction, seed);
  std::vector<Example> kept;
  for (int64_t i = 0; i < n; ++i) (is_validation[i] ? validation : kept).push_back(std::move(train[i]));
  train = std::move(kept);
}

}  // namespace shardtune
