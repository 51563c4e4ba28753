#include "common/tensorboard.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"

namespace shardtune {
namespace {

TEST(TensorBoard, Crc32cMatchesTheCastagnoliCheckValue) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);  // the standard check value of CRC-32C
  EXPECT_EQ(Crc32c("", 0), 0u);
}

TEST(TensorBoard, WritesRecordsThatReadBackWithTheirCrcs) {
  testing::ScratchDir dir;
  std::filesystem::path path;
  {
    TensorBoardWriter tb(dir.path() / "tb", /*resumed_at_step=*/7);
    tb.Scalar("loss", 8, 2.5);
    tb.Scalar("tasks/count/val_loss", 9, 0.125);
    tb.Flush();
    path = tb.path();
  }
  EXPECT_EQ(path.filename().string().rfind("events.out.tfevents.", 0), 0u);
  const std::vector<TensorBoardEvent> events = ReadTensorBoardFile(path);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_TRUE(events[1].session_start);
  EXPECT_EQ(events[1].step, 7);
  EXPECT_EQ(events[2].step, 8);
  ASSERT_EQ(events[2].scalars.size(), 1u);
  EXPECT_EQ(events[2].scalars[0].first, "loss");
  EXPECT_EQ(events[2].scalars[0].second, 2.5f);
  EXPECT_EQ(events[3].scalars[0].first, "tasks/count/val_loss");
  EXPECT_EQ(events[3].scalars[0].second, 0.125f);
  EXPECT_GT(events[3].wall_time, 1.7e9);

  // One flipped bit anywhere is caught, and named by its offset.
  std::string bytes = ReadFile(path);
  bytes[bytes.size() - 7] ^= 0x10;
  testing::WriteText(dir.path() / "bad", bytes);
  try {
    ReadTensorBoardFile(dir.path() / "bad");
    FAIL() << "a corrupted record was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CRC does not match"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardtune
