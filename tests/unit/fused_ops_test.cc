// The fused CPU kernels against LibTorch's composite ops: outputs and every input's gradient,
// on shapes with odd sizes (vector tails), per-batch rotary angles and ignored targets.
#include "worker/models/fused_ops.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <mutex>
#include <set>
#include <string>
#include <utility>
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

// softmax(q kᵀ / √D + mask) v spelled out on (B, H, L, D) tensors, each key-value head repeated
// for its query group.
at::Tensor ReferenceAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  const int64_t b = q.size(0), s = q.size(1), heads = q.size(2), d = q.size(3), groups = heads / k.size(2);
  const at::Tensor qh = q.transpose(1, 2);
  const at::Tensor kh = k.transpose(1, 2).repeat_interleave(groups, 1),
                   vh = v.transpose(1, 2).repeat_interleave(groups, 1);
  const at::Tensor scores = at::matmul(qh, kh.transpose(2, 3)) / std::sqrt(static_cast<double>(d)) + mask;
  return at::matmul(at::softmax(scores, -1), vh).transpose(1, 2).reshape({b, s, heads * d});
}

// Additive (B, 1, S, T) mask for S queries after a past of T - S: causal, and each batch's
// leading `padding[b]` keys hidden (a query that then sees no key at all gets a uniform row).
at::Tensor CausalMask(int64_t s, int64_t t, const std::vector<int64_t>& padding, at::ScalarType dtype) {
  const at::Tensor query = at::arange(t - s, t).view({s, 1}), key = at::arange(t).view({1, t});
  std::vector<at::Tensor> masks;
  for (const int64_t pad : padding) masks.push_back((key <= query).logical_and(key >= pad).view({1, 1, s, t}));
  const at::Tensor allowed = at::cat(masks, 0);
  return at::zeros(allowed.sizes(), at::TensorOptions().dtype(dtype))
      .masked_fill_(allowed.logical_not(), std::numeric_limits<float>::lowest());
}

TEST(FusedOps, AttentionMatchesTheExplicitSoftmax) {
  at::manual_seed(5);
  const int64_t b = 2, s = 9, heads = 6, d = 10;
  for (const int64_t kv_heads : {int64_t{6}, int64_t{2}}) {  // multi-head and grouped-query
    for (const int64_t past : {int64_t{0}, int64_t{4}}) {    // as in training, and after a prefix or cache
      const int64_t t = past + s;
      const at::Tensor q = at::randn({b, s, heads, d}).set_requires_grad(true);
      // Keys and values as a cache holds them: a slice of a longer tensor, rows strided.
      const at::Tensor k = at::randn({b, t + 2, kv_heads, d}).narrow(1, 1, t).set_requires_grad(true);
      const at::Tensor v = at::randn({b, t, kv_heads, d}).set_requires_grad(true);
      // Batch 1's query 0 sees no key when past is 0 (it is padding, hidden from itself too).
      for (const auto& mask :
           {CausalMask(s, t, {0, 0}, at::kFloat).narrow(0, 0, 1), CausalMask(s, t, {0, 1}, at::kFloat)}) {
        SCOPED_TRACE("kv_heads " + std::to_string(kv_heads) + " past " + std::to_string(past) + " mask batches " +
                     std::to_string(mask.size(0)));
        ExpectSameGradients(
            {q, k, v}, [&](const std::vector<at::Tensor>& x) { return Attention(x[0], x[1], x[2], mask, false, 0.0); },
            [&](const std::vector<at::Tensor>& x) { return ReferenceAttention(x[0], x[1], x[2], mask); }, 1e-5, 1e-6);
      }
    }
  }
}

// The output's gradient as a sum over positions gives it: the same row for every position
// (stride 0), which BLAS cannot take as a matrix with rows apart.
TEST(FusedOps, AttentionTakesAGradientBroadcastOverPositions) {
  at::manual_seed(9);
  const int64_t b = 2, s = 9, heads = 4, kv_heads = 2, d = 8;
  const at::Tensor q = at::randn({b, s, heads, d}).set_requires_grad(true);
  const at::Tensor k = at::randn({b, s, kv_heads, d}).set_requires_grad(true);
  const at::Tensor v = at::randn({b, s, kv_heads, d}).set_requires_grad(true);
  const at::Tensor mask = CausalMask(s, s, {0, 2}, at::kFloat);
  ExpectSameGradients(
      {q, k, v}, [&](const std::vector<at::Tensor>& x) { return Attention(x[0], x[1], x[2], mask, false, 0.0).sum(1); },
      [&](const std::vector<at::Tensor>& x) { return ReferenceAttention(x[0], x[1], x[2], mask).sum(1); }, 1e-5, 1e-5);
}

// Longer than a block of query rows (64), where the products stop at the last key a block's rows
// see: masks that hide the keys after it (causal, a padded end, packed documents) and ones that
// leave nothing to skip (a padded start, where a query that sees no key is uniform over all of
// them, after a past).
TEST(FusedOps, AttentionSkipsOnlyKeysNoQuerySees) {
  at::manual_seed(8);
  const int64_t b = 2, s = 150, heads = 4, kv_heads = 2, d = 16;
  const at::Tensor query = at::arange(s).view({s, 1}), key = at::arange(s).view({1, s});
  auto additive = [](const at::Tensor& allowed) {
    return at::zeros(allowed.sizes()).masked_fill_(allowed.logical_not(), std::numeric_limits<float>::lowest());
  };
  const at::Tensor causal = key <= query;
  const at::Tensor ended = at::stack({causal, causal.logical_and(key < 100)}).unsqueeze(1);  // batch 1 ends at 100
  const at::Tensor document = (at::arange(s) >= 40).to(at::kLong) + (at::arange(s) >= 110).to(at::kLong);
  const at::Tensor packed = causal.logical_and(document.view({s, 1}) == document.view({1, s})).view({1, 1, s, s});
  // Queries 70-79 see nothing (their block keeps every key), and the last block sees fewer keys
  // than the one before it.
  const at::Tensor blind = causal.logical_and(key < 100).logical_and((query < 70).logical_or(query >= 80));
  const std::vector<std::pair<std::string, at::Tensor>> masks = {
      {"causal", additive(causal.view({1, 1, s, s}))},
      {"padded end", additive(ended)},
      {"packed documents", additive(packed)},
      {"blind queries mid-sequence, then a padded end", additive(blind.view({1, 1, s, s}))},
      {"padded start", CausalMask(s, s, {0, 70}, at::kFloat)},
      {"past", CausalMask(s, s + 5, {0, 3}, at::kFloat)}};
  for (const auto& [name, mask] : masks) {
    SCOPED_TRACE(name);
    const int64_t t = mask.size(3);
    const at::Tensor q = at::randn({b, s, heads, d}).set_requires_grad(true);
    const at::Tensor k = at::randn({b, t, kv_heads, d}).set_requires_grad(true);
    const at::Tensor v = at::randn({b, t, kv_heads, d}).set_requires_grad(true);
    ExpectSameGradients(
        {q, k, v}, [&](const std::vector<at::Tensor>& x) { return Attention(x[0], x[1], x[2], mask, false, 0.0); },
        [&](const std::vector<at::Tensor>& x) { return ReferenceAttention(x[0], x[1], x[2], mask); }, 1e-5, 1e-5);
  }
}

// LibTorch's own attention (taken for CUDA and for other dtypes: here fp64), with the mask and,
// where the mask is exactly causal, with causality alone. Before LibTorch 2 its softmax runs in
// fp32 (as for bf16), hence fp32's tolerances.
TEST(FusedOps, CompositeAttentionMatchesTheExplicitSoftmax) {
  at::manual_seed(6);
  const int64_t b = 2, s = 7, heads = 4, kv_heads = 2, d = 8;
  const auto options = at::TensorOptions().dtype(at::kDouble);
  for (const bool is_causal : {false, true}) {
    // Padded after a past of 2 (every query still sees a key: LibTorch 2's fused backward
    // differs from the explicit softmax on a query that sees none), or exactly causal.
    const int64_t t = is_causal ? s : s + 2;
    const at::Tensor mask = is_causal ? CausalMask(s, t, {0}, at::kDouble) : CausalMask(s, t, {0, 2}, at::kDouble);
    const at::Tensor q = at::randn({b, s, heads, d}, options).set_requires_grad(true);
    const at::Tensor k = at::randn({b, t, kv_heads, d}, options).set_requires_grad(true);
    const at::Tensor v = at::randn({b, t, kv_heads, d}, options).set_requires_grad(true);
    ExpectSameGradients(
        {q, k, v}, [&](const std::vector<at::Tensor>& x) { return Attention(x[0], x[1], x[2], mask, is_causal, 0.0); },
        [&](const std::vector<at::Tensor>& x) { return ReferenceAttention(x[0], x[1], x[2], mask); }, 1e-5, 1e-6);
  }
}

// shardtune's loops (at::parallel_for in the attention, the kernels and the optimizer) run on
// LibTorch's intra-op threads only where OpenMP is compiled in; they split work by rows and heads,
// so the thread count must not change a single bit.
TEST(FusedOps, KernelsRunOnEveryIntraOpThreadWithTheSameResult) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<int> seen;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.insert(at::get_thread_num());
  });
  EXPECT_EQ(seen.size(), 2u) << "at::parallel_for ran on one thread: built without OpenMP?";

  at::manual_seed(7);
  const int64_t b = 2, s = 97, heads = 4, d = 16;  // two blocks of query rows, one partial
  const at::Tensor q = at::randn({b, s, heads, d}), k = at::randn({b, s, heads, d}), v = at::randn({b, s, heads, d});
  const at::Tensor mask = CausalMask(s, s, {0, 3}, at::kFloat);
  const at::Tensor x = at::randn({b, s, 1024}), weight = at::randn({1024});  // above SwiGlu's grain
  auto run = [&](int n) {
    at::set_num_threads(n);
    std::vector<at::Tensor> leaves = {q.clone().set_requires_grad(true), k.clone().set_requires_grad(true),
                                      v.clone().set_requires_grad(true), x.clone().set_requires_grad(true)};
    const at::Tensor attention = Attention(leaves[0], leaves[1], leaves[2], mask, false, 0.0);
    const at::Tensor mlp = SwiGlu(RmsNorm(leaves[3], weight, 1e-5), leaves[3]);
    (attention.pow(2).sum() + mlp.pow(2).sum()).backward();
    std::vector<at::Tensor> results = {attention.detach(), mlp.detach()};
    for (const at::Tensor& leaf : leaves) results.push_back(leaf.grad());
    return results;
  };
  const auto one = run(1), two = run(2);
  at::set_num_threads(threads);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(at::equal(one[i], two[i])) << "result " << i;
}

}  // namespace
}  // namespace shardtune
