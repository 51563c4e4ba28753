#include "worker/data/token_dataset.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "common/error.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {}  // namespace

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

std::vector<Example> PackExamples(const std::vector<Example>& examples, int64_t max_len) {
  std::vector<Example> packed;
  Example current;
  int64_t documents = 0;
  for (const Example& e : examples) {
    if (!current.input_ids.empty() && static_cast<int64_t>(current.input_ids.size() + e.input_ids.size()) > max_len) {
      packed.push_back(std::move(current));
      current = Example();
      documents = 0;
    }
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      current.input_ids.push_back(e.input_ids[t]);
      current.labels.push_back(t == 0 ? -100 : e.labels[t]);
      current.position_ids.push_back(static_cast<int64_t>(t));
      current.document_ids.push_back(documents);
    }
    ++documents;
  }
  if (!current.input_ids.empty()) packed.push_back(std::move(current));
  return packed;
}

void GroupByLength(std::vector<int64_t>& order, const std::vector<Example>& examples, int64_t group) {
  for (size_t begin = 0; begin < order.size(); begin += static_cast<size_t>(group)) {
    const auto end =
        order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), begin + static_cast<size_t>(group)));
    std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(begin), end,
                     [&](int64_t a, int64_t b) { return examples[a].input_ids.size() > examples[b].input_ids.size(); });
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

void SplitValidation(std::vector<Example>& train, std::vector<Example>& validation, double fraction, uint64_t seed) {
  if (fraction <= 0 || train.size() < 2) return;
  const auto n = static_cast<int64_t>(train.size());
  const int64_t held =
      std::clamp<int64_t>(static_cast<int64_t>(std::llround(fraction * static_cast<double>(n))), 1, n - 1);
  const std::vector<int64_t> order = EpochOrder(n, seed, /*epoch=*/-1, /*shuffle=*/true);
  std::vector<bool> is_validation(static_cast<size_t>(n), false);
  for (int64_t i = n - held; i < n; ++i) is_validation[order[i]] = true;
  std::vector<Example> kept;
  for (int64_t i = 0; i < n; ++i) (is_validation[i] ? validation : kept).push_back(std::move(train[i]));
  train = std::move(kept);
}

}  // namespace shardtune
