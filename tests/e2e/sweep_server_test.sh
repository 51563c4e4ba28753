#!/usr/bin/env bash
# Sweeps through the server end to end on loopback (docs/sweeps.md, "Through the server"):
#   1. a grid of 4 trials, one at a time, with ASHA, whose data.train is good for two trials and
#      malformed for the other two (their jobs fail their data check): the server is frozen while
#      the trial ASHA stops makes its first evaluation, then killed (SIGKILL) and restarted; the
#      sweep continues and succeeds, every
#      trial's job exists exactly once, the failed trials say why, the worse good trial is stopped
#      at ASHA's first rung (its job cancelled, its objective kept), the best trial's final/ exists;
#   2. a sweep cancelled while its trials run: it is CANCELLED, so are its trials' jobs, and no
#      trial is proposed after;
#   3. refusals: a bad sweep spec (line:column, did-you-mean) and a viewer's key.
# Usage: sweep_server_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
source "$(dirname "$0")/checks.sh"
with_scratch_server
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=key-a
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$work"
cat > server.yaml <<YAML
listen: 127.0.0.1:$port
database: $work/state/jobs.db
api_keys:
  - {key: key-a, tenant: team-a, role: user}
  - {key: key-viewer, tenant: team-a, role: viewer}
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
cancel_grace_s: 2
YAML
# sweep_field ID EXPRESSION: a Python expression on the sweep `s` (GetSweep as JSON).
sweep_field() {
  "$bin/shardtune" sweep get "$1" --output json 2>/dev/null |
    python3 -c "import json,sys; s = json.load(sys.stdin); print($2)" 2>/dev/null
}

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out base-model --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 96; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > train.jsonl
{ head -n 40 train.jsonl; echo '{"input_ids": [1, 2,'; head -n 40 train.jsonl; } > broken.jsonl
cat > job.yaml <<'YAML'
name: counting
model: {path: base-model}
data: {train: train.jsonl, validation_split: 0.2, format: tokens}
training: {max_steps: 60, micro_batch_size: 4, global_batch_size: 8, eval_every: 3, optimizer: {lr: 1.0e-3}}
output: {dir: runs/counting}
YAML
cat > sweep.yaml <<YAML
name: counting-lr
base: job.yaml
parameters:
  training.optimizer.lr: {grid: [3.0e-3, 1.0e-4]}
  data.train: {grid: [$work/train.jsonl, $work/broken.jsonl]}
strategy: grid
objective: {metric: val_loss}
parallel_trials: 1
seed: 1  # with early termination the grid's order is seeded: points 0, 3, 2, 1 (sweep_test.cc checks it)
early_termination: {type: asha, min_steps: 3, reduction_factor: 2}
YAML
start_server

# 1. A sweep through a server killed and restarted.
id=$("$bin/shardtune" sweep submit sweep.yaml)
expect_eq "sweep submit exits 0" "$?" "0"
expect_contains "it prints the sweep's id" "$id" "sweep-"
# trial_running N: whether trial N's job runs (its label "trial" is N as 3 digits).
trial_running() {
  "$bin/shardtune" list --label "sweep=$id" --status running --output json 2>/dev/null |
    python3 -c "import json,sys; print(any(j['labels'].get('trial') == '$1' for j in json.load(sys.stdin).get('jobs', [])))" \
      2>/dev/null
}
for _ in $(seq 1 600); do [ "$(sweep_field "$id" "s.get('trials_finished', 0)")" -ge 1 ] 2>/dev/null && break; sleep 0.2; done
"$bin/shardtune" sweep watch "$id" --interval 0.5 > watch.out 2>&1 &
watch_pid=$!
# Trial 002, the low rate on good data, is the one ASHA stops at its first evaluation (step 3).
# The server freezes (SIGSTOP) as soon as its job runs, before its ranks have started, for
# longer than the trial takes to reach step 3 and report it; then it is killed (SIGKILL) and
# restarted. The evaluation's report must reach the restarted server and stop the trial at
# step 3: a trial's rank 0 waits there until its report is delivered, where any other report is
# sent once and lost with the server (before, the trial trained on, was judged at a later rung,
# or finished its 60 steps with nobody watching and counted as completed).
for _ in $(seq 1 1200); do [ "$(trial_running 002)" = True ] && break; sleep 0.1; done
kill -STOP "$server_pid"
before=$(grep -c '"event":"proposed"' state/jobs/sweeps/"$id"/trials.jsonl)
sleep 12
kill -9 "$server_pid"
wait "$server_pid" 2>/dev/null
pass "server frozen (SIGSTOP) for 12 s and killed (SIGKILL) with $before trial(s) proposed, $(grep -c '"event":"finished"' state/jobs/sweeps/"$id"/trials.jsonl) finished"
sleep 2  # the watch finds it unreachable
start_server
wait "$watch_pid"
expect_eq "sweep watch, started before the kill, waits for the restart and exits 0 (the sweep succeeded)" "$?" "0"
tail -n 12 watch.out
expect_eq "status" "$(sweep_field "$id" "s['status']")" "SWEEP_STATUS_SUCCEEDED"
expect_eq "4 trials, in the grid's seeded order" \
  "$(sweep_field "$id" "[(t['values']['training.optimizer.lr'], t['values']['data.train'].split('/')[-1]) for t in s['trials']]")" \
  "[(0.003, 'train.jsonl'), (0.0001, 'broken.jsonl'), (0.0001, 'train.jsonl'), (0.003, 'broken.jsonl')]"
expect_eq "the malformed data's trials failed; the low rate's was stopped early; both good ones have an objective" \
  "$(sweep_field "$id" "[(t['status'], 'objective' in t) for t in s['trials']]")" \
  "[('TRIAL_STATUS_COMPLETED', True), ('TRIAL_STATUS_FAILED', False), ('TRIAL_STATUS_STOPPED', True), ('TRIAL_STATUS_FAILED', False)]"
expect_contains "a failed trial says why" "$(sweep_field "$id" "s['trials'][1]['note']")" "its job failed: invalid_data"
expect_contains "the stopped trial says why" "$(sweep_field "$id" "s['trials'][2]['note']")" "ASHA rung 0 (step 3)"
expect_eq "its job was cancelled at its first rung, long before its 60 steps" \
  "$(sweep_field "$id" "s['trials'][2]['job_status'], int(s['trials'][2]['steps'])")" "JOB_STATUS_CANCELLED 3"
jobs=$("$bin/shardtune" list --label "sweep=$id" --output json |
  python3 -c "import json,sys; j = json.load(sys.stdin).get('jobs', []); print(len(j), len(set(x['labels']['trial'] for x in j)))")
expect_eq "each trial's job exists once (4 jobs, 4 trials), after the restart too" "$jobs" "4 4"
expect_eq "each trial's job is the one the sweep names" \
  "$(sweep_field "$id" "sorted(t['job_id'] for t in s['trials']) == sorted(t['job_id'] for t in s['trials'] if t['job_id'])")" "True"
best=$(sweep_field "$id" "s['best_trial']")
best_job=$(sweep_field "$id" "s['best_job_id']")
expect_eq "the best trial is the better of the two good ones" "$best" \
  "$(sweep_field "$id" "min((t['objective'], int(t.get('number', 0))) for t in s['trials'] if 'objective' in t)[1]")"
out_dir=$(field "$best_job" output_dir)
expect_eq "its job writes to OUTPUT/SWEEP_ID/NNN" "$out_dir" "$work/runs/counting/$id/$(printf %03d "$best")"
if [ -f "$out_dir/final/config.json" ]; then pass "the best trial's final/ exists"; else fail "no $out_dir/final"; fi
expect_eq "the journal: the header, 4 proposals, 4 ends" \
  "$(grep -c '"event":"sweep"\|"event":"proposed"\|"event":"finished"' state/jobs/sweeps/"$id"/trials.jsonl)" "9"
expect_contains "sweep get shows the table with the best" "$("$bin/shardtune" sweep get "$id")" "<- best"
expect_contains "the server logged the resume" "$(cat server.log)" "sweep $id (counting-lr) resumed"

# 2. Cancel: long trials, cancelled once both run.
sed 's/max_steps: 60/max_steps: 100000/; s/name: counting$/name: long/' job.yaml > long.yaml
printf '%s\n' "name: long-lr" "base: long.yaml" "parameters: {training.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}}" \
  "strategy: random" "objective: {metric: val_loss}" "max_trials: 6" "parallel_trials: 2" "seed: 3" > long-sweep.yaml
cid=$("$bin/shardtune" sweep submit long-sweep.yaml --priority 5)
running() { "$bin/shardtune" list --label "sweep=$cid" --status running --output json |
  python3 -c "import json,sys; print(len(json.load(sys.stdin).get('jobs', [])))"; }
for _ in $(seq 1 300); do [ "$(running)" == "2" ] && break; sleep 0.2; done
expect_eq "two trials run at once (parallel_trials 2)" "$(running)" "2"
expect_eq "the trials' jobs carry the sweep's priority" \
  "$("$bin/shardtune" list --label "sweep=$cid" --output json | python3 -c "import json,sys; print({j.get('priority') for j in json.load(sys.stdin)['jobs']})")" "{5}"
out=$("$bin/shardtune" sweep cancel "$cid")
expect_eq "sweep cancel exits 0" "$?" "0"
expect_contains "it is cancelled" "$out" "status:    cancelled"
ok=""
for _ in $(seq 1 300); do
  states=$("$bin/shardtune" list --label "sweep=$cid" --output json |
    python3 -c "import json,sys; print(sorted(j['status'] for j in json.load(sys.stdin)['jobs']))")
  [ "$states" == "['JOB_STATUS_CANCELLED', 'JOB_STATUS_CANCELLED']" ] && ok=1 && break
  sleep 0.2
done
expect_eq "its two trials' jobs were cancelled, and no other job was made" "$states" \
  "['JOB_STATUS_CANCELLED', 'JOB_STATUS_CANCELLED']"
expect_eq "its trials say so" "$(sweep_field "$cid" "sorted(set(t['note'] for t in s['trials'])), len(s['trials'])")" \
  "['the sweep was cancelled'] 2"
sleep 1.5  # three ticks of the sweeps' loop: nothing more is proposed
expect_eq "still two trials" "$(sweep_field "$cid" "len(s['trials'])")" "2"
out=$("$bin/shardtune" sweep cancel "$cid" 2>&1)
expect_eq "cancelling it again is refused (2)" "$?" "2"
expect_contains "as FAILED_PRECONDITION" "$out" "FAILED_PRECONDITION"
list=$("$bin/shardtune" sweep list)
expect_contains "sweep list shows the first sweep" "$list" "$id"
expect_contains "and the cancelled one" "$list" "$cid"
expect_eq "list --status cancelled shows only it" \
  "$("$bin/shardtune" sweep list --status cancelled --output json | python3 -c "import json,sys; print([s['id'] for s in json.load(sys.stdin)['sweeps']])")" \
  "['$cid']"

# 3. Refusals.
sed 's/training.optimizer.lr:/training.optimiser.lr:/' sweep.yaml > bad.yaml
out=$("$bin/shardtune" sweep submit bad.yaml 2>&1)
expect_eq "a bad sweep spec is refused (2)" "$?" "2"
expect_contains "naming the key, its line and column, with a suggestion" "$out" \
  "parameters.training.optimiser.lr (line 4, column 3): 'training.optimiser.lr' is not a key path of the job spec (did you mean 'training.optimizer.lr'?)"
sed "s|$work/train.jsonl, $work/broken.jsonl|$work/gone-1.jsonl, $work/gone-2.jsonl, $work/gone-3.jsonl, $work/gone-4.jsonl|; s/name: counting-lr/name: gone/" sweep.yaml > gone.yaml
gid=$("$bin/shardtune" sweep submit gone.yaml)
for _ in $(seq 1 100); do [ "$(sweep_field "$gid" "s['status']")" == "SWEEP_STATUS_RUNNING" ] || break; sleep 0.1; done
expect_eq "trials refused as jobs (their data.train is missing) three in a row fail the sweep" \
  "$(sweep_field "$gid" "s['status'], len(s['trials'])")" "SWEEP_STATUS_FAILED 3"
expect_contains "saying why" "$(sweep_field "$gid" "s['message']")" "3 trials in a row were refused as jobs; the last: its job was refused"
out=$(SHARDTUNE_TOKEN=key-viewer "$bin/shardtune" sweep submit sweep.yaml 2>&1)
expect_eq "a viewer cannot submit (2)" "$?" "2"
expect_contains "PERMISSION_DENIED" "$out" "PERMISSION_DENIED"
expect_eq "but can read" "$(SHARDTUNE_TOKEN=key-viewer "$bin/shardtune" sweep get "$id" --output json | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])")" "$id"
out=$("$bin/shardtune" sweep get sweep-0000000000000000 2>&1)
expect_contains "an unknown sweep is NOT_FOUND" "$out" "NOT_FOUND"
summary
