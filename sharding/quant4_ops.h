#pragma once
// QLoRA's dequantization with LibTorch operations, on any device: what a GPU rank runs (the host
// loop of quant4.h, DequantizeRecords, is what a CPU rank runs; it is faster there). Bit for bit
// the same values: each absmax is map[q] * nested_absmax + offset and each element code[c] *
// absmax, both in fp32, then rounded once to the output's dtype.

#include <ATen/ATen.h>

#include "sharding/quant4.h"

namespace shardtune {

// The first `count` elements of the whole records `records` (uint8, 1-D, contiguous, any device)
// into `out` (1-D, `count` elements of a floating dtype, contiguous, on the same device), a few
// records at a time so that the temporaries stay small.
void DequantizeRecordsWithOps(const at::Tensor& records, int64_t count, const Quant4Format& format, at::Tensor out);

}  // namespace shardtune
