#pragma once
// AdamW (Loshchilov & Hutter) on a range of fp32 values: the whole model on one rank, the rank's
// shard under ZeRO. The range's values may lie in several tensors (pieces, in order: each
// unit's shard where it lies inside the unit's parameters); its gradient and moments are flat.
// The update is elementwise, so updating shards separately equals updating the whole; it
// follows torch.optim.AdamW's single-tensor arithmetic step by step so the two agree to
// rounding.
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

  // One update of the range, whose values are `pieces` (contiguous, numel elements together),
  // from `grads` (numel,) times `grad_scale` (clipping, loss scaling) at learning rate `lr`.
  void Step(const std::vector<at::Tensor>& pieces, const at::Tensor& grads, double lr, double grad_scale = 1.0);
  void Step(const at::Tensor& params, const at::Tensor& grads, double lr, double grad_scale = 1.0) {
    Step(std::vector<at::Tensor>{params}, grads, lr, grad_scale);
  }

  int64_t step() const { return step_; }
  at::Tensor& exp_avg() { return exp_avg_; }
  at::Tensor& exp_avg_sq() { return exp_avg_sq_; }
  void set_step(int64_t step) { step_ = step; }

 private:
  struct Coefficients {
    double lr, grad_scale, step_size, sqrt_bias_correction2;
  };
  // The piece holding elements [offset, offset + piece.numel()) of the range.
  void StepPiece(const at::Tensor& piece, int64_t offset, const at::Tensor& grads, const Coefficients& c);
  void StepPieceCpu(const at::Tensor& piece, int64_t offset, const at::Tensor& grads, const Coefficients& c);
  // f(begin, end, decayed) over [begin, end) of the range, split where weight decay starts and stops.
  template <typename F>
  void ForEachDecaySpan(int64_t begin, int64_t end, F f) const;

  OptimizerSpec spec_;
  std::vector<DecayRange> decay_;
  int64_t step_ = 0;
  at::Tensor exp_avg_;     // (numel,) fp32, first moment
  at::Tensor exp_avg_sq_;  // (numel,) fp32, second moment
};

}  // namespace shardtune
