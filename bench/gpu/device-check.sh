#!/usr/bin/env bash
# Every check that needs a GPU, as one command for a GPU machine without network (the device
# tool's H200): unpacks the dependencies that bench/gpu/pack-deps.sh packed into .device/, builds
# against the machine's PyTorch LibTorch and NCCL, runs the tests labeled "gpu" (NCCL
# collectives, CPU-vs-GPU training at ZeRO stages 0 and 3), then the GPU benchmark.
#   bench/gpu/device-check.sh [LOG_DIR]     (default $OUT, else device-logs/)
# TORCH_CMAKE_PREFIX names another LibTorch than the one of python3's torch.
# Each stage's log lands in LOG_DIR (7 files: the device tool returns at most 8); a failed stage
# does not stop the ones after it that can run. The stages' limits add up to 630 s, a little over
# the device tool's 600 s a command, which they reach only if everything is slow: run it with
# timeout_s 600 and carry [".device"].
set -uo pipefail
cd "$(dirname "$0")/../.."
logs=$(realpath -m "${1:-${OUT:-device-logs}}")
build=build-device  # not build-gpu, which may be configured against another LibTorch
deps=/tmp/shardtune-deps
mkdir -p "$logs" "$deps"
started=$SECONDS
stage() {  # name seconds command...: runs it, at most that long, with its output in LOG_DIR/name.log
  local name=$1 limit=$2
  shift 2
  local begin=$SECONDS
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1
  local status=$?
  echo "$name: exit $status after $((SECONDS - begin)) s" | tee -a "$logs/summary.txt"
  [ $status -eq 0 ] || tail -n 25 "$logs/$name.log"
  return $status
}

tar -C "$deps" -xJf .device/shardtune-deps.tar.xz || { echo "no .device/shardtune-deps.tar.xz: run bench/gpu/pack-deps.sh first"; exit 1; }
# The archive's libraries must not reach the machine's own programs (its older OpenSSL, SQLite
# or PCRE2 would break cmake or python3): only the archive's programs see them, through
# wrappers, and ours through the RPATH of the build (DT_RPATH, which also serves the libraries
# they load; -rpath-link lets the linker find what those libraries need).
libs=$deps/usr/lib/x86_64-linux-gnu:$deps/usr/lib/x86_64-linux-gnu/openmpi/lib:$deps/usr/lib/libpsm1
mkdir -p "$deps/wrap"
for tool in protoc grpc_cpp_plugin mpirun.openmpi mpicc.openmpi pkgconf; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' "$libs" \
    "$deps/usr/bin/$tool" > "$deps/wrap/$tool"
  chmod +x "$deps/wrap/$tool"
done
ln -sf pkgconf "$deps/wrap/pkg-config"
ln -sf mpirun.openmpi "$deps/wrap/mpirun"
export PATH=$deps/wrap:$PATH
export SHARDTUNE_MPIRUN=$deps/wrap/mpirun
# Debian's Open MPI, relocated from /usr (its PMIx and its settings file do not follow
# OPAL_PREFIX: they are named); pkg-config files that say /usr mean $deps/usr.
export OPAL_PREFIX=$deps/usr
export PMIX_MCA_mca_base_component_path=$deps/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
export OMPI_MCA_mca_base_param_files=$deps/etc/openmpi/openmpi-mca-params.conf
export PKG_CONFIG_LIBDIR=$deps/usr/lib/x86_64-linux-gnu/pkgconfig:$deps/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$deps
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# LibTorch's CMake files look for CUDA's compiler.
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  c++ --version | head -n 1
  cmake --version | head -n 1
} 2>&1 | tee "$logs/machine.txt"

torch_prefix=${TORCH_CMAKE_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}
# The NCCL that PyTorch loads, so that one process holds one NCCL.
nccl_dir=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2> /dev/null)
# Else one installed beside CUDA or in the system (CMake's own search looks in CUDA's folders).
if [ -z "$nccl_dir" ] || [ ! -f "$nccl_dir/include/nccl.h" ]; then
  header=$(find /usr/local /usr/include /opt -name nccl.h -path '*include*' 2> /dev/null | head -n 1)
  [ -n "$header" ] && nccl_dir=$(dirname "$(dirname "$header")")
fi
nccl_args=()
if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/include/nccl.h" ]; then
  library=$(find "$nccl_dir" /usr/local/cuda/ /usr/lib/x86_64-linux-gnu -name 'libnccl.so*' 2> /dev/null | head -n 1)
  nccl_args=(-DNCCL_INCLUDE_DIR="$nccl_dir/include" ${library:+-DNCCL_LIBRARY="$library"})
fi
echo "NCCL: ${nccl_args[*]:-the one CMake finds}" | tee -a "$logs/machine.txt"
# The cheapest things that could fail first: the packed mpirun starting a rank.
stage preflight 30 mpirun -np 1 true || exit 1
stage configure 80 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$deps/usr;$torch_prefix" -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath-link,$libs" \
  -DMPI_C_COMPILER="$deps/wrap/mpicc.openmpi" -DMPIEXEC_EXECUTABLE="$deps/wrap/mpirun" \
  -DPKG_CONFIG_EXECUTABLE="$deps/wrap/pkg-config" -DPROTOC_EXECUTABLE="$deps/wrap/protoc" \
  -DProtobuf_PROTOC_EXECUTABLE="$deps/wrap/protoc" -DGRPC_CPP_PLUGIN="$deps/wrap/grpc_cpp_plugin" "${nccl_args[@]}" ||
  exit 1
grep -E "NCCL backend|Found Torch" "$logs/configure.log"
grep -q "NCCL backend enabled" "$logs/configure.log" || { echo "no NCCL found: nothing here can run"; exit 1; }
# A LibTorch that exports its own protobuf would clash with the packed one in shardtune-worker.
torch_lib=$(grep -m 1 '^TORCH_LIBRARY:' "$build/CMakeCache.txt" | cut -d= -f2)
echo "protobuf symbols exported by LibTorch: $(nm -D --defined-only "$(dirname "$torch_lib")"/libtorch_cpu.so* 2> /dev/null |
  grep -c _ZN6google8protobuf)" | tee -a "$logs/summary.txt"
# Only what the checks run: the rest of the project builds in CI.
# -k 0: a first build against another LibTorch reports every file that fails, not the first.
stage build 200 cmake --build "$build" -j "$(nproc)" --target shardtune shardtune-worker gemm_peak nccl_mpi_test -- -k 0 ||
  exit 1
SHARDTUNE_REQUIRE_GPU=1 stage ctest-gpu 170 ctest --test-dir "$build" -L gpu --output-on-failure --timeout 160
stage bench 150 bash bench/gpu/run.sh "$build" && cat "$logs/bench.log"
echo "total: $((SECONDS - started)) s" | tee -a "$logs/summary.txt"
