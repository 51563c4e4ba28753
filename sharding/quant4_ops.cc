#include "sharding/quant4_ops.h"

#include "common/error.h"

namespace shardtune {

namespace {

// A table of fp32 values on `device`.
template <size_t N>
at::Tensor Table(const std::array<float, N>& values, const at::Device& device) {
  return at::from_blob(const_cast<float*>(values.data()), {static_cast<int64_t>(N)}, at::kFloat).to(device);
}

// Bytes [begin, begin + size) of each of `records` ([n, record_bytes]) as `size / 4` fp32 values.
at::Tensor FloatsAt(const at::Tensor& records, int64_t begin, int64_t size) {
  return records.narrow(1, begin, size).contiguous().view(at::kFloat);
}

}  // namespace

void DequantizeRecordsWithOps(const at::Tensor& records, int64_t count, const Quant4Format& format, at::Tensor out) {
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  const int64_t code_bytes = per_record / 2;
  const int64_t n = (count + per_record - 1) / per_record;
  ST_CHECK(records.scalar_type() == at::kByte && records.is_contiguous() && records.numel() >= n * record_bytes &&
               out.numel() == count && out.is_contiguous() && out.device() == records.device(),
           "dequantizing {} elements of {} record bytes into {} elements", count, records.numel(), out.numel());
  const at::Device device = records.device();
  const at::Tensor code = Table(Quant4CodeValues(format.type), device);
  const at::Tensor map = format.double_quant ? Table(DynamicQuantMap(), device) : at::Tensor();
  // 64 records (1 Mi elements at block size 64): a few MiB of temporaries.
  constexpr int64_t kRecordsPerStep = 64;
  for (int64_t first = 0; first < n; first += kRecordsPerStep) {
    const int64_t k = std::min(kRecordsPerStep, n - first);
    const at::Tensor r = records.narrow(0, first * record_bytes, k * record_bytes).view({k, record_bytes});
    const at::Tensor bytes = r.narrow(1, 0, code_bytes).to(at::kInt);
    // Two codes a byte, the first element's in the high nibble.
    const at::Tensor codes = at::stack({at::bitwise_right_shift(bytes, 4), at::bitwise_and(bytes, 15)}, 2)
                                 .view({k * per_record})
                                 .to(at::kLong);
    at::Tensor absmax;  // [k, 256]
    if (format.double_quant) {
      const at::Tensor q = r.narrow(1, code_bytes, kNestedBlockSize).to(at::kLong).reshape({-1});
      absmax = map.index_select(0, q)
                   .view({k, kNestedBlockSize})
                   .mul(FloatsAt(r, code_bytes + kNestedBlockSize, 4))
                   .add(FloatsAt(r, code_bytes + kNestedBlockSize + 4, 4));
    } else {
      absmax = FloatsAt(r, code_bytes, kNestedBlockSize * 4);
    }
    const at::Tensor values =
        code.index_select(0, codes).view({k, kNestedBlockSize, format.block_size}).mul(absmax.unsqueeze(2));
    const int64_t begin = first * per_record, size = std::min(count, (first + k) * per_record) - begin;
    out.narrow(0, begin, size).copy_(values.view({-1}).narrow(0, 0, size));
  }
}

}  // namespace shardtune
