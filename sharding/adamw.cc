#include "sharding/adamw.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace shardtune {

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

void AdamW::Step(at::Tensor& params, const at::Tensor& grads, double lr) {
  ST_CHECK(params.numel() == exp_avg_.numel() && grads.numel() == exp_avg_.numel(),
           "AdamW range {} vs params {} grads {}", exp_avg_.numel(), params.numel(), grads.numel());
  at::NoGradGuard no_grad;
  ++step_;
  const double bias_correction1 = 1.0 - std::pow(spec_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(spec_.beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  if (params.is_cpu() && grads.is_cpu() && params.scalar_type() == at::kFloat && grads.scalar_type() == at::kFloat &&
      params.is_contiguous() && grads.is_contiguous()) {
    StepCpu(params, grads, lr, step_size, std::sqrt(bias_correction2));
    return;
  }
  if (spec_.weight_decay != 0.0) {
    for (const auto& range : decay_) params.narrow(0, range.offset, range.size).mul_(1.0 - lr * spec_.weight_decay);
  }
  exp_avg_.lerp_(grads, 1.0 - spec_.beta1);
  exp_avg_sq_.mul_(spec_.beta2).addcmul_(grads, grads, 1.0 - spec_.beta2);
  const at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bias_correction2)).add_(spec_.eps);
  params.addcdiv_(exp_avg_, denom, -step_size);
}

void AdamW::StepCpu(at::Tensor& params, const at::Tensor& grads, double lr, double step_size,
                    double sqrt_bias_correction2) {
  // The same arithmetic as the tensor operations above, in one pass over memory instead of
  // about fourteen (and no temporaries): on CPUs the update is bound by memory bandwidth.
  float* p = params.data_ptr<float>();
  const float* g = grads.data_ptr<float>();
  float* m = exp_avg_.data_ptr<float>();
  float* v = exp_avg_sq_.data_ptr<float>();
  const auto beta1_weight = static_cast<float>(1.0 - spec_.beta1), beta2 = static_cast<float>(spec_.beta2),
             beta2_weight = static_cast<float>(1.0 - spec_.beta2), eps = static_cast<float>(spec_.eps),
             root = static_cast<float>(sqrt_bias_correction2), neg_step = static_cast<float>(-step_size);
  auto update = [&](int64_t begin, int64_t end, float decay) {
    at::parallel_for(begin, end, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float gi = g[i];
        const float pi = p[i] * decay;
        const float mi = m[i] + beta1_weight * (gi - m[i]);
        const float vi = v[i] * beta2 + beta2_weight * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + neg_step * (mi / (std::sqrt(vi) / root + eps));
      }
    });
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
