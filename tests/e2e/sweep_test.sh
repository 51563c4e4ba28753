#!/usr/bin/env bash
# End to end: `shardtune sweep` on the tiny built-in model (the demo's counting task): a grid of 4
# trials, 2 at a time, with ASHA; trials.jsonl, trials/NNN/, the best link; then an interrupted
# sweep resumed without rerunning its finished trials.
# Usage: sweep_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
sweep_pid=""
trap 'if [ -n "$sweep_pid" ]; then kill -9 "$sweep_pid" 2>/dev/null; fi; rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base-model" --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 96; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > "$work/train.jsonl"
cat > "$work/job.yaml" <<'YAML'
name: counting
model: {path: base-model}
data: {train: train.jsonl, validation_split: 0.2, format: tokens}
training: {max_steps: 12, micro_batch_size: 4, global_batch_size: 8, eval_every: 3, optimizer: {lr: 1.0e-3}}
output: {dir: runs/counting}
YAML
cat > "$work/sweep.yaml" <<'YAML'
name: counting-lr
base: job.yaml
parameters:
  training.optimizer.lr: {grid: [1.0e-4, 3.0e-3]}
  training.scheduler.warmup_steps: {grid: [0, 4]}
strategy: grid
objective: {metric: val_loss}
parallel_trials: 2
early_termination: {type: asha, min_steps: 3, reduction_factor: 2}
YAML

# 1. The whole sweep.
out=$("$bin/shardtune" sweep "$work/sweep.yaml" 2>&1)
expect_eq "sweep exits 0" "$?" "0"
dir=$work/sweeps/counting-lr
expect_eq "trials.jsonl: the header, 4 proposals, 4 ends" \
  "$(grep -c '"event":"sweep"\|"event":"proposed"\|"event":"finished"' "$dir/trials.jsonl")" "9"
for t in 000 001 002 003; do
  if [ -f "$dir/trials/$t/metrics.jsonl" ]; then pass "trial $t ran in trials/$t"; else fail "trials/$t lacks metrics.jsonl"; fi
done
check=$(/usr/bin/python3 - "$dir/trials.jsonl" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
proposed = [e["values"] for e in events if e["event"] == "proposed"]
ends = {e["trial"]: e for e in events if e["event"] == "finished"}
grid = [{"training.optimizer.lr": lr, "training.scheduler.warmup_steps": w} for lr in (1e-4, 3e-3) for w in (0, 4)]
ok = proposed == grid and all(ends[t]["status"] in ("completed", "stopped") and ends[t]["objective"] is not None
                              for t in range(4))
stopped = sum(1 for e in ends.values() if e["status"] == "stopped")
print(f"match, {stopped} stopped" if ok else f"mismatch: {proposed} {ends}")
PY
)
expect_contains "the grid's 4 points, in order, each with an objective" "$check" "match"
echo "   ($check by ASHA)"
if [ -L "$dir/best" ] && [ -f "$dir/best/config.json" ]; then pass "best links to a final/ ($(readlink "$dir/best"))"; else fail "no best link: $(ls -l "$dir")"; fi
expect_contains "the best trial is printed" "$out" "best: trial"
lines=$(wc -l < "$dir/trials.jsonl")
out=$("$bin/shardtune" sweep "$work/sweep.yaml" 2>&1)
expect_eq "a finished sweep run again exits 0" "$?" "0"
expect_eq "and runs nothing" "$(wc -l < "$dir/trials.jsonl")" "$lines"

# 2. One trial at a time, interrupted when trial 0 has finished and trial 1 has evaluated (it is
# in the middle of its 30 steps), then resumed: trial 0 does not run again, trial 1 does.
sed -i 's/^name: counting-lr$/name: counting-resume/; s/^parallel_trials: 2$/parallel_trials: 1/' "$work/sweep.yaml"
sed -i 's/^early_termination: .*$/early_termination: {type: none}/' "$work/sweep.yaml"
sed -i 's/max_steps: 12/max_steps: 30/' "$work/job.yaml"
dir=$work/sweeps/counting-resume
"$bin/shardtune" sweep "$work/sweep.yaml" > "$work/first.log" 2>&1 &
sweep_pid=$!
for _ in $(seq 1 600); do
  grep -q '"event":"evaluated".*"trial":1,' "$dir/trials.jsonl" 2>/dev/null && break
  sleep 0.1
done
kill -INT "$sweep_pid"
wait "$sweep_pid"
expect_eq "the interrupted sweep exits 130" "$?" "130"
sweep_pid=""
finished_before=$(grep '"event":"finished"' "$dir/trials.jsonl" | python3 -c 'import json,sys; print(sorted(json.loads(l)["trial"] for l in sys.stdin))')
"$bin/shardtune" sweep "$work/sweep.yaml" > "$work/second.log" 2>&1
expect_eq "the resumed sweep exits 0" "$?" "0"
check=$(/usr/bin/python3 - "$dir/trials.jsonl" "$finished_before" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
before = json.loads(sys.argv[2])
ends = [e["trial"] for e in events if e["event"] == "finished"]
proposed = [e["trial"] for e in events if e["event"] == "proposed"]
ok = (sorted(ends) == [0, 1, 2, 3] and proposed == [0, 1, 2, 3] and before == [0]
      and all(ends.count(t) == 1 for t in before))
print(f"match (finished before the interruption: {before})" if ok else f"mismatch: ends {ends}, proposed {proposed}")
PY
)
expect_contains "every trial finished once, none proposed twice" "$check" "match"
expect_contains "the resumed sweep reran the interrupted trials" "$(cat "$work/second.log")" "to run again"

summary
