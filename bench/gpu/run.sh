#!/usr/bin/env bash
# The GPU benchmark, one command on a machine with an NVIDIA GPU (written for an H200):
#   bench/gpu/run.sh [BUILD_DIR]
# Builds shardtune against that machine's PyTorch LibTorch (CUDA) unless BUILD_DIR is already
# configured, measures a large bf16 matrix product, then trains a 1.1B Llama
# (bench/models/llama-1b.json, random init) in bf16 on one GPU and prints tokens/s and MFU
# against the GPU's dense bf16 peak (989 TFLOP/s for the H100/H200 SXM) and against the measured
# product. Needs shardtune's other dependencies installed; on a machine without them or without
# network, bench/gpu/device-check.sh brings them and runs this.
set -euo pipefail
build_dir=${1:-build-gpu}
cd "$(dirname "$0")/../.."
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  torch_prefix=${TORCH_CMAKE_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DCMAKE_CUDA_ARCHITECTURES=90 > "$build_dir.configure.log"
fi
cmake --build "$build_dir" -j "$(nproc)" --target shardtune-worker shardtune gemm_peak
echo "# shardtune GPU benchmark, $(date -u +%Y-%m-%d)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "LibTorch: $(grep -m 1 '^Torch_DIR' "$build_dir/CMakeCache.txt" | cut -d= -f2)"
python3 bench/gpu/gpu_bench.py "$build_dir"
