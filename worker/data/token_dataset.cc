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

namespace {

std::vector<int64_t> ReadIds(const json& value, const char* field, const std::string& where, int64_t vocab_size,
                             bool allow_ignore) {
  if (!value.is_array())
    Fail(ErrorCode::kInvalidArgument, "{}: '{}' must be a list of integers, got {}", where, field, value.type_name());
  std::vector<int64_t> ids;
  ids.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    const json& id = value[i];
    if (!id.is_number_integer()) {
      Fail(ErrorCode::kInvalidArgument, "{}: {}[{}] must be an integer, got {}", where, field, i, id.dump());
    }
    const int64_t v = id.get<int64_t>();
    if (!(allow_ignore && v == -100) && (v < 0 || v >= vocab_size)) {
      Fail(ErrorCode::kInvalidArgument, "{}: {}[{}] = {} is outside the vocabulary [0, {}){}", where, field, i, v,
           vocab_size, allow_ignore ? " (or -100 for no loss)" : "");
    }
    ids.push_back(v);
  }
  return ids;
}

}  // namespace

int64_t Example::target_tokens() const {
  int64_t n = 0;
  for (size_t t = 1; t < labels.size(); ++t) n += labels[t] != -100;
  return n;
}

TokenDataset ReadTokenDataset(const fs::path& path, const TokenDatasetOptions& options) {
  std::ifstream in(path);
  if (!in) Fail(ErrorCode::kNotFound, "{}: cannot open the data file", path.string());
  TokenDataset dataset;
  std::string line;
  for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path.string(), line_number);
    json record;
    try {
      record = json::parse(line);
    } catch (const json::parse_error& e) {
      Fail(ErrorCode::kInvalidArgument, "{}: not valid JSON: {}", where, e.what());
    }
    if (!record.is_object())
      Fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object, got {}", where, record.type_name());
    for (const auto& [key, _] : record.items()) {
      if (key != "input_ids" && key != "labels") {
        Fail(ErrorCode::kInvalidArgument,
             "{}: unknown field '{}' (the tokens format has input_ids and optional labels)", where, key);
      }
    }
    if (!record.contains("input_ids")) Fail(ErrorCode::kInvalidArgument, "{}: missing 'input_ids'", where);
    Example example;
    example.input_ids = ReadIds(record["input_ids"], "input_ids", where, options.vocab_size, false);
    if (example.input_ids.empty()) Fail(ErrorCode::kInvalidArgument, "{}: 'input_ids' is empty", where);
    if (record.contains("labels")) {
      example.labels = ReadIds(record["labels"], "labels", where, options.vocab_size, true);
      if (example.labels.size() != example.input_ids.size()) {
        Fail(ErrorCode::kInvalidArgument, "{}: 'labels' has {} entries but 'input_ids' has {}", where,
             example.labels.size(), example.input_ids.size());
      }
    } else {
      example.labels = example.input_ids;
    }
    if (options.max_seq_len > 0 && static_cast<int64_t>(example.input_ids.size()) > options.max_seq_len) {
      example.input_ids.resize(options.max_seq_len);
      example.labels.resize(options.max_seq_len);
      ++dataset.truncated;
    }
    dataset.examples.push_back(std::move(example));
  }
  if (in.bad()) Fail(ErrorCode::kIo, "{}: read failed", path.string());
  if (dataset.examples.empty()) Fail(ErrorCode::kInvalidArgument, "{}: holds no examples", path.string());
  return dataset;
}

Batch Collate(const std::vector<const Example*>& examples, int64_t pad_id) {
  const int64_t b = static_cast<int64_t>(examples.size());
  int64_t s = 0;
  for (const Example* e : examples) s = std::max<int64_t>(s, static_cast<int64_t>(e->input_ids.size()));
  Batch batch;
  batch.input_ids = at::full({b, s}, pad_id, at::kLong);
  batch.labels = at::full({b, s}, -100, at::kLong);
  batch.attention_mask = at::zeros({b, s}, at::kLong);
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto labels = batch.labels.accessor<int64_t, 2>();
  auto mask = batch.attention_mask.accessor<int64_t, 2>();
  const bool packed =
      std::any_of(examples.begin(), examples.end(), [](const Example* e) { return !e->document_ids.empty(); });
  if (packed) {
    batch.position_ids = at::zeros({b, s}, at::kLong);
    batch.document_ids = at::full({b, s}, -1, at::kLong);
  }
  for (int64_t i = 0; i < b; ++i) {
    const Example& e = *examples[i];
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      ids[i][t] = e.input_ids[t];
      labels[i][t] = e.labels[t];
      mask[i][t] = 1;
      if (packed) {
        batch.position_ids[i][static_cast<int64_t>(t)] =
            e.position_ids.empty() ? static_cast<int64_t>(t) : e.position_ids[t];
        batch.document_ids[i][static_cast<int64_t>(t)] = e.document_ids.empty() ? 0 : e.document_ids[t];
      }
    }
    batch.input_tokens += static_cast<int64_t>(e.input_ids.size());
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
