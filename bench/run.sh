#!/usr/bin/env bash
# `make bench`: every benchmark, with the machine and versions stated. Results belong in
# docs/PERFORMANCE.md.
set -euo pipefail
build_dir=${1:-build}
cd "$(dirname "$0")/.."
fixtures=../shared/fixtures
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "date: $(date -u +%Y-%m-%d)"
if [ ! -d "$fixtures" ]; then
  echo "SKIPPED: $fixtures is absent"
  exit 0
fi
echo
echo "## Tokenizer throughput"
"$build_dir/bin/tokenizer_bench" "$fixtures" "${BENCH_SECONDS:-2}"
