#include "common/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>

#include "common/error.h"
#include "common/protobuf_wire.h"

namespace shardtune {

namespace {

constexpr uint32_t kMaskDelta = 0xa282ead8u;

uint32_t Masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kMaskDelta; }

double Now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// Protocol Buffers wire format, the few field kinds an Event needs.
void Varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void Tag(std::string& out, int field, int wire_type) { Varint(out, static_cast<uint64_t>(field) << 3 | wire_type); }
template <typename T>
void Fixed(std::string& out, int field, T value) {  // double (wire type 1) or float (wire type 5)
  Tag(out, field, sizeof(T) == 8 ? 1 : 5);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}
void Bytes(std::string& out, int field, const std::string& value) {
  Tag(out, field, 2);
  Varint(out, value.size());
  out += value;
}
std::string EventHeader(int64_t step) {
  std::string event;
  Fixed(event, 1, Now());
  Tag(event, 2, 0);
  Varint(event, static_cast<uint64_t>(step));
  return event;
}

template <typename T>
void PutLittleEndian(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}

}  // namespace

uint32_t Crc32c(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;  // reflected Castagnoli
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& dir, int64_t resumed_at_step) {
  std::filesystem::create_directories(dir);
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  const std::string stem = "events.out.tfevents." + std::to_string(static_cast<int64_t>(Now())) + "." + host + "." +
                           std::to_string(::getpid());
  path_ = dir / stem;
  for (int n = 1; std::filesystem::exists(path_); ++n) path_ = dir / (stem + "." + std::to_string(n));
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) FailErrno("create", path_.string());
  std::string version = EventHeader(0);
  Bytes(version, 3, "brain.Event:2");
  Record(version);
  if (resumed_at_step >= 0) {
    std::string start = EventHeader(resumed_at_step), log;
    Tag(log, 1, 0);
    Varint(log, 1);  // SessionLog.START
    Bytes(start, 7, log);
    Record(start);
  }
  Flush();
}

void TensorBoardWriter::Scalar(const std::string& tag, int64_t step, double value) {
  std::string v, summary, event = EventHeader(step);
  Bytes(v, 1, tag);
  Fixed(v, 2, static_cast<float>(value));
  Bytes(summary, 1, v);
  Bytes(event, 5, summary);
  Record(event);
}

void TensorBoardWriter::Flush() {
  out_.flush();
  if (!out_) FailErrno("write", path_.string());
}

void TensorBoardWriter::Record(const std::string& event) {
  std::string header;
  PutLittleEndian<uint64_t>(header, event.size());
  const uint32_t length_crc = Masked(Crc32c(header.data(), header.size()));
  PutLittleEndian<uint32_t>(header, length_crc);
  std::string footer;
  PutLittleEndian<uint32_t>(footer, Masked(Crc32c(event.data(), event.size())));
  out_ << header << event << footer;
}

std::vector<TensorBoardEvent> ReadTensorBoardFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FailErrno("open", path.string());
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<TensorBoardEvent> events;
  size_t at = 0;
  auto u32 = [&](size_t offset) {
    uint32_t v;
    std::memcpy(&v, data.data() + offset, 4);
    return v;
  };
  while (at < data.size()) {
    const std::string where = path.string() + " at byte " + std::to_string(at);
    if (data.size() - at < 12) Fail(ErrorCode::kDataLoss, "{}: a truncated record header", where);
    uint64_t length;
    std::memcpy(&length, data.data() + at, 8);
    if (u32(at + 8) != Masked(Crc32c(data.data() + at, 8)))
      Fail(ErrorCode::kDataLoss, "{}: the length's CRC does not match", where);
    // Compared without adding to `length` (any 64-bit value: length + 4 could wrap).
    if (length > data.size() - at - 12 || data.size() - at - 12 - length < 4)
      Fail(ErrorCode::kDataLoss, "{}: a truncated record", where);
    const std::string body = data.substr(at + 12, length);
    if (u32(at + 12 + length) != Masked(Crc32c(body.data(), body.size())))
      Fail(ErrorCode::kDataLoss, "{}: the data's CRC does not match", where);
    at += 12 + length + 4;

    TensorBoardEvent event;
    WireReader::ForEachField(body, where, [&](uint64_t field, int wire, WireReader& r) {
      if (field == 1 && wire == 1) {
        event.wall_time = r.Fixed64();
      } else if (field == 2 && wire == 0) {
        event.step = static_cast<int64_t>(r.Varint());
      } else if (field == 3 && wire == 2) {
        event.file_version = std::string(r.Bytes());
      } else if (field == 7 && wire == 2) {  // SessionLog{status = 1}
        WireReader::ForEachField(r.Bytes(), where, [&](uint64_t f, int w, WireReader& log) {
          if (f != 1 || w != 0) return false;
          event.session_start = log.Varint() == 1;
          return true;
        });
      } else if (field == 5 && wire == 2) {  // Summary{repeated Value value = 1}
        WireReader::ForEachField(r.Bytes(), where, [&](uint64_t f, int w, WireReader& summary) {
          if (f != 1 || w != 2) return false;
          std::pair<std::string, float> scalar;
          WireReader::ForEachField(summary.Bytes(), where, [&](uint64_t vf, int vw, WireReader& value) {
            if (vf == 1 && vw == 2) {
              scalar.first = std::string(value.Bytes());
            } else if (vf == 2 && vw == 5) {
              scalar.second = value.Fixed32();
            } else {
              return false;
            }
            return true;
          });
          event.scalars.push_back(scalar);
          return true;
        });
      } else {
        return false;
      }
      return true;
    });
    events.push_back(std::move(event));
  }
  return events;
}

}  // namespace shardtune
