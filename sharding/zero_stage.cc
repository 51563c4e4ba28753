#include "sharding/zero_stage.h"

#include <iterator>

#include "common/error.h"

namespace shardtune {

const StagePolicy& PolicyOfStage(int stage) {
  ST_CHECK(stage >= 0 && stage < static_cast<int>(std::size(kStagePolicies)), "no ZeRO stage {}: stages are 0 to {}",
           stage, std::size(kStagePolicies) - 1);
  return kStagePolicies[stage];
}

bool MasterIsParameters(const ModelStateConfig& config) {
  return config.compute_bytes == 4 && !config.offload_optimizer;
}

bool StaysGathered(const UnitLayout& unit, const ModelStateConfig& config) {
  return unit.numel < config.persistence_threshold;
}

MemoryAccount ModelStateBytes(const ShardedLayout& layout, const ModelStateConfig& config) {
  const StagePolicy& policy = PolicyOfStage(config.stage);
  MemoryAccount account;
  // This rank's shards of the trainable units (the whole of them where the state is not sharded,
  // as the layout then has one shard): what the optimizer steps.
  const int64_t local = layout.trainable_shard_total();
  account.optimizer = 2 * 4 * local;                                // AdamW moments
  if (!MasterIsParameters(config)) account.optimizer += 4 * local;  // fp32 master weights, a copy
  if (config.offload_optimizer) account.optimizer += 4 * local;     // the gradient's host copy
  account.gradients = 4 * local;
  for (const UnitLayout& unit : layout.units) {
    // Frozen and trainable units alike hold their compute-dtype parameters: whole, or a shard
    // (in fp32, not offloaded, the master shard itself) and whole too if they stay gathered.
    // Quantized units hold their records' bytes.
    const int64_t b = config.compute_bytes;
    if (!policy.shards_parameters) {
      account.parameters += unit.StoredBytes(unit.padded, b);
    } else {
      account.parameters += unit.StoredBytes(unit.shard_size, b);
      if (StaysGathered(unit, config)) account.parameters += unit.StoredBytes(unit.padded, b);
    }
    // A sharded state whose gradient accumulates whole over the step keeps the whole buffer too.
    if (unit.trainable && policy.shards_optimizer_state && !policy.shards_gradients) {
      account.gradients += 4 * unit.padded;
    }
  }
  return account;
}

}  // namespace shardtune
