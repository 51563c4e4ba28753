#pragma once

namespace shardtune {

// OpenBLAS reads OPENBLAS_CORETYPE once, when it loads (before main), and Debian's 0.3.21
// misdetects some current CPUs, falling back to generic kernels 7x slower than its AVX-512
// ones. When the variable is unset, this picks the core type from the CPU's own feature flags
// and re-executes the program with it set; it returns normally when nothing needs changing.
// Call it first thing in main.
void EnsureBlasCoreType(char** argv);

}  // namespace shardtune
