#!/usr/bin/env bash
# The GPU benchmark, one command on a machine with an NVIDIA GPU (written for an H200):
#   bench/gpu/run.sh [BUILD_DIR]
# Builds shardtune against that machine's PyTorch LibTorch (CUDA), measures a large bf16 matrix
# product, then trains a 1.1B Llama (bench/models/llama-1b.json, random init) in bf16 on one GPU
# and prints tokens/s and MFU against the GPU's dense bf16 peak (989 TFLOP/s for the H100/H200
# SXM) and against the measured product. Needs CMake, a compiler and shardtune's other
# dependencies (yaml-cpp, spdlog, fmt, Open MPI, gRPC, ...): installed, or unpacked from Debian
# packages under $SHARDTUNE_DEPS (see docs/PERFORMANCE.md, "GPU").
set -euo pipefail
build_dir=${1:-build-gpu}
cd "$(dirname "$0")/../.."
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
prefixes="$torch_prefix${SHARDTUNE_DEPS:+;$SHARDTUNE_DEPS/usr}"
if [ -n "${SHARDTUNE_DEPS:-}" ]; then
  export LD_LIBRARY_PATH="$SHARDTUNE_DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PATH="$SHARDTUNE_DEPS/usr/bin:$PATH"
fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DCMAKE_PREFIX_PATH="$prefixes" \
  -DCMAKE_CUDA_ARCHITECTURES=90 > "$build_dir.configure.log"
cmake --build "$build_dir" -j "$(nproc)" --target shardtune-worker shardtune gemm_peak
echo "# shardtune GPU benchmark, $(date -u +%Y-%m-%d)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "LibTorch: $torch_prefix"
python3 bench/gpu/gpu_bench.py "$build_dir"
