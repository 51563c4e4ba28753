#include "common/text_augmentation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "common/error.h"

namespace shardtune {
namespace {

Synonyms SmallTable() {
  return Synonyms::FromSets({{"good", "well", "beneficial"},
                             {"film", "movie", "picture", "motion picture"},
                             {"great", "outstanding"},
                             {"city", "metropolis"}});
}

AugmentOptions Only(double sr, double ri, double rs, double rd, int64_t copies = 3) {
  AugmentOptions o;
  o.copies = copies;
  o.synonym_replacement = sr;
  o.random_insertion = ri;
  o.random_swap = rs;
  o.random_deletion = rd;
  o.seed = 11;
  return o;
}

TEST(Synonyms, AreTheWordsSharingASynset) {
  const Synonyms table = SmallTable();
  EXPECT_EQ(table.Of("Movie,"), (std::vector<std::string>{"film", "motion picture", "picture"}));
  EXPECT_TRUE(table.Of("the").empty());
}

TEST(Synonyms, LoadsWordNet) {
  const std::filesystem::path dir = Synonyms::DefaultDir();
  if (!std::filesystem::exists(dir / "data.noun")) GTEST_SKIP() << dir << " is absent (Debian: wordnet-base)";
  const Synonyms wordnet = Synonyms::Load(dir);
  const std::vector<std::string> movie = wordnet.Of("movie");
  EXPECT_NE(std::find(movie.begin(), movie.end(), "film"), movie.end());
  const std::vector<std::string> happy = wordnet.Of("happy");  // an adjective, "(a)" markers removed
  EXPECT_NE(std::find(happy.begin(), happy.end(), "felicitous"), happy.end());
  EXPECT_THROW(Synonyms::Load("/nonexistent"), Error);
}

TEST(Augment, SynonymReplacementKeepsPunctuationAndCase) {
  const TaggedWords s{SplitWords("Movie, good"), {}};
  const std::vector<TaggedWords> copies = Augment(s, Only(1.0, 0, 0, 0, 5), SmallTable(), 0);
  ASSERT_EQ(copies.size(), 5u);
  for (const TaggedWords& c : copies) {
    ASSERT_GE(c.words.size(), 2u);
    EXPECT_NE(JoinWords(c.words), "Movie, good");
    EXPECT_TRUE(c.tags.empty());
    EXPECT_TRUE(c.words[0] == "Film," || c.words[0] == "Picture," || c.words[0] == "Motion") << JoinWords(c.words);
  }
}

TEST(Augment, IsDeterministicBySeedAndDiffersByExample) {
  const TaggedWords s{SplitWords("one great film about a good city and its people"), {}};
  const AugmentOptions options = Only(0.2, 0.2, 0.2, 0.5, 8);
  const auto a = Augment(s, options, SmallTable(), 3), b = Augment(s, options, SmallTable(), 3),
             c = Augment(s, options, SmallTable(), 4);
  ASSERT_EQ(a.size(), 8u);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].words, b[i].words);
    differs |= a[i].words != c[i].words;
  }
  EXPECT_TRUE(differs);
  // Round robin: copy 2 is a swap (same words, another order), copy 3 a deletion (fewer words).
  std::vector<std::string> sorted = a[2].words, original = s.words;
  std::sort(sorted.begin(), sorted.end());
  std::sort(original.begin(), original.end());
  EXPECT_EQ(sorted, original);
  EXPECT_LT(a[3].words.size(), s.words.size());
  EXPECT_GT(a[1].words.size(), s.words.size());  // an insertion
}

TEST(Augment, DeletionNeverEmptiesASentence) {
  const TaggedWords s{SplitWords("only three words"), {}};
  for (const TaggedWords& c : Augment(s, Only(0, 0, 0, 1.0, 10), SmallTable(), 1)) EXPECT_EQ(c.words.size(), 1u);
}

// NER: every copy holds the original's entities, whole and in order, with their tags, and its
// tags are valid BIO (an I- tag continues an entity of its type).
TEST(Augment, NerEntitiesStayWholeAndTagsStayAligned) {
  const TaggedWords s{SplitWords("the good film was shot in New York by Ada Lovelace in a great city"),
                      {"O", "O", "O", "O", "O", "O", "B-LOC", "I-LOC", "O", "B-PER", "I-PER", "O", "O", "O", "O"}};
  const auto entities = [](const TaggedWords& t) {
    std::vector<std::string> out;
    for (size_t i = 0; i < t.words.size(); ++i) {
      if (t.tags[i] != "O") out.push_back(t.words[i] + "/" + t.tags[i]);
    }
    return out;
  };
  for (const AugmentOptions& options : {Only(0.5, 0, 0, 0, 4), Only(0, 0.5, 0, 0, 4), Only(0, 0, 0.5, 0, 4),
                                        Only(0, 0, 0, 0.9, 4), Only(0.3, 0.3, 0.3, 0.3, 12)}) {
    for (const TaggedWords& c : Augment(s, options, SmallTable(), 2)) {
      ASSERT_EQ(c.words.size(), c.tags.size());
      EXPECT_EQ(entities(c), entities(s)) << JoinWords(c.words);
      for (size_t i = 0; i < c.tags.size(); ++i) {
        if (c.tags[i].rfind("I-", 0) == 0) {
          ASSERT_GT(i, 0u);
          EXPECT_EQ(c.tags[i - 1].substr(2), c.tags[i].substr(2)) << JoinWords(c.words);
        }
      }
    }
  }
}

}  // namespace
}  // namespace shardtune
