#include "sharding/adamw.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace shardtune {

namespace {

struct AdamWCoefficients {
  float scale, decay, beta1_weight, beta2, beta2_weight, eps, root, neg_step;
};

// One pass of the update over [0, n), compiled for AVX-512, AVX2 and the baseline (the loader
// picks what the CPU has); this file is built without errno for sqrt, so the loop vectorizes.
__attribute__((target_clones("avx512f", "avx2", "default"))) void AdamWKernel(float* p, const float* g, float* m,
                                                                              float* v, int64_t n,
                                                                              const AdamWCoefficients& c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * c.scale;
    const float pi = p[i] * c.decay;
    const float mi = m[i] + c.beta1_weight * (gi - m[i]);
    const float vi = v[i] * c.beta2 + c.beta2_weight * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + c.neg_step * (mi / (std::sqrt(vi) / c.root + c.eps));
  }
}

}  // namespace

AdamW::AdamW(const OptimizerSpec& spec, int64_t numel, std::vector<DecayRange> decay, at::Device device)
    : spec_(spec), decay_(std::move(decay)) {
  std::sort(decay_.begin(), decay_.end(), [](const DecayRange& a, const DecayRange& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < decay_.size(); ++i) {
    ST_CHECK(decay_[i].offset >= 0 && decay_[i].offset + decay_[i].size <= numel &&
                 (i == 0 || decay_[i - 1].offset + decay_[i - 1].size <= decay_[i].offset),
             "AdamW decay ranges overlap or leave [0, {})", numel);
  }
  exp_avg_ = at::zeros({numel}, at::TensorOptions().dtype(at::kFloat).device(device));
  exp_avg_sq_ = at::zeros({numel}, at::TensorOptions().dtype(at::kFloat).device(device));
}

template <typename F>
void AdamW::ForEachDecaySpan(int64_t begin, int64_t end, F f) const {
  int64_t at = begin;
  for (const auto& range : decay_) {  // sorted, disjoint
    if (range.offset >= end) break;
    const int64_t decay_begin = std::max(range.offset, at), decay_end = std::min(range.offset + range.size, end);
    if (decay_begin >= decay_end) continue;
    if (decay_begin > at) f(at, decay_begin, false);
    f(decay_begin, decay_end, true);
    at = decay_end;
  }
  if (at < end) f(at, end, false);
}

void AdamW::Step(const std::vector<at::Tensor>& pieces, const at::Tensor& grads, double lr, double grad_scale) {
  int64_t numel = 0;
  for (const at::Tensor& piece : pieces) numel += piece.numel();
  ST_CHECK(numel == exp_avg_.numel() && grads.numel() == exp_avg_.numel(), "AdamW range {} vs params {} grads {}",
           exp_avg_.numel(), numel, grads.numel());
  at::NoGradGuard no_grad;
  ++step_;
  const double bias_correction1 = 1.0 - std::pow(spec_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(spec_.beta2, static_cast<double>(step_));
  const Coefficients c{lr, grad_scale, lr / bias_correction1, std::sqrt(bias_correction2)};
  int64_t offset = 0;
  for (const at::Tensor& piece : pieces) {
    StepPiece(piece, offset, grads, c);
    offset += piece.numel();
  }
}

void AdamW::StepPiece(const at::Tensor& piece, int64_t offset, const at::Tensor& grads_in, const Coefficients& c) {
  ST_CHECK(piece.is_contiguous() && piece.scalar_type() == at::kFloat, "AdamW pieces are contiguous fp32");
  if (piece.is_cpu() && grads_in.is_cpu() && grads_in.scalar_type() == at::kFloat && grads_in.is_contiguous()) {
    StepPieceCpu(piece, offset, grads_in, c);
    return;
  }
  const int64_t n = piece.numel();
  at::Tensor params = piece.view({n});
  const at::Tensor slice = grads_in.narrow(0, offset, n);
  const at::Tensor grads = c.grad_scale != 1.0 ? slice * c.grad_scale : slice;
  if (spec_.weight_decay != 0.0) {
    ForEachDecaySpan(offset, offset + n, [&](int64_t begin, int64_t end, bool decayed) {
      if (decayed) params.narrow(0, begin - offset, end - begin).mul_(1.0 - c.lr * spec_.weight_decay);
    });
  }
  at::Tensor exp_avg = exp_avg_.narrow(0, offset, n), exp_avg_sq = exp_avg_sq_.narrow(0, offset, n);
  exp_avg.lerp_(grads, 1.0 - spec_.beta1);
  exp_avg_sq.mul_(spec_.beta2).addcmul_(grads, grads, 1.0 - spec_.beta2);
  const at::Tensor denom = (exp_avg_sq.sqrt() / c.sqrt_bias_correction2).add_(spec_.eps);
  params.addcdiv_(exp_avg, denom, -c.step_size);
}

void AdamW::StepPieceCpu(const at::Tensor& piece, int64_t offset, const at::Tensor& grads, const Coefficients& c) {
  // The same arithmetic as the tensor operations above, in one pass over memory instead of
  // about fourteen (and no temporaries): on CPUs the update is bound by memory bandwidth.
  // Pointers indexed by the range's element: the piece starts at `offset`.
  float* p = piece.data_ptr<float>();
  const float* g = grads.data_ptr<float>() + offset;
  float* m = exp_avg_.data_ptr<float>() + offset;
  float* v = exp_avg_sq_.data_ptr<float>() + offset;
  AdamWCoefficients k{static_cast<float>(c.grad_scale),
                      1.0f,
                      static_cast<float>(1.0 - spec_.beta1),
                      static_cast<float>(spec_.beta2),
                      static_cast<float>(1.0 - spec_.beta2),
                      static_cast<float>(spec_.eps),
                      static_cast<float>(c.sqrt_bias_correction2),
                      static_cast<float>(-c.step_size)};
  const auto decay = static_cast<float>(1.0 - c.lr * spec_.weight_decay);
  ForEachDecaySpan(offset, offset + piece.numel(), [&](int64_t begin, int64_t end, bool decayed) {
    AdamWCoefficients span = k;
    span.decay = decayed && spec_.weight_decay != 0.0 ? decay : 1.0f;
    at::parallel_for(begin - offset, end - offset, 1 << 14,
                     [&](int64_t b, int64_t e) { AdamWKernel(p + b, g + b, m + b, v + b, e - b, span); });
  });
}

}  // namespace shardtune
