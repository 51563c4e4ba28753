#include "worker/models/fused_ops.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include "common/error.h"
#include "worker/models/fused_kernels.h"

namespace shardtune {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using kernels::kIgnoreIndex;

bool Fusable(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (!t->is_cpu() || t->scalar_type() != at::kFloat) return false;
  return true;
}

// Rows in chunks over LibTorch's intra-op threads.
template <typename F>
void ForRows(int64_t rows, int64_t row_size, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_size));
  at::parallel_for(0, rows, grain, f);
}

// --- RMSNorm ---

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight, double eps) {
    const at::Tensor x = input.contiguous(), w = weight.contiguous();
    const int64_t d = x.size(-1), rows = x.numel() / d;
    at::Tensor y = at::empty_like(x), r = at::empty({rows}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *rp = r.data_ptr<float>();
    ForRows(rows, d, [&](int64_t begin, int64_t end) {
      kernels::RmsNormForwardRows(xp + begin * d, wp, yp + begin * d, rp + begin, end - begin, d,
                                  static_cast<float>(eps));
    });
    ctx->save_for_backward({x, w, r});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &r = saved[2];
    const at::Tensor g = grads[0].contiguous();
    const int64_t d = x.size(-1), rows = x.numel() / d;
    const bool want_dx = ctx->needs_input_grad(0), want_dw = ctx->needs_input_grad(1);
    at::Tensor dx = want_dx ? at::empty_like(x) : at::Tensor();
    // Each chunk of rows sums its dw apart; the sums are added in the chunks' order, so that the
    // result does not depend on which thread finished first.
    std::mutex merge;
    std::map<int64_t, std::vector<float>> partial_dw;
    ForRows(rows, d, [&](int64_t begin, int64_t end) {
      std::vector<float> local(want_dw ? static_cast<size_t>(d) : 0, 0.0f);
      kernels::RmsNormBackwardRows(g.data_ptr<float>() + begin * d, x.data_ptr<float>() + begin * d,
                                   w.data_ptr<float>(), r.data_ptr<float>() + begin,
                                   want_dx ? dx.data_ptr<float>() + begin * d : nullptr,
                                   want_dw ? local.data() : nullptr, end - begin, d);
      if (want_dw) {
        std::lock_guard<std::mutex> lock(merge);
        partial_dw.emplace(begin, std::move(local));
      }
    });
    at::Tensor dw;
    if (want_dw) {
      dw = at::zeros_like(w);
      float* total = dw.data_ptr<float>();
      for (const auto& [begin, local] : partial_dw)
        for (int64_t j = 0; j < d; ++j) total[j] += local[static_cast<size_t>(j)];
    }
    return {dx, dw, at::Tensor()};
  }
};

// --- Rotary embeddings ---

// x (B, S, H, D) with any strides but the last (the gradient arrives as the transpose of a
// (B, H, S, D) tensor: read in place); cos and sin (Bc, S, D) contiguous with Bc 1 or B. The
// result is contiguous.
at::Tensor RotaryApply(const at::Tensor& input, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
  const at::Tensor x = input.stride(3) == 1 ? input : input.contiguous();
  const int64_t b = x.size(0), s = x.size(1), heads = x.size(2), d = x.size(3);
  const bool per_batch = cos.size(0) > 1;
  at::Tensor y = at::empty(x.sizes(), x.options());
  const float *xp = x.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  ForRows(b * s, heads * d, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t angle = (per_batch ? p : p % s) * d;
      const float* row = xp + (p / s) * x.stride(0) + (p % s) * x.stride(1);
      kernels::RotaryPosition(row, x.stride(2), cp + angle, sp + angle, yp + p * heads * d, heads, d, backward);
    }
  });
  return y;
}

class RotaryFunction : public torch::autograd::Function<RotaryFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return RotaryApply(x, cos, sin, /*backward=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {RotaryApply(grads[0], saved[0], saved[1], /*backward=*/true), at::Tensor(), at::Tensor()};
  }
};

// --- SwiGLU ---

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_in, const at::Tensor& up_in) {
    const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
    at::Tensor y = at::empty_like(gate);
    const float *gp = gate.data_ptr<float>(), *up_p = up.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, gate.numel(), 32768, [&](int64_t begin, int64_t end) {
      kernels::SwiGluForwardKernel(gp + begin, up_p + begin, yp + begin, end - begin);
    });
    ctx->save_for_backward({gate, up});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &gate = saved[0], &up = saved[1];
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor d_gate = at::empty_like(gate), d_up = at::empty_like(up);
    const float *dyp = dy.data_ptr<float>(), *gp = gate.data_ptr<float>(), *up_p = up.data_ptr<float>();
    float *dgp = d_gate.data_ptr<float>(), *dup = d_up.data_ptr<float>();
    at::parallel_for(0, gate.numel(), 32768, [&](int64_t begin, int64_t end) {
      kernels::SwiGluBackwardKernel(dyp + begin, gp + begin, up_p + begin, dgp + begin, dup + begin, end - begin);
    });
    return {d_gate, d_up};
  }
};

// --- Cross-entropy ---

class CrossEntropyFunction : public torch::autograd::Function<CrossEntropyFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits_in, const at::Tensor& targets_in) {
    const at::Tensor logits = logits_in.contiguous(), targets = targets_in.to(at::kLong).contiguous();
    const int64_t rows = logits.size(0), v = logits.size(1);
    const int64_t* tp = targets.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows; ++i) {
      if (tp[i] != kIgnoreIndex && (tp[i] < 0 || tp[i] >= v))
        Fail(ErrorCode::kInvalidArgument, "target {} is out of bounds for {} classes", tp[i], v);
    }
    at::Tensor lse = at::zeros({rows}, logits.options());
    std::mutex merge;
    std::map<int64_t, double> partial;  // by chunk, summed in order: the same total on any schedule
    ForRows(rows, v, [&](int64_t begin, int64_t end) {
      const double part = kernels::CrossEntropyForwardRows(logits.data_ptr<float>() + begin * v, tp + begin,
                                                           lse.data_ptr<float>() + begin, end - begin, v);
      std::lock_guard<std::mutex> lock(merge);
      partial.emplace(begin, part);
    });
    double total = 0;
    for (const auto& [begin, part] : partial) total += part;
    ctx->save_for_backward({logits, targets, lse});
    return at::scalar_tensor(total, logits.options());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &targets = saved[1], &lse = saved[2];
    const int64_t rows = logits.size(0), v = logits.size(1);
    const auto g = grads[0].item<float>();
    at::Tensor dx = at::empty_like(logits);
    ForRows(rows, v, [&](int64_t begin, int64_t end) {
      kernels::CrossEntropyBackwardRows(logits.data_ptr<float>() + begin * v, targets.data_ptr<int64_t>() + begin,
                                        lse.data_ptr<float>() + begin, g, dx.data_ptr<float>() + begin * v, end - begin,
                                        v);
    });
    return {dx, at::Tensor()};
  }
};

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (Fusable({&x, &weight})) return RmsNormFunction::apply(x, weight, eps);
  // Normalized in fp32, as transformers does, whatever the compute dtype.
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * xf.to(x.scalar_type());
}

at::Tensor Rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // cos and sin broadcast over heads: (Bc, 1, S, D) is (Bc, S, 1, D) for x's layout.
  if (Fusable({&x, &cos, &sin}) && x.size(-1) % 2 == 0) {
    const at::Tensor c = cos.reshape({cos.size(0), cos.size(2), cos.size(3)}).contiguous();
    const at::Tensor s = sin.reshape({sin.size(0), sin.size(2), sin.size(3)}).contiguous();
    return RotaryFunction::apply(x, c, s);
  }
  const at::Tensor c = cos.transpose(1, 2), s = sin.transpose(1, 2);
  return x * c + RotateHalf(x) * s;
}

at::Tensor SwiGlu(const at::Tensor& gate, const at::Tensor& up) {
  if (Fusable({&gate, &up}) && gate.sizes() == up.sizes()) return SwiGluFunction::apply(gate, up);
  return at::silu(gate) * up;
}

at::Tensor CrossEntropySum(const at::Tensor& logits, const at::Tensor& targets) {
  if (Fusable({&logits}) && logits.dim() == 2) return CrossEntropyFunction::apply(logits, targets);
  return at::cross_entropy_loss(logits, targets.to(logits.device()), {}, at::Reduction::Sum, kIgnoreIndex);
}

}  // namespace shardtune
