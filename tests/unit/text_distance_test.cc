#include "common/text_distance.h"

#include <gtest/gtest.h>

namespace shardtune {
namespace {

TEST(EditDistance, CountsSingleByteEdits) {
  EXPECT_EQ(EditDistance("", ""), 0u);
  EXPECT_EQ(EditDistance("epochs", "epochs"), 0u);
  EXPECT_EQ(EditDistance("epoch", "epochs"), 1u);
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3u);
  EXPECT_EQ(EditDistance("abc", ""), 3u);
}

TEST(ClosestMatch, SuggestsTyposButNotUnrelatedWords) {
  const std::vector<std::string> keys = {"epochs", "max_steps", "micro_batch_size", "global_batch_size"};
  EXPECT_EQ(ClosestMatch("epoch", keys), "epochs");
  EXPECT_EQ(ClosestMatch("micro_batchsize", keys), "micro_batch_size");
  EXPECT_EQ(ClosestMatch("banana", keys), "");
}

}  // namespace
}  // namespace shardtune
