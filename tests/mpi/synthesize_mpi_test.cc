// shardtune synthesize on many ranks: the ranks split each round's candidates, rank 0 filters
// them in candidate order, and the file written is the single process's, byte for byte (each
// candidate's shots and sampling are seeded by its index alone).
#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "synthesis_teacher.h"
#include "worker/synthesize.h"
#include "world.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::World;

TEST(SynthesizeOnRanks, WritesWhatOneProcessWrites) {
  const fs::path dir = testing::SharedScratchDir("synthesize");
  SynthesizeOptions options = testing::TeacherSynthesis(dir);
  if (World().rank() == 0) {
    testing::WriteSentimentTeacher(dir);
    SingleProcessCommunicator alone;
    options.out = dir / "alone.jsonl";
    Synthesize(options, alone);
  }
  World().Barrier(CollectiveTag{"teacher"});
  options.out = dir / "ranks.jsonl";
  const nlohmann::json report = Synthesize(options, World());
  EXPECT_EQ(report.at("ranks"), World().size());
  World().Barrier(CollectiveTag{"written"});
  if (World().rank() == 0) {
    const std::string alone = ReadFile(dir / "alone.jsonl");
    EXPECT_FALSE(alone.empty());
    EXPECT_EQ(ReadFile(dir / "ranks.jsonl"), alone);
  }
  World().Barrier(CollectiveTag{"compared"});
  if (World().rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace shardtune
