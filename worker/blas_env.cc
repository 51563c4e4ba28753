#include "worker/blas_env.h"

#include <unistd.h>

#include <cstdlib>

namespace shardtune {

void EnsureBlasCoreType(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv("SHARDTUNE_BLAS_CHECKED") != nullptr) return;
  ::setenv("SHARDTUNE_BLAS_CHECKED", "1", 1);  // never loop, even if exec fails below
  const char* core = nullptr;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    core = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2")) {
    core = "Haswell";
  }
#endif
  if (core == nullptr) return;
  ::setenv("OPENBLAS_CORETYPE", core, 1);
  ::execv("/proc/self/exe", argv);
  // If exec failed we simply run on with the kernels OpenBLAS chose.
}

}  // namespace shardtune
