#pragma once
// Protocol Buffers' wire format, read by hand: just what shardtune reads without generated code
// (SentencePiece's ModelProto, TensorBoard's Event). Errors name `where` and the byte offset.

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "common/error.h"

namespace shardtune {

// Reads one message's bytes, field by field.
class WireReader {
 public:
  WireReader(std::string_view data, std::string where) : data_(data), where_(std::move(where)) {}
  bool Done() const { return pos_ >= data_.size(); }

  // Calls visit(field, wire_type, reader) for every field of a message; fields it does not
  // consume (it returns false) are skipped.
  template <typename Visit>
  static void ForEachField(std::string_view data, const std::string& where, Visit visit) {
    WireReader r(data, where);
    while (!r.Done()) {
      const uint64_t key = r.Varint();
      const int wire = static_cast<int>(key & 7);
      if (!visit(key >> 3, wire, r)) r.Skip(wire);
    }
  }
  uint64_t Varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) Truncated();
      const auto byte = static_cast<uint8_t>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    Fail(ErrorCode::kDataLoss, "{}: malformed varint at byte {}", where_, pos_);
  }
  std::string_view Bytes() {
    const uint64_t length = Varint();
    if (length > data_.size() - pos_) Truncated();
    const std::string_view out = data_.substr(pos_, length);
    pos_ += length;
    return out;
  }
  double Fixed64() {
    if (data_.size() - pos_ < 8) Truncated();
    double value;
    std::memcpy(&value, data_.data() + pos_, 8);
    pos_ += 8;
    return value;
  }
  float Fixed32() {
    if (data_.size() - pos_ < 4) Truncated();
    float value;
    std::memcpy(&value, data_.data() + pos_, 4);
    pos_ += 4;
    return value;
  }
  void Skip(int wire_type) {
    switch (wire_type) {
      case 0:
        Varint();
        break;
      case 1:
        Advance(8);
        break;
      case 2:
        Bytes();
        break;
      case 5:
        Advance(4);
        break;
      default:
        Fail(ErrorCode::kDataLoss, "{}: unknown protobuf wire type {} at byte {}", where_, wire_type, pos_);
    }
  }

 private:
  void Advance(size_t n) {
    if (data_.size() - pos_ < n) Truncated();
    pos_ += n;
  }
  [[noreturn]] void Truncated() const {
    Fail(ErrorCode::kDataLoss, "{}: truncated protobuf message at byte {}", where_, pos_);
  }
  std::string_view data_;
  size_t pos_ = 0;
  std::string where_;
};

}  // namespace shardtune
