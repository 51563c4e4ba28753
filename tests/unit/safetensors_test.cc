#include "common/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// Writes a safetensors file byte by byte: the declared header length, the header, the data.
void WriteRaw(const fs::path& path, uint64_t declared_length, const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(declared_length >> (8 * i));
  testing::WriteText(path, bytes + header + data);
}
void WriteRaw(const fs::path& path, const std::string& header, const std::string& data) {
  WriteRaw(path, header.size(), header, data);
}

// Opens `path` expecting a kDataLoss error whose message contains `fragment` and the file name.
void ExpectRejected(const fs::path& path, const std::string& fragment) {
  try {
    SafetensorsFile::Open(path);
    FAIL() << "expected " << path << " to be rejected with '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kDataLoss) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path.filename().string()), std::string::npos) << e.what();
  }
}

// Writes a file of `header` and `data` (WriteRaw) and expects ExpectRejected's error.
void ExpectFileRejected(const std::string& header, const std::string& data, const std::string& fragment) {
  ScratchDir dir;
  WriteRaw(dir / "x.safetensors", header, data);
  ExpectRejected(dir / "x.safetensors", fragment);
}

TEST(Safetensors, WritesWhatItReadsWithAlignedHeader) {
  ScratchDir dir;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const std::vector<uint16_t> b = {0x3f80, 0xc000};  // bf16 1.0, -2.0
  WriteSafetensors(dir / "t.safetensors", {{"a", DType::kF32, {2, 3}, a.data(), a.size() * 4},
                                           {"b.bias", DType::kBF16, {2}, b.data(), b.size() * 2}});
  const std::string raw = ReadFile(dir / "t.safetensors");
  uint64_t header_length = 0;
  std::memcpy(&header_length, raw.data(), 8);
  EXPECT_EQ((8 + header_length) % 8, 0u) << "the data section must start 8-byte aligned";

  const auto file = SafetensorsFile::Open(dir / "t.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_NE(file->Find("a"), nullptr);
  EXPECT_EQ(file->Find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(file->Data(*file->Find("a")), a.data(), 24), 0);
  EXPECT_EQ(file->Find("b.bias")->dtype, DType::kBF16);
  EXPECT_EQ(std::memcmp(file->Data(*file->Find("b.bias")), b.data(), 4), 0);
}

TEST(Safetensors, ShardedModelRoundTripsThroughTheIndex) {
  ScratchDir dir;
  std::vector<std::vector<float>> data;
  std::vector<TensorBytes> tensors;
  for (int i = 0; i < 5; ++i) data.push_back(std::vector<float>(10, static_cast<float>(i)));
  for (int i = 0; i < 5; ++i) tensors.push_back({"w" + std::to_string(i), DType::kF32, {10}, data[i].data(), 40});
  WriteSafetensorsModel(dir.path(), tensors, /*max_shard_bytes=*/100);
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir / "model-00003-of-00003.safetensors"));
  const auto checkpoint = SafetensorsCheckpoint::Open(dir.path());
  EXPECT_EQ(checkpoint.Names().size(), 5u);
  for (int i = 0; i < 5; ++i) {
    const auto entry = checkpoint.Find("w" + std::to_string(i));
    ASSERT_TRUE(entry.has_value());
    EXPECT_EQ(reinterpret_cast<const float*>(entry->file->Data(*entry->info))[9], static_cast<float>(i));
  }
}

TEST(Safetensors, ProcessesSharingTheFilesWriteWhatOneProcessWrites) {
  std::vector<std::vector<float>> data;
  std::vector<TensorMeta> metas;
  for (int i = 0; i < 7; ++i) data.push_back(std::vector<float>(10 + i, static_cast<float>(i)));
  for (int i = 0; i < 7; ++i) metas.push_back({"w" + std::to_string(i), DType::kF32, {10 + i}});
  ScratchDir one, three;
  auto write = [&](const fs::path& dir, FileShare share) {
    SafetensorsModelWriter writer(dir, metas, /*max_shard_bytes=*/100, share);
    for (int i = 0; i < 7; ++i) {
      if (writer.Writes(metas[i].name)) writer.Append(metas[i].name, data[i].data(), data[i].size() * 4);
    }
    writer.Finish();
  };
  write(one.path(), {});
  for (int p : {2, 0, 1}) write(three.path(), {p, 3});  // any order: each writes only its own files
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(one.path())) names.push_back(entry.path().filename().string());
  EXPECT_EQ(names.size(), 6u);  // 5 files (2 tensors each at most) and the index
  for (const auto& name : names) EXPECT_EQ(ReadFile(three / name), ReadFile(one / name)) << name;
  EXPECT_EQ(std::distance(fs::directory_iterator(three.path()), fs::directory_iterator()), 6);

  // A process's files only: file k (0-based) is process k mod 3's; only process 0 writes the index.
  ScratchDir second;
  write(second.path(), {1, 3});
  EXPECT_TRUE(fs::exists(second / "model-00002-of-00005.safetensors"));
  EXPECT_TRUE(fs::exists(second / "model-00005-of-00005.safetensors"));
  EXPECT_EQ(std::distance(fs::directory_iterator(second.path()), fs::directory_iterator()), 2);
  SafetensorsModelWriter unfinished(second / "x", metas, 100, {1, 3});
  EXPECT_FALSE(unfinished.Writes("w0"));
  EXPECT_THROW(unfinished.Finish(), Error);  // its tensors were not appended
}

TEST(Safetensors, IndexNamingAMissingShardIsAnError) {
  ScratchDir dir;
  testing::WriteText(dir / "model.safetensors.index.json",
                     R"({"weight_map": {"w": "model-00001-of-00002.safetensors"}})");
  try {
    SafetensorsCheckpoint::Open(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model-00001-of-00002.safetensors"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsMalformed, FileShorterThanEightBytes) {
  ScratchDir dir;
  testing::WriteText(dir / "short.safetensors", "abc");
  ExpectRejected(dir / "short.safetensors", "is 3 bytes");
}

TEST(SafetensorsMalformed, HeaderLengthBeyondTheFile) {
  ScratchDir dir;
  WriteRaw(dir / "x.safetensors", 5000, "{}", "");
  ExpectRejected(dir / "x.safetensors", "runs past the end");
}

TEST(SafetensorsMalformed, HeaderLargerThan100MB) {
  ScratchDir dir;
  WriteRaw(dir / "x.safetensors", 200'000'000, "{}", "");
  ExpectRejected(dir / "x.safetensors", "exceeds the limit");
}

TEST(SafetensorsMalformed, HeaderNotUtf8) {
  ExpectFileRejected("{\"w\xff\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", "abcd",
                     "not valid UTF-8");
}

TEST(SafetensorsMalformed, HeaderNotJson) { ExpectFileRejected("{\"w\": [1, 2", "", "not valid JSON"); }

TEST(SafetensorsMalformed, HeaderNotAnObject) { ExpectFileRejected("[1, 2]", "", "must be a JSON object"); }

TEST(SafetensorsMalformed, UnknownDtype) {
  ExpectFileRejected(R"({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", "abcd", "unknown dtype 'F33'");
}

TEST(SafetensorsMalformed, ShapeTimesDtypeDisagreesWithOffsets) {
  ExpectFileRejected(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", std::string(20, 'x'),
                     "needs 24 bytes but data_offsets [0, 20] span 20");
}

TEST(SafetensorsMalformed, NegativeDimension) {
  ExpectFileRejected(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "abcd",
                     "not a non-negative integer");
}

TEST(SafetensorsMalformed, OffsetsOutOfRange) {
  ExpectFileRejected(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", "abcd",
                     "run past the data section of 4 bytes");
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  ExpectFileRejected(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                     std::string(12, 'x'), "overlaps tensor 'a'");
}

TEST(SafetensorsMalformed, GapBetweenTensors) {
  ExpectFileRejected(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                     std::string(12, 'x'), "gap of 4 bytes before tensor 'b'");
}

TEST(SafetensorsMalformed, TrailingBytes) {
  ExpectFileRejected(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", std::string(10, 'x'),
                     "6 trailing bytes");
}

TEST(SafetensorsMalformed, MetadataValuesMustBeStrings) {
  ExpectFileRejected(R"({"__metadata__": {"format": 3}})", "", "__metadata__ 'format' must be a string");
}

TEST(SafetensorsMalformed, UnknownTensorField) {
  ExpectFileRejected(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "strides": [1]}})", "abcd",
                     "unknown field 'strides'");
}

TEST(SafetensorsWrite, RefusesSizesThatDisagreeWithTheShape) {
  ScratchDir dir;
  const float value = 1.0f;
  EXPECT_THROW(WriteSafetensors(dir / "x.safetensors", {{"w", DType::kF32, {2}, &value, 4}}), Error);
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
}

}  // namespace
}  // namespace shardtune
