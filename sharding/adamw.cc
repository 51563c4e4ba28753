#include "sharding/adamw.h"

#include <cmath>

#include "common/error.h"

namespace shardtune {

AdamW::AdamW(const OptimizerSpec& spec, int64_t numel, std::vector<DecayRange> decay, at::Device device)
    : spec_(spec), decay_(std::move(decay)) {
  exp_avg_ = at::zeros({numel}, at::TensorOptions().dtype(at::kFloat).device(device));
  exp_avg_sq_ = at::zeros({numel}, at::TensorOptions().dtype(at::kFloat).device(device));
}

void AdamW::Step(at::Tensor& params, const at::Tensor& grads, double lr) {
  ST_CHECK(params.numel() == exp_avg_.numel() && grads.numel() == exp_avg_.numel(),
           "AdamW range {} vs params {} grads {}", exp_avg_.numel(), params.numel(), grads.numel());
  at::NoGradGuard no_grad;
  ++step_;
  if (spec_.weight_decay != 0.0) {
    for (const auto& range : decay_) params.narrow(0, range.offset, range.size).mul_(1.0 - lr * spec_.weight_decay);
  }
  exp_avg_.lerp_(grads, 1.0 - spec_.beta1);
  exp_avg_sq_.mul_(spec_.beta2).addcmul_(grads, grads, 1.0 - spec_.beta2);
  const double bias_correction1 = 1.0 - std::pow(spec_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(spec_.beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  const at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bias_correction2)).add_(spec_.eps);
  params.addcdiv_(exp_avg_, denom, -step_size);
}

}  // namespace shardtune
