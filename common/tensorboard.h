#pragma once
// TensorBoard's event files ("tfevents"), written without TensorFlow: what TensorBoard loads.
//
// A file is a sequence of records, each
//   uint64 length | uint32 masked CRC-32C of the length's 8 bytes | data | uint32 masked CRC-32C of data
// (little-endian; masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8), and each record's data
// is a serialized tensorflow.Event: wall_time (field 1, double), step (2, int64), and one of
// file_version (3, string: the first record), summary (5: Summary{repeated Value value = 1},
// Value{string tag = 1, float simple_value = 2}) or session_log (7: SessionLog{status = 1},
// START = 1). A START at step S tells TensorBoard to discard what earlier files logged after S:
// a resumed run writes one, so its curves have no doubled steps.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace shardtune {

// CRC-32C (Castagnoli), as TFRecord frames use it.
uint32_t Crc32c(const void* data, size_t size);

class TensorBoardWriter {
 public:
  // Creates DIR (if needed) and a new file DIR/events.out.tfevents.<unix seconds>.<host>.<pid>
  // (with a numeric suffix if that exists);
  // `resumed_at_step` >= 0 marks a run resumed at that step (a SessionLog START).
  TensorBoardWriter(const std::filesystem::path& dir, int64_t resumed_at_step = -1);

  void Scalar(const std::string& tag, int64_t step, double value);
  void Flush();
  const std::filesystem::path& path() const { return path_; }

 private:
  void Record(const std::string& event);

  std::filesystem::path path_;
  std::ofstream out_;
};

// What a file holds, read back with every record's framing and CRCs checked (a bad one fails
// with the file and offset).
struct TensorBoardEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;  // set on the first record
  bool session_start = false;
  std::vector<std::pair<std::string, float>> scalars;  // tag, simple_value
};
std::vector<TensorBoardEvent> ReadTensorBoardFile(const std::filesystem::path& path);

}  // namespace shardtune
