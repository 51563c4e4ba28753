#include "worker/models/weight_ops.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "sharding/gradient_slots.h"

namespace shardtune {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor PlainLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, weight, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
}

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight) {
    ctx->save_for_backward({x, weight});
    return at::linear(x, weight);
  }

  // With x and the output's gradient g as rows: dx = g W, dW = gᵀ x.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const at::Tensor g = grads[0].reshape({-1, weight.size(0)});
    at::Tensor dx, d_weight;
    if (ctx->needs_input_grad(0)) dx = g.mm(weight).view(x.sizes());
    if (ctx->needs_input_grad(1)) {
      const at::Tensor rows = x.reshape({-1, weight.size(1)});
      GradientSlot* slot = FindGradientSlot(weight);
      if (slot != nullptr && slot->gradient.scalar_type() == g.scalar_type()) {
        if (slot->written) {
          slot->gradient.addmm_(g.t(), rows);
        } else {
          at::mm_out(slot->gradient, g.t(), rows);
          slot->written = true;
        }
      } else {
        d_weight = g.t().mm(rows);
      }
    }
    return {dx, d_weight};
  }
};

// On CPUs the gradient of each looked-up row is added into the row of its id, scattered into
// the weight's slot where it has one (zeroed first unless this micro-batch already wrote there).
// Elsewhere, and without a slot, LibTorch's own backward: on CUDA it sums each row in fp32 and
// in a fixed order, where a scatter would add bf16 rows by atomics in any order.
class EmbeddingFunction : public torch::autograd::Function<EmbeddingFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& ids,
                            int64_t padding_idx) {
    ctx->save_for_backward({weight, ids});
    ctx->saved_data["padding_idx"] = padding_idx;
    return at::embedding(weight, ids, padding_idx);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &weight = saved[0], &ids = saved[1];
    const int64_t padding_idx = ctx->saved_data["padding_idx"].toInt();
    GradientSlot* slot = FindGradientSlot(weight);
    if (slot == nullptr || !weight.is_cpu() || slot->gradient.scalar_type() != grads[0].scalar_type()) {
      return {at::embedding_dense_backward(grads[0], ids, weight.size(0), padding_idx, /*scale_grad_by_freq=*/false),
              at::Tensor(), at::Tensor()};
    }
    const at::Tensor index = ids.reshape({-1});
    at::Tensor rows = grads[0].reshape({-1, weight.size(1)});
    if (padding_idx >= 0) rows = rows * (index != padding_idx).unsqueeze(1).to(rows.scalar_type());
    if (slot->rows != nullptr) {  // the engine sums the rows over the ranks (ZeroEngine::AddLookedUpRows)
      slot->rows->push_back({index, rows});
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    }
    if (!slot->written) slot->gradient.zero_();
    slot->gradient.index_add_(0, index, rows);
    slot->written = true;
    return {at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (at::GradMode::is_enabled() && weight.requires_grad() && weight.dim() == 2) {
    // The bias apart: LibTorch 1.13's custom functions take no undefined tensors.
    const at::Tensor y = LinearFunction::apply(x, weight);
    return bias.defined() ? y + bias : y;
  }
  return PlainLinear(x, weight, bias);
}

at::Tensor Embedding(const at::Tensor& weight, const at::Tensor& ids, int64_t padding_idx) {
  if (at::GradMode::is_enabled() && weight.requires_grad()) return EmbeddingFunction::apply(weight, ids, padding_idx);
  return at::embedding(weight, ids, padding_idx);
}

}  // namespace shardtune
