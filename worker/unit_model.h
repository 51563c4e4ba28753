#pragma once
// A model family's forward pass as ZeRO units: the trainer's one view of a model. Each family
// runs its pieces (embedding, layers, head) through ApplyUnits, so the engine gathers, frees
// and reduces each unit's parameters exactly around that unit's forward and backward, and binds
// what the parameter-efficient method adds to each layer.

#include <ATen/ATen.h>

#include <memory>

#include "common/model_config.h"
#include "sharding/zero_engine.h"
#include "worker/data/token_dataset.h"
#include "worker/peft/peft.h"

namespace shardtune {

class UnitModel {
 public:
  virtual ~UnitModel() = default;
  // The task's logits of a batch (a rank's micro-batch, on any device): causal LM (B, S, vocab);
  // sequence classification (B, classes), pooled as the family pools; token classification
  // (B, S, classes). `training` turns dropout on.
  virtual at::Tensor Forward(const Batch& batch, bool training) = 0;
};

// The unit model of `peft.config()`'s family over `engine`, which holds peft.Units(). Computes
// in `dtype` on `device`. `peft` and `engine` must outlive it.
std::unique_ptr<UnitModel> MakeUnitModel(const PeftMethod& peft, ZeroEngine& engine, at::ScalarType dtype,
                                         at::Device device);

}  // namespace shardtune
