#include "worker/models/adapters.h"

#include <vector>

namespace shardtune {

const LinearAdapter& LayerAdapters::operator[](size_t k) const {
  static const LinearAdapter kNone;
  return k < linear.size() ? linear[k] : kNone;
}

at::Tensor AdaptedLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                         const LinearAdapter& a) {
  const at::Tensor x = a.ia3.defined() && a.ia3_on_input ? input * a.ia3.reshape({-1}) : input;
  at::Tensor y;
  if (!a.lora_a.defined()) {
    y = Linear(x, weight, bias);
  } else {
    const at::Tensor dropped = a.lora_dropout > 0 ? at::dropout(x, a.lora_dropout, /*train=*/true) : x;
    if (!a.magnitude.defined()) {
      // W x + b + scale * B (A x), the second product accumulating in place into the first's
      // fresh output (addmm_: beta 1, alpha scale): the scaling and the sum get no passes of
      // their own over what is as large as the layer's output, forward or backward.
      std::vector<int64_t> sizes = x.sizes().vec();
      sizes.back() = weight.size(0);
      const int64_t rows = x.numel() / x.size(-1);
      at::Tensor base = Linear(x.reshape({rows, x.size(-1)}), weight, bias);
      base.addmm_(at::linear(dropped.reshape({rows, x.size(-1)}), a.lora_a), a.lora_b.t(), /*beta=*/1,
                  /*alpha=*/a.lora_scale);
      y = base.view(sizes);
    } else {
      const at::Tensor lora = at::linear(at::linear(dropped, a.lora_a), a.lora_b) * a.lora_scale;
      // DoRA, as PEFT computes it: the norm is detached (Liu et al., 2024, section 4.3).
      const at::Tensor merged = weight.to(at::kFloat) + a.lora_scale * at::matmul(a.lora_b, a.lora_a).to(at::kFloat);
      const at::Tensor norm = merged.norm(2, {1}).detach();
      const at::Tensor scale = (a.magnitude.to(at::kFloat) / norm).to(x.scalar_type());
      if (a.lora_dropout > 0) {  // W x + b + (scale - 1) W dropout(x) + scale * lora, as PEFT
        y = Linear(x, weight, bias) + (scale - 1) * at::linear(dropped, weight) + scale * lora;
      } else {  // the same with dropout(x) = x, in one product
        y = scale * (at::linear(x, weight) + lora);
        if (bias.defined()) y = y + bias;
      }
    }
  }
  if (a.ia3.defined() && !a.ia3_on_input) y = y * a.ia3.reshape({-1});
  return y;
}

at::Tensor PrependPrompt(const at::Tensor& hidden, const at::Tensor& prompt_embeddings) {
  const int64_t b = hidden.size(0), p = prompt_embeddings.size(0);
  return at::cat({prompt_embeddings.to(hidden.scalar_type()).unsqueeze(0).expand({b, p, hidden.size(2)}), hidden}, 1);
}

at::Tensor Bottleneck(const at::Tensor& x, const BottleneckAdapter& a) {
  if (!a.down.defined()) return x;
  at::Tensor h = Linear(x, a.down, a.down_bias);
  switch (a.activation) {
    case AdapterActivation::kRelu:
      h = at::relu(h);
      break;
    case AdapterActivation::kGelu:
      h = at::gelu(h);
      break;
    case AdapterActivation::kSilu:
      h = at::silu(h);
      break;
  }
  return x + Linear(h, a.up, a.up_bias);
}

}  // namespace shardtune
