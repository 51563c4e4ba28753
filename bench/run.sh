#!/usr/bin/env bash
# `make bench`: every benchmark, with the machine and versions stated, each against a baseline
# measured in the same run. Results belong in docs/PERFORMANCE.md; plots go to docs/bench/.
#   bench/run.sh [BUILD_DIR] [--quick]
set -euo pipefail
build_dir=${1:-build}
quick=${2:-}
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh bench  # the baseline (python3-torch) and gnuplot
fixtures=../shared/fixtures
version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "not installed"; }
echo "# shardtune benchmarks, $(date -u +%Y-%m-%d)"
echo
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME")"
echo "- shardtune $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(g++ --version | head -n 1), LibTorch $(version libtorch-dev)"
echo "- baseline: PyTorch $(version python3-torch) (python3-torch), $(/usr/bin/python3 --version)"
echo "- Open MPI $(version openmpi-bin), OpenBLAS $(version libopenblas0-openmp)"
echo
/usr/bin/python3 bench/train_bench.py "$build_dir" docs/bench $quick
echo
echo "## Tokenizer throughput"
if [ -d "$fixtures" ]; then
  "$build_dir/bin/tokenizer_bench" "$fixtures" "${BENCH_SECONDS:-2}"
else
  echo "SKIPPED: $fixtures is absent"
fi
echo
echo "## Attention: causal against a mask that hides nothing (one core, 125M head shape)"
OMP_NUM_THREADS=1 "$build_dir/bin/attention_bench" $([ -n "$quick" ] && echo 256 || echo 256 1024 2048)
echo
"$build_dir/bin/dedup_bench" $([ -n "$quick" ] && echo "100000 2000")
echo
scale_work=$(mktemp -d /tmp/shardtune-scale.XXXXXX)
/usr/bin/python3 bench/scale_bench.py "$build_dir" "$scale_work" $quick
rm -rf "$scale_work"
echo
sweep_work=$(mktemp -d /tmp/shardtune-sweep.XXXXXX)
/usr/bin/python3 bench/sweep_bench.py "$build_dir" "$sweep_work" $quick
rm -rf "$sweep_work"
