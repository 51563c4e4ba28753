#include "worker/models/blas_gemm.h"

#include <ATen/ATen.h>
#include <dlfcn.h>

#include <algorithm>
#include <limits>

namespace shardtune {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "Sgemm's integers rely on little-endian order");

// The Fortran BLAS's single-precision product, column-major, every argument by address. Its
// integers are passed as 64-bit: a BLAS with 32-bit integers (LP64) reads their low half, which
// on a little-endian machine is the same value, and one with 64-bit integers (ILP64) the whole.
using Sgemm = void (*)(const char* transa, const char* transb, const int64_t* m, const int64_t* n, const int64_t* k,
                       const float* alpha, const float* a, const int64_t* lda, const float* b, const int64_t* ldb,
                       const float* beta, float* c, const int64_t* ldc);

// Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: the same memory, with the
// operands swapped. Fortran's "N" on a row-major X reads Xᵀ.
void CallRowMajor(Sgemm sgemm, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  sgemm(tb ? "T" : "N", ta ? "T" : "N", &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

// A 2 x 3 product over 4 whose every entry is a small integer, in every transposition and with
// beta 1 as well as 0: a symbol of that name that computes anything else (another convention,
// swapped sides, a stub) is not used.
bool PassesCheck(Sgemm sgemm) {
  constexpr int m = 2, n = 3, k = 4;
  float a[m * k], b[k * n];
  for (int i = 0; i < m * k; ++i) a[i] = static_cast<float>(i + 1);
  for (int i = 0; i < k * n; ++i) b[i] = static_cast<float>(i + 7);
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      float c[m * n];
      std::fill(c, c + m * n, 100.0f);
      CallRowMajor(sgemm, ta, tb, m, n, k, 1, a, ta ? m : k, b, tb ? k : n, 0, c, n);
      CallRowMajor(sgemm, ta, tb, m, n, k, 2, a, ta ? m : k, b, tb ? k : n, 1, c, n);  // c = 3 a b
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          float expected = 0;
          for (int p = 0; p < k; ++p)
            expected += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
          if (c[i * n + j] != 3 * expected) return false;
        }
      }
    }
  }
  return true;
}

// Resolved once. The BLAS LibTorch links (OpenBLAS on Debian) is a dependency of the program,
// so its symbols are global.
Sgemm DirectSgemm() {
  static const Sgemm sgemm = [] {
    const auto found = reinterpret_cast<Sgemm>(::dlsym(RTLD_DEFAULT, "sgemm_"));
    return found != nullptr && PassesCheck(found) ? found : nullptr;
  }();
  return sgemm;
}

at::Tensor RowMajor(const float* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<float*>(data), {rows, cols}, {ld, 1}, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

void Gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  constexpr int64_t kInt32 = std::numeric_limits<int32_t>::max();
  // BLAS takes rows at least a row's length apart, and no empty side; LibTorch takes any strides
  // (rows 0 apart: a gradient broadcast over positions) and sizes.
  const bool blas_layout = m > 0 && n > 0 && k > 0 && lda >= (transpose_a ? m : k) && ldb >= (transpose_b ? k : n) &&
                           ldc >= n && std::max({m, n, k, lda, ldb, ldc}) <= kInt32;
  const Sgemm sgemm = DirectSgemm();
  if (sgemm != nullptr && blas_layout) {
    CallRowMajor(sgemm, transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    GemmThroughLibTorch(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

bool GemmCallsBlasDirectly() { return DirectSgemm() != nullptr; }

void GemmThroughLibTorch(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const at::Tensor a_stored = transpose_a ? RowMajor(a, k, m, lda) : RowMajor(a, m, k, lda);
  const at::Tensor b_stored = transpose_b ? RowMajor(b, n, k, ldb) : RowMajor(b, k, n, ldb);
  RowMajor(c, m, n, ldc)
      .addmm_(transpose_a ? a_stored.t() : a_stored, transpose_b ? b_stored.t() : b_stored, beta, alpha);
}

}  // namespace shardtune
