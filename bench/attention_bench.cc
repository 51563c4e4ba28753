// attention_bench [SEQ...]: the fused CPU attention's forward and backward at a model's head
// shape (12 heads of 64, the 125M model's), 1,024 tokens per call, for each sequence length
// (default 256 and 1024). Prints, per length,
//   seq=<S> batch=<B> causal_ms=<median> full_ms=<median> causal/full=<ratio>
// causal: the training mask, whose keys after each query block's last visible one the products
// skip; full: a mask that hides nothing, the same products over every key (what causal attention
// cost before it skipped). Iterations alternate between the two, so the ratio is side by side.
// Run with OMP_NUM_THREADS=1 for one core's figure.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "worker/blas_env.h"
#include "worker/cpu_allocator.h"
#include "worker/models/fused_ops.h"

namespace {

constexpr int64_t kHeads = 12, kHeadSize = 64, kTokens = 1024, kIterations = 40;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One forward and backward, in seconds. q, k and v are views of one (B, S, 3, H, D) projection,
// strided as the model's, each a leaf of its own (so that the time is the attention's alone,
// not the gradient's way back into the projection).
double TimeOnce(const at::Tensor& qkv, const at::Tensor& mask) {
  std::vector<at::Tensor> leaves;
  for (int64_t i = 0; i < 3; ++i) leaves.push_back(qkv.select(2, i).detach().set_requires_grad(true));
  const auto start = std::chrono::steady_clock::now();
  const at::Tensor out = shardtune::Attention(leaves[0], leaves[1], leaves[2], mask, /*causal=*/false,
                                              /*dropout=*/0.0);
  out.backward(at::ones_like(out));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  shardtune::EnsureBlasCoreType(argv);
  shardtune::InstallCachingCpuAllocator();  // as the worker runs: no page faults per step
  std::vector<int64_t> lengths;
  for (int i = 1; i < argc; ++i) lengths.push_back(std::atoll(argv[i]));
  if (lengths.empty()) lengths = {256, 1024};
  at::manual_seed(0);
  for (const int64_t s : lengths) {
    const int64_t b = std::max<int64_t>(1, kTokens / s);
    const at::Tensor query = at::arange(s).view({s, 1}), key = at::arange(s).view({1, s});
    const at::Tensor causal =
        at::zeros({1, 1, s, s}).masked_fill_((key > query).view({1, 1, s, s}), std::numeric_limits<float>::lowest());
    const at::Tensor full = at::zeros({1, 1, s, s});
    const at::Tensor qkv = at::randn({b, s, 3, kHeads, kHeadSize});
    TimeOnce(qkv, causal);  // warm-up
    TimeOnce(qkv, full);
    std::vector<double> causal_s, full_s;
    for (int i = 0; i < kIterations; ++i) {
      causal_s.push_back(TimeOnce(qkv, causal));
      full_s.push_back(TimeOnce(qkv, full));
    }
    std::printf("seq=%lld batch=%lld causal_ms=%.2f full_ms=%.2f causal/full=%.3f\n", static_cast<long long>(s),
                static_cast<long long>(b), Median(causal_s) * 1e3, Median(full_s) * 1e3,
                Median(causal_s) / Median(full_s));
  }
  return 0;
}
