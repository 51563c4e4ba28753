// shardtune reads and runs SentencePiece .model files itself (the library cannot share a
// process with LibTorch); here, in a process without LibTorch, the library is the reference.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include "common/atomic_file.h"
#include "test_util.h"
#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;

// Ordinary prose, whitespace runs, digits, punctuation, accents, CJK, emoji and bytes outside
// every vocabulary; plus the llama.cpp vector strings.
std::vector<std::string> Texts() {
  std::vector<std::string> texts = {
      "Hello world",
      " Hello world",
      "Hello  world,   spaced   out ",
      "It's 2024; isn't it?",
      "naïve café résumé",
      "日本語のテキストと中文",
      "emoji 🦙🚀 and ∑ math",
      "tabs\tand\nnewlines",
      "",
      "a",
      "    leading spaces",
      "UPPER lower MiXeD 1234567890",
  };
  const fs::path inputs = testing::FixturesDir() / "tokenizer-vectors" / "llama-spm.inp";
  if (fs::exists(inputs)) {
    const std::string all = ReadFile(inputs);
    const std::string separator = "\n__ggml_vocab_test__\n";
    for (size_t start = 0, at; (at = all.find(separator, start)) != std::string::npos; start = at + separator.size()) {
      texts.push_back(all.substr(start, at - start));
    }
  }
  return texts;
}

class SentencePieceReference : public ::testing::TestWithParam<std::string> {};

TEST_P(SentencePieceReference, EncodesAndDecodesAsTheLibraryDoes) {
  const fs::path path = testing::FixturesDir() / "tokenizers" / GetParam();
  SKIP_WITHOUT_FIXTURE(path);
  sentencepiece::SentencePieceProcessor reference;
  ASSERT_TRUE(reference.Load(path.string()).ok());
  const auto ours = Tokenizer::Load(path);
  ASSERT_EQ(ours->vocab_size(), reference.GetPieceSize());
  int mismatches = 0;
  for (const std::string& text : Texts()) {
    std::vector<int> expected_ids;
    ASSERT_TRUE(reference.Encode(text, &expected_ids).ok());
    const std::vector<int64_t> ids = ours->Encode(text, /*add_special_tokens=*/false);
    const std::vector<int64_t> expected(expected_ids.begin(), expected_ids.end());
    if (ids != expected && ++mismatches <= 5)
      std::printf("differs from the library: %s: '%s'\n", GetParam().c_str(), text.c_str());
    std::string decoded;
    ASSERT_TRUE(reference.Decode(expected_ids, &decoded).ok());
    EXPECT_EQ(ours->Decode(expected, /*skip_special_tokens=*/true), decoded) << GetParam() << ": '" << text << "'";
  }
  // T5's "!!!!!!" splits into the same two pieces, "!" and "!!!!!", with equal scores in either
  // order: shardtune breaks the tie as the library's 0.1 releases do, its 0.2 releases the other
  // way. Everything else (T5's precompiled charsmap included) must match exactly.
  const int t5_differences = SHARDTUNE_SENTENCEPIECE_0_2 ? 1 : 0;
  EXPECT_LE(mismatches, GetParam() == "t5-sentencepiece.model" ? t5_differences : 0);
}

INSTANTIATE_TEST_SUITE_P(Models, SentencePieceReference,
                         ::testing::Values("llama2-sentencepiece.model", "small-sentencepiece.model",
                                           "t5-sentencepiece.model"));

}  // namespace
}  // namespace shardtune
