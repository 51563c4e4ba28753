#include "common/atomic_file.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "test_util.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

size_t CountEntries(const fs::path& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(AtomicFileWriter, NothingVisibleUntilCommit) {
  ScratchDir dir;
  const fs::path target = dir / "model.bin";
  {
    AtomicFileWriter writer(target);
    writer.Write("half");
    EXPECT_FALSE(fs::exists(target));
    writer.Write(" and the rest");
    writer.Commit();
  }
  EXPECT_EQ(ReadFile(target), "half and the rest");
  EXPECT_EQ(CountEntries(dir.path()), 1u);
}

TEST(AtomicFileWriter, AbandonedWriteLeavesTheOldFileAndNoTemporary) {
  ScratchDir dir;
  const fs::path target = dir / "metrics.jsonl";
  WriteFileAtomic(target, "old\n");
  {
    AtomicFileWriter writer(target);
    writer.Write("new but never committed");
  }
  EXPECT_EQ(ReadFile(target), "old\n");
  EXPECT_EQ(CountEntries(dir.path()), 1u);
}

TEST(ReadFile, NamesAMissingFile) {
  ScratchDir dir;
  try {
    ReadFile(dir / "absent.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("absent.json"), std::string::npos);
  }
}

TEST(RenameDirectoryAtomic, MovesACompleteDirectory) {
  ScratchDir dir;
  fs::create_directories(dir / "step-5.tmp");
  WriteFileAtomic(dir / "step-5.tmp" / "index.json", "{}");
  RenameDirectoryAtomic(dir / "step-5.tmp", dir / "step-5");
  EXPECT_FALSE(fs::exists(dir / "step-5.tmp"));
  EXPECT_EQ(ReadFile(dir / "step-5" / "index.json"), "{}");
}

}  // namespace
}  // namespace shardtune
