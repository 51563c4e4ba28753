#pragma once
// ZeroEngine's per-unit state, shared by zero_engine.cc and zero_checkpoint.cc only.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "sharding/zero_engine.h"

namespace shardtune {

struct ZeroEngine::Unit {
  const UnitLayout* layout = nullptr;
  int64_t local_offset = 0;  // into the master weights and grad_local_ (trainable units only)
  int64_t shard_begin = 0;   // inside the unit
  int64_t shard_size = 0;
  bool trainable = true;
  bool persistent = true;  // parameters stay gathered between uses
  at::Tensor full;         // (padded,) compute dtype; undefined while released (stage 3)
  at::Tensor master;       // trainable: (shard_size,) fp32 master weights, in master_ or in `full`
  at::Tensor param_shard;  // stage 3: (shard_size,) compute dtype, the all-gather's input
  // Stage 3 (not persistent): the one tensor `full` is while gathered, kept for the whole run.
  // Released, its storage holds no memory; gathered again, the same storage gets memory back.
  // Autograd graphs saved from forward reference views of it, so a unit's backward sees its
  // parameters again once they are re-gathered, as FSDP does.
  at::Tensor gathered;
  at::Tensor gather_target;  // an alias of `gathered` with its own version counter (see Gather)
  at::Tensor full_grad;      // (padded,) fp32: accumulated gradient before reduction
  // Which parameters full_grad holds a gradient for since it was last reduced: the first
  // contribution is copied in rather than added to a zero-filled buffer (a pass over the whole
  // model's gradients saved each step); the rest is zeroed just before the reduction.
  std::vector<bool> grad_written;
  std::unique_ptr<Work> gather;
  int uses = 0;  // graph nodes of this micro-batch whose backward has not run yet
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
