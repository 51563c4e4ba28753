#!/usr/bin/env bash
# Training on GPUs through NCCL (label "gpu"): the same job on the CPU (MPI) and on CUDA (NCCL),
# at ZeRO stages 0 and 3, and stage 2 with the optimizer offloaded to the host, on 1 rank and,
# where the machine has two GPUs, on 2 (NCCL needs a GPU per rank), gives the same losses to
# within the difference of the two BLAS libraries.
# Skipped (exit 77) where this build's LibTorch has no CUDA or no GPU is visible, unless
# SHARDTUNE_REQUIRE_GPU=1 says there must be one.
# Usage: gpu_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 4 --log-level warn
awk 'BEGIN { srand(9); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > "$work/train.jsonl"
write_job() {  # name backend stage [offload_optimizer]
  cat > "$work/$1.yaml" <<YAML
name: $1
model: {path: base}
data: {train: train.jsonl, format: tokens, max_seq_len: 64}
training: {max_steps: 5, micro_batch_size: 2, global_batch_size: 4, optimizer: {lr: 2.0e-4}}
sharding: {zero_stage: $3, backend: $2, offload_optimizer: ${4:-none}}
output: {dir: runs/$1}
YAML
}
write_job probe nccl 0
if ! "$bin/shardtune" train "$work/probe.yaml" > "$work/probe.log" 2>&1; then
  echo "SKIPPED: no CUDA training here: $(grep -o 'error.*' "$work/probe.log" | head -n 1)"
  # On a machine that has a GPU (SHARDTUNE_REQUIRE_GPU=1), a failed probe is a failure.
  [ "${SHARDTUNE_REQUIRE_GPU:-0}" = 1 ] && { cat "$work/probe.log"; exit 1; }
  exit 77
fi
losses() { grep -o '"loss":[0-9.e+-]*' "$work/runs/$1/metrics.jsonl" | cut -d: -f2 | tr '\n' ' '; }
write_job cpu mpi 0
"$bin/shardtune" train "$work/cpu.yaml" --log-level warn || exit 1
# The GPUs this process may use: CUDA_VISIBLE_DEVICES narrows what nvidia-smi lists.
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
  gpus=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)
else
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
fi
rank_counts="1"
[ "$gpus" -ge 2 ] && rank_counts="1 2"
failures=0
runs=0
# Each run: ranks, ZeRO stage, offload_optimizer (ZeRO-Offload steps on the host).
plan=()
for ranks in $rank_counts; do plan+=("$ranks 0 none" "$ranks 3 none" "$ranks 2 cpu"); done
for run in "${plan[@]}"; do
  read -r ranks stage offload <<< "$run"
  name=gpu$stage-np$ranks-offload-$offload
  write_job $name nccl $stage $offload
  "$bin/shardtune" train "$work/$name.yaml" --np $ranks --log-level warn || { echo "FAILED: $name"; exit 1; }
  runs=$((runs + 1))
  paste <(losses cpu | tr ' ' '\n') <(losses $name | tr ' ' '\n') | awk -v s=$name 'NF == 2 {
      d = $1 - $2; if (d < 0) d = -d; if (d > 1e-3) { print "FAILED: " s " loss " $2 " vs CPU " $1; bad = 1 } }
      END { exit bad }' || failures=$((failures + 1))
done
echo "$((runs - failures)) passed, $failures failed (GPUs: $gpus)"
[ "$failures" -eq 0 ]
