#pragma once
// 4-bit blockwise quantization of a frozen base's weights, as bitsandbytes' `quantize_4bit` does
// for QLoRA (Dettmers et al., 2023). Plain arithmetic, no LibTorch: the planner counts these bytes.
//
// The algorithm (bitsandbytes' published semantics):
//   - A weight is flattened (row-major) and cut into blocks of `block_size` consecutive elements
//     (the last one possibly partial). Each block's absmax is max |x| over its elements.
//   - Each element is divided by its block's absmax (multiplied by 1/absmax, as the kernel does)
//     and mapped to the nearest of the 16 code values (NF4 or FP4, Quant4CodeValues; a value
//     exactly between two codes takes the lower one). Two codes per byte, the first element in
//     the high nibble; an odd count pads the last low nibble with the code of 0.
//   - With double quantization, the absmax values (fp32) are themselves quantized: their mean
//     (`offset`) is subtracted, and the differences are quantized in blocks of 256 to 8 bits with
//     bitsandbytes' signed dynamic map (DynamicQuantMap), each such block with its own fp32 absmax
//     (`nested_absmax`). Dequantized: absmax = map[q] * nested_absmax + offset.
//   - A weight element is code[c] * absmax of its block.
// The mean is taken in double, summed block by block within each group of 256 blocks and then
// group by group (bitsandbytes takes torch's fp32 mean): the same bits however a tensor's groups
// are divided among ranks.
//
// How a ZeRO unit holds a quantized weight ("records"): one record per group of 256 blocks,
// i.e. per 256 x block_size elements, self-contained so that a shard of whole records can be
// gathered as bytes and dequantized anywhere:
//   double_quant:  codes (256 x block_size / 2 bytes) | quantized absmax (256 bytes)
//                  | nested absmax (fp32) | offset (fp32, the tensor's, repeated in each record)
//   otherwise:     codes (256 x block_size / 2 bytes) | absmax (256 x fp32)
// A record is exactly bitsandbytes' tensors cut at its nested blocks, so a pre-quantized
// checkpoint's tensors become records by copying. A record past a weight's last element holds
// the code of 0 and absmax 0 there.

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shardtune {

enum class Quant4Type { kNf4, kFp4 };

struct Quant4Format {
  Quant4Type type = Quant4Type::kNf4;
  int64_t block_size = 64;   // elements per absmax: 64, 128, 256, 512, 1024, 2048 or 4096
  bool double_quant = true;  // absmax quantized to 8 bits in blocks of 256

  bool operator==(const Quant4Format&) const = default;

  // Elements per record (one group of kNestedBlockSize blocks) and its bytes.
  int64_t record_elements() const;
  int64_t record_bytes() const;
  // Bytes of the records holding `elements` elements (a multiple of record_elements()).
  int64_t RecordBytesFor(int64_t elements) const;
};

// Absmax values per nested block of double quantization (bitsandbytes' fixed 256).
inline constexpr int64_t kNestedBlockSize = 256;

// The block sizes bitsandbytes' quantize_4bit accepts.
inline constexpr std::array<int64_t, 7> kQuant4BlockSizes = {64, 128, 256, 512, 1024, 2048, 4096};

std::string_view Quant4TypeName(Quant4Type type);  // "nf4", "fp4"
std::optional<Quant4Type> ParseQuant4Type(std::string_view name);

// The 16 code values of a 4-bit type, normalized to [-1, 1], indexed by code: NF4 (the normal
// float quantiles of the QLoRA paper, as bitsandbytes lists them) or FP4 (bitsandbytes' E2M1
// values 0, 0.0625, 8, 12, 4, 6, 2, 3 and their negatives, divided by 12).
const std::array<float, 16>& Quant4CodeValues(Quant4Type type);
// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted.
const std::array<float, 256>& DynamicQuantMap();

// The nearest code to x (already divided by its block's absmax); ties to the lower code value.
uint8_t NearestQuant4Code(Quant4Type type, float x);
// The index of the nearest value of DynamicQuantMap(); ties to the lower value.
uint8_t NearestDynamicCode(float x);

// One tensor quantized, in bitsandbytes' layout (the tensors transformers saves).
struct Quant4Tensor {
  Quant4Format format;
  int64_t numel = 0;
  std::vector<uint8_t> packed;            // ceil(numel / 2): two codes a byte, first one high
  std::vector<float> absmax;              // !double_quant: one per block
  std::vector<uint8_t> quantized_absmax;  // double_quant: one per block
  std::vector<float> nested_absmax;       // double_quant: one per 256 blocks
  float offset = 0;                       // double_quant: the mean of the blocks' absmax

  int64_t blocks() const { return (numel + format.block_size - 1) / format.block_size; }
};

Quant4Tensor Quantize4(const float* values, int64_t numel, const Quant4Format& format);
// Every element's dequantized value (fp32), `tensor.numel` of them.
void Dequantize4(const Quant4Tensor& tensor, float* out);

// --- records (a ZeRO unit's storage; see the top of this file) ---

// Quantizes `count` elements that start a record (and run to the end of their weight or fill
// whole records) into the records at `records`: the codes, and each block's fp32 absmax into
// `absmax` (ceil(count / block_size) of them), whose encoding waits for the tensor's offset.
void QuantizeCodes(const float* values, int64_t count, const Quant4Format& format, uint8_t* records, float* absmax);
// The sum, in double, of one record's absmax values (at most 256, in order): a record's part of
// the offset. The offset of a tensor is the sum of its records' parts, in record order, over its
// block count.
double RecordAbsmaxSum(const float* absmax, int64_t blocks);
float AbsmaxOffset(const std::vector<double>& record_sums, int64_t blocks);
// Writes one record's absmax (`blocks` of them, at most 256) in the record's format, with the
// tensor's offset where double quantization needs it.
void EncodeRecordAbsmax(const float* absmax, int64_t blocks, float offset, const Quant4Format& format, uint8_t* record);

// Element `k` of a record's blocks' absmax, decoded.
float RecordAbsmax(const uint8_t* record, int64_t block, const Quant4Format& format);

// Dequantizes the first `count` elements of the records at `records` into `out`, converted to
// T (float, or LibTorch's BFloat16 and Half, which convert from float rounding to nearest).
template <typename T>
void DequantizeRecords(const uint8_t* records, int64_t count, const Quant4Format& format, T* out) {
  const std::array<float, 16>& code = Quant4CodeValues(format.type);
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  for (int64_t start = 0; start < count; start += per_record) {
    const uint8_t* record = records + (start / per_record) * record_bytes;
    const int64_t in_record = std::min(per_record, count - start);
    for (int64_t b = 0; b * format.block_size < in_record; ++b) {
      const float scale = RecordAbsmax(record, b, format);
      const int64_t first = b * format.block_size, n = std::min(format.block_size, in_record - first);
      const uint8_t* codes = record + first / 2;
      T* o = out + start + first;
      for (int64_t k = 0; k + 1 < n; k += 2) {
        const uint8_t byte = codes[k / 2];
        o[k] = static_cast<T>(code[byte >> 4] * scale);
        o[k + 1] = static_cast<T>(code[byte & 0x0F] * scale);
      }
      if (n % 2 == 1) o[n - 1] = static_cast<T>(code[codes[n / 2] >> 4] * scale);
    }
  }
}

// A whole tensor's records from its bitsandbytes layout, and back (a pre-quantized checkpoint).
std::vector<uint8_t> RecordsOf(const Quant4Tensor& tensor);
Quant4Tensor TensorOfRecords(const uint8_t* records, int64_t numel, const Quant4Format& format);

}  // namespace shardtune
