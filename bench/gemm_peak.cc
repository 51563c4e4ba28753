// gemm_peak [N] [SECONDS] [cpu|cuda] [fp32|bf16]: this machine's limit for the MFU figures.
// Times N x N matrix products through LibTorch (the library shardtune's layers run on) and prints
//   gemm_gflops=<best of the repetitions> threads=<n> blas="<kernels>"
// On the CPU: fp32, on the threads LibTorch is given (OMP_NUM_THREADS), with the BLAS kernel
// choice every shardtune process makes. On CUDA: the dtype given, timed with device syncs.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "worker/blas_env.h"

int main(int argc, char** argv) {
  shardtune::EnsureBlasCoreType(argv);
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 2048;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3.0;
  const bool cuda = argc > 3 && std::string(argv[3]) == "cuda";
  const bool bf16 = argc > 4 && std::string(argv[4]) == "bf16";
  if (cuda && !at::hasCUDA()) {
    std::fprintf(stderr, "gemm_peak: this LibTorch has no CUDA device\n");
    return 1;
  }
  const auto options = at::TensorOptions()
                           .dtype(bf16 ? at::kBFloat16 : at::kFloat)
                           .device(cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU));
  at::manual_seed(0);
  const at::Tensor a = at::randn({n, n}, options), b = at::randn({n, n}, options);
  at::Tensor c = at::mm(a, b);  // warm-up: thread pools, page faults, cuBLAS handles
  auto sync = [&] {
    // Reading one element waits for the device (copying all of c would add its transfer).
    if (cuda) (void)c.view(-1)[0].item().toFloat();
  };
  const int repeat = cuda ? 50 : 1;  // device launches are asynchronous: time a batch of them
  sync();
  double best = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeat; ++r) at::mm_out(c, a, b);
    sync();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, repeat * 2.0 * n * n * n / s / 1e9);
  }
  std::printf("gemm_gflops=%.1f threads=%d blas=\"%s\"\n", best, at::get_num_threads(),
              cuda ? "cuBLAS" : shardtune::BlasKernelDescription().c_str());
  return 0;
}
