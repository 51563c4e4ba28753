// gemm_peak [N] [SECONDS]: this machine's limit for the MFU figures. Times fp32 N x N matrix
// products through LibTorch (the BLAS shardtune's layers run on) on the threads LibTorch is given
// (OMP_NUM_THREADS), with the kernel choice every shardtune process makes, and prints
//   gemm_gflops=<best of the repetitions> threads=<n> blas="<kernels>"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "worker/blas_env.h"

int main(int argc, char** argv) {
  shardtune::EnsureBlasCoreType(argv);
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 2048;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3.0;
  at::manual_seed(0);
  const at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::Tensor c = at::mm(a, b);  // warm-up: thread pools, page faults
  double best = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n / s / 1e9);
  }
  std::printf("gemm_gflops=%.1f threads=%d blas=\"%s\"\n", best, at::get_num_threads(),
              shardtune::BlasKernelDescription().c_str());
  return 0;
}
