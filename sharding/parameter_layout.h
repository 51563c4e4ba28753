#pragma once
// How a model's parameters are laid out for sharding: plain arithmetic, no LibTorch, so that
// the planner and the checkpoint index can use it.
//
// The model names its parameters in "units" (the embedding, each decoder layer, the head): a
// unit is gathered, computed and reduced as one piece, one flat buffer. Inside a unit every
// parameter starts at an offset aligned to kFlatAlignment elements; the unit is padded to a
// multiple of kFlatAlignment x shard_count, and shard k of the unit is the range
// [k * shard_size, (k + 1) * shard_size). Offsets inside a unit do not depend on the shard
// count, which is what lets a checkpoint written on N ranks load on M.
//
// A quantized unit (QLoRA's frozen linear weights, quant4.h) has the same element layout with
// each parameter aligned to a whole record (256 x block_size elements) and the unit padded to
// whole records per shard; it holds the records' bytes, not elements.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sharding/quant4.h"

namespace shardtune {

// Elements per alignment unit: 64 bytes of fp32, a cache line and an AVX-512 register.
inline constexpr int64_t kFlatAlignment = 16;

struct ParameterSpec {
  std::string name;  // Hugging Face key, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  bool weight_decay = true;  // false for norms and biases
};

struct UnitSpec {
  std::string name;  // "embed", "layer 3", "head"
  std::vector<ParameterSpec> parameters;
  // Frozen units (the base model under a parameter-efficient method) get no gradient and no
  // optimizer state; they are held in the compute dtype only.
  bool trainable = true;
  std::optional<Quant4Format> quant4;  // frozen, held as 4-bit records (quant4.h)
};

struct ParameterSlot {
  ParameterSpec spec;
  int64_t offset = 0;  // inside its unit, a multiple of kFlatAlignment
  int64_t numel = 0;
};

struct UnitLayout {
  std::string name;
  std::vector<ParameterSlot> parameters;
  bool trainable = true;
  std::optional<Quant4Format> quant4;
  int64_t numel = 0;       // end of the last parameter (alignment gaps included)
  int64_t padded = 0;      // numel rounded up to kFlatAlignment x shard_count
  int64_t shard_size = 0;  // padded / shard_count

  // Elements each parameter's offset is a multiple of.
  int64_t alignment() const { return quant4 ? quant4->record_elements() : kFlatAlignment; }
  // Bytes that `elements` elements of this unit (whole records where quantized) occupy.
  int64_t StoredBytes(int64_t elements, int64_t compute_bytes) const {
    return quant4 ? quant4->RecordBytesFor(elements) : elements * compute_bytes;
  }
};

struct ShardedLayout {
  std::vector<UnitLayout> units;
  int shard_count = 1;

  int64_t parameter_count() const;            // sum of parameter sizes, no padding
  int64_t trainable_parameter_count() const;  // the same over trainable units
  int64_t padded_total() const;               // sum of unit buffers
  int64_t trainable_shard_total() const;      // sum of one rank's shards of trainable units
};

int64_t AlignUp(int64_t n, int64_t multiple);
int64_t NumelOf(const std::vector<int64_t>& shape);

ShardedLayout PlanLayout(const std::vector<UnitSpec>& units, int shard_count);

}  // namespace shardtune
