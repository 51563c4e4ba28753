#pragma once
// What each ZeRO stage decides, in one table, and the bytes of model state it leaves on a rank.
// Plain arithmetic, no LibTorch: ZeroEngine (zero_engine.h) acts on these decisions and reports
// its memory with ModelStateBytes; the planner, which the LibTorch-free launcher links, predicts
// with the same function, so the two cannot drift.
//
// The stages are those of the ZeRO paper (Rajbhandari et al., 2020): each partitions one more
// kind of model state across the shard group. A new stage is one more row of kStagePolicies; the
// engine reads only the fields, never the stage number.

#include <cstdint>
#include <iterator>

#include "sharding/parameter_layout.h"

namespace shardtune {

struct StagePolicy {
  int stage = 0;
  // The fp32 master weights, the AdamW moments and the persistent gradient are this rank's shard
  // of each unit (false: the whole model on every rank, gradients all-reduced over the world).
  bool shards_optimizer_state = false;
  // Only the gradient shard persists: a unit's whole gradient lives for one micro-batch, is
  // reduce-scattered as soon as the unit's backward is done and freed (false: it accumulates
  // whole over the step and is reduced once, at the accumulation boundary).
  bool shards_gradients = false;
  // The compute-dtype parameters are sharded too: a unit is gathered for each use and freed after
  // it, unless it stays gathered (StaysGathered).
  bool shards_parameters = false;
};

// Stage s is kStagePolicies[s].
inline constexpr StagePolicy kStagePolicies[] = {
    {.stage = 0, .shards_optimizer_state = false, .shards_gradients = false, .shards_parameters = false},
    {.stage = 1, .shards_optimizer_state = true, .shards_gradients = false, .shards_parameters = false},
    {.stage = 2, .shards_optimizer_state = true, .shards_gradients = true, .shards_parameters = false},
    {.stage = 3, .shards_optimizer_state = true, .shards_gradients = true, .shards_parameters = true},
};

constexpr bool StagePoliciesInOrder() {
  for (int s = 0; s < static_cast<int>(std::size(kStagePolicies)); ++s)
    if (kStagePolicies[s].stage != s) return false;
  return true;
}
static_assert(StagePoliciesInOrder(), "kStagePolicies[s] must be stage s");

// The policy of ZeRO stage `stage`; an internal error for a stage the table lacks (the job spec
// admits only those it has).
const StagePolicy& PolicyOfStage(int stage);

// Where shards_gradients holds: whole-unit gradient buffers whose reduction may still be running
// while the next unit's backward fills another. A rank holds at most 1 + this many at once.
inline constexpr int64_t kReductionsInFlight = 2;

// What decides a rank's model-state bytes, besides the layout (whose shard count and trainable
// units it takes as they are).
struct ModelStateConfig {
  int stage = 0;
  int64_t compute_bytes = 4;          // per compute-dtype element: 4 for fp32, 2 for bf16 and fp16
  bool offload_optimizer = false;     // master weights, moments and a gradient copy in host memory
  int64_t persistence_threshold = 0;  // parameters sharded: units with fewer elements stay gathered
};

// Bytes this rank holds between steps, by kind (what metrics.jsonl reports and the planner
// predicts).
struct MemoryAccount {
  int64_t parameters = 0;  // compute-dtype parameters resident between steps
  int64_t gradients = 0;   // persistent gradient buffers
  int64_t optimizer = 0;   // fp32 master weights and AdamW moments (and, offloaded, the gradient's host copy)
  int64_t total() const { return parameters + gradients + optimizer; }
};

// Whether the fp32 master weights are the parameters' own memory rather than a copy: where the
// parameters forward uses are fp32 (the master's type) and beside the optimizer (not offloaded).
bool MasterIsParameters(const ModelStateConfig& config);

// Whether a unit whose parameters the stage shards stays gathered between uses.
bool StaysGathered(const UnitLayout& unit, const ModelStateConfig& config);

// The model-state bytes a ZeroEngine over `layout` holds on each rank between steps: exactly what
// it allocates (alignment padding included), not counting the buffers of one step's schedule
// (gathered units, whole-unit gradients in flight).
MemoryAccount ModelStateBytes(const ShardedLayout& layout, const ModelStateConfig& config);

}  // namespace shardtune
