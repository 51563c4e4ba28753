#pragma once
// ZeroEngine's per-unit state, shared by zero_engine.cc and zero_checkpoint.cc only.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "sharding/zero_engine.h"

namespace shardtune {

// How a unit's parameters are held (fixed at construction by the stage's policy).
enum class ParameterStorage {
  kWhole,          // `full` always; no shard
  kShardAndWhole,  // `param_shard`, and `full` always: a sharded unit that stays gathered
  kShardGathered,  // `param_shard`; `full` only while gathered for a use (`gathered` holds its storage)
};

// Where a trainable unit's fp32 master weights live (fixed at construction). Where the
// parameters forward uses are fp32 and beside the optimizer, a copy would hold the same values.
enum class MasterStorage {
  kNone,              // frozen: no master weights
  kOwnBuffer,         // in master_, a copy: 16-bit parameters, or the master offloaded to the host
  kInParameters,      // this rank's shard of the whole fp32 parameters `full`
  kIsParameterShard,  // the fp32 parameter shard `param_shard` itself
};

// Where a trainable unit's whole gradient accumulates before its reduction (fixed at construction).
enum class GradientStorage {
  kNone,           // frozen: no gradient
  kLocalGradient,  // its range of grad_local_ (state not sharded: the whole is this rank's), all-reduced
  kForStep,        // its own buffer for the step, reduce-scattered at the accumulation boundary
  kPerMicroBatch,  // a buffer made for each micro-batch, reduce-scattered and freed when its backward is done
};

struct ZeroEngine::Unit {
  const UnitLayout* layout = nullptr;
  int64_t local_offset = 0;  // into the master weights and grad_local_ (trainable units only)
  int64_t shard_begin = 0;   // inside the unit
  int64_t shard_size = 0;
  bool trainable = true;
  ParameterStorage parameter_storage = ParameterStorage::kWhole;
  MasterStorage master_storage = MasterStorage::kNone;
  GradientStorage gradient_storage = GradientStorage::kNone;
  at::Tensor full;         // (padded,) compute dtype; undefined while released (kShardGathered)
  at::Tensor master;       // trainable: (shard_size,) fp32 master weights, where master_storage says
  at::Tensor param_shard;  // sharded parameters: (shard_size,) compute dtype, the all-gather's input
  // kShardGathered: the one tensor `full` is while gathered, kept for the whole run. Released,
  // its storage holds no memory; gathered again, the same storage gets memory back. Autograd
  // graphs saved from forward reference views of it, so a unit's backward sees its parameters
  // again once they are re-gathered, as FSDP does.
  at::Tensor gathered;
  at::Tensor gather_target;  // an alias of `gathered` with its own version counter (see Gather)
  // A quantized unit (layout->quant4): `full`, `param_shard` and `gathered` hold its records'
  // bytes (kByte), and its parameters are dequantized into `dequantized` (padded elements,
  // compute dtype) for each use: the memory from the first Acquire to the last Release, the same
  // storage kept for the whole run so that a graph saved from forward sees the weights again
  // when backward's Regather dequantizes them anew.
  at::Tensor dequantized;
  bool dequantized_live = false;
  at::Tensor full_grad;  // (padded,) fp32: accumulated gradient before reduction (see gradient_storage)
  // Which parameters full_grad holds a gradient for since it was last reduced: the first
  // contribution is copied in rather than added to a zero-filled buffer (a pass over the whole
  // model's gradients saved each step); the rest is zeroed just before the reduction.
  std::vector<bool> grad_written;
  std::unique_ptr<Work> gather;
  // Units of this unit's kind that calls led by it also use (a tied lm_head's call borrows the
  // embedding's unit): gathered with it when it is prefetched.
  std::vector<int> borrowed;
  int uses = 0;  // graph nodes of this micro-batch whose backward has not run yet
  // Row lookups (UnitUse::kRowLookup, see zero_engine.h). `may_gather_rows`: the unit is one
  // table and its gradient a whole-rank buffer (fixed at construction); `gathers_rows` from its
  // first lookup on. Then a lookup's gradient is kept as rows for the step, each lookup counted
  // in `lookup_uses` as well as in `uses`, and `dense_use` says whether a call of this step used
  // the table otherwise (a tied head): the graph's shape, the same on every rank.
  bool may_gather_rows = false;
  bool gathers_rows = false;
  int lookup_uses = 0;
  bool dense_use = false;
  bool dense_reduced = false;  // this step's dense gradient is reduced (or in flight) already
  std::vector<LookedUpRows> rows;
  at::Tensor rows_summed;  // (table rows, width): held rows added up, once they are that many
  int acquired = 0;

  // The index of `name` in layout->parameters.
  size_t IndexOf(const std::string& name) const {
    for (size_t k = 0; k < layout->parameters.size(); ++k)
      if (layout->parameters[k].spec.name == name) return k;
    Fail(ErrorCode::kInternal, "unit {} has no parameter '{}'", layout->name, name);
  }

  // This unit's part of a flat buffer of this rank's shards (master_, grad_local_).
  at::Tensor LocalSlice(const at::Tensor& flat) const {
    ST_CHECK(trainable, "unit {} is frozen: it has no master weights or gradient", layout->name);
    return flat.narrow(0, local_offset, shard_size);
  }
};

struct ZeroEngine::Pending {
  std::unique_ptr<Work> work;
  std::vector<at::Tensor> keep_alive;  // buffers the collective reads or writes
  std::function<void()> then;          // runs after the collective completed
};

}  // namespace shardtune
