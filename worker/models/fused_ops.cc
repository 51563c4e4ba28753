#include "worker/models/fused_ops.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <fmt/ranges.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "common/error.h"
#include "worker/models/blas_gemm.h"
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

// --- Attention ---

// Head h of batch b of x (B, L, heads, D), whose last stride is 1: an (L, D) row-major matrix
// with rows x.stride(1) apart, which BLAS reads and writes in place.
struct Head {
  float* data;
  int64_t ld;
  float* Row(int64_t i) const { return data + i * ld; }
};

Head HeadOf(const at::Tensor& x, int64_t b, int64_t h) {
  return {x.data_ptr<float>() + b * x.stride(0) + h * x.stride(2), x.stride(1)};
}

// The rows [begin, begin + rows) of an (S, T) row-major matrix from column `from` on, set to 0.
void ZeroTail(float* matrix, int64_t t, int64_t begin, int64_t rows, int64_t from) {
  for (int64_t i = begin; i < begin + rows; ++i) std::fill(matrix + i * t + from, matrix + (i + 1) * t, 0.0f);
}

// One (batch, key-value head) pair per task: the query heads of a group share its keys and
// values and add into their gradients, so a group stays on one thread. Where Gemm falls back to
// LibTorch's product, the tasks run tensor ops, and intra-op threads do not inherit the caller's
// grad mode: each task turns it off itself.
template <typename F>
void ForKvHeads(int64_t batch, int64_t kv_heads, const F& f) {
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;
    for (int64_t i = begin; i < end; ++i) f(i / kv_heads, i % kv_heads);
  });
}

// Query rows in spans of whole blocks; a span's products stop at the last key its rows see.
constexpr int64_t kQueryBlock = 64;

struct QuerySpan {
  int64_t begin, rows, width;  // rows [begin, begin + rows) see keys below width only
};

// The spans of one (S, T) mask. Every key after the last one a row sees scores exactly 0, so
// its products skip them: causal attention does 5/8 of the full products' multiply-adds at 256
// tokens (blocks of 64), and about half at 2048. A row that sees no key at all is uniform over
// all T keys (as in the exact softmax), so its block keeps every one. Consecutive blocks of the
// same width are one span (one product instead of several narrower ones).
std::vector<QuerySpan> QuerySpans(const float* mask, int64_t s, int64_t t) {
  std::vector<QuerySpan> spans;
  for (int64_t begin = 0; begin < s; begin += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, s - begin);
    int64_t width = 0;
    for (int64_t i = begin; i < begin + rows; ++i) {
      const float* row = mask + i * t;
      int64_t seen = t;
      while (seen > 0 && row[seen - 1] <= std::numeric_limits<float>::lowest()) --seen;
      width = std::max(width, seen == 0 ? t : seen);
    }
    if (!spans.empty() && spans.back().width == width) {
      spans.back().rows += rows;
    } else {
      spans.push_back({begin, rows, width});
    }
  }
  return spans;
}

// Keys in blocks of kQueryBlock, each with the first query row that sees any of them: the rows
// before score it 0. Consecutive blocks first seen by the same row are one.
struct KeyBlock {
  int64_t begin, size, first_row;
};

std::vector<KeyBlock> KeyBlocks(const std::vector<QuerySpan>& spans, int64_t t) {
  std::vector<KeyBlock> blocks;
  for (int64_t begin = 0; begin < t; begin += kQueryBlock) {
    const auto seen =
        std::find_if(spans.begin(), spans.end(), [&](const QuerySpan& span) { return span.width > begin; });
    if (seen == spans.end()) continue;  // no row sees these keys: their gradients stay 0
    const int64_t size = std::min(kQueryBlock, t - begin);
    if (!blocks.empty() && blocks.back().first_row == seen->begin &&
        blocks.back().begin + blocks.back().size == begin) {
      blocks.back().size += size;
    } else {
      blocks.push_back({begin, size, seen->begin});
    }
  }
  return blocks;
}

// The query spans of each batch of a (1 or B, 1, S, T) contiguous mask.
std::vector<std::vector<QuerySpan>> QuerySpansOf(const at::Tensor& mask) {
  const int64_t s = mask.size(2), t = mask.size(3);
  std::vector<std::vector<QuerySpan>> spans;
  for (int64_t bi = 0; bi < mask.size(0); ++bi) spans.push_back(QuerySpans(mask.data_ptr<float>() + bi * s * t, s, t));
  return spans;
}

// Per head and span: scores by one product written straight into the saved probabilities, the
// scaled, masked softmax in one pass over them, and the output by a second product written in
// place into the (B, S, H, D) result, which is already the layout of the output projection's
// input. The keys a span does not see get probability 0 without a product. LibTorch's
// composition transposes q, k and v into (B·H, L, D) copies, adds the mask in a batched
// product over every key, and copies the output back from (B, H, S, D).
class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& mask_in, double scale) {
    const int64_t b = q.size(0), s = q.size(1), heads = q.size(2), d = q.size(3);
    const int64_t t = k.size(1), kv_heads = k.size(2), group = heads / kv_heads;
    const at::Tensor mask = mask_in.contiguous();
    at::Tensor probs = at::empty({b, heads, s, t}, q.options());
    at::Tensor out = at::empty({b, s, heads, d}, q.options());
    const auto spans_of = QuerySpansOf(mask);
    ForKvHeads(b, kv_heads, [&](int64_t bi, int64_t kv) {
      const int64_t mask_batch = mask.size(0) == 1 ? 0 : bi;
      const std::vector<QuerySpan>& spans = spans_of[mask_batch];
      const float* mask_rows = mask.data_ptr<float>() + mask_batch * s * t;
      const Head key = HeadOf(k, bi, kv), value = HeadOf(v, bi, kv);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        float* p = probs.data_ptr<float>() + (bi * heads + h) * s * t;
        const Head query = HeadOf(q, bi, h), o = HeadOf(out, bi, h);
        for (const QuerySpan& span : spans) {
          float* rows = p + span.begin * t;
          Gemm(false, true, span.rows, span.width, d, 1, query.Row(span.begin), query.ld, key.data, key.ld, 0, rows, t);
          kernels::AttentionSoftmaxRows(rows, mask_rows + span.begin * t, static_cast<float>(scale), span.rows,
                                        span.width, t);
          ZeroTail(p, t, span.begin, span.rows, span.width);  // read by the backward's dV
          Gemm(false, false, span.rows, d, span.width, 1, rows, t, value.data, value.ld, 0, o.Row(span.begin), o.ld);
        }
      }
    });
    ctx->save_for_backward({q, k, v, probs, mask});
    ctx->saved_data["scale"] = scale;
    return out.view({b, s, heads * d});
  }

  // With P the probabilities and dO the output's gradient, per head: dV += Pᵀ dO, dP = dO Vᵀ,
  // dS = softmax backward of dP, dQ = dS K, dK += dSᵀ Q. dP and dQ go by query span, as in the
  // forward; dV and dK by block of keys, each from the first query row that sees it on (the rows
  // before score it 0), so that their products keep the length of the sequence.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &probs = saved[3], &mask = saved[4];
    const auto scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const int64_t b = q.size(0), s = q.size(1), heads = q.size(2), d = q.size(3);
    const int64_t t = k.size(1), kv_heads = k.size(2), group = heads / kv_heads;
    at::Tensor d_out = grads[0].view({b, s, heads, d});
    if (d_out.stride(3) != 1) d_out = d_out.contiguous();
    at::Tensor dq = at::empty({b, s, heads, d}, q.options());
    at::Tensor dk = at::zeros({b, t, kv_heads, d}, k.options()), dv = at::zeros({b, t, kv_heads, d}, v.options());
    const auto spans_of = QuerySpansOf(mask);
    ForKvHeads(b, kv_heads, [&](int64_t bi, int64_t kv) {
      const std::vector<QuerySpan>& spans = spans_of[mask.size(0) == 1 ? 0 : bi];
      const Head key = HeadOf(k, bi, kv), value = HeadOf(v, bi, kv);
      const Head d_key = HeadOf(dk, bi, kv), d_value = HeadOf(dv, bi, kv);
      const std::unique_ptr<float[]> d_scores(new float[s * t]);
      for (const QuerySpan& span : spans)  // never written below, read by dK's products
        ZeroTail(d_scores.get(), t, span.begin, span.rows, span.width);
      const std::vector<KeyBlock> key_blocks = KeyBlocks(spans, t);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        const float* p = probs.data_ptr<float>() + (bi * heads + h) * s * t;
        const Head g = HeadOf(d_out, bi, h), query = HeadOf(q, bi, h), d_query = HeadOf(dq, bi, h);
        for (const QuerySpan& span : spans) {
          float* ds = d_scores.get() + span.begin * t;
          Gemm(false, true, span.rows, span.width, d, 1, g.Row(span.begin), g.ld, value.data, value.ld, 0, ds, t);
          kernels::AttentionSoftmaxBackwardRows(p + span.begin * t, ds, scale, span.rows, span.width, t);
          Gemm(false, false, span.rows, d, span.width, 1, ds, t, key.data, key.ld, 0, d_query.Row(span.begin),
               d_query.ld);
        }
        for (const KeyBlock& keys : key_blocks) {
          const int64_t n = s - keys.first_row;
          Gemm(true, false, keys.size, d, n, 1, p + keys.first_row * t + keys.begin, t, g.Row(keys.first_row), g.ld, 1,
               d_value.Row(keys.begin), d_value.ld);
          Gemm(true, false, keys.size, d, n, 1, d_scores.get() + keys.first_row * t + keys.begin, t,
               query.Row(keys.first_row), query.ld, 1, d_key.Row(keys.begin), d_key.ld);
        }
      }
    });
    return {dq, dk, dv, at::Tensor(), at::Tensor()};
  }
};

// LibTorch's attention on (B, H, L, D) views: its fused kernels (flash or memory-efficient
// attention on CUDA) where this LibTorch has them, else the explicit softmax.
at::Tensor CompositeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                              bool causal, double dropout) {
  const int64_t b = q.size(0), s = q.size(1), heads = q.size(2), d = q.size(3), groups = heads / k.size(2);
  auto repeat_kv = [&](const at::Tensor& x) {  // (B, T, Hkv, D) -> (B, H, T, D)
    const at::Tensor y = x.transpose(1, 2);
    if (groups == 1) return y;
    return y.unsqueeze(2).expand({b, y.size(1), groups, y.size(2), d}).reshape({b, heads, y.size(2), d});
  };
  const at::Tensor qh = q.transpose(1, 2), kh = repeat_kv(k), vh = repeat_kv(v);
#if TORCH_VERSION_MAJOR >= 2
  const at::Tensor context =
      causal ? at::scaled_dot_product_attention(qh, kh, vh, c10::optional<at::Tensor>(), dropout, true)
             : at::scaled_dot_product_attention(qh, kh, vh, mask, dropout, false);
#else
  (void)causal;
  const int64_t t = kh.size(2);
  // scale q k^T + mask in one batched product (the mask is its accumulator), not three passes.
  const at::Tensor accumulator = mask.size(0) == 1 ? mask.view({1, s, t}).expand({b * heads, s, t})
                                                   : mask.expand({b, heads, s, t}).reshape({b * heads, s, t});
  const at::Tensor scores =
      at::baddbmm(accumulator, qh.reshape({b * heads, s, d}), kh.transpose(2, 3).reshape({b * heads, d, t}), /*beta=*/1,
                  /*alpha=*/1.0 / std::sqrt(static_cast<double>(d)))
          .view({b, heads, s, t});
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  if (dropout > 0) probs = at::dropout(probs, dropout, /*train=*/true);
  const at::Tensor context = at::matmul(probs, vh);
#endif
  return context.transpose(1, 2).reshape({b, s, heads * d});
}

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

at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, bool causal,
                     double dropout) {
  ST_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
               q.size(3) == k.size(3) && q.size(2) % k.size(2) == 0,
           "attention: q ({}) and k, v ({}), ({}) are not (B, S, H, D) and (B, T, Hkv, D) with H a multiple of Hkv",
           fmt::join(q.sizes(), ", "), fmt::join(k.sizes(), ", "), fmt::join(v.sizes(), ", "));
  const bool strided_rows = q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1;
  const bool plain_mask = mask.dim() == 4 && (mask.size(0) == 1 || mask.size(0) == q.size(0)) && mask.size(1) == 1 &&
                          mask.size(2) == q.size(1) && mask.size(3) == k.size(1);
  if (Fusable({&q, &k, &v, &mask}) && strided_rows && plain_mask && dropout == 0) {
    return AttentionFunction::apply(q, k, v, mask, 1.0 / std::sqrt(static_cast<double>(q.size(3))));
  }
  return CompositeAttention(q, k, v, mask, causal, dropout);
}

}  // namespace shardtune
