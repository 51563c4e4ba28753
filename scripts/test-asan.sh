#!/usr/bin/env bash
# `make test-asan`: the whole test suite built with AddressSanitizer + UBSan (gcc) in a build
# directory of its own (build-asan), then run through CTest with the sanitizers' options set
# here. A report fails the test that triggered it. LeakSanitizer ignores only the leaks listed in
# tests/sanitizers/lsan.supp (inside uninstrumented third-party libraries, each with its reason).
# Usage: test-asan.sh [BUILD_DIR] [ctest arguments...]   (e.g. -R 'common_test|fuzz\.')
set -euo pipefail
build_dir=${1:-build-asan}
shift || true
cd "$(dirname "$0")/.."
# vptr is left out: it needs every polymorphic type's typeinfo from instrumented code, and
# LibTorch's and gRPC's (uninstrumented, some with hidden visibility) would be false reports.
sanitize="-fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer"
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DCMAKE_CXX_FLAGS="$sanitize" -DCMAKE_C_FLAGS="$sanitize" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
fi
# Instrumented LibTorch code runs several times slower (e2e.cli: 54 s plain, past 600 s here on a
# busy machine): every test's time limit is scaled (tests/CMakeLists.txt), ASAN_TIMEOUT_SCALE times.
cmake -S . -B "$build_dir" -DSHARDTUNE_TEST_TIMEOUT_SCALE="${ASAN_TIMEOUT_SCALE:-6}" > /dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# halt_on_error: the first report ends the process (its test fails). detect_leaks: at exit.
# fast_unwind_on_malloc=0: the slow unwinder walks through uninstrumented libraries (Open MPI),
# so a leak's stack reaches the MPI call lsan.supp names rather than stopping inside a plugin.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:fast_unwind_on_malloc=0:malloc_context_size=40"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0"
ctest --test-dir "$build_dir" --output-on-failure --timeout 3600 -j "${JOBS:-$(nproc)}" -LE 'gpu|slurm' "$@"
