#pragma once
// Weight gradients written straight into the engine's gradient buffers.
//
// A unit's backward used to return a fresh tensor for every weight gradient, which the engine
// then copied into the unit's flat fp32 buffer: one more pass over every gradient of the model
// per micro-batch (1.5–4% of a CPU step, more where memory bandwidth is shared). Now, for the
// span of one unit call's backward, the engine installs each trainable parameter's slot (its
// place in the buffer, in the parameter's shape); an op that computes a weight gradient as a
// matrix product or a scatter (worker/models/weight_ops.h) finds its weight's slot and writes the product there —
// the micro-batch's first contribution as a plain product, later ones added — and returns no
// gradient. Everything else returns gradients as before, and the engine adds them in.

#include <ATen/core/Tensor.h>

#include <vector>

namespace shardtune {

// A lookup's gradient kept as rows (an embedding's looked-up rows and their ids), where the
// engine sums them over the ranks itself instead of reducing the whole table.
struct LookedUpRows {
  at::Tensor ids;   // (n,) int64
  at::Tensor rows;  // (n, width), the gradient of each looked-up row
};

struct GradientSlot {
  at::Tensor parameter;  // the very tensor the unit computes with: what ops look the slot up by
  at::Tensor gradient;   // its gradient's place in the buffer, in its shape; undefined: none
  bool written = false;  // the buffer holds a contribution of this micro-batch already: add to it
  // Set for a row lookup's call (UnitUse::kRowLookup) where the engine gathers rows: a lookup's
  // backward appends its rows here and leaves `gradient` alone (it may be in a reduction already).
  std::vector<LookedUpRows>* rows = nullptr;
};

// Installs, for its lifetime, each slot that has a gradient place, under its parameter.
// Process-wide rather than thread-local: autograd runs a graph's CUDA ops on its own threads.
class ScopedGradientSlots {
 public:
  explicit ScopedGradientSlots(std::vector<GradientSlot>& slots);
  ~ScopedGradientSlots();
  ScopedGradientSlots(const ScopedGradientSlots&) = delete;
  ScopedGradientSlots& operator=(const ScopedGradientSlots&) = delete;

 private:
  std::vector<const void*> keys_;
};

// The installed slot of `parameter` (the very tensor the unit computed with), or null.
GradientSlot* FindGradientSlot(const at::Tensor& parameter);

}  // namespace shardtune
