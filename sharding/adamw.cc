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

void AdamW::Step(at::Tensor& params, const at::Tensor& grads_in, double lr, double grad_scale) {
  ST_CHECK(params.numel() == exp_avg_.numel() && grads_in.numel() == exp_avg_.numel(),
           "AdamW range {} vs params {} grads {}", exp_avg_.numel(), params.numel(), grads_in.numel());
  at::NoGradGuard no_grad;
  ++step_;
  const double bias_correction1 = 1.0 - std::pow(spec_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(spec_.beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  if (params.is_cpu() && grads_in.is_cpu() && params.scalar_type() == at::kFloat &&
      grads_in.scalar_type() == at::kFloat && params.is_contiguous() && grads_in.is_contiguous()) {
    StepCpu(params, grads_in, lr, grad_scale, step_size, std::sqrt(bias_correction2));
    return;
  }
  const at::Tensor grads = grad_scale != 1.0 ? grads_in * grad_scale : grads_in;
  if (spec_.weight_decay != 0.0) {
    for (const auto& range : decay_) params.narrow(0, range.offset, range.size).mul_(1.0 - lr * spec_.weight_decay);
  }
  exp_avg_.lerp_(grads, 1.0 - spec_.beta1);
  exp_avg_sq_.mul_(spec_.beta2).addcmul_(grads, grads, 1.0 - spec_.beta2);
  const at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bias_correction2)).add_(spec_.eps);
  params.addcdiv_(exp_avg_, denom, -step_size);
}

void AdamW::StepCpu(at::Tensor& params, const at::Tensor& grads, double lr, double grad_scale, double step_size,
                    double sqrt_bias_correction2) {
  // The same arithmetic as the tensor operations above, in one pass over memory instead of
  // about fourteen (and no temporaries): on CPUs the update is bound by memory bandwidth.
  float* p = params.data_ptr<float>();
  const float* g = grads.data_ptr<float>();
  float* m = exp_avg_.data_ptr<float>();
  float* v = exp_avg_sq_.data_ptr<float>();
  AdamWCoefficients c{static_cast<float>(grad_scale),
                      1.0f,
                      static_cast<float>(1.0 - spec_.beta1),
                      static_cast<float>(spec_.beta2),
                      static_cast<float>(1.0 - spec_.beta2),
                      static_cast<float>(spec_.eps),
                      static_cast<float>(sqrt_bias_correction2),
                      static_cast<float>(-step_size)};
  auto update = [&](int64_t begin, int64_t end, float decay) {
    AdamWCoefficients range = c;
    range.decay = decay;
    at::parallel_for(begin, end, 1 << 14,
                     [&](int64_t b, int64_t e) { AdamWKernel(p + b, g + b, m + b, v + b, e - b, range); });
  };
  // Ranges with decay and the gaps between them, in order.
  const auto decay = static_cast<float>(1.0 - lr * spec_.weight_decay);
  int64_t done = 0;
  for (const auto& range : decay_) {
    if (range.offset > done) update(done, range.offset, 1.0f);
    update(range.offset, range.offset + range.size, spec_.weight_decay != 0.0 ? decay : 1.0f);
    done = range.offset + range.size;
  }
  if (done < params.numel()) update(done, params.numel(), 1.0f);
}

}  // namespace shardtune
