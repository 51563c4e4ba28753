// The precompiled charsmap (SentencePiece's compiled normalization rules): its darts-clone trie
// read on a charsmap built here key by key, both ways of applying it (SentencePiece's longest
// match, tokenizers' grapheme rule), and the real T5 charsmap against the sentencepiece library.
#include "worker/data/tokenizer/precompiled_charsmap.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <map>
#include <set>

#include "common/error.h"
#include "test_util.h"
#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;

// A charsmap blob in SentencePiece's layout, its trie a darts-clone double array built the way
// darts-clone lays one out: a node's children sit at (node ^ offset ^ label), its value (when a
// key ends there) at (node ^ offset), and no two nodes share a child base.
std::string BuildCharsmap(const std::map<std::string, std::string>& rules) {
  std::string strings;
  std::map<std::string, uint32_t> value_of;
  for (const auto& [key, replacement] : rules) {
    value_of[key] = static_cast<uint32_t>(strings.size());
    strings += replacement;
    strings.push_back('\0');
  }
  std::vector<uint32_t> units(1, 0);
  std::vector<bool> used(1, true);
  std::set<size_t> bases;
  auto grow = [&](size_t size) {
    if (units.size() < size) units.resize(size, 0), used.resize(size, false);
  };
  // Breadth first: (position of the node, the key prefix it stands for).
  std::vector<std::pair<size_t, std::string>> queue = {{0, ""}};
  for (size_t q = 0; q < queue.size(); ++q) {
    const auto [position, prefix] = queue[q];
    std::set<unsigned char> labels;
    for (const auto& [key, value] : rules) {
      if (key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0)
        labels.insert(static_cast<unsigned char>(key[prefix.size()]));
    }
    const bool has_leaf = rules.count(prefix) > 0 && !prefix.empty();
    if (labels.empty() && !has_leaf) continue;
    size_t base = 1;
    auto fits = [&](size_t b) {
      if (bases.count(b) || (has_leaf && b < used.size() && used[b])) return false;
      for (unsigned char label : labels)
        if ((b ^ label) < used.size() && used[b ^ label]) return false;
      return true;
    };
    while (!fits(base)) ++base;
    bases.insert(base);
    grow((base | 0xFF) + 1);
    units[position] |= static_cast<uint32_t>(position ^ base) << 10 | (has_leaf ? 1u << 8 : 0u);
    if (has_leaf) units[base] = value_of.at(prefix) | 0x80000000u, used[base] = true;
    for (unsigned char label : labels) {
      units[base ^ label] = label, used[base ^ label] = true;
      queue.push_back({base ^ label, prefix + static_cast<char>(label)});
    }
  }
  std::string blob;
  auto append32 = [&](uint32_t v) {
    for (int k = 0; k < 4; ++k) blob.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
  };
  append32(static_cast<uint32_t>(units.size() * 4));
  for (uint32_t unit : units) append32(unit);
  return blob + strings;
}

const std::string kFullWidthA = "\xEF\xBC\xA1";  // U+FF21
const std::string kAcute = "\xCC\x81";           // U+0301, combining
const std::string kZwj = "\xE2\x80\x8D";         // U+200D
const std::string kManWomanGirl =                // U+1F468 ZWJ U+1F469 ZWJ U+1F467: one grapheme
    "\xF0\x9F\x91\xA8" + kZwj + "\xF0\x9F\x91\xA9" + kZwj + "\xF0\x9F\x91\xA7";

PrecompiledCharsmap SmallCharsmap() {
  return PrecompiledCharsmap::Parse(BuildCharsmap({{kFullWidthA, "A"},
                                                   {kFullWidthA + kAcute, "\xC3\x81"},  // Á
                                                   {kZwj, ""},
                                                   {"\xEF\xAC\x81", "fi"},  // U+FB01, the ligature
                                                   {"ab", "X"}}),
                                    "test charsmap");
}

TEST(PrecompiledCharsmap, FindsEveryKeyThatPrefixesTheText) {
  const PrecompiledCharsmap charsmap = SmallCharsmap();
  const auto matches = charsmap.PrefixMatches(kFullWidthA + kAcute + "x");
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(matches[0].length, 3u);
  EXPECT_EQ(matches[0].replacement, "A");
  EXPECT_EQ(matches[1].length, 5u);
  EXPECT_EQ(matches[1].replacement, "\xC3\x81");
  EXPECT_TRUE(charsmap.PrefixMatches("a").empty());  // "a" leads toward "ab" but is no key
  EXPECT_TRUE(charsmap.PrefixMatches("b").empty());
  EXPECT_TRUE(charsmap.PrefixMatches("").empty());
  EXPECT_TRUE(charsmap.PrefixMatches(std::string("a\0b", 3)).empty());  // the search stops at NUL
}

TEST(PrecompiledCharsmap, SentencePieceTakesTheLongestRuleAndCopiesTheRest) {
  const PrecompiledCharsmap charsmap = SmallCharsmap();
  EXPECT_EQ(charsmap.NormalizePrefix(kFullWidthA + kAcute + "x"), (std::pair<std::string_view, size_t>{"\xC3\x81", 5}));
  EXPECT_EQ(charsmap.NormalizePrefix("abc"), (std::pair<std::string_view, size_t>{"X", 2}));
  EXPECT_EQ(charsmap.NormalizePrefix("\xC3\xA9t\xC3\xA9"), (std::pair<std::string_view, size_t>{"\xC3\xA9", 2}));
  EXPECT_EQ(charsmap.NormalizePrefix("\xFFok"), (std::pair<std::string_view, size_t>{"\xEF\xBF\xBD", 1}));
  EXPECT_EQ(charsmap.NormalizePrefix(kZwj + "x"), (std::pair<std::string_view, size_t>{"", 3}));
}

TEST(PrecompiledCharsmap, TokenizersGoesGraphemeByGrapheme) {
  const PrecompiledCharsmap charsmap = SmallCharsmap();
  // A grapheme under 6 bytes is replaced whole by its SHORTEST matching rule: full-width A with
  // an acute accent is one grapheme, and "A" wins over "Á" (the Rust implementation's behaviour).
  EXPECT_EQ(charsmap.NormalizeByGrapheme(kFullWidthA + kAcute), "A");
  // Longer graphemes go character by character: the family emoji loses its joiners.
  EXPECT_EQ(charsmap.NormalizeByGrapheme(kManWomanGirl), "\xF0\x9F\x91\xA8\xF0\x9F\x91\xA9\xF0\x9F\x91\xA7");
  // A rule spanning two graphemes never applies ("ab" -> "X" is SentencePiece's only).
  EXPECT_EQ(charsmap.NormalizeByGrapheme("ab \xEF\xAC\x81" + kFullWidthA), "ab fiA");
  EXPECT_EQ(charsmap.NormalizeByGrapheme(""), "");
}

TEST(PrecompiledCharsmap, BrokenBlobsGiveClearErrors) {
  auto expect_error = [](const std::function<void()>& parse, const std::string& fragment) {
    try {
      parse();
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("where.json"), std::string::npos) << e.what();
    }
  };
  expect_error([] { PrecompiledCharsmap::Parse("ab", "where.json"); }, "too short");
  expect_error([] { PrecompiledCharsmap::Parse(std::string("\x40\0\0\0\0\0\0\0", 8), "where.json"); },
               "trie has 64 bytes");
  expect_error([] { PrecompiledCharsmap::ParseBase64("AAAA*AAA", "where.json"); }, "not base64");
}

// Zero-width and joiner characters, a byte order mark, full-width letters, a ligature and
// ordinary text: where the charsmap differs from plain NFKC and where it agrees.
std::vector<std::string> CharsmapTexts() {
  return {
      "zero\xE2\x80\x8Bwidth space",                                              // U+200B
      "family " + kManWomanGirl + " emoji",                                       // U+200D joiners
      "\xEF\xBB\xBFHello with a byte order mark",                                 // U+FEFF
      "word\xEF\xBB\xBFjoined",                                                   // U+FEFF inside a word
      "\xEF\xBC\xA8\xEF\xBD\x85\xEF\xBD\x8C\xEF\xBD\x8C\xEF\xBD\x8F full width",  // Ｈｅｌｌｏ
      "\xEF\xAC\x81nd the \xEF\xAC\x82ow",                                        // ligatures fi, fl
      "non\xC2\xA0"
      "breaking\xE3\x80\x80spaces",  // U+00A0, U+3000
      "The quick brown fox jumps over the lazy dog.",
      "Translate English to German: That is good.",
  };
}

// Our ids for every CharsmapTexts() string equal those of the sentencepiece library on `model`.
void ExpectLibraryIds(const Tokenizer& ours, const fs::path& model) {
  sentencepiece::SentencePieceProcessor reference;
  ASSERT_TRUE(reference.Load(model.string()).ok()) << model;
  for (const std::string& text : CharsmapTexts()) {
    std::vector<int> expected;
    ASSERT_TRUE(reference.Encode(text, &expected).ok());
    EXPECT_EQ(ours.Encode(text, /*add_special_tokens=*/false), std::vector<int64_t>(expected.begin(), expected.end()))
        << model.filename() << ": '" << text << "'";
  }
}

class CharsmapReference : public ::testing::TestWithParam<std::string> {};

// The sentencepiece library is the reference for a .model's charsmap: ids must match exactly.
TEST_P(CharsmapReference, ModelMatchesTheLibrary) {
  const fs::path path = testing::FixturesDir() / "tokenizers" / GetParam();
  SKIP_WITHOUT_FIXTURE(path);
  ExpectLibraryIds(*Tokenizer::Load(path), path);
}

INSTANTIATE_TEST_SUITE_P(Models, CharsmapReference,
                         ::testing::Values("t5-sentencepiece.model", "small-sentencepiece.model"));

// T5's tokenizer.json carries the same charsmap and vocabulary as t5-sentencepiece.model; on these
// texts tokenizers' grapheme rule and SentencePiece's longest match agree, so the library's ids
// are the reference for the tokenizer.json path too.
TEST(CharsmapReference, T5TokenizerJsonMatchesTheLibrary) {
  const fs::path json = testing::FixturesDir() / "tokenizers" / "t5-small-tokenizer.json";
  const fs::path model = testing::FixturesDir() / "tokenizers" / "t5-sentencepiece.model";
  SKIP_WITHOUT_FIXTURE(json);
  SKIP_WITHOUT_FIXTURE(model);
  ExpectLibraryIds(*Tokenizer::Load(json), model);
}

}  // namespace
}  // namespace shardtune
