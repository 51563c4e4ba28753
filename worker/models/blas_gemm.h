#pragma once
// fp32 matrix products on raw row-major memory, for kernels that run many small ones (the
// attention's per-head products, a few thousand a layer): straight into the process's BLAS,
// without LibTorch's dispatch and the tensor views each product needs there, which cost about as
// much as a 64 x 64 x 64 product itself. No LibTorch in this header.

#include <cstdint>

namespace shardtune {

// C = alpha op(A) op(B) + beta C, every matrix row-major: C is m x n with rows ldc apart,
// op(A) m x k and op(B) k x n, where op(X) is X, or X's transpose when transpose_x (then X is
// stored k x m, or n x k, with rows lda or ldb apart). With beta 0, what C held is ignored.
// Products BLAS cannot take (an empty side, or rows closer than a row's length, as in a
// gradient broadcast over positions) go through LibTorch.
void Gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Whether Gemm calls the process's BLAS directly ("sgemm_", found and checked on first use),
// rather than through LibTorch (a BLAS that is not exported, as in LibTorch builds with a static
// MKL, or one that failed the check).
bool GemmCallsBlasDirectly();

// The same product through LibTorch: Gemm's fallback (and its tests' reference).
void GemmThroughLibTorch(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace shardtune
