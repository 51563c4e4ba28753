// The fused CPU kernels against LibTorch's composite ops: outputs and every input's gradient,
// on shapes with odd sizes (vector tails), per-batch rotary angles and ignored targets.
#include "worker/models/fused_ops.h"

#include <gtest/gtest.h>

#include <functional>
#include <vector>

namespace shardtune {
namespace {

// Outputs and gradients of `fused` and `reference` on the same leaves, with the same upstream
// gradient, must agree.
void ExpectSameGradients(const std::vector<at::Tensor>& inputs,
                         const std::function<at::Tensor(const std::vector<at::Tensor>&)>& fused,
                         const std::function<at::Tensor(const std::vector<at::Tensor>&)>& reference, double rtol,
                         double atol) {
  auto run = [&](const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor& t : inputs) leaves.push_back(t.detach().clone().set_requires_grad(t.requires_grad()));
    const at::Tensor out = f(leaves);
    at::manual_seed(11);
    const at::Tensor upstream = at::randn(out.sizes());
    (out * upstream).sum().backward();
    std::vector<at::Tensor> results = {out.detach()};
    for (const at::Tensor& leaf : leaves)
      if (leaf.requires_grad()) results.push_back(leaf.grad());
    return results;
  };
  const auto a = run(fused), b = run(reference);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::allclose(a[i], b[i], rtol, atol)) << (i == 0 ? "output" : "gradient " + std::to_string(i - 1))
                                                      << " differs by " << (a[i] - b[i]).abs().max().item<double>();
  }
}

TEST(FusedOps, RmsNormMatchesTheCompositeOps) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({3, 5, 37}).set_requires_grad(true);
  const at::Tensor w = (1 + 0.1 * at::randn({37})).set_requires_grad(true);
  ExpectSameGradients(
      {x, w}, [](const std::vector<at::Tensor>& t) { return RmsNorm(t[0], t[1], 1e-5); },
      [](const std::vector<at::Tensor>& t) { return t[1] * (t[0] * at::rsqrt(t[0].pow(2).mean(-1, true) + 1e-5)); },
      1e-5, 1e-6);
  // A frozen weight (PEFT): the input's gradient alone.
  ExpectSameGradients(
      {x, w.detach()}, [](const std::vector<at::Tensor>& t) { return RmsNorm(t[0], t[1], 1e-6); },
      [](const std::vector<at::Tensor>& t) { return t[1] * (t[0] * at::rsqrt(t[0].pow(2).mean(-1, true) + 1e-6)); },
      1e-5, 1e-6);
}

TEST(FusedOps, RotaryMatchesRotateHalf) {
  at::manual_seed(2);
  const int64_t b = 2, s = 7, heads = 3, d = 10;
  const at::Tensor x = at::randn({b, s, heads, d}).set_requires_grad(true);
  for (const int64_t angle_batches : {int64_t{1}, b}) {
    const at::Tensor angles = at::randn({angle_batches, 1, s, d});
    const at::Tensor cos = angles.cos(), sin = angles.sin();
    auto reference = [&](const std::vector<at::Tensor>& t) {
      const at::Tensor q = t[0].transpose(1, 2);  // (B, heads, S, D), as the attention holds it
      const at::Tensor rotated = at::cat({-q.narrow(-1, d / 2, d / 2), q.narrow(-1, 0, d / 2)}, -1);
      return (q * cos + rotated * sin).transpose(1, 2);
    };
    ExpectSameGradients(
        {x}, [&](const std::vector<at::Tensor>& t) { return Rotary(t[0], cos, sin); }, reference, 1e-6, 1e-6);
    // As the attention uses it: viewed as (B, heads, S, D) after, so its gradient comes strided.
    ExpectSameGradients(
        {x}, [&](const std::vector<at::Tensor>& t) { return Rotary(t[0], cos, sin).transpose(1, 2) * 2; },
        [&](const std::vector<at::Tensor>& t) { return reference(t).transpose(1, 2) * 2; }, 1e-6, 1e-6);
  }
}

TEST(FusedOps, SwiGluMatchesSiluTimesUp) {
  at::manual_seed(3);
  // Large magnitudes too: the clamped exp must not overflow into NaN.
  const at::Tensor gate = (at::randn({4, 33}) * 4).index_put_({0, 0}, 200.0).index_put_({0, 1}, -200.0);
  const at::Tensor up = at::randn({4, 33});
  ExpectSameGradients(
      {gate.set_requires_grad(true), up.set_requires_grad(true)},
      [](const std::vector<at::Tensor>& t) { return SwiGlu(t[0], t[1]); },
      [](const std::vector<at::Tensor>& t) { return at::silu(t[0]) * t[1]; }, 1e-5, 1e-6);
}

TEST(FusedOps, CrossEntropySumMatchesLibTorchsWithIgnoredTargets) {
  at::manual_seed(4);
  const at::Tensor logits = (at::randn({6, 101}) * 3).set_requires_grad(true);
  const at::Tensor targets = at::tensor(std::vector<int64_t>{3, -100, 100, 0, -100, 57});
  ExpectSameGradients(
      {logits}, [&](const std::vector<at::Tensor>& t) { return CrossEntropySum(t[0], targets); },
      [&](const std::vector<at::Tensor>& t) {
        return at::cross_entropy_loss(t[0], targets, {}, at::Reduction::Sum, -100);
      },
      1e-5, 1e-6);
  EXPECT_THROW(CrossEntropySum(logits, at::tensor(std::vector<int64_t>{0, 1, 2, 3, 4, 101})), std::exception);
}

}  // namespace
}  // namespace shardtune
