#include "worker/data/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;

fs::path Tokenizers() { return testing::FixturesDir() / "tokenizers"; }
fs::path Vectors() { return testing::FixturesDir() / "tokenizer-vectors"; }

struct Case {
  std::string text;
  std::vector<int64_t> ids;
};

// The llama.cpp test layout: strings separated by "__ggml_vocab_test__" lines; line k of .out
// holds string k's ids.
std::vector<Case> ReadVectors(const std::string& name) {
  const std::string input = ReadFile(Vectors() / (name + ".inp"));
  std::vector<std::string> texts;
  const std::string separator = "\n__ggml_vocab_test__\n";
  for (size_t start = 0; start < input.size();) {
    const size_t at = input.find(separator, start);
    if (at == std::string::npos) break;
    texts.push_back(input.substr(start, at - start));
    start = at + separator.size();
  }
  std::istringstream out(ReadFile(Vectors() / (name + ".out")));
  std::vector<Case> cases;
  std::string line;
  for (size_t i = 0; std::getline(out, line); ++i) {
    Case c;
    c.text = i < texts.size() ? texts[i] : "";
    std::istringstream ids(line);
    for (int64_t id; ids >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  EXPECT_EQ(cases.size(), texts.size()) << name;
  return cases;
}

void ExpectVectors(const Tokenizer& tokenizer, const std::string& name) {
  const std::vector<Case> cases = ReadVectors(name);
  ASSERT_GT(cases.size(), 40u);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(tokenizer.Encode(cases[i].text, /*add_special_tokens=*/false), cases[i].ids)
        << name << " case " << i << ": '" << cases[i].text << "'";
  }
}

TEST(TokenizerVectors, Gpt2VocabAndMerges) {
  SKIP_WITHOUT_FIXTURE(Vectors() / "gpt-2.inp");
  const auto tokenizer = Tokenizer::Load(Tokenizers() / "gpt2-vocab.json");
  ExpectVectors(*tokenizer, "gpt-2");
}

TEST(TokenizerVectors, Llama2TokenizerJson) {
  SKIP_WITHOUT_FIXTURE(Vectors() / "llama-spm.inp");
  const auto tokenizer = Tokenizer::Load(Tokenizers() / "llama2-tokenizer.json");
  ExpectVectors(*tokenizer, "llama-spm");
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

struct RoundTrip {
  const char* file;
  const char* text;
};

TEST(Tokenizers, EveryFixtureLoadsAndRoundTrips) {
  SKIP_WITHOUT_FIXTURE(Tokenizers());
  const std::vector<RoundTrip> cases = {
      {"llama2-tokenizer.json", "Hello world, this is a llama 🦙 in 2024!\n  Indented."},
      {"phi3-mini-tokenizer.json", "Hello world, this is a test of 12345 and émojis 🦙."},
      {"qwen2-style-tiny-bpe-tokenizer.json", "Hello world!\nSecond line, 3.14159"},
      {"tiktoken-small-tokenizer.json", "Hello world!\n\tTabs and   spaces 12345"},
      {"roberta-base-tokenizer.json", "Hello world! Byte-level: café ☕"},
      {"gpt2-vocab.json", "Hello world! It's 2024, isn't it?"},
      {"bert-base-cased-vocab.txt", "Hello, world! This is BERT."},
      {"t5-small-tokenizer.json", "Hello world, this is T5."},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    const auto tokenizer = Tokenizer::Load(Tokenizers() / c.file);
    const std::vector<int64_t> ids = tokenizer->Encode(c.text, /*add_special_tokens=*/false);
    EXPECT_GT(ids.size(), 3u);
    for (int64_t id : ids) EXPECT_LT(id, tokenizer->vocab_size());
    EXPECT_EQ(tokenizer->Decode(ids, /*skip_special_tokens=*/true), c.text);
  }
}

TEST(Tokenizers, SpecialTokensAreAddedOnRequestAndRecognizedInText) {
  SKIP_WITHOUT_FIXTURE(Tokenizers());
  const auto llama = Tokenizer::Load(Tokenizers() / "llama2-tokenizer.json");
  EXPECT_EQ(llama->Encode("Hello", true), (std::vector<int64_t>{1, 15043}));  // <s> added
  EXPECT_EQ(llama->Encode("Hello", false), (std::vector<int64_t>{15043}));
  EXPECT_EQ(llama->Encode("Hello</s>", false), (std::vector<int64_t>{15043, 2}));  // written in the text
  EXPECT_TRUE(llama->IsSpecial(2));
  EXPECT_EQ(llama->Decode({1, 15043, 2}, /*skip_special_tokens=*/true), "Hello");

  const auto qwen = Tokenizer::Load(Tokenizers() / "qwen2-style-tiny-bpe-tokenizer.json");
  const auto im_start = qwen->TokenToId("<|im_start|>");
  ASSERT_TRUE(im_start.has_value());
  const std::vector<int64_t> ids = qwen->Encode("<|im_start|>user\nhi", false);
  EXPECT_EQ(ids.front(), *im_start);
  EXPECT_EQ(qwen->Decode(ids, false), "<|im_start|>user\nhi");

  const auto bert = Tokenizer::Load(Tokenizers() / "bert-base-cased-vocab.txt");
  const std::vector<int64_t> with = bert->Encode("Hello", true);
  EXPECT_EQ(with.front(), 101);  // [CLS]
  EXPECT_EQ(with.back(), 102);   // [SEP]
  // A BERT model directory holds its vocabulary as vocab.txt.
  testing::ScratchDir model;
  testing::WriteText(model / "vocab.txt", ReadFile(Tokenizers() / "bert-base-cased-vocab.txt"));
  EXPECT_EQ(Tokenizer::Load(model.path())->Encode("Hello", true), (std::vector<int64_t>{101, 8667, 102}));
}

TEST(Tokenizers, MalformedFilesGiveClearErrors) {
  testing::ScratchDir dir;
  auto expect_error = [&](const std::string& text, const std::string& fragment) {
    testing::WriteText(dir / "tokenizer.json", text);
    try {
      Tokenizer::Load(dir / "tokenizer.json");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
    }
  };
  expect_error("{not json", "not valid JSON");
  expect_error("{}", "missing 'model'");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})",
               "merge 0 'a b' is not two vocabulary tokens");
  expect_error(R"({"model": {"type": "Magic"}})", "model type 'Magic' is not supported");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split",
               "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})",
               "does not compile");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})",
               "the vocab id of 'a' must be a token id, an integer in [0, 4194304), got \"zero\"");
  // Ids index tables as large as the largest id: one beyond any real vocabulary is refused before
  // anything is allocated for it (found by fuzzing: 129999999905 asked for terabytes).
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 129999999905}, "merges": []}})",
               "must be a token id, an integer in [0, 4194304), got 129999999905");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
               "added_tokens": [{"id": -1, "content": "<s>"}]})",
               "added_tokens' id must be a token id");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
               "pre_tokenizer": {"type": "Metaspace", "replacement": "__"}})",
               "Metaspace's 'replacement' must be one character, got \"__\"");
  expect_error(R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]], "unk_id": 3}})",
               "unk_id 3 is outside the 1 vocab entries");
  // A post-processor's ids index the embedding too (found by fuzzing: "ids": 85 on a vocabulary of
  // 69 made every encoded sequence start out of bounds, and a lone number passed as a list).
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "<s>": 1}, "merges": []},
               "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}},
               {"Sequence": {"id": "A"}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [85]}}}})",
               "post_processor: it adds token id 85, outside the vocabulary [0, 2)");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "<s>": 1}, "merges": []},
               "post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A"}}],
               "special_tokens": {"<s>": {"id": "<s>", "ids": 1}}}})",
               "the ids of special token <s> must be a list, got 1");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "<s>": 1}, "merges": []},
               "post_processor": {"type": "BertProcessing", "cls": ["<s>", 1], "sep": ["</s>", 2]}})",
               "it adds token id 2, outside the vocabulary [0, 2)");
  try {
    Tokenizer::Load(dir / "absent.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  }
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

std::unique_ptr<Tokenizer> FromJson(const std::string& text) {
  testing::ScratchDir dir;
  testing::WriteText(dir / "tokenizer.json", text);
  return Tokenizer::Load(dir / "tokenizer.json");
}

TEST(PreTokenizers, MergedWithNextKeepsAdjacentDelimitersApart) {
  // "a--b" splits into a | - | -b (as tokenizers does), so the merge "- -" never applies.
  const auto t = FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "-": 1, "b": 2, "--": 3, "-b": 4},
      "merges": ["- -", "- b"]},
      "pre_tokenizer": {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": false}})");
  EXPECT_EQ(t->Encode("a--b", false), (std::vector<int64_t>{0, 1, 4}));
}

TEST(PreTokenizers, MetaspaceFirstPrependsOnlyAtTheStartOfTheText) {
  const auto t = FromJson(R"({"model": {"type": "BPE", "vocab": {"▁": 0, "H": 1, "i": 2, "t": 3, "▁H": 4, "▁t": 5},
      "merges": ["▁ H", "▁ t"]},
      "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
      "added_tokens": [{"id": 6, "content": "</s>", "special": true, "normalized": false}]})");
  EXPECT_EQ(t->Encode("Hi</s>ti", false), (std::vector<int64_t>{4, 2, 6, 3, 2}));  // ▁H i </s> t i
}

}  // namespace
}  // namespace shardtune
