#include "worker/models/blas_gemm.h"

#include <ATen/ATen.h>
#include <dlfcn.h>

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

// A product whose every entry is a small integer, in every transposition and with beta 1 as
// well as 0: a symbol of that name that computes anything else (another convention, a stub) is
// not used.
bool PassesCheck(Sgemm sgemm) {
  const float a[6] = {1, 2, 3, 4, 5, 6};     // 2 x 3, or its transpose stored 3 x 2
  const float b[6] = {7, 8, 9, 10, 11, 12};  // 3 x 2, or its transpose stored 2 x 3
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      float c[4] = {100, 100, 100, 100};
      CallRowMajor(sgemm, ta, tb, 2, 2, 3, 1, a, ta ? 2 : 3, b, tb ? 3 : 2, 0, c, 2);
      CallRowMajor(sgemm, ta, tb, 2, 2, 3, 2, a, ta ? 2 : 3, b, tb ? 3 : 2, 1, c, 2);  // c = 3 a b
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          float expected = 0;
          for (int p = 0; p < 3; ++p)
            expected += (ta ? a[p * 2 + i] : a[i * 3 + p]) * (tb ? b[j * 3 + p] : b[p * 2 + j]);
          if (c[i * 2 + j] != 3 * expected) return false;
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
  const Sgemm sgemm = DirectSgemm();
  if (sgemm != nullptr && m <= kInt32 && n <= kInt32 && k <= kInt32 && lda <= kInt32 && ldb <= kInt32 &&
      ldc <= kInt32) {
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
