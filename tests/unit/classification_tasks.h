#pragma once
// Generated classification and NER tasks for the heads' tests, and models that read them: a
// tiny Llama whose tokenizer is byte-level (every byte its own id), and a tiny BERT with a
// WordPiece vocab.txt of the tasks' words, so that text needs no fixture. Shared by the unit
// tests and the MPI tests (sharded evaluation).

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/bert_config.h"
#include "common/job_spec.h"
#include "sharding/bert_layout.h"
#include "test_util.h"
#include "tiny_models.h"
#include "worker/data/tokenizer/unicode.h"
#include "worker/evaluate.h"
#include "worker/trainer.h"

namespace shardtune::testing {

// A tiny Llama with a byte-level tokenizer.json: every byte its own id, plus one merge of a space
// with each letter (so that " Bo" starts with the token " B", which a causal model can tag), then
// <s>, </s>, <pad>: vocab 311. No classifier dropout: the sharded runs must draw no randomness
// that depends on how the batch is split.
// `extra` is spliced into config.json after the rest (later keys win: "max_position_embeddings": 512).
inline void WriteByteLevelModel(const std::filesystem::path& dir, uint64_t seed = 0, const std::string& extra = "") {
  // (The special ids follow the tokenizer's; in JSON the later keys win over TinyConfig's.)
  WriteTinyModel(dir,
                 TinyConfig("llama",
                            R"("tie_word_embeddings": false, "classifier_dropout": 0.0, "bos_token_id": 308,
                               "eos_token_id": 309, "pad_token_id": 310)" +
                                (extra.empty() ? "" : ", " + extra),
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

// A tiny BERT (hidden 32, 2 layers, 4 heads, intermediate 64, 64 positions, no dropout unless
// `extra` sets some) with a cased WordPiece vocab.txt: BERT's special tokens, every word of the
// generated tasks, and the letters as word pieces (so that any word tokenizes). `extra` is
// spliced into config.json (an architecture and id2label make it a classifier checkpoint).
inline void WriteTinyBert(const std::filesystem::path& dir, uint64_t seed = 0, const std::string& extra = "") {
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (const char* word : {"good", "great", "nice", "fun",  "bad", "dull", "poor", "sad", "the", "film",
                           "was",  "plot",  "so",   "it",   "Ada", "Bo",   "Cy",   "Di",  "Ez",  "Rome",
                           "Oslo", "Lima",  "New",  "York", "met", "in",   "saw",  "and", "then"})
    vocab.push_back(word);
  for (char c : std::string("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")) {
    vocab.push_back(std::string(1, c));
    vocab.push_back("##" + std::string(1, c));
  }
  std::string vocab_txt;
  for (const auto& piece : vocab) vocab_txt += piece + "\n";
  const std::string config = R"({"model_type": "bert", "vocab_size": )" + std::to_string(vocab.size()) +
                             R"(, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    "hidden_act": "gelu", "pad_token_id": 0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0)" +
                             extra + "}";
  const std::filesystem::path source = dir.string() + ".config";
  WriteText(source / "config.json", config);
  WriteText(source / "vocab.txt", vocab_txt);
  FlatParameters flat(BertParameterSpecs(BertConfig::Parse(config, "config.json")));
  InitializeWeights(flat, seed, /*std=*/0.1);  // as the tiny Llamas: random features that differ by input
  WriteHfModel(dir, source, flat, ComputeDType::kFp32);
  std::filesystem::remove_all(source);
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

// Training runs on these tasks in a scratch directory: jobs on the model in `base` there, and
// the last evaluation a run logged.
class TaskRunTest : public ::testing::Test {
 protected:
  // `body` continues the model mapping: "task: ...}\ndata: ...".
  JobSpec Spec(const std::string& body) {
    return ParseJobSpec("name: t\nmodel: {path: base, " + body, "job.yaml", dir_.path());
  }

  nlohmann::json LastEvaluation(const std::string& run) {
    nlohmann::json last;
    std::ifstream in(dir_ / run / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json record = nlohmann::json::parse(line);
      if (record.contains("val_loss")) last = record;
    }
    return last;
  }

  // The generated tasks every classifier test trains on, with the same seeds: sentiment at
  // train.jsonl / val.jsonl, BIO-tagged entities at ner.jsonl / ner-val.jsonl (240 and 60 examples).
  void WriteSentimentData() {
    WriteText(dir_ / "train.jsonl", SentimentData(240, 1));
    WriteText(dir_ / "val.jsonl", SentimentData(60, 2));
  }
  void WriteNerData() {
    WriteText(dir_ / "ner.jsonl", NerData(240, 3));
    WriteText(dir_ / "ner-val.jsonl", NerData(60, 4));
  }

  // Trains base/ for `task` ("sequence_classification" on WriteSentimentData's files,
  // "token_classification" on WriteNerData's) with the spec's `training` line and the PEFT `method`
  // (none: full fine-tuning) into run/; expects the run to finish and returns its last evaluation.
  nlohmann::json TrainClassifier(const std::string& task, const std::string& training, const std::string& method = "") {
    const bool ner = task == "token_classification";
    const std::string data = ner ? "{train: ner.jsonl, validation: ner-val.jsonl, format: ner}"
                                 : "{train: train.jsonl, validation: val.jsonl, format: classification}";
    const TrainingSummary summary =
        RunTraining(Spec("task: " + task + "}\n" + (method.empty() ? "" : "method: " + method + "\n") +
                         "data: " + data + "\n" + training + "output: {dir: run}\n"));
    EXPECT_TRUE(summary.finished);
    return LastEvaluation("run");
  }

  // `shardtune evaluate`'s options for the model run/final that a run exported, on `data` (both
  // under the scratch dir).
  EvaluateOptions ExportedModel(const std::string& data) {
    EvaluateOptions options;
    options.model = dir_ / "run" / "final";
    options.data = dir_ / data;
    return options;
  }

  // The same for base/ with the adapter `run`/final that a PEFT run exported.
  EvaluateOptions ExportedAdapter(const std::string& data, const std::string& run = "run") {
    EvaluateOptions options;
    options.model = dir_ / "base";
    options.adapter = dir_ / run / "final";
    options.data = dir_ / data;
    return options;
  }

  ScratchDir dir_;
};

}  // namespace shardtune::testing
