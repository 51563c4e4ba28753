#!/usr/bin/env bash
# End to end: `shardtune sweep` on the tiny built-in model (the demo's counting task): a grid of 4
# trials, 2 at a time, with ASHA; trials.jsonl, trials/NNN/, the best link; `shardtune report` on
# it and on a sweep written by hand; then an interrupted sweep resumed without rerunning its
# finished trials.
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
# With early termination the grid comes in its seeded order: points 1, 3, 2, 0 for seed 0
# (GridStrategy::PointOf; sweep_test.cc's WithEarlyTerminationAPermutationBySeed checks it).
ok = proposed == [grid[i] for i in (1, 3, 2, 0)] and all(ends[t]["status"] in ("completed", "stopped") and ends[t]["objective"] is not None
                              for t in range(4))
stopped = sum(1 for e in ends.values() if e["status"] == "stopped")
# A stopped trial's rank 0 waited for the verdict on its evaluation: it trained not one step past it.
stops = {e["trial"]: e["step"] for e in events if e["event"] == "stopped"}
ok = ok and all(ends[t]["steps"] == step for t, step in stops.items())
print(f"match, {stopped} stopped" if ok else f"mismatch: {proposed} {ends} {stops}")
PY
)
expect_contains "the grid's 4 points, in the seeded order, each with an objective, a stopped one at its stop's step" "$check" "match"
echo "   ($check by ASHA)"
if [ -L "$dir/best" ] && [ -f "$dir/best/config.json" ]; then pass "best links to a final/ ($(readlink "$dir/best"))"; else fail "no best link: $(ls -l "$dir")"; fi
expect_contains "the best trial is printed" "$out" "best: trial"
lines=$(wc -l < "$dir/trials.jsonl")
out=$("$bin/shardtune" sweep "$work/sweep.yaml" 2>&1)
expect_eq "a finished sweep run again exits 0" "$?" "0"
expect_eq "and runs nothing" "$(wc -l < "$dir/trials.jsonl")" "$lines"

# 1b. --slots 1: the same grid's first two points, parallel_trials 2, one trial at a time (the
# second proposed only after the first finished).
sed 's/^name: counting-lr$/name: counting-slots/; s/^early_termination: .*$/max_trials: 2/' "$work/sweep.yaml" > "$work/slots.yaml"
out=$("$bin/shardtune" sweep "$work/slots.yaml" --slots 1 2>&1)
expect_eq "sweep --slots 1 exits 0" "$?" "0"
expect_contains "it says what it chose" "$out" "1 trial(s) at once (1 slots (--slots), 1 rank(s) per trial, parallel_trials 2)"
order=$(grep -o '"event":"\(proposed\|finished\)"' "$work/sweeps/counting-slots/trials.jsonl" | cut -d'"' -f4 | tr '\n' ' ')
expect_eq "one trial at a time" "$order" "proposed finished proposed finished "

# 2. shardtune report on the sweep: the table sorted by objective and the best so far, as
# computed here from trials.jsonl; the charts valid PNGs, each with the trials' markers (blue)
# and the best (orange).
report=$("$bin/shardtune" report "$dir" --output json 2>"$work/report.err")
expect_eq "report SWEEP_DIR exits 0" "$?" "0"
check=$(/usr/bin/python3 - "$dir/trials.jsonl" "$report" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
report = json.loads(sys.argv[2])
ends = {e["trial"]: e["objective"] for e in events if e["event"] == "finished"}
order = sorted(ends, key=lambda t: (ends[t], t))  # val_loss: lowest first
best, running = [], None
for t in sorted(ends):
    running = ends[t] if running is None else min(running, ends[t])
    best.append({"trial": t, "objective": running})
got = [r["trial"] for r in report["trials"]]
ok = got == order and report["best_so_far"] == best and report["metric"] == "val_loss" and report["goal"] == "minimize"
print(f"match {order}" if ok else f"mismatch: {got} vs {order}, {report['best_so_far']} vs {best}")
PY
)
expect_contains "report: trials by val_loss, lowest first, and the best so far" "$check" "match"
for png in report-objective report-training.optimizer.lr report-training.scheduler.warmup_steps; do
  out=$(/usr/bin/python3 "$src/tests/e2e/check_png.py" "$dir/$png.png" 31,119,180 255,127,14 2>&1)
  if [[ $out =~ ^960x540\ 31,119,180:([0-9]+)\ 255,127,14:([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ] &&
     [ "${BASH_REMATCH[2]}" -gt 0 ]; then pass "$png.png is a valid PNG with both series ($out)"; else fail "$png.png: $out"; fi
done
table=$("$bin/shardtune" report "$dir" 2>&1)
first=$(/usr/bin/python3 -c 'import json,sys; print("%03d" % json.loads(sys.argv[1])["trials"][0]["trial"])' "$report")
expect_contains "the table's first row is the best trial" "$(sed -n 4p <<<"$table")" "   1    $first  "
expect_eq "report.txt holds the table" "$(cat "$dir/report.txt")" "$table"

# 3. The report of a sweep written by hand: a maximized objective, ties (the lower trial first),
# a failed trial (last), a running one (its best evaluation so far), a log, an integer and a
# categorical parameter.
hand=$work/hand
mkdir -p "$hand"
cat > "$hand/trials.jsonl" <<'JSONL'
{"event":"sweep","version":1,"name":"hand","strategy":"random","seed":1,"parameters":["training.optimizer.lr","method.lora.r","training.scheduler.warmup_steps"],"space":[{"path":"training.optimizer.lr","distribution":"log_uniform","low":1e-05,"high":0.01},{"path":"method.lora.r","distribution":"choice","values":[4,8,16]},{"path":"training.scheduler.warmup_steps","distribution":"int_uniform","low":0,"high":200}],"objective":{"metric":"accuracy","goal":"maximize"}}
{"event":"proposed","trial":0,"values":{"training.optimizer.lr":1e-05,"method.lora.r":4,"training.scheduler.warmup_steps":0}}
{"event":"evaluated","trial":0,"step":10,"value":0.6}
{"event":"finished","trial":0,"status":"completed","objective":0.6,"steps":20}
{"event":"proposed","trial":1,"values":{"training.optimizer.lr":0.01,"method.lora.r":8,"training.scheduler.warmup_steps":200}}
{"event":"finished","trial":1,"status":"failed","objective":null,"steps":0,"note":"exit code 1"}
{"event":"proposed","trial":2,"values":{"training.optimizer.lr":0.0003,"method.lora.r":16,"training.scheduler.warmup_steps":50}}
{"event":"evaluated","trial":2,"step":10,"value":0.8}
{"event":"finished","trial":2,"status":"stopped","objective":0.8,"steps":10}
{"event":"proposed","trial":3,"values":{"training.optimizer.lr":0.001,"method.lora.r":8,"training.scheduler.warmup_steps":100}}
{"event":"finished","trial":3,"status":"completed","objective":0.7,"steps":20}
{"event":"proposed","trial":4,"values":{"training.optimizer.lr":0.0001,"method.lora.r":4,"training.scheduler.warmup_steps":10}}
{"event":"finished","trial":4,"status":"completed","objective":0.8,"steps":20}
{"event":"proposed","trial":5,"values":{"training.optimizer.lr":0.003,"method.lora.r":16,"training.scheduler.warmup_steps":150}}
{"event":"evaluated","trial":5,"step":10,"value":0.5}
JSONL
printf '%s' '{"event":"finished","tri' >> "$hand/trials.jsonl"  # torn: a line being written
report=$("$bin/shardtune" report "$hand" --output json 2>&1)
expect_eq "report of the hand-written sweep exits 0" "$?" "0"
check=$(/usr/bin/python3 - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
got = [(t["trial"], t["status"], t["objective"]) for t in r["trials"]]
want = [(2, "stopped", 0.8), (4, "completed", 0.8), (3, "completed", 0.7), (0, "completed", 0.6), (5, "running", 0.5),
        (1, "failed", None)]
best = [(b["trial"], b["objective"]) for b in r["best_so_far"]]
ok = got == want and best == [(0, 0.6), (2, 0.8), (3, 0.8), (4, 0.8), (5, 0.8)] and r["goal"] == "maximize"
print("match" if ok else f"mismatch: {got} {best}")
PY
)
expect_contains "accuracy highest first, ties by trial, failed last; the best so far" "$check" "match"
for png in report-objective report-training.optimizer.lr report-method.lora.r report-training.scheduler.warmup_steps; do
  out=$(/usr/bin/python3 "$src/tests/e2e/check_png.py" "$hand/$png.png" 31,119,180 255,127,14 2>&1)
  if [[ $out =~ ^960x540\ 31,119,180:([0-9]+)\ 255,127,14:([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ] &&
     [ "${BASH_REMATCH[2]}" -gt 0 ]; then pass "hand: $png.png valid, both series"; else fail "hand: $png.png: $out"; fi
done
"$bin/shardtune" report "$work/sweeps" --output json > "$work/notsweep.json" 2>&1
expect_eq "a directory that is neither a run nor a sweep: invalid input" "$?" "2"

# 4. One trial at a time, interrupted when trial 0 has finished and trial 1 has evaluated (it is
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
