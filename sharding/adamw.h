#pragma once
// AdamW (Loshchilov & Hutter) on a contiguous range of a flat fp32 buffer: the whole buffer on
// one rank, the rank's shard under ZeRO. The update is elementwise, so updating shards
// separately equals updating the whole; it follows torch.optim.AdamW's single-tensor arithmetic
// step by step so the two agree to rounding.
//
// Weight decay is decoupled (p <- p - lr * wd * p) and applied only to the ranges marked for
// decay (not to norms and biases).

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "common/job_spec.h"

namespace shardtune {

struct DecayRange {
  int64_t offset = 0;  // relative to the start of the optimized range
  int64_t size = 0;
};

class AdamW {
 public:
  // `numel`: elements in the optimized range; `decay`: the sub-ranges that get weight decay.
  AdamW(const OptimizerSpec& spec, int64_t numel, std::vector<DecayRange> decay, at::Device device = at::kCPU);

  // One update of `params` (numel,) from `grads` (numel,) times `grad_scale` (clipping, loss
  // scaling) at learning rate `lr`.
  void Step(at::Tensor& params, const at::Tensor& grads, double lr, double grad_scale = 1.0);

  int64_t step() const { return step_; }
  at::Tensor& exp_avg() { return exp_avg_; }
  at::Tensor& exp_avg_sq() { return exp_avg_sq_; }
  void set_step(int64_t step) { step_ = step; }

 private:
  void StepCpu(at::Tensor& params, const at::Tensor& grads, double lr, double grad_scale, double step_size,
               double sqrt_bias_correction2);

  OptimizerSpec spec_;
  std::vector<DecayRange> decay_;
  int64_t step_ = 0;
  at::Tensor exp_avg_;     // (numel,) fp32, first moment
  at::Tensor exp_avg_sq_;  // (numel,) fp32, second moment
};

}  // namespace shardtune
