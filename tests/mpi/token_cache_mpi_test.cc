// The token cache built by the ranks together (each a slice of the records, rank 0 writing the
// file) equals, byte for byte, the one a single process builds, holds ReadDataset's examples,
// is reused by every rank, and reports bad data with the line numbers of the whole file on
// every rank.

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/atomic_file.h"
#include "test_util.h"
#include "worker/data/communicator_cache_group.h"
#include "worker/data/formats.h"
#include "worker/data/token_cache.h"
#include "world.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;

// `tokens` records of varied lengths (labels on some), with blank lines between some of them.
std::string TokenLines(int count) {
  std::string text;
  for (int i = 0; i < count; ++i) {
    std::string ids = "1", labels = "-100";
    for (int t = 0; t < 3 + (i * 7) % 23; ++t) {
      ids += ", " + std::to_string(3 + (i * 13 + t * 5) % 90);
      labels += ", " + std::to_string(t % 3 == 0 ? -100 : 3 + (i * 13 + t * 5) % 90);
    }
    text += i % 3 == 0 ? "{\"input_ids\": [" + ids + "], \"labels\": [" + labels + "]}\n"
                       : "{\"input_ids\": [" + ids + "]}\n";
    if (i % 11 == 5) text += "\n";
  }
  return text;
}

FormatOptions TokensOptions() {
  FormatOptions o;
  o.format = DataFormat::kTokens;
  o.vocab_size = 100;
  return o;
}

TEST(TokenCacheMpi, TheRanksBuildTheCacheOneProcessBuildsAndAllReuseIt) {
  Communicator& world = testing::World();
  CommunicatorCacheGroup group(world);
  const fs::path dir = testing::SharedScratchDir("token-cache");
  const fs::path data = dir / "train.jsonl";
  if (world.rank() == 0) testing::WriteText(data, TokenLines(157));
  world.Barrier(CollectiveTag{"data written"});

  const TokenCacheRequest request{data, TokensOptions(), "", dir / "cache"};
  const TokenCacheResult built = OpenOrBuildTokenCache(request, group);
  EXPECT_TRUE(built.built);
  FormatOptions options = TokensOptions();
  for (int64_t max_len : {int64_t{0}, int64_t{12}}) {
    options.max_seq_len = max_len;
    const TokenDataset expected = ReadDataset(data, options);
    ASSERT_EQ(built.cache->size(), static_cast<int64_t>(expected.examples.size()));
    for (int64_t i = 0; i < built.cache->size(); ++i) {
      const Example e = built.cache->Read(i, max_len);
      EXPECT_EQ(e.input_ids, expected.examples[static_cast<size_t>(i)].input_ids) << i;
      EXPECT_EQ(e.labels, expected.examples[static_cast<size_t>(i)].labels) << i;
    }
    EXPECT_EQ(built.cache->LongerThan(max_len), expected.truncated);
  }
  // Byte for byte what one process builds.
  if (world.rank() == 0) {
    SoloGroup alone;
    const TokenCacheResult solo = OpenOrBuildTokenCache({data, TokensOptions(), "", dir / "solo"}, alone);
    EXPECT_EQ(ReadFile(solo.cache->path()), ReadFile(built.cache->path()));
  }
  world.Barrier(CollectiveTag{"compared"});

  const TokenCacheResult again = OpenOrBuildTokenCache(request, group);
  EXPECT_FALSE(again.built);
  EXPECT_EQ(again.cache->path(), built.cache->path());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "cache"), fs::directory_iterator()), 1);
  world.Barrier(CollectiveTag{"done"});
}

TEST(TokenCacheMpi, BadDataFailsOnEveryRankWithTheLineOfTheWholeFile) {
  Communicator& world = testing::World();
  CommunicatorCacheGroup group(world);
  const fs::path dir = testing::SharedScratchDir("token-cache-bad");
  const fs::path data = dir / "train.jsonl";
  // Near the end: in the last rank's slice.
  std::string text = TokenLines(120);
  const int64_t lines = std::count(text.begin(), text.end(), '\n');
  text += "{\"input_ids\": [1, 500]}\n" + TokenLines(2);
  if (world.rank() == 0) testing::WriteText(data, text);
  world.Barrier(CollectiveTag{"data written"});
  try {
    OpenOrBuildTokenCache({data, TokensOptions(), "", dir / "cache"}, group);
    ADD_FAILURE() << "accepted";
  } catch (const DataError& e) {
    ASSERT_EQ(e.issues().size(), 1u) << e.what();
    EXPECT_EQ(e.issues()[0].line, lines + 1) << e.what();
    EXPECT_EQ(e.issues()[0].code, "token_out_of_vocabulary");
  }
  world.Barrier(CollectiveTag{"failed"});
  EXPECT_FALSE(fs::exists(dir / "cache")) << "a failed build left files behind";
  world.Barrier(CollectiveTag{"done"});
}

}  // namespace
}  // namespace shardtune
