#include "worker/blas_env.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace shardtune {

namespace {
constexpr const char* kChosenMarker = "SHARDTUNE_BLAS_CHOSEN";
}  // namespace

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
  ::setenv(kChosenMarker, core, 1);
  ::execv("/proc/self/exe", argv);
  // If exec failed we simply run on with the kernels OpenBLAS chose.
}

std::string BlasKernelDescription() {
  // OpenBLAS is loaded as a dependency of LibTorch, so its symbols are global.
  using Query = char* (*)();
  const auto config = reinterpret_cast<Query>(::dlsym(RTLD_DEFAULT, "openblas_get_config"));
  const auto core = reinterpret_cast<Query>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (config == nullptr || core == nullptr) return "not OpenBLAS";
  const char* chosen = std::getenv(kChosenMarker);
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  const std::string why = chosen != nullptr && set != nullptr && std::string(chosen) == set
                              ? "chosen by shardtune from the CPU's flags"
                          : set != nullptr ? std::string("OPENBLAS_CORETYPE=") + set + " set by the user"
                                           : "OpenBLAS's own detection";
  return std::string(config()) + ", " + core() + " kernels (" + why + ")";
}

}  // namespace shardtune
