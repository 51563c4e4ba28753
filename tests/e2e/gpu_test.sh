#!/usr/bin/env bash
# Training on GPUs through NCCL (label "gpu"): the same job on the CPU (MPI) and on CUDA (NCCL),
# at ZeRO stages 0, 2 and 3, with the optimizer on the GPU or offloaded to the host (ZeRO-Offload),
# in fp32 and bf16, on 1 rank and, where the machine has two GPUs, on 2 (NCCL needs a GPU per
# rank), gives the same losses: to within the difference of the two BLAS libraries in fp32; in
# bf16, offloaded against not. So does QLoRA's 4-bit base, dequantized on the GPU.
# Skipped (exit 77) only where this process sees no GPU (nvidia-smi lists none, or
# CUDA_VISIBLE_DEVICES hides them all) and SHARDTUNE_REQUIRE_GPU=1 does not say there must be
# one. Where it sees one, every failure fails, the NCCL probe's included (a CPU-only LibTorch
# or a build without NCCL on a GPU machine: run `ctest -LE gpu` there).
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
write_job() {  # name backend stage [offload_optimizer [dtype]]
  cat > "$work/$1.yaml" <<YAML
name: $1
model: {path: base, dtype: ${5:-fp32}}
data: {train: train.jsonl, format: tokens, max_seq_len: 64}
training: {max_steps: 5, micro_batch_size: 2, global_batch_size: 4, optimizer: {lr: 2.0e-4}}
sharding: {zero_stage: $3, backend: $2, offload_optimizer: ${4:-none}}
output: {dir: runs/$1}
YAML
}
# The GPUs this process may use: CUDA_VISIBLE_DEVICES narrows what nvidia-smi lists.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ] && [ "$gpus" -gt 0 ]; then
  gpus=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)
fi
if [ "$gpus" -eq 0 ] && [ "${SHARDTUNE_REQUIRE_GPU:-0}" != 1 ]; then
  echo "SKIPPED: no GPU here (nvidia-smi -L lists none, or CUDA_VISIBLE_DEVICES hides them)"
  exit 77
fi
write_job probe nccl 0
if ! "$bin/shardtune" train "$work/probe.yaml" > "$work/probe.log" 2>&1; then
  cat "$work/probe.log"
  echo "FAILED: this machine has $gpus GPU(s), and training on one through NCCL failed (above)"
  exit 1
fi
losses() { grep -o '"loss":[0-9.e+-]*' "$work/runs/$1/metrics.jsonl" | cut -d: -f2 | tr '\n' ' '; }
# same_losses RUN REFERENCE TOLERANCE: every step's loss of RUN within TOLERANCE of REFERENCE's
# (as many steps, at least one); prints what differs.
same_losses() {
  if [ "$(losses "$2" | wc -w)" -ne "$(losses "$1" | wc -w)" ] || [ -z "$(losses "$1")" ]; then
    echo "FAILED: $1 logged $(losses "$1" | wc -w) losses, $2 $(losses "$2" | wc -w)"
    return 1
  fi
  paste <(losses "$2" | tr ' ' '\n') <(losses "$1" | tr ' ' '\n') | awk -v s="$1" -v r="$2" -v t="$3" 'NF == 2 {
      d = $1 - $2; if (d < 0) d = -d; if (d > t) { print "FAILED: " s " loss " $2 " vs " r " " $1; bad = 1 } }
      END { exit bad }'
}
write_job cpu mpi 0
"$bin/shardtune" train "$work/cpu.yaml" --log-level warn || exit 1
rank_counts="1"
[ "$gpus" -ge 2 ] && rank_counts="1 2"
failures=0
runs=0
# Each run: ranks, ZeRO stage, offload_optimizer (ZeRO-Offload steps on the host), dtype, and
# the run its losses must match (fp32 ones: the CPU's, within the two BLAS libraries'
# difference; bf16 ones: the same run without offload on the GPU).
plan=()
for ranks in $rank_counts; do
  plan+=("$ranks 0 none fp32 cpu" "$ranks 3 none fp32 cpu" "$ranks 2 cpu fp32 cpu" "$ranks 3 cpu fp32 cpu"
         "$ranks 3 none bf16 cpu-bf16" "$ranks 3 cpu bf16 gpu3-np$ranks-none-bf16" "$ranks 0 cpu bf16 gpu3-np$ranks-none-bf16")
done
write_job cpu-bf16 mpi 0 none bf16
"$bin/shardtune" train "$work/cpu-bf16.yaml" --log-level warn || exit 1
for run in "${plan[@]}"; do
  read -r ranks stage offload dtype reference <<< "$run"
  name=gpu$stage-np$ranks-$offload-$dtype
  write_job $name nccl $stage $offload $dtype
  "$bin/shardtune" train "$work/$name.yaml" --np $ranks --log-level warn || { echo "FAILED: $name"; exit 1; }
  runs=$((runs + 1))
  # bf16 rounds the parameters each step (a master differing in its last fp32 bits can round
  # either way); against the CPU's bf16 run, the two devices' bf16 products round differently too.
  tolerance=1e-3
  [ "$dtype" = bf16 ] && tolerance=2e-2
  [ "$reference" = cpu-bf16 ] && tolerance=5e-2
  same_losses $name "$reference" $tolerance || failures=$((failures + 1))
done
# QLoRA: the 4-bit base dequantized by tensor operations on the GPU, by the host loop on the CPU
# (the same fp32 arithmetic): LoRA at ZeRO-3 on the GPU against stage 0 on the CPU.
for job in "cpu-qlora mpi 0" "gpu-qlora nccl 3"; do
  read -r name backend stage <<< "$job"
  write_job $name $backend $stage
  sed -i 's|^model: .*|model: {path: base, quantization: {type: nf4}}\nmethod: {type: lora, lora: {r: 4, target_modules: all-linear}}|' \
    "$work/$name.yaml"
  "$bin/shardtune" train "$work/$name.yaml" --log-level warn || { echo "FAILED: $name"; exit 1; }
done
runs=$((runs + 1))
same_losses gpu-qlora cpu-qlora 1e-3 || failures=$((failures + 1))
echo "$((runs - failures)) passed, $failures failed (GPUs: $gpus)"
[ "$failures" -eq 0 ]
