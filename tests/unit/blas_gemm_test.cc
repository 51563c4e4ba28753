// Gemm (worker/models/blas_gemm.h), straight into the process's BLAS and through LibTorch,
// against LibTorch's own product: every transposition, rows further apart than their length,
// alpha and beta, and a C full of NaN that beta 0 must ignore.
#include "worker/models/blas_gemm.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "worker/blas_env.h"

namespace shardtune {
namespace {

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                        float, float*, int64_t);

// Operands stored with 3 spare columns per row, C with 5: each function must honour the strides.
void ExpectMatchesLibTorch(GemmFn gemm) {
  const int64_t m = 37, n = 70, k = 19;
  at::manual_seed(3);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const at::Tensor a = at::randn({ta ? k : m, (ta ? m : k) + 3}), b = at::randn({tb ? n : k, (tb ? k : n) + 3});
      const at::Tensor a_used = a.narrow(1, 0, ta ? m : k), b_used = b.narrow(1, 0, tb ? k : n);
      const at::Tensor product = at::mm(ta ? a_used.t() : a_used, tb ? b_used.t() : b_used);
      at::Tensor c = at::full({m, n + 5}, std::numeric_limits<float>::quiet_NaN());
      gemm(ta, tb, m, n, k, 1, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1), 0, c.data_ptr<float>(),
           c.size(1));
      EXPECT_TRUE(at::allclose(c.narrow(1, 0, n), product, 1e-5, 1e-5)) << "ta " << ta << " tb " << tb;
      EXPECT_TRUE(at::isnan(c.narrow(1, n, 5)).all().item<bool>()) << "wrote past its columns";
      // c = 0.5 c + 2 op(a) op(b) = 2.5 product
      gemm(ta, tb, m, n, k, 2, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1), 0.5f,
           c.data_ptr<float>(), c.size(1));
      EXPECT_TRUE(at::allclose(c.narrow(1, 0, n), 2.5 * product, 1e-5, 1e-4)) << "ta " << ta << " tb " << tb;
    }
  }
}

TEST(BlasGemm, DirectProductMatchesLibTorch) { ExpectMatchesLibTorch(&Gemm); }

TEST(BlasGemm, LibTorchFallbackMatchesLibTorch) { ExpectMatchesLibTorch(&GemmThroughLibTorch); }

// What BLAS itself refuses: a broadcast operand (rows 0 apart) and an empty inner side, after
// which beta 0 leaves zeros in C.
TEST(BlasGemm, TakesBroadcastOperandsAndEmptySides) {
  at::manual_seed(4);
  const int64_t m = 5, n = 6, k = 7;
  const at::Tensor a = at::randn({m, k}), row = at::randn({1, n});
  at::Tensor c = at::full({m, n}, std::numeric_limits<float>::quiet_NaN());
  Gemm(false, false, m, n, k, 1, a.data_ptr<float>(), k, row.data_ptr<float>(), 0, 0, c.data_ptr<float>(), n);
  EXPECT_TRUE(at::allclose(c, at::mm(a, row.expand({k, n})), 1e-5, 1e-5));
  c.fill_(std::numeric_limits<float>::quiet_NaN());
  Gemm(false, false, m, n, 0, 1, a.data_ptr<float>(), k, row.data_ptr<float>(), n, 0, c.data_ptr<float>(), n);
  EXPECT_TRUE(at::equal(c, at::zeros({m, n}))) << "an empty sum with beta 0";
}

// Where OpenBLAS is LibTorch's BLAS (Debian's LibTorch), its sgemm_ is exported, passes the
// check, and is what Gemm calls.
TEST(BlasGemm, CallsOpenBlasDirectlyWhereItIsLoaded) {
  if (BlasKernelDescription() == "not OpenBLAS") GTEST_SKIP() << "this LibTorch's BLAS is not OpenBLAS";
  EXPECT_TRUE(GemmCallsBlasDirectly());
}

}  // namespace
}  // namespace shardtune
