#include "worker/data/example_selection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <numeric>
#include <random>

#include "worker/data/token_dataset.h"

namespace shardtune {
namespace {

// n sentences of ten random made-up words: no two are near duplicates. `seed` picks the words.
std::vector<std::string> Sentences(int n, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> letter('a', 'z'), length(4, 8);
  std::vector<std::string> texts;
  for (int i = 0; i < n; ++i) {
    std::string text;
    for (int w = 0; w < 10; ++w) {
      text += w ? " " : "";
      for (int k = length(rng); k > 0; --k) text.push_back(static_cast<char>(letter(rng)));
    }
    texts.push_back(text);
  }
  return texts;
}

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

SelectionInputs Inputs(const std::vector<std::string>& train, DedupMode mode) {
  SelectionInputs in;
  in.train_size = static_cast<int64_t>(train.size());
  in.train_texts = &train;
  in.dedup.mode = mode;
  in.find_duplicates = true;
  return in;
}

TEST(ExampleSelection, WithoutDedupItIsTheOldSelection) {
  const std::vector<std::string> train = Sentences(50);
  SelectionInputs in;
  in.train_size = 50;
  in.validation_split = 0.2;
  in.seed = 9;
  const TaskSelection s = SelectExamples(in);
  const std::vector<bool> held = ValidationMask(50, 0.2, 9);
  std::vector<int64_t> train_expected, validation_expected;
  for (int64_t i = 0; i < 50; ++i) (held[i] ? validation_expected : train_expected).push_back(i);
  EXPECT_EQ(s.train, train_expected);
  EXPECT_EQ(s.validation, validation_expected);
  EXPECT_TRUE(s.validation_from_train);
  EXPECT_EQ(s.dedup.exact + s.dedup.near + s.dedup.leaked, 0);
}

TEST(ExampleSelection, RemovesDuplicatesAndTrainingCopiesOfValidation) {
  std::vector<std::string> train = Sentences(40);
  train.push_back(train[3]);                               // 40: exact copy of 3
  train.push_back(Upper(train[5]) + "!");                  // 41: case and punctuation: near copy of 5
  train.push_back(train[41]);                              // 42: exact copy of 41 (itself a duplicate)
  std::vector<std::string> validation = Sentences(15, 2);  // texts unlike train's...
  validation.push_back(train[7]);                          // ...and an exact copy of training example 7
  validation.push_back(train[9] + ".");                    // a near copy of 9

  for (const DedupMode mode : {DedupMode::kNone, DedupMode::kExact, DedupMode::kNear}) {
    SelectionInputs in = Inputs(train, mode);
    in.validation_size = static_cast<int64_t>(validation.size());
    in.validation_texts = &validation;
    const TaskSelection s = SelectExamples(in);
    EXPECT_EQ(s.dedup.exact, 2);  // 40 and 42 (42 copies 41 byte for byte, but 41 is not kept: it near-copies 5)
    EXPECT_EQ(s.dedup.near, 1);   // 41
    EXPECT_EQ(s.dedup.leaked, 2);
    EXPECT_EQ(s.validation.size(), validation.size());
    const auto has = [&](int64_t d) { return std::count(s.train.begin(), s.train.end(), d) > 0; };
    switch (mode) {
      case DedupMode::kNone:
        EXPECT_EQ(s.train.size(), train.size());
        break;
      case DedupMode::kExact:  // exact duplicates and the exact copy of validation
        EXPECT_FALSE(has(40));
        EXPECT_FALSE(has(42));
        EXPECT_FALSE(has(7));
        EXPECT_TRUE(has(41));
        EXPECT_TRUE(has(9));
        EXPECT_EQ(s.dedup.removed_duplicates + s.dedup.removed_copies, 3);
        break;
      case DedupMode::kNear:
        for (const int64_t d : {40, 41, 42, 7, 9}) EXPECT_FALSE(has(d)) << d;
        EXPECT_EQ(s.dedup.removed_duplicates + s.dedup.removed_copies, 5);
        break;
    }
  }
}

TEST(ExampleSelection, DedupRunsBeforeTheSplitSoCopiesNeverStraddleIt) {
  std::vector<std::string> train = Sentences(200);
  for (int i = 0; i < 50; ++i) train.push_back(train[i]);
  SelectionInputs none = Inputs(train, DedupMode::kNone);
  none.validation_split = 0.3;
  none.seed = 4;
  EXPECT_GT(SelectExamples(none).dedup.leaked, 0);  // some copies land on both sides
  SelectionInputs near = none;
  near.dedup.mode = DedupMode::kNear;
  const TaskSelection s = SelectExamples(near);
  EXPECT_EQ(s.dedup.leaked, 0);
  EXPECT_EQ(s.dedup.exact, 50);
  EXPECT_EQ(s.train.size() + s.validation.size(), 200u);
  for (const int64_t d : s.train) EXPECT_LT(d, 200);
  for (const int64_t d : s.validation) EXPECT_LT(d, 200);
}

TEST(ExampleSelection, OversamplingEqualizesClassesDeterministically) {
  // Classes: 0 x6, 1 x2, 2 x4; document 12 has none.
  const std::vector<int64_t> classes = {0, 0, 1, 0, 2, 0, 2, 0, 1, 2, 0, 2, -1};
  std::vector<int64_t> train(classes.size());
  std::iota(train.begin(), train.end(), 0);
  const std::vector<int64_t> out = Oversampled(train, classes, 5);
  std::map<int64_t, int64_t> per_class;
  for (const int64_t d : out) ++per_class[classes[d]];
  EXPECT_EQ(per_class[0], 6);
  EXPECT_EQ(per_class[1], 6);  // each of the two 3 times
  EXPECT_EQ(per_class[2], 6);  // each of the four once, two of them twice
  EXPECT_EQ(per_class[-1], 1);
  EXPECT_EQ(std::count(out.begin(), out.end(), 2), 3);
  EXPECT_EQ(Oversampled(train, classes, 5), out);
  EXPECT_TRUE(std::is_sorted(out.begin(), out.end()));  // repeats sit beside their document
}

TEST(ExampleSelection, BalancedWeightsAreScikitLearns) {
  // compute_class_weight("balanced") for counts 6, 2, 4: n / (k * count) with n = 12, k = 3.
  const std::vector<double> w = BalancedClassWeights({6, 2, 4, 0});
  EXPECT_DOUBLE_EQ(w[0], 12.0 / 18);
  EXPECT_DOUBLE_EQ(w[1], 2.0);
  EXPECT_DOUBLE_EQ(w[2], 1.0);
  EXPECT_DOUBLE_EQ(w[3], 0.0);
  EXPECT_DOUBLE_EQ((6 * w[0] + 2 * w[1] + 4 * w[2]) / 12, 1.0);  // they average 1 over the data
}

}  // namespace
}  // namespace shardtune
