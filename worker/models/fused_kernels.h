#pragma once
// The loops of worker/models/fused_ops.h on raw fp32 rows, one pass over memory each: what the
// autograd functions there run on each chunk of rows. No LibTorch (see fused_kernels.cc).

#include <cstdint>

namespace shardtune::kernels {

constexpr int64_t kIgnoreIndex = -100;  // a target that counts for nothing

// RMSNorm of `rows` rows of `d`: y = w x r with r = 1 / sqrt(mean(x^2) + eps) saved per row.
void RmsNormForwardRows(const float* x, const float* w, float* y, float* r, int64_t rows, int64_t d, float eps);
// Its backward: dx (when not null) and dw += (when not null) from the upstream g.
void RmsNormBackwardRows(const float* g, const float* x, const float* w, const float* r, float* dx, float* dw,
                         int64_t rows, int64_t d);
// Rotary embeddings of one position's `heads` vectors of size d (a `head_stride` apart in x) by
// that position's cos and sin; `backward` applies the transpose (to a gradient).
void RotaryPosition(const float* x, int64_t head_stride, const float* c, const float* s, float* y, int64_t heads,
                    int64_t d, bool backward);
// y = silu(gate) * up over n elements, and its backward.
void SwiGluForwardKernel(const float* gate, const float* up, float* y, int64_t n);
void SwiGluBackwardKernel(const float* dy, const float* gate, const float* up, float* d_gate, float* d_up, int64_t n);
// Cross-entropy of `rows` rows of v logits: each row's log-sum-exp into lse, and the sum of the
// losses of the rows whose target is not kIgnoreIndex; the backward writes g (softmax - one hot).
double CrossEntropyForwardRows(const float* logits, const int64_t* targets, float* lse, int64_t rows, int64_t v);
void CrossEntropyBackwardRows(const float* logits, const int64_t* targets, const float* lse, float g, float* dx,
                              int64_t rows, int64_t v);
// Attention probabilities of `rows` query rows of `width` scores each, `stride` apart, in place:
// x = softmax(scale x + mask) per row, the mask additive with the same layout (the dtype's lowest
// value where a key is not visible).
void AttentionSoftmaxRows(float* x, const float* mask, float scale, int64_t rows, int64_t width, int64_t stride);
// Its backward, in place on the probabilities' gradient: dx = scale p (dx - sum(dx p)).
void AttentionSoftmaxBackwardRows(const float* p, float* dx, float scale, int64_t rows, int64_t width, int64_t stride);

}  // namespace shardtune::kernels
