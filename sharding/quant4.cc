#include "sharding/quant4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"

namespace shardtune {

namespace {

// bitsandbytes' NF4 values (functional.py, get_4bit_type("nf4")), by code.
constexpr std::array<float, 16> kNf4 = {-1.0f,
                                        -0.6961928009986877f,
                                        -0.5250730514526367f,
                                        -0.39491748809814453f,
                                        -0.28444138169288635f,
                                        -0.18477343022823334f,
                                        -0.09105003625154495f,
                                        0.0f,
                                        0.07958029955625534f,
                                        0.16093020141124725f,
                                        0.24611230194568634f,
                                        0.33791524171829224f,
                                        0.44070982933044434f,
                                        0.5626170039176941f,
                                        0.7229568362236023f,
                                        1.0f};

// FP4 (E2M1, bias 3): codes 0-7 are 0, 0.0625, 8, 12, 4, 6, 2, 3; bit 3 is the sign. Divided by 12.
constexpr std::array<float, 16> MakeFp4() {
  constexpr float kMagnitudes[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
  std::array<float, 16> values{};
  for (int c = 0; c < 8; ++c) {
    values[c] = kMagnitudes[c] / 12.0f;
    values[c + 8] = -kMagnitudes[c] / 12.0f;
  }
  return values;
}
constexpr std::array<float, 16> kFp4 = MakeFp4();

// Code values in ascending order with their codes, and the midpoints between neighbours: the
// nearest code is the one whose interval holds x (ties to the lower, as the kernels' `x > pivot`).
struct SortedCodes {
  std::vector<float> midpoints;  // ascending, one fewer than codes
  std::vector<uint8_t> codes;    // ascending by value
};

SortedCodes Sort(const float* values, int n) {
  std::vector<int> order(n);
  for (int k = 0; k < n; ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return values[a] < values[b]; });
  SortedCodes sorted;
  for (int k = 0; k < n; ++k) {
    sorted.codes.push_back(static_cast<uint8_t>(order[k]));
    if (k > 0) {
      // In double, then rounded: the kernels' pivots are the midpoints written as float literals.
      const double middle = (static_cast<double>(values[order[k - 1]]) + values[order[k]]) / 2.0;
      sorted.midpoints.push_back(static_cast<float>(middle));
    }
  }
  return sorted;
}

uint8_t Nearest(const SortedCodes& sorted, float x) {
  // The number of midpoints strictly below x is the position of x's interval.
  const auto it = std::lower_bound(sorted.midpoints.begin(), sorted.midpoints.end(), x);
  return sorted.codes[static_cast<size_t>(it - sorted.midpoints.begin())];
}

// NF4's 16 values; FP4's 8 magnitudes (codes 0-7), the sign being bit 3 of the code.
const SortedCodes& SortedQuant4(Quant4Type type) {
  static const SortedCodes nf4 = Sort(kNf4.data(), 16);
  static const SortedCodes fp4 = Sort(kFp4.data(), 8);
  return type == Quant4Type::kNf4 ? nf4 : fp4;
}

uint8_t NearestIn(const SortedCodes& sorted, bool sign_magnitude, float x) {
  // FP4's sign follows x < 0 (so a tiny negative value is -0, code 8), as the kernel's.
  if (sign_magnitude && x < 0) return static_cast<uint8_t>(Nearest(sorted, -x) | 0x08);
  return Nearest(sorted, x);
}

std::array<float, 256> MakeDynamicMap() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i, 2^i
  // fractions (the midpoints of linspace(0.1, 1, 2^i + 1)) times 10^(i - 6), both signs; then
  // 0 and 1; sorted. Computed in double and rounded once: torch computes in fp32, and its
  // linspace rounds differently by version and vector width, so its values may differ from
  // these in the last bit. (A pre-quantized checkpoint carries its own map and is read with it.)
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int64_t fractions = int64_t{1} << i;
    const double scale = std::pow(10.0, i - 6), step = 0.9 / static_cast<double>(fractions);
    for (int64_t k = 0; k < fractions; ++k) {
      const double mean = 0.1 + (static_cast<double>(k) + 0.5) * step;
      data.push_back(static_cast<float>(scale * mean));
      data.push_back(static_cast<float>(-scale * mean));
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  ST_CHECK(data.size() == 256, "the dynamic map has {} values, not 256", data.size());
  std::sort(data.begin(), data.end());
  std::array<float, 256> map{};
  std::copy(data.begin(), data.end(), map.begin());
  return map;
}

const SortedCodes& SortedDynamic() {
  static const SortedCodes sorted = Sort(DynamicQuantMap().data(), 256);
  return sorted;
}

int64_t AbsmaxBytes(const Quant4Format& format) {
  return format.double_quant ? kNestedBlockSize + 8 : kNestedBlockSize * 4;
}

}  // namespace

int64_t Quant4Format::record_elements() const { return kNestedBlockSize * block_size; }

int64_t Quant4Format::record_bytes() const { return record_elements() / 2 + AbsmaxBytes(*this); }

int64_t Quant4Format::RecordBytesFor(int64_t elements) const {
  ST_CHECK(elements % record_elements() == 0, "{} elements are not whole records of {}", elements, record_elements());
  return elements / record_elements() * record_bytes();
}

std::string_view Quant4TypeName(Quant4Type type) { return type == Quant4Type::kNf4 ? "nf4" : "fp4"; }

std::optional<Quant4Type> ParseQuant4Type(std::string_view name) {
  if (name == "nf4") return Quant4Type::kNf4;
  if (name == "fp4") return Quant4Type::kFp4;
  return std::nullopt;
}

const std::array<float, 16>& Quant4CodeValues(Quant4Type type) { return type == Quant4Type::kNf4 ? kNf4 : kFp4; }

const std::array<float, 256>& DynamicQuantMap() {
  static const std::array<float, 256> map = MakeDynamicMap();
  return map;
}

uint8_t NearestQuant4Code(Quant4Type type, float x) {
  return NearestIn(SortedQuant4(type), type == Quant4Type::kFp4, x);
}

uint8_t NearestDynamicCode(float x) { return Nearest(SortedDynamic(), x); }

void QuantizeCodes(const float* values, int64_t count, const Quant4Format& format, uint8_t* records, float* absmax) {
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  const SortedCodes& sorted = SortedQuant4(format.type);
  const bool fp4 = format.type == Quant4Type::kFp4;
  const uint8_t zero = NearestQuant4Code(format.type, 0.0f);
  for (int64_t first = 0, b = 0; first < count; first += format.block_size, ++b) {
    const int64_t n = std::min(format.block_size, count - first);
    float m = 0;
    for (int64_t k = 0; k < n; ++k) m = std::max(m, std::fabs(values[first + k]));
    absmax[b] = m;
    // A block of zeros has no scale: its codes are those of 0 (bitsandbytes would divide by 0).
    const float inverse = m > 0 ? 1.0f / m : 0.0f;
    uint8_t* codes = records + (first / per_record) * record_bytes + (first % per_record) / 2;
    for (int64_t k = 0; k < format.block_size; k += 2) {
      uint8_t pair[2] = {zero, zero};
      for (int64_t j = 0; j < 2; ++j) {
        if (k + j >= n) break;
        pair[j] = NearestIn(sorted, fp4, values[first + k + j] * inverse);
      }
      codes[k / 2] = static_cast<uint8_t>(pair[0] << 4 | pair[1]);
    }
  }
  // The last record's blocks past the weight's end: codes of 0, so that a record's bytes depend
  // only on the weight.
  const int64_t filled = (count + format.block_size - 1) / format.block_size * format.block_size;
  if (filled % per_record != 0) {
    uint8_t* record = records + (filled / per_record) * record_bytes;
    std::memset(record + (filled % per_record) / 2, zero << 4 | zero, (per_record - filled % per_record) / 2);
  }
}

double RecordAbsmaxSum(const float* absmax, int64_t blocks) {
  double sum = 0;
  for (int64_t k = 0; k < blocks; ++k) sum += absmax[k];
  return sum;
}

float AbsmaxOffset(const std::vector<double>& record_sums, int64_t blocks) {
  double sum = 0;
  for (double s : record_sums) sum += s;
  return static_cast<float>(sum / static_cast<double>(blocks));
}

void EncodeRecordAbsmax(const float* absmax, int64_t blocks, float offset, const Quant4Format& format,
                        uint8_t* record) {
  ST_CHECK(blocks > 0 && blocks <= kNestedBlockSize, "a record holds 1 to {} blocks, not {}", kNestedBlockSize, blocks);
  uint8_t* tail = record + format.record_elements() / 2;
  if (!format.double_quant) {
    std::memset(tail, 0, kNestedBlockSize * 4);
    std::memcpy(tail, absmax, blocks * sizeof(float));
    return;
  }
  float nested = 0;
  for (int64_t k = 0; k < blocks; ++k) nested = std::max(nested, std::fabs(absmax[k] - offset));
  const float inverse = nested > 0 ? 1.0f / nested : 0.0f;
  const uint8_t zero = NearestDynamicCode(0.0f);
  for (int64_t k = 0; k < kNestedBlockSize; ++k)
    tail[k] = k < blocks ? NearestDynamicCode((absmax[k] - offset) * inverse) : zero;
  std::memcpy(tail + kNestedBlockSize, &nested, sizeof(float));
  std::memcpy(tail + kNestedBlockSize + 4, &offset, sizeof(float));
}

float RecordAbsmax(const uint8_t* record, int64_t block, const Quant4Format& format) {
  const uint8_t* tail = record + format.record_elements() / 2;
  float value;
  if (!format.double_quant) {
    std::memcpy(&value, tail + block * 4, sizeof(float));
    return value;
  }
  float nested, offset;
  std::memcpy(&nested, tail + kNestedBlockSize, sizeof(float));
  std::memcpy(&offset, tail + kNestedBlockSize + 4, sizeof(float));
  return DynamicQuantMap()[tail[block]] * nested + offset;
}

Quant4Tensor Quantize4(const float* values, int64_t numel, const Quant4Format& format) {
  const int64_t per_record = format.record_elements();
  const int64_t records = (numel + per_record - 1) / per_record;
  std::vector<uint8_t> bytes(records * format.record_bytes());
  std::vector<float> absmax((numel + format.block_size - 1) / format.block_size);
  QuantizeCodes(values, numel, format, bytes.data(), absmax.data());
  const int64_t blocks = static_cast<int64_t>(absmax.size());
  std::vector<double> sums;
  for (int64_t r = 0; r < records; ++r) {
    const int64_t first = r * kNestedBlockSize;
    sums.push_back(RecordAbsmaxSum(absmax.data() + first, std::min(kNestedBlockSize, blocks - first)));
  }
  const float offset = format.double_quant ? AbsmaxOffset(sums, blocks) : 0.0f;
  for (int64_t r = 0; r < records; ++r) {
    const int64_t first = r * kNestedBlockSize;
    EncodeRecordAbsmax(absmax.data() + first, std::min(kNestedBlockSize, blocks - first), offset, format,
                       bytes.data() + r * format.record_bytes());
  }
  return TensorOfRecords(bytes.data(), numel, format);
}

void Dequantize4(const Quant4Tensor& tensor, float* out) {
  const std::vector<uint8_t> records = RecordsOf(tensor);
  DequantizeRecords(records.data(), tensor.numel, tensor.format, out);
}

std::vector<uint8_t> RecordsOf(const Quant4Tensor& tensor) {
  const Quant4Format& format = tensor.format;
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  const int64_t records = (tensor.numel + per_record - 1) / per_record, blocks = tensor.blocks();
  const uint8_t zero = NearestQuant4Code(format.type, 0.0f);
  std::vector<uint8_t> bytes(records * record_bytes, 0);
  for (int64_t r = 0; r < records; ++r) {
    uint8_t* record = bytes.data() + r * record_bytes;
    const int64_t first_byte = r * per_record / 2;
    const int64_t code_bytes =
        std::min<int64_t>(per_record / 2, static_cast<int64_t>(tensor.packed.size()) - first_byte);
    std::memset(record, zero << 4 | zero, per_record / 2);
    std::memcpy(record, tensor.packed.data() + first_byte, code_bytes);
    const int64_t first_block = r * kNestedBlockSize, n = std::min(kNestedBlockSize, blocks - first_block);
    uint8_t* tail = record + per_record / 2;
    if (!format.double_quant) {
      std::memcpy(tail, tensor.absmax.data() + first_block, n * sizeof(float));
      continue;
    }
    std::memset(tail, NearestDynamicCode(0.0f), kNestedBlockSize);
    std::memcpy(tail, tensor.quantized_absmax.data() + first_block, n);
    std::memcpy(tail + kNestedBlockSize, &tensor.nested_absmax[r], sizeof(float));
    std::memcpy(tail + kNestedBlockSize + 4, &tensor.offset, sizeof(float));
  }
  return bytes;
}

Quant4Tensor TensorOfRecords(const uint8_t* records, int64_t numel, const Quant4Format& format) {
  Quant4Tensor tensor;
  tensor.format = format;
  tensor.numel = numel;
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  const int64_t blocks = tensor.blocks(), count = (blocks + kNestedBlockSize - 1) / kNestedBlockSize;
  tensor.packed.resize((numel + 1) / 2);
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* record = records + r * record_bytes;
    const int64_t first_byte = r * per_record / 2;
    std::memcpy(tensor.packed.data() + first_byte, record,
                std::min<int64_t>(per_record / 2, static_cast<int64_t>(tensor.packed.size()) - first_byte));
    const int64_t first_block = r * kNestedBlockSize, n = std::min(kNestedBlockSize, blocks - first_block);
    const uint8_t* tail = record + per_record / 2;
    if (!format.double_quant) {
      tensor.absmax.insert(tensor.absmax.end(), reinterpret_cast<const float*>(tail),
                           reinterpret_cast<const float*>(tail) + n);
      continue;
    }
    tensor.quantized_absmax.insert(tensor.quantized_absmax.end(), tail, tail + n);
    float nested;
    std::memcpy(&nested, tail + kNestedBlockSize, sizeof(float));
    std::memcpy(&tensor.offset, tail + kNestedBlockSize + 4, sizeof(float));
    tensor.nested_absmax.push_back(nested);
  }
  return tensor;
}

}  // namespace shardtune
