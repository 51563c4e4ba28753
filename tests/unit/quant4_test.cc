// 4-bit quantization (sharding/quant4.h) against a reference written here from bitsandbytes'
// published algorithm: the NF4/FP4 code values, the blockwise absmax, nearest-code rounding,
// high-nibble-first packing, and double quantization of the absmax with the dynamic 8-bit map
// (rebuilt here with LibTorch's own linspace, as bitsandbytes builds it with torch's).

#include "sharding/quant4.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "sharding/quant4_ops.h"

namespace shardtune {
namespace {

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) with torch's fp32 ops.
std::vector<float> TorchDynamicMap() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const at::Tensor boundaries = at::linspace(0.1, 1.0, (1 << i) + 1, at::kFloat);
    const int64_t n = boundaries.size(0) - 1;
    const at::Tensor means = (boundaries.narrow(0, 0, n) + boundaries.narrow(0, 1, n)) / 2.0;
    const double scale = std::pow(10.0, i - 6);
    const at::Tensor positive = means * scale, negative = means * -scale;
    for (int64_t k = 0; k < n; ++k) {
      data.push_back(positive[k].item<float>());
      data.push_back(negative[k].item<float>());
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

// The same map's exact values, each rounded once to fp32: 10^(i-6) x the midpoints of
// linspace(0.1, 1, 2^i + 1), i.e. 10^(i-6) x (0.1 + (k + 1/2) x 0.9 / 2^i).
std::vector<float> ReferenceDynamicMap() {
  std::vector<float> data = {0.0f, 1.0f};
  for (int i = 0; i < 7; ++i) {
    for (int k = 0; k < (1 << i); ++k) {
      const double value = std::pow(10.0, i - 6) * (0.1 + (k + 0.5) * 0.9 / (1 << i));
      data.push_back(static_cast<float>(value));
      data.push_back(static_cast<float>(-value));
    }
  }
  std::sort(data.begin(), data.end());
  return data;
}

// The index of the value of `code` nearest to x; on a tie the smaller value.
int NearestIndex(const std::vector<float>& code, float x) {
  int best = 0;
  for (int k = 1; k < static_cast<int>(code.size()); ++k) {
    const double d = std::fabs(static_cast<double>(x) - code[k]), b = std::fabs(static_cast<double>(x) - code[best]);
    if (d < b || (d == b && code[k] < code[best])) best = k;
  }
  return best;
}

std::vector<float> Nf4() {
  return {-1.0f,
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
}

std::vector<float> Fp4() {
  std::vector<float> v = {0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3};
  for (float& x : v) x /= 12.0f;
  return v;
}

struct Reference {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;  // exact, fp32
  std::vector<uint8_t> quantized_absmax;
  std::vector<float> nested_absmax;
  float offset = 0;
  std::vector<float> dequantized;
};

Reference Quantize(const std::vector<float>& x, Quant4Type type, int64_t block, bool double_quant) {
  const std::vector<float> code = type == Quant4Type::kNf4 ? Nf4() : Fp4();
  Reference r;
  const int64_t n = static_cast<int64_t>(x.size()), blocks = (n + block - 1) / block;
  std::vector<int> codes(n + 1, -1);
  for (int64_t b = 0; b < blocks; ++b) {
    float m = 0;
    for (int64_t k = b * block; k < std::min(n, (b + 1) * block); ++k) m = std::max(m, std::fabs(x[k]));
    r.absmax.push_back(m);
    for (int64_t k = b * block; k < std::min(n, (b + 1) * block); ++k) {
      const float scaled = x[k] * (1.0f / m);
      if (type == Quant4Type::kFp4) {  // sign and magnitude: the nearest magnitude, the sign of x
        const std::vector<float> magnitudes(code.begin(), code.begin() + 8);
        codes[k] = NearestIndex(magnitudes, std::fabs(scaled)) | (scaled < 0 ? 8 : 0);
      } else {
        codes[k] = NearestIndex(code, scaled);
      }
    }
  }
  const int zero = type == Quant4Type::kNf4 ? 7 : 0;
  for (int64_t k = 0; k < n; k += 2)
    r.packed.push_back(static_cast<uint8_t>(codes[k] << 4 | (k + 1 < n ? codes[k + 1] : zero)));
  std::vector<float> absmax = r.absmax;
  if (double_quant) {
    double sum = 0;
    for (float a : r.absmax) sum += a;
    r.offset = static_cast<float>(sum / blocks);
    const std::vector<float> map = ReferenceDynamicMap();
    for (int64_t g = 0; g * 256 < blocks; ++g) {
      float m = 0;
      for (int64_t k = g * 256; k < std::min(blocks, (g + 1) * 256); ++k)
        m = std::max(m, std::fabs(r.absmax[k] - r.offset));
      r.nested_absmax.push_back(m);
      for (int64_t k = g * 256; k < std::min(blocks, (g + 1) * 256); ++k) {
        const int q = NearestIndex(map, (r.absmax[k] - r.offset) * (1.0f / m));
        r.quantized_absmax.push_back(static_cast<uint8_t>(q));
        absmax[k] = map[q] * m + r.offset;
      }
    }
  }
  for (int64_t k = 0; k < n; ++k) r.dequantized.push_back(code[codes[k]] * absmax[k / block]);
  return r;
}

std::vector<float> Weights(int64_t n, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(n);
  for (float& v : x) v = normal(generator);
  // Outliers, as real weights have, so that blocks' absmax differ widely.
  for (int64_t k = 0; k < n; k += 997) x[k] *= 9.0f;
  return x;
}

TEST(Quant4, CodeValuesAreBitsandbytes) {
  const std::vector<float> nf4 = Nf4(), fp4 = Fp4();
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(Quant4CodeValues(Quant4Type::kNf4)[c], nf4[c]) << c;
    EXPECT_EQ(Quant4CodeValues(Quant4Type::kFp4)[c], fp4[c]) << c;
  }
  EXPECT_EQ(Quant4CodeValues(Quant4Type::kFp4)[3], 1.0f);
  EXPECT_EQ(Quant4CodeValues(Quant4Type::kFp4)[11], -1.0f);
}

TEST(Quant4, DynamicMapIsCreateDynamicMaps) {
  const std::vector<float> exact = ReferenceDynamicMap(), torch = TorchDynamicMap();
  ASSERT_EQ(exact.size(), 256u);
  ASSERT_EQ(torch.size(), 256u);
  for (int k = 0; k < 256; ++k) {
    EXPECT_EQ(DynamicQuantMap()[k], exact[k]) << k;
    // torch's fp32 linspace may round the last bit differently.
    EXPECT_NEAR(DynamicQuantMap()[k], torch[k], std::fabs(torch[k]) * 2.4e-7) << k;
  }
  EXPECT_EQ(DynamicQuantMap()[255], 1.0f);
  EXPECT_FLOAT_EQ(DynamicQuantMap()[0], -0.99296875f);  // -(0.9859375 + 1) / 2: -1 is not in the map
}

TEST(Quant4, NearestCodesTieToTheLowerValue) {
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kNf4, 0.0f), 7);
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kNf4, 1.0f), 15);
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kNf4, -1.0f), 0);
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kNf4, 0.03979014977812767f), 7);  // the kernel's first pivot
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kNf4, 0.0398f), 8);
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kFp4, 0.8333333f), 2);  // 8/12 below the pivot, 12/12 above
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kFp4, 0.84f), 3);
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kFp4, -0.001f), 8);  // -0
  EXPECT_EQ(NearestQuant4Code(Quant4Type::kFp4, -0.3f), 4 | 8);
}

struct Case {
  Quant4Type type;
  int64_t block;
  bool double_quant;
  int64_t numel;
};

class Quant4Cases : public ::testing::TestWithParam<Case> {};

TEST_P(Quant4Cases, EqualsTheReferenceElementForElement) {
  const Case c = GetParam();
  const std::vector<float> x = Weights(c.numel, static_cast<uint32_t>(c.numel));
  const Quant4Format format{c.type, c.block, c.double_quant};
  const Quant4Tensor q = Quantize4(x.data(), c.numel, format);
  const Reference r = Quantize(x, c.type, c.block, c.double_quant);
  EXPECT_EQ(q.packed, r.packed);
  if (c.double_quant) {
    EXPECT_EQ(q.offset, r.offset);
    EXPECT_EQ(q.nested_absmax, r.nested_absmax);
    EXPECT_EQ(q.quantized_absmax, r.quantized_absmax);
    EXPECT_TRUE(q.absmax.empty());
  } else {
    EXPECT_EQ(q.absmax, r.absmax);
  }
  std::vector<float> out(c.numel);
  Dequantize4(q, out.data());
  EXPECT_EQ(out, r.dequantized);
  // Close to the weights: within half the widest gap between codes, of the block's absmax.
  double worst = 0;
  for (int64_t k = 0; k < c.numel; ++k) worst = std::max(worst, std::fabs(static_cast<double>(out[k]) - x[k]));
  EXPECT_LT(worst, 0.2 * 9 * 0.02 * 5);

  // The records hold the same tensors, and give them back.
  const std::vector<uint8_t> records = RecordsOf(q);
  EXPECT_EQ(static_cast<int64_t>(records.size()),
            format.RecordBytesFor((c.numel + format.record_elements() - 1) / format.record_elements() *
                                  format.record_elements()));
  const Quant4Tensor back = TensorOfRecords(records.data(), c.numel, format);
  EXPECT_EQ(back.packed, q.packed);
  EXPECT_EQ(back.quantized_absmax, q.quantized_absmax);
  EXPECT_EQ(back.nested_absmax, q.nested_absmax);
  EXPECT_EQ(back.absmax, q.absmax);
  EXPECT_EQ(RecordsOf(back), records);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Quant4Cases,
    ::testing::Values(Case{Quant4Type::kNf4, 64, true, 64 * 256 * 2 + 37},  // a partial block and record
                      Case{Quant4Type::kNf4, 64, true, 999},                // odd: the last low nibble is padding
                      Case{Quant4Type::kNf4, 64, false, 4096}, Case{Quant4Type::kNf4, 128, true, 128 * 300},
                      Case{Quant4Type::kNf4, 4096, true, 10000}, Case{Quant4Type::kFp4, 64, true, 64 * 256 + 65},
                      Case{Quant4Type::kFp4, 256, false, 3001}));

TEST(Quant4, RecordsQuantizedInPiecesEqualTheWholeTensors) {
  // What ranks do at load: each quantizes whole records of a weight, and the offset comes from
  // the records' sums in record order.
  const Quant4Format format{Quant4Type::kNf4, 64, true};
  const int64_t per_record = format.record_elements(), numel = 3 * per_record + 1000;
  const std::vector<float> x = Weights(numel, 7);
  const int64_t records = 4, blocks = (numel + 63) / 64;
  std::vector<uint8_t> bytes(records * format.record_bytes());
  std::vector<float> absmax(blocks);
  for (int64_t r = 0; r < records; ++r) {  // one record at a time, as four ranks would
    const int64_t first = r * per_record, count = std::min(per_record, numel - first);
    QuantizeCodes(x.data() + first, count, format, bytes.data() + r * format.record_bytes(),
                  absmax.data() + first / 64);
  }
  std::vector<double> sums;
  for (int64_t r = 0; r < records; ++r) {
    sums.push_back(RecordAbsmaxSum(absmax.data() + r * 256, std::min<int64_t>(256, blocks - r * 256)));
  }
  const float offset = AbsmaxOffset(sums, blocks);
  for (int64_t r = 0; r < records; ++r) {
    EncodeRecordAbsmax(absmax.data() + r * 256, std::min<int64_t>(256, blocks - r * 256), offset, format,
                       bytes.data() + r * format.record_bytes());
  }
  EXPECT_EQ(bytes, RecordsOf(Quantize4(x.data(), numel, format)));
  std::vector<float> out(numel);
  DequantizeRecords(bytes.data(), numel, format, out.data());
  std::vector<at::BFloat16> out16(numel);
  DequantizeRecords(bytes.data(), numel, format, out16.data());
  for (int64_t k = 0; k < numel; k += 101)
    EXPECT_EQ(static_cast<float>(out16[k]), static_cast<float>(at::BFloat16(out[k])));
}

TEST(Quant4, TensorOperationsDequantizeAsTheHostLoopBitForBit) {
  // What a GPU rank runs (quant4_ops.h), run here on the CPU: the same values as the host loop in
  // every dtype, over more records than one step takes and a last partial block.
  for (const Quant4Format& format :
       {Quant4Format{Quant4Type::kNf4, 64, true}, Quant4Format{Quant4Type::kFp4, 128, false}}) {
    const int64_t numel = 70 * format.record_elements() + 4001;
    const std::vector<float> x = Weights(numel, 11);
    const std::vector<uint8_t> records = RecordsOf(Quantize4(x.data(), numel, format));
    const at::Tensor bytes =
        at::from_blob(const_cast<uint8_t*>(records.data()), {static_cast<int64_t>(records.size())}, at::kByte);
    std::vector<float> host(numel);
    DequantizeRecords(records.data(), numel, format, host.data());
    const at::Tensor expected = at::from_blob(host.data(), {numel}, at::kFloat);
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(std::string(Quant4TypeName(format.type)) + " into " + c10::toString(dtype));
      at::Tensor out = at::empty({numel}, dtype);
      DequantizeRecordsWithOps(bytes, numel, format, out);
      EXPECT_TRUE(at::equal(out, expected.to(dtype)))
          << "max difference " << (out.to(at::kFloat) - expected.to(dtype).to(at::kFloat)).abs().max().item<float>();
    }
  }
}

TEST(Quant4, BytesPerParameter) {
  // 0.5 for the codes + 1/64 for the 8-bit absmax + 8/16384 for the nested absmax and offset.
  const Quant4Format nf4{Quant4Type::kNf4, 64, true};
  EXPECT_EQ(nf4.record_elements(), 16384);
  EXPECT_EQ(nf4.record_bytes(), 8192 + 256 + 8);
  EXPECT_NEAR(static_cast<double>(nf4.record_bytes()) / nf4.record_elements(), 0.5161, 1e-4);
  const Quant4Format single{Quant4Type::kNf4, 64, false};
  EXPECT_EQ(single.record_bytes(), 8192 + 1024);  // fp32 absmax: 0.5625 bytes a parameter
}

}  // namespace
}  // namespace shardtune
