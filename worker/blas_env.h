#pragma once

#include <string>

namespace shardtune {

// OpenBLAS reads OPENBLAS_CORETYPE once, when it loads (before main), and Debian's 0.3.21
// misdetects some current CPUs, falling back to generic kernels 7x slower than its AVX-512
// ones. When the variable is unset, this picks the core type from the CPU's own feature flags
// and re-executes the program with it set; it returns normally when nothing needs changing.
// Call it first thing in main.
void EnsureBlasCoreType(char** argv);

// The BLAS kernels that run, as OpenBLAS names them ("OpenBLAS 0.3.21 ... SkylakeX"), and why
// (chosen by shardtune from the CPU's flags, set by the user, or OpenBLAS's own detection);
// "not OpenBLAS" when another BLAS is loaded.
std::string BlasKernelDescription();

}  // namespace shardtune
