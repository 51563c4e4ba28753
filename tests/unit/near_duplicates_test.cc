#include "common/near_duplicates.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

namespace shardtune {
namespace {

TEST(NearDuplicates, NormalizesCaseSpaceAndPunctuation) {
  EXPECT_EQ(NormalizeForComparison("  Hello,   WORLD!\n\tBye. "), "hello world bye");
  EXPECT_EQ(NormalizeForComparison("Café"), "café");
  EXPECT_EQ(NormalizeForComparison("?!"), "");
}

TEST(NearDuplicates, ShinglesAreCodePointOrWordNgrams) {
  NearDuplicateOptions chars;
  chars.ngram = 3;
  EXPECT_EQ(ShingleHashes("abcde", chars).size(), 3u);    // abc bcd cde
  EXPECT_EQ(ShingleHashes("ab", chars).size(), 1u);       // shorter than a shingle: itself
  EXPECT_EQ(ShingleHashes("ééééé", chars).size(), 1u);    // code points, not bytes: one distinct "ééé"
  EXPECT_EQ(ShingleHashes("abab ab", chars).size(), 5u);  // aba bab "ab " "b a" " ab"
  EXPECT_EQ(ShingleHashes("A-b-C", chars), ShingleHashes("abc", chars));
  NearDuplicateOptions words;
  words.unit = ShingleUnit::kWords;
  words.ngram = 2;
  EXPECT_EQ(ShingleHashes("the cat sat on the cat", words).size(), 4u);  // "the cat" twice
  EXPECT_EQ(ShingleHashes("one", words).size(), 1u);
}

TEST(NearDuplicates, JaccardOfSortedSets) {
  EXPECT_DOUBLE_EQ(JaccardSimilarity({1, 2, 3, 4}, {3, 4, 5}), 2.0 / 5.0);
  EXPECT_DOUBLE_EQ(JaccardSimilarity({}, {}), 1.0);
  EXPECT_DOUBLE_EQ(JaccardSimilarity({1}, {2}), 0.0);
}

// Random sentences of `words` words from a 2,000-word vocabulary of made-up words.
class TextMaker {
 public:
  explicit TextMaker(uint32_t seed) : rng_(seed) {
    std::uniform_int_distribution<int> letter('a', 'z'), length(3, 9);
    for (int i = 0; i < 2000; ++i) {
      std::string word;
      for (int n = length(rng_); n > 0; --n) word.push_back(static_cast<char>(letter(rng_)));
      vocabulary_.push_back(word);
    }
  }
  std::string Sentence(int words) {
    std::uniform_int_distribution<size_t> pick(0, vocabulary_.size() - 1);
    std::string text;
    for (int i = 0; i < words; ++i) text += (i ? " " : "") + vocabulary_[pick(rng_)];
    return text;
  }
  // The text with one character replaced, and its case changed: a typo's distance.
  std::string Typo(std::string text) {
    std::uniform_int_distribution<size_t> at(0, text.size() - 1);
    size_t i = at(rng_);
    while (text[i] == ' ') i = at(rng_);
    text[i] = text[i] == 'x' ? 'y' : 'x';
    text[0] = static_cast<char>(std::toupper(text[0]));
    return text + ".";
  }
  std::mt19937& rng() { return rng_; }

 private:
  std::mt19937 rng_;
  std::vector<std::string> vocabulary_;
};

TEST(NearDuplicates, SignatureAgreementEstimatesJaccard) {
  TextMaker maker(7);
  const NearDuplicateOptions options;
  NearDuplicateIndex index(options);
  for (int trial = 0; trial < 20; ++trial) {
    const std::string a = maker.Sentence(40);
    // b shares a's first k words: similarities spread over (0, 1).
    const int k = 2 * trial;
    size_t cut = 0;
    for (int w = 0; w < k; ++w) cut = a.find(' ', cut + 1);
    const std::string b = a.substr(0, cut) + " " + maker.Sentence(40 - k);
    const double exact = JaccardSimilarity(ShingleHashes(a, options), ShingleHashes(b, options));
    index.Add(trial, index.Fingerprinted(a));
    const auto sa = index.Fingerprinted(a).signature, sb = index.Fingerprinted(b).signature;
    int equal = 0;
    for (size_t i = 0; i < sa.size(); ++i) equal += sa[i] == sb[i];
    // 128 permutations: the standard error is at most 0.5 / sqrt(128) = 0.044.
    EXPECT_NEAR(equal / 128.0, exact, 0.15) << "a: " << a << "\nb: " << b;
  }
}

TEST(NearDuplicates, BandingCatchesPairsAtTheThreshold) {
  for (double threshold : {0.5, 0.7, 0.85, 0.95}) {
    NearDuplicateOptions options;
    options.threshold = threshold;
    const NearDuplicateIndex index(options);
    EXPECT_LE(index.bands() * index.rows(), NearDuplicateIndex::kPermutations);
    const double p = 1.0 - std::pow(1.0 - std::pow(threshold, index.rows()), index.bands());
    EXPECT_GE(p, 0.99) << threshold;
  }
}

// The planted set: 2,000 distinct sentences of 20 to 49 words, then 150 exact copies and 150
// typos of them (one letter replaced: Jaccard similarity about 0.9 or more), each placed after
// its original. Every plant is found, with the sentence it copies, and nothing else.
TEST(NearDuplicates, FindsPlantedCopiesAndTyposAndNothingElse) {
  TextMaker maker(2026);
  std::vector<std::string> texts;
  for (int i = 0; i < 2000; ++i) texts.push_back(maker.Sentence(20 + i % 30));
  struct Plant {
    size_t of;
    DuplicateMatch::Kind kind;
  };
  std::vector<std::pair<std::string, Plant>> plants;
  std::uniform_int_distribution<size_t> pick(0, 1999);
  std::set<size_t> used;
  for (int i = 0; i < 300; ++i) {
    size_t of = pick(maker.rng());
    while (!used.insert(of).second) of = pick(maker.rng());
    const bool exact = i % 2 == 0;
    plants.push_back({exact ? texts[of] : maker.Typo(texts[of]),
                      {of, exact ? DuplicateMatch::Kind::kExact : DuplicateMatch::Kind::kNear}});
  }
  // Each plant goes somewhere after its original: map original positions through the insertions.
  std::vector<std::string> all;
  std::map<int64_t, Plant> planted;  // position in `all` -> what it copies (position in `all`)
  std::map<size_t, std::vector<std::pair<std::string, Plant>>> after;
  for (auto& p : plants) {
    const size_t at = std::uniform_int_distribution<size_t>(p.second.of, 1999)(maker.rng());
    after[at].push_back(p);
  }
  std::vector<int64_t> position(2000);
  for (size_t i = 0; i < texts.size(); ++i) {
    position[i] = static_cast<int64_t>(all.size());
    all.push_back(texts[i]);
    for (auto& [text, plant] : after[i]) {
      planted[static_cast<int64_t>(all.size())] = {static_cast<size_t>(position[plant.of]), plant.kind};
      all.push_back(text);
    }
  }
  const DuplicateReport report = FindDuplicates(all, NearDuplicateOptions{});
  int64_t right = 0;
  for (const DuplicatePair& d : report.duplicates) {
    const auto it = planted.find(d.index);
    ASSERT_NE(it, planted.end()) << "not planted: " << all[d.index] << "\n  like " << all[d.of];
    EXPECT_EQ(d.of, static_cast<int64_t>(it->second.of));
    EXPECT_EQ(d.kind, it->second.kind) << all[d.index];
    right += d.of == static_cast<int64_t>(it->second.of) && d.kind == it->second.kind;
  }
  // Precision is exact above (nothing unplanted); recall at least 0.95 of each kind.
  EXPECT_EQ(report.exact, 150);
  EXPECT_GE(report.near, 143);
  EXPECT_GE(right, 293);

  // Deterministic.
  const DuplicateReport again = FindDuplicates(all, NearDuplicateOptions{});
  ASSERT_EQ(again.duplicates.size(), report.duplicates.size());
  for (size_t i = 0; i < report.duplicates.size(); ++i) EXPECT_EQ(again.duplicates[i].of, report.duplicates[i].of);
}

TEST(NearDuplicates, CopiesOfHeldOutTextsAreFoundAllOfThem) {
  TextMaker maker(11);
  std::vector<std::string> train, validation;
  for (int i = 0; i < 500; ++i) train.push_back(maker.Sentence(20));
  for (int i = 0; i < 100; ++i) validation.push_back(maker.Sentence(20));
  validation[3] = train[10];              // exact copy
  validation[4] = maker.Typo(train[20]);  // near copy
  validation[5] = train[10];              // the same training text copied twice
  std::vector<int64_t> among(train.size()), held(validation.size());
  std::iota(among.begin(), among.end(), 0);
  std::iota(held.begin(), held.end(), 0);
  const std::vector<DuplicatePair> copies = FindCopies(train, among, validation, held, NearDuplicateOptions{});
  ASSERT_EQ(copies.size(), 3u);
  EXPECT_EQ(copies[0].index, 10);
  EXPECT_EQ(copies[0].of, 3);
  EXPECT_EQ(copies[0].kind, DuplicateMatch::Kind::kExact);
  EXPECT_EQ(copies[1].index, 10);
  EXPECT_EQ(copies[1].of, 5);
  EXPECT_EQ(copies[1].kind, DuplicateMatch::Kind::kExact);
  EXPECT_EQ(copies[2].index, 20);
  EXPECT_EQ(copies[2].of, 4);
  EXPECT_EQ(copies[2].kind, DuplicateMatch::Kind::kNear);
  // Only the listed indices take part.
  EXPECT_TRUE(FindCopies(train, {11, 12}, validation, held, NearDuplicateOptions{}).empty());
  EXPECT_TRUE(FindCopies(train, among, validation, {0, 1, 2}, NearDuplicateOptions{}).empty());
}

}  // namespace
}  // namespace shardtune
