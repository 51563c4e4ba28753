#pragma once
// Generated classification and NER tasks for the heads' tests, and a model that reads them: a
// tiny Llama whose tokenizer is byte-level (every byte its own id), so that text needs no
// fixture. Shared by the unit tests and the MPI tests (sharded evaluation).

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"
#include "tiny_models.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune::testing {

// A tiny Llama with a byte-level tokenizer.json: every byte its own id, plus one merge of a space
// with each letter (so that " Bo" starts with the token " B", which a causal model can tag), then
// <s>, </s>, <pad>: vocab 311. No classifier dropout: the sharded runs must draw no randomness
// that depends on how the batch is split.
inline void WriteByteLevelModel(const std::filesystem::path& dir, uint64_t seed = 0) {
  // (The special ids follow the tokenizer's; in JSON the later keys win over TinyConfig's.)
  WriteTinyModel(dir,
                 TinyConfig("llama",
                            R"("tie_word_embeddings": false, "classifier_dropout": 0.0, "bos_token_id": 308,
                               "eos_token_id": 309, "pad_token_id": 310)",
                            311),
                 seed);
  nlohmann::json vocab = nlohmann::json::object(), merges = nlohmann::json::array();
  for (int b = 0; b < 256; ++b) vocab[ByteToUnicode(static_cast<uint8_t>(b))] = b;
  int next = 256;
  const std::string space = ByteToUnicode(' ');
  for (char c : std::string("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")) {
    vocab[space + c] = next++;
    merges.push_back(space + " " + c);
  }
  nlohmann::json added = nlohmann::json::array();
  for (const char* special : {"<s>", "</s>", "<pad>"}) {
    vocab[special] = next;
    added.push_back({{"id", next++}, {"content", special}, {"special", true}, {"normalized", false}});
  }
  const nlohmann::json tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
                                    {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                                    {"decoder", {{"type", "ByteLevel"}}},
                                    {"added_tokens", added}};
  WriteText(dir / "tokenizer.json", tokenizer.dump());
}

// Sentiment-style: a few filler words around one word of a positive or a negative kind; the label
// is the kind. Balanced: examples alternate between the classes.
inline std::string SentimentData(int examples, uint64_t seed) {
  const std::vector<std::string> positive = {"good", "great", "nice", "fun"}, negative = {"bad", "dull", "poor", "sad"},
                                 filler = {"the", "film", "was", "plot", "so", "it"};
  std::mt19937_64 rng(seed);
  auto pick = [&rng](const std::vector<std::string>& words) { return words[rng() % words.size()]; };
  std::string text;
  for (int n = 0; n < examples; ++n) {
    const bool good = n % 2 == 0;
    std::vector<std::string> words;
    for (int i = 0, fillers = 1 + static_cast<int>(rng() % 3); i < fillers; ++i) words.push_back(pick(filler));
    words.insert(words.begin() + static_cast<int64_t>(rng() % (words.size() + 1)), pick(good ? positive : negative));
    std::string sentence;
    for (const auto& w : words) sentence += (sentence.empty() ? "" : " ") + w;
    text += nlohmann::json({{"text", sentence}, {"label", good ? "positive" : "negative"}}).dump() + "\n";
  }
  return text;
}

// NER in BIO tags: people (capitalized A-D, "Di Ez" a two-word one) and places (R, O, L; "New
// York"), among lowercase words. A causal model tags a word from what precedes it and its first
// byte, so each kind has its own first letters.
inline std::string NerData(int examples, uint64_t seed) {
  struct Item {
    std::vector<std::string> words, tags;
  };
  const std::vector<Item> items = {
      {{"Ada"}, {"B-PER"}},  {{"Bo"}, {"B-PER"}},   {{"Cy"}, {"B-PER"}},   {{"Di", "Ez"}, {"B-PER", "I-PER"}},
      {{"Rome"}, {"B-LOC"}}, {{"Oslo"}, {"B-LOC"}}, {{"Lima"}, {"B-LOC"}}, {{"New", "York"}, {"B-LOC", "I-LOC"}},
      {{"met"}, {"O"}},      {{"in"}, {"O"}},       {{"saw"}, {"O"}},      {{"and"}, {"O"}},
      {{"then"}, {"O"}}};
  std::mt19937_64 rng(seed);
  std::string text;
  for (int n = 0; n < examples; ++n) {
    nlohmann::json words = nlohmann::json::array(), tags = nlohmann::json::array();
    for (int i = 0, count = 3 + static_cast<int>(rng() % 4); i < count; ++i) {
      const Item& item = items[rng() % items.size()];
      for (size_t k = 0; k < item.words.size(); ++k) {
        words.push_back(item.words[k]);
        tags.push_back(item.tags[k]);
      }
    }
    text += nlohmann::json({{"tokens", words}, {"tags", tags}}).dump() + "\n";
  }
  return text;
}

}  // namespace shardtune::testing
