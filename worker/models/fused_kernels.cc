#include "worker/models/fused_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

// No LibTorch here: this file is built with -ffast-math (so that exp and log vectorize through
// glibc's libmvec), and the inline functions of headers it shared with other files could be
// linked into those in their fast-math form. `omp simd` asks for the vectorized loops; each
// kernel is compiled for AVX-512, AVX2 and the baseline, and the loader picks the best the CPU
// has (GCC's function multiversioning). Inputs to exp are clamped where they could overflow,
// since fast math assumes finite values.
#define SHARDTUNE_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))

namespace shardtune::kernels {

namespace {

constexpr float kExpLimit = 80.0f;  // exp(80) is finite in fp32
// Below this exp underflows to a subnormal; the exact softmax gives the masked scores 0.
constexpr float kExpFloor = -87.0f;

}  // namespace

SHARDTUNE_KERNEL void RmsNormForwardRows(const float* x, const float* w, float* y, float* r, int64_t rows, int64_t d,
                                         float eps) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * d;
    float* yi = y + i * d;
    float squares = 0;
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < d; ++j) squares += xi[j] * xi[j];
    const float ri = 1.0f / std::sqrt(squares / static_cast<float>(d) + eps);
    r[i] = ri;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) yi[j] = w[j] * (xi[j] * ri);
  }
}

// dx = r (g w) - x r^3 mean(g w x); dw += g x r (when dw is given).
SHARDTUNE_KERNEL void RmsNormBackwardRows(const float* g, const float* x, const float* w, const float* r, float* dx,
                                          float* dw, int64_t rows, int64_t d) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* gi = g + i * d;
    const float* xi = x + i * d;
    const float ri = r[i];
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += gi[j] * w[j] * xi[j];
    const float c = ri * ri * ri * dot / static_cast<float>(d);
    if (dx != nullptr) {
      float* dxi = dx + i * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dxi[j] = ri * gi[j] * w[j] - xi[j] * c;
    }
    if (dw != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) dw[j] += gi[j] * xi[j] * ri;
    }
  }
}

// One position's `heads` vectors of size d (x's a `head_stride` apart). Forward: y = x cos +
// rotate_half(x) sin. Backward (the transpose, on the gradient): y1 = g1 c1 + g2 s2, y2 = g2 c2 -
// g1 s1.
SHARDTUNE_KERNEL void RotaryPosition(const float* x, int64_t head_stride, const float* c, const float* s, float* y,
                                     int64_t heads, int64_t d, bool backward) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const float* xi = x + h * head_stride;
    float* yi = y + h * d;
    if (!backward) {
#pragma omp simd
      for (int64_t j = 0; j < half; ++j) {
        yi[j] = xi[j] * c[j] - xi[j + half] * s[j];
        yi[j + half] = xi[j + half] * c[j + half] + xi[j] * s[j + half];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < half; ++j) {
        yi[j] = xi[j] * c[j] + xi[j + half] * s[j + half];
        yi[j + half] = xi[j + half] * c[j + half] - xi[j] * s[j];
      }
    }
  }
}

SHARDTUNE_KERNEL void SwiGluForwardKernel(const float* gate, const float* up, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float sigmoid = 1.0f / (1.0f + std::exp(std::min(-g, kExpLimit)));
    y[i] = g * sigmoid * up[i];
  }
}

// d_up = dy silu(g); d_gate = dy up silu'(g), silu'(g) = s (1 + g (1 - s)).
SHARDTUNE_KERNEL void SwiGluBackwardKernel(const float* dy, const float* gate, const float* up, float* d_gate,
                                           float* d_up, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float sigmoid = 1.0f / (1.0f + std::exp(std::min(-g, kExpLimit)));
    d_up[i] = dy[i] * g * sigmoid;
    d_gate[i] = dy[i] * up[i] * sigmoid * (1.0f + g * (1.0f - sigmoid));
  }
}

// Per row with a target: lse = log sum exp(x); the loss is lse - x[target]. Returns the sum.
SHARDTUNE_KERNEL double CrossEntropyForwardRows(const float* logits, const int64_t* targets, float* lse, int64_t rows,
                                                int64_t v) {
  double loss = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (targets[i] == kIgnoreIndex) continue;
    const float* xi = logits + i * v;
    float top = -std::numeric_limits<float>::max();
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < v; ++j) top = std::max(top, xi[j]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < v; ++j) sum += std::exp(xi[j] - top);
    lse[i] = top + std::log(sum);
    loss += static_cast<double>(lse[i]) - static_cast<double>(xi[targets[i]]);
  }
  return loss;
}

// d logits = g (softmax - one_hot(target)) on rows with a target, 0 on the others.
SHARDTUNE_KERNEL void CrossEntropyBackwardRows(const float* logits, const int64_t* targets, const float* lse, float g,
                                               float* dx, int64_t rows, int64_t v) {
  for (int64_t i = 0; i < rows; ++i) {
    float* dxi = dx + i * v;
    if (targets[i] == kIgnoreIndex) {
      std::fill(dxi, dxi + v, 0.0f);
      continue;
    }
    const float* xi = logits + i * v;
    const float li = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) dxi[j] = g * std::exp(xi[j] - li);
    dxi[targets[i]] -= g;
  }
}

SHARDTUNE_KERNEL void AttentionSoftmaxRows(float* x, const float* mask, float scale, int64_t rows, int64_t width,
                                           int64_t stride) {
  for (int64_t i = 0; i < rows; ++i) {
    float* xi = x + i * stride;
    const float* mi = mask + i * stride;
    float top = -std::numeric_limits<float>::max();
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < width; ++j) {
      xi[j] = xi[j] * scale + mi[j];
      top = std::max(top, xi[j]);
    }
    // A row that sees no key (all masked, e.g. padding) becomes uniform, as in the exact softmax.
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < width; ++j) {
      const float shifted = xi[j] - top;
      const float e = std::exp(std::max(shifted, kExpFloor));  // unconditional: it vectorizes
      xi[j] = shifted < kExpFloor ? 0.0f : e;
      sum += xi[j];
    }
    const float inverse = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) xi[j] *= inverse;
  }
}

SHARDTUNE_KERNEL void AttentionSoftmaxBackwardRows(const float* p, float* dx, float scale, int64_t rows, int64_t width,
                                                   int64_t stride) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* pi = p + i * stride;
    float* dxi = dx + i * stride;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < width; ++j) dot += dxi[j] * pi[j];
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) dxi[j] = scale * pi[j] * (dxi[j] - dot);
  }
}

}  // namespace shardtune::kernels
