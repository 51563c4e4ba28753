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
    EXPECT_EQ(tokenizer.Encode(cases[i].text, /*add_special_tokens=*/false), cases[i].ids) << name << " case " << i << ": '" << cases[i].text << "'";
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
