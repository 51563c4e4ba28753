#pragma once
// Dynamic loss scaling for fp16 training (Micikevicius et al., 2018): the loss is multiplied by
// the scale before backward so that small gradients survive fp16; a step whose gradient holds an
// inf or NaN is skipped and the scale halved; after `growth_interval` clean steps it doubles.
// Every rank sees the same global gradient norm, so every rank makes the same decision.

#include <cstdint>

namespace shardtune {

class DynamicLossScale {
 public:
  // `enabled` false (fp32, bf16): the scale stays 1 and no step is ever skipped.
  explicit DynamicLossScale(bool enabled, double initial = 65536.0, int64_t growth_interval = 2000)
      : enabled_(enabled), scale_(enabled ? initial : 1.0), growth_interval_(growth_interval) {}

  double scale() const { return scale_; }
  void set_scale(double scale) { scale_ = scale; }  // from a checkpoint

  // Called once per step with the global norm of the scaled gradient; returns whether the
  // optimizer may step.
  bool Update(double scaled_grad_norm);

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_;
  int64_t clean_steps_ = 0;
};

}  // namespace shardtune
