#include "sharding/loss_scale.h"

#include <algorithm>
#include <cmath>

namespace shardtune {

bool DynamicLossScale::Update(double scaled_grad_norm) {
  if (!std::isfinite(scaled_grad_norm)) {
    if (enabled_) scale_ = std::max(1.0, scale_ / 2);
    clean_steps_ = 0;
    return false;
  }
  if (enabled_ && ++clean_steps_ % growth_interval_ == 0) scale_ *= 2;
  return true;
}

}  // namespace shardtune
