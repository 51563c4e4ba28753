#!/usr/bin/env bash
# `make demo`: creates a small Llama model (random weights, fixed seed, Hugging Face layout) and
# a synthetic dataset that teaches it to count, fine-tunes it on one rank, and shows the loss
# falling and the greedy continuation of the same prompt before and after. Then the same task
# with LoRA on two ranks at ZeRO-3: only the adapter trains, and the base model runs with it.
#
# Each run's full log goes to demo-out/*.log; the screen shows one line per evaluation and the
# run's summary (and the log's tail if a run fails).
set -euo pipefail
build_dir=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build_dir/bin"
out="$root/demo-out"

# quietly LOG COMMAND...: runs COMMAND with its output in LOG, showing the lines that say how the
# run goes (evaluations, the final summary, the method's trainable share) without the log prefix.
quietly() {
  local log=$1
  shift
  local status=0
  : > "$log"  # there before tail opens it
  "$@" > "$log" 2>&1 &
  local pid=$!
  tail -n +1 -f --pid=$pid "$log" 2>/dev/null |
    grep --line-buffered -E "\] step [0-9]+: |finished:|trainable parameters|memory per rank|exported the" |
    sed -u -E 's/^\[[^]]*\] \[rank [0-9]+\] \[[a-z]+\] /   /' || true
  wait $pid || status=$?
  if [ $status -ne 0 ]; then
    echo "== failed (exit $status); the end of $log:"
    tail -n 20 "$log"
    exit $status
  fi
}

rm -rf "$out"
mkdir -p "$out/data"
"$bin/shardtune" init-model --config "$root/examples/tiny-llama/config.json" --out "$out/base-model" --seed 0 --log-level warn

# Counting task: BOS, then a run of consecutive ids in [3, 63] wrapping around.
awk 'BEGIN {
  srand(7);
  for (n = 0; n < 320; n++) {
    start = 3 + int(rand() * 61); line = "{\"input_ids\": [1";
    for (i = 0; i < 24; i++) line = line ", " (3 + (start - 3 + i) % 61);
    print line "]}";
  }
}' > "$out/data/train.jsonl"

cat > "$out/job.yaml" <<YAML
name: demo-counting
model: {path: $out/base-model, dtype: fp32}
data: {train: $out/data/train.jsonl, validation_split: 0.1, format: tokens, max_seq_len: 64}
training:
  max_steps: 120
  micro_batch_size: 8
  global_batch_size: 16
  optimizer: {lr: 3.0e-3, weight_decay: 0.01}
  scheduler: {type: cosine, warmup_steps: 10}
  eval_every: 40
output: {dir: $out/run, checkpoint_every: 60, export: [hf]}
YAML

prompt="1 20 21 22"
echo "== greedy continuation of '$prompt' before fine-tuning:"
before=$("$bin/shardtune" generate --model "$out/base-model" --input-ids "$prompt" --max-new-tokens 12 --format ids --log-level warn)
echo "   $before"

echo "== fine-tuning (job spec: $out/job.yaml; log: $out/train.log)"
quietly "$out/train.log" "$bin/shardtune" train "$out/job.yaml"

first=$(grep -m 1 '"loss"' "$out/run/metrics.jsonl" | sed -E 's/.*"loss":([0-9.e+-]+).*/\1/')
last=$(grep '"loss"' "$out/run/metrics.jsonl" | tail -n 1 | sed -E 's/.*"loss":([0-9.e+-]+).*/\1/')
val=$(grep '"val_loss"' "$out/run/metrics.jsonl" | tail -n 1 | sed -E 's/.*"val_loss":([0-9.e+-]+).*/\1/')
echo "== training loss: first step $first -> last step $last; validation loss $val"

echo "== greedy continuation of '$prompt' after fine-tuning ($out/run/final):"
after=$("$bin/shardtune" generate --model "$out/run/final" --input-ids "$prompt" --max-new-tokens 12 --format ids --log-level warn)
echo "   $after"
echo "   (the counting continuation is: 23 24 25 26 27 28 29 30 31 32 33 34)"
"$bin/shardtune" report "$out/run" --log-level warn > /dev/null
echo "== curves: $out/run/report.png (shardtune report); TensorBoard: tensorboard --logdir $out/run/tb"

cat > "$out/lora.yaml" <<YAML
name: demo-counting-lora
model: {path: $out/base-model, dtype: fp32}
method: {type: lora, lora: {r: 8, alpha: 16, target_modules: all-linear}, modules_to_save: [lm_head]}
data: {train: $out/data/train.jsonl, validation_split: 0.1, format: tokens, max_seq_len: 64}
training:
  max_steps: 120
  micro_batch_size: 4
  global_batch_size: 16
  optimizer: {lr: 1.0e-2}
  scheduler: {type: cosine, warmup_steps: 10}
  eval_every: 40
sharding: {zero_stage: 3}
output: {dir: $out/run-lora, export: [peft]}
YAML
echo
echo "== LoRA on 2 ranks at ZeRO-3 (job spec: $out/lora.yaml; log: $out/train-lora.log): the base model stays frozen"
quietly "$out/train-lora.log" "$bin/shardtune" train "$out/lora.yaml" --np 2
echo "== greedy continuation of '$prompt' by the base model with the adapter ($out/run-lora/final):"
lora=$("$bin/shardtune" generate --model "$out/base-model" --adapter "$out/run-lora/final" --input-ids "$prompt" \
       --max-new-tokens 12 --format ids --log-level warn)
echo "   $lora"

# The same job as a service: a shardtune-server (its SQLite file in demo-out/), the job submitted
# through the CLI as a 2-rank ZeRO-3 job, watched to the end.
port=$(python3 "$root/scripts/free_port.py" 1)  # python3 is among what install-deps.sh installs
cat > "$out/server.yaml" <<YAML
listen: 127.0.0.1:$port
database: $out/server/jobs.db
api_keys: [{key: demo-key, tenant: demo, role: user}]
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
YAML
sed -e "s|dir: $out/run,|dir: $out/run-server,|" -e 's|^name: demo-counting|name: demo-counting-server|' "$out/job.yaml" > "$out/server-job.yaml"
cat >> "$out/server-job.yaml" <<YAML
sharding: {zero_stage: 3}
resources: {ranks_per_node: 2}
YAML
echo
echo "== shardtune-server on 127.0.0.1:$port (config: $out/server.yaml)"
"$bin/shardtune-server" --config "$out/server.yaml" --log-level warn > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=demo-key
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
id=$("$bin/shardtune" submit "$out/server-job.yaml")
echo "== submitted $id; shardtune watch $id:"
"$bin/shardtune" watch "$id" | grep -v "checkpoint at" || true
"$bin/shardtune" get "$id"
