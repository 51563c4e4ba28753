#include "common/test_knobs.h"

#include <charconv>
#include <cstdlib>
#include <string_view>

#include "common/error.h"

namespace shardtune {

namespace {

constexpr const char* kStall = "SHARDTUNE_TEST_STALL";
constexpr const char* kNcclSplit = "SHARDTUNE_TEST_NCCL_SPLIT";
constexpr const char* kPauseCheckpointWrite = "SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE";
constexpr const char* kExportShardBytes = "SHARDTUNE_TEST_EXPORT_SHARD_BYTES";

template <typename Int>
bool ParseWhole(std::string_view text, Int& value) {
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return !text.empty() && error == std::errc() && end == text.data() + text.size();
}

TestKnobs::Stall ParseStall(std::string_view value) {
  const size_t colon = value.find(':');
  TestKnobs::Stall stall;
  if (colon == std::string_view::npos || !ParseWhole(value.substr(0, colon), stall.rank) ||
      !ParseWhole(value.substr(colon + 1), stall.step)) {
    Fail(ErrorCode::kInvalidArgument, "{}={}: expected RANK:STEP (e.g. 1:2)", kStall, value);
  }
  return stall;
}

}  // namespace

TestKnobs TestKnobs::FromEnvironment() {
  TestKnobs knobs;
  if (const char* stall = std::getenv(kStall)) knobs.stall = ParseStall(stall);
  knobs.nccl_split = std::getenv(kNcclSplit) != nullptr;
  if (const char* pause = std::getenv(kPauseCheckpointWrite)) {
    int64_t step = 0;
    if (!ParseWhole(std::string_view(pause), step) || step < 1)
      Fail(ErrorCode::kInvalidArgument, "{}={}: expected a step >= 1 (e.g. 4)", kPauseCheckpointWrite, pause);
    knobs.pause_checkpoint_write = step;
  }
  if (const char* bytes = std::getenv(kExportShardBytes)) {
    uint64_t value = 0;
    if (!ParseWhole(std::string_view(bytes), value) || value == 0)
      Fail(ErrorCode::kInvalidArgument, "{}={}: expected a positive number of bytes", kExportShardBytes, bytes);
    knobs.export_shard_bytes = value;
  }
  return knobs;
}

}  // namespace shardtune
