#include "common/run_dir.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/test_knobs.h"
#include "test_util.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// The layout docs/formats.md documents, path by path.
TEST(RunDir, NamesTheDocumentedLayout) {
  const RunDir run("/out/run");
  EXPECT_EQ(run.JobYaml().string(), "/out/run/job.yaml");
  EXPECT_EQ(run.Metrics().string(), "/out/run/metrics.jsonl");
  EXPECT_EQ(run.TensorBoard().string(), "/out/run/tb");
  EXPECT_EQ(run.RankLog(3).string(), "/out/run/logs/rank-00003.log");
  EXPECT_EQ(run.ProfileTrace(7, 1).string(), "/out/run/logs/profile-step-7-rank-00001.json");
  EXPECT_EQ(run.Checkpoint(500).path().string(), "/out/run/checkpoints/step-500");
  EXPECT_EQ(run.Checkpoint(500).Index().string(), "/out/run/checkpoints/step-500/index.json");
  EXPECT_EQ(run.Checkpoint(500).TrainerStateFile().string(), "/out/run/checkpoints/step-500/trainer_state.json");
  EXPECT_EQ(run.Checkpoint(500).RankFile(12).string(), "/out/run/checkpoints/step-500/rank-00012.safetensors");
  EXPECT_EQ(run.BestCheckpoint().path().string(), "/out/run/checkpoints/best");
  EXPECT_EQ(run.Generations().string(), "/out/run/generations.jsonl");
  EXPECT_EQ(run.ReportPng().string(), "/out/run/report.png");
  EXPECT_EQ(run.ReportText().string(), "/out/run/report.txt");
  EXPECT_EQ(run.Final().string(), "/out/run/final");
  EXPECT_EQ(run.Checkpoint(500).Run().root().string(), "/out/run");
}

TEST(RunDir, ParsesOnlyWholeStepNames) {
  EXPECT_EQ(CheckpointDirName(42), "step-42");
  EXPECT_EQ(ParseCheckpointDirName("step-42"), 42);
  EXPECT_EQ(ParseCheckpointDirName("step-0"), 0);
  for (const char* other : {"best", "step-", "step-5.tmp", "step--5", "step-+5", "step-5a", "xstep-5", "Step-5",
                            "step-99999999999999999999"})
    EXPECT_EQ(ParseCheckpointDirName(other), std::nullopt) << other;
}

TEST(RunDir, ListsCompleteCheckpointsNewestFirstAndPrunesTheOldest) {
  ScratchDir dir;
  const RunDir run(dir.path());
  EXPECT_TRUE(run.CheckpointsNewestFirst().empty());  // no checkpoints/ yet
  EXPECT_FALSE(run.LatestCheckpoint().has_value());
  for (const char* name : {"step-2", "step-10", "step-9", "step-11.tmp", "best"})
    fs::create_directories(run.Checkpoints() / name);
  testing::WriteText(run.Checkpoints() / "step-12", "a file, not a checkpoint");

  std::vector<int64_t> steps;
  for (const StepCheckpoint& c : run.CheckpointsNewestFirst()) steps.push_back(c.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{10, 9, 2}));
  EXPECT_EQ(run.LatestCheckpoint()->dir.path().string(), run.Checkpoint(10).path().string());

  run.PruneCheckpoints(0);  // keeps all
  EXPECT_EQ(run.CheckpointsNewestFirst().size(), 3u);
  run.PruneCheckpoints(2);
  EXPECT_FALSE(fs::exists(run.Checkpoint(2).path()));
  EXPECT_TRUE(fs::exists(run.Checkpoint(9).path()));
  EXPECT_TRUE(fs::exists(run.Checkpoint(10).path()));
  EXPECT_TRUE(fs::exists(run.BestCheckpoint().path()));
  EXPECT_TRUE(fs::exists(run.Checkpoints() / "step-11.tmp"));

  // What a run killed mid-write leaves goes at the next start; checkpoints and files stay.
  fs::create_directories(run.Checkpoints() / "best.tmp");
  run.RemoveUnfinishedCheckpoints();
  EXPECT_FALSE(fs::exists(run.Checkpoints() / "step-11.tmp"));
  EXPECT_FALSE(fs::exists(run.Checkpoints() / "best.tmp"));
  EXPECT_EQ(run.CheckpointsNewestFirst().size(), 2u);
  EXPECT_TRUE(fs::exists(run.BestCheckpoint().path()));
  EXPECT_TRUE(fs::exists(run.Checkpoints() / "step-12"));
  RunDir(dir / "nothing").RemoveUnfinishedCheckpoints();  // no checkpoints/: nothing to do
}

TEST(RunDir, FinishedMeansFinalExists) {
  ScratchDir dir;
  const RunDir run(dir.path());
  EXPECT_FALSE(run.HasFinal());
  EXPECT_FALSE(run.Checkpoint(1).HasIndex());
  fs::create_directories(run.Final());
  EXPECT_TRUE(run.HasFinal());
  testing::WriteText(run.Checkpoint(1).Index(), "{}");
  EXPECT_TRUE(run.Checkpoint(1).HasIndex());
}

TEST(StagedDirectory, NothingAtTheTargetUntilCommit) {
  ScratchDir dir;
  const StagedDirectory staged(dir / "final", StagedDirectory::Existing::kRefuse);
  EXPECT_EQ(staged.staging().string(), (dir / "final.tmp").string());
  testing::WriteText(staged.staging() / "stale", "from a crashed attempt");
  staged.Begin();
  EXPECT_FALSE(fs::exists(staged.staging() / "stale"));
  WriteFileAtomic(staged.staging() / "config.json", "{}");
  EXPECT_FALSE(fs::exists(dir / "final"));
  staged.Commit();
  EXPECT_EQ(ReadFile(dir / "final" / "config.json"), "{}");
  EXPECT_FALSE(fs::exists(staged.staging()));
}

TEST(StagedDirectory, RefusesOrReplacesAnExistingTarget) {
  ScratchDir dir;
  testing::WriteText(dir / "final" / "config.json", "old");
  const StagedDirectory refusing(dir / "final", StagedDirectory::Existing::kRefuse);
  try {
    refusing.Begin();
    FAIL() << "Begin() overwrote an existing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFailedPrecondition);
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ReadFile(dir / "final" / "config.json"), "old");

  testing::WriteText(dir / "best" / "index.json", "old");
  const StagedDirectory replacing(dir / "best", StagedDirectory::Existing::kReplace);
  replacing.Begin();
  WriteFileAtomic(replacing.staging() / "trainer_state.json", "new");
  replacing.Commit();
  EXPECT_FALSE(fs::exists(dir / "best" / "index.json"));
  EXPECT_EQ(ReadFile(dir / "best" / "trainer_state.json"), "new");
}

TEST(TestKnobs, ReadFromTheEnvironment) {
  unsetenv("SHARDTUNE_TEST_STALL");
  unsetenv("SHARDTUNE_TEST_NCCL_SPLIT");
  EXPECT_FALSE(TestKnobs::FromEnvironment().stall.has_value());
  EXPECT_FALSE(TestKnobs::FromEnvironment().nccl_split);

  setenv("SHARDTUNE_TEST_STALL", "1:2", 1);
  setenv("SHARDTUNE_TEST_NCCL_SPLIT", "1", 1);
  const TestKnobs knobs = TestKnobs::FromEnvironment();
  ASSERT_TRUE(knobs.stall.has_value());
  EXPECT_EQ(knobs.stall->rank, 1);
  EXPECT_EQ(knobs.stall->step, 2);
  EXPECT_TRUE(knobs.nccl_split);

  for (const char* malformed : {"1", "1:", ":2", "a:2", "1:2:3"}) {
    setenv("SHARDTUNE_TEST_STALL", malformed, 1);
    try {
      TestKnobs::FromEnvironment();
      ADD_FAILURE() << malformed << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("SHARDTUNE_TEST_STALL"), std::string::npos) << e.what();
    }
  }
  unsetenv("SHARDTUNE_TEST_STALL");
  unsetenv("SHARDTUNE_TEST_NCCL_SPLIT");

  EXPECT_FALSE(TestKnobs::FromEnvironment().pause_checkpoint_write.has_value());
  setenv("SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE", "4", 1);
  EXPECT_EQ(TestKnobs::FromEnvironment().pause_checkpoint_write, 4);
  for (const char* malformed : {"", "0", "-1", "4x", "a"}) {
    setenv("SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE", malformed, 1);
    EXPECT_THROW(TestKnobs::FromEnvironment(), Error) << malformed;
  }
  unsetenv("SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE");
}

}  // namespace
}  // namespace shardtune
