#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets of tests/fuzz with clang (AddressSanitizer + UBSan,
# in build-fuzz/), seeds each corpus (scripts/fuzz_seeds.py: the repository's own files, and
# ../shared/fixtures where present, read in place), runs each target for FUZZ_SECONDS and prints
# a table: target, executions, coverage (libFuzzer's cov: edges and ft: features), crashes.
# A crash, hang (-timeout), leak or sanitizer report stops that target and leaves the input in
# build-fuzz/fuzz-work/artifacts/TARGET/; once fixed, copy it to tests/fuzz/regressions/TARGET/
# (make test replays those). docs/fuzzing.md says more.
#
# Environment: FUZZ_SECONDS (60 per target), FUZZ_RUNS (stop a target after this many
# executions instead), FUZZ_TARGETS (a subset, space-separated), FUZZ_BUILD_DIR (build-fuzz),
# JOBS (build parallelism), FUZZ_JOBS (targets fuzzed at once, 1), FUZZ_NO_BUILD=1 (run what is
# built), FUZZ_TIMEOUT (seconds one input may take before it counts as a hang, 10; libFuzzer counts
# wall time, so raise it on a machine busy with other work). The corpora grow across runs in
# build-fuzz/fuzz-work/corpus/.
set -uo pipefail
cd "$(dirname "$0")/.."
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
runs=${FUZZ_RUNS:--1}
targets=${FUZZ_TARGETS:-job_spec sweep_spec server_config model_config safetensors tokenizer_json sentencepiece data_format \
tensorboard checkpoint_index job_request openai_request}
work=$build_dir/fuzz-work
fixtures=../shared/fixtures

# The longest input each target gets: a little above its largest realistic input that still
# parses fast (a tokenizer.json or a .model is the costliest).
max_len() {
  case $1 in
    tokenizer_json | sentencepiece) echo 65536 ;;
    data_format | checkpoint_index | safetensors | tensorboard) echo 16384 ;;
    *) echo 8192 ;;
  esac
}

if [ -z "${FUZZ_NO_BUILD:-}" ] && [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARDTUNE_FUZZ=ON -DBUILD_TESTING=OFF \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ || exit 1
fi
# shellcheck disable=SC2046
[ -n "${FUZZ_NO_BUILD:-}" ] || cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target $(for t in $targets; do echo "fuzz_$t"; done) || exit 1

[ -d "$fixtures" ] || echo "note: $fixtures is absent; the corpora are seeded from the repository's files only"
rm -rf "$work/seeds"
python3 scripts/fuzz_seeds.py . "$fixtures" "$work/seeds" || exit 1

# malloc_context_size=0: AddressSanitizer records every allocation's stack in a depot that only
# grows, and in a long round its lookups came to dominate (sweep_spec after 50 minutes: 49% of the
# time in StackDepot::Put, 280 down to 50 executions/s; with 5 frames still 28% after 8 minutes).
# Without allocation stacks the rate stays flat and every error is still caught; replay a finding
# (tests/fuzz/replay_main.cc, or the target with the default options) for its allocation stack.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:malloc_context_size=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
table="$work/table.md"
mkdir -p "$work/logs" "$work/rows"
# One target's run; its table row goes to rows/TARGET, its exit status to rows/TARGET.status.
run_target() {
  local t=$1
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/seeds/$t"
  echo "fuzz: $t for ${seconds}s (max_len $(max_len "$t"))"
  "$build_dir/bin/fuzz_$t" -max_len="$(max_len "$t")" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -max_total_time="$seconds" \
    -runs="$runs" -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" \
    "$work/corpus/$t" "$work/seeds/$t" > "$work/logs/$t.log" 2>&1
  local rc=$?
  local execs cov crashes
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/logs/$t.log" | tail -1)
  if [ -z "$execs" ]; then  # stopped by a crash: the last status line's count
    execs=$(grep -oE '^#[0-9]+' "$work/logs/$t.log" | tail -1 | tr -d '#')
  fi
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$work/logs/$t.log" | tail -1 | sed 's/cov: \([0-9]*\) ft: \([0-9]*\)/\1 \/ \2/')
  crashes=$(find "$work/artifacts/$t" -type f | wc -l)
  echo "| $t | ${execs:-0} | ${cov:-?} | $crashes |" > "$work/rows/$t"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    echo 1 > "$work/rows/$t.status"
    echo "fuzz: $t found a problem (exit $rc); its input is in $work/artifacts/$t/, the report in $work/logs/$t.log"
  else
    echo 0 > "$work/rows/$t.status"
  fi
}

# FUZZ_JOBS targets at a time (each fuzzer is one process on one core).
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "${FUZZ_JOBS:-1}" ]; do wait -n; done
  run_target "$t" &
done
wait

{
  echo "| target | executions | coverage (cov / ft) | crashes |"
  echo "|---|---:|---:|---:|"
  for t in $targets; do cat "$work/rows/$t"; done
} > "$table"
cat "$table"
status=0
for t in $targets; do [ "$(cat "$work/rows/$t.status")" == 0 ] || status=1; done
exit $status
