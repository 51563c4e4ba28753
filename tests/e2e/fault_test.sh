#!/usr/bin/env bash
# Faults a server must survive, end to end on loopback with real processes (docs/reliability.md):
#   1. a stalled worker: rank 0 stopped with SIGSTOP sends no heartbeat; after heartbeat_timeout_s
#      (3 s here) the server kills the attempt and retries it (error code TIMEOUT); attempt 2 finishes.
#   2. a full disk: output.dir on a small tmpfs filled during training; the checkpoint write fails
#      with an error naming the file and "no space", the previous checkpoint stays whole, the
#      server answers meanwhile, and once space is freed the job submitted again resumes from that
#      checkpoint and finishes. Mounting needs root: skipped, with a message, where it is refused.
# Usage: fault_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
port=""
server_pid=""
mounted=""
cleanup() {
  [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null
  for p in /proc/[0-9]*; do  # nothing a job of this server started may outlive the test
    grep -qz "^SHARDTUNE_SERVER=127.0.0.1:$port$" "$p/environ" 2>/dev/null && kill -CONT "${p#/proc/}" 2>/dev/null &&
      kill -9 "${p#/proc/}" 2>/dev/null
  done
  [ -n "$mounted" ] && umount "$mounted" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
source "$(dirname "$0")/checks.sh"
port=$(free_port)
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=key-f
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$work"
printf '%s\n' "listen: 127.0.0.1:$port" "database: $work/state/jobs.db" "api_keys: [{key: key-f, tenant: f}]" \
  "local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}" "retry: {max_attempts: 2}" \
  "cancel_grace_s: 2" "heartbeat_timeout_s: 3" > server.yaml
"$bin/shardtune-server" --config server.yaml > server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 1 --log-level warn
for n in $(seq 0 31); do echo "{\"input_ids\": [1, $((3 + n % 50)), $((4 + n % 50)), $((5 + n % 50)), 7, 8, 9, 10]}"; done > train.jsonl
job_yaml() {  # NAME OUTPUT_DIR STEPS CHECKPOINT_EVERY
  printf '%s\n' "name: $1" "model: {path: $work/base}" "data: {train: $work/train.jsonl, format: tokens}" \
    "training: {max_steps: $3, micro_batch_size: 1, global_batch_size: 1}" \
    "output: {dir: \"$2\", checkpoint_every: $4}" "resources: {ranks_per_node: 1}" > "$1.yaml"
}
rank0_of() {  # JOB ATTEMPT: the pid of that attempt's rank 0 worker
  for p in /proc/[0-9]*; do
    grep -qz "^SHARDTUNE_JOB_ID=$1$" "$p/environ" 2>/dev/null && grep -qz "^SHARDTUNE_JOB_ATTEMPT=$2$" "$p/environ" &&
      grep -qz '^OMPI_COMM_WORLD_RANK=0$' "$p/environ" && echo "${p#/proc/}"
  done | head -n 1
}

# 1. A stalled rank 0: killed for its silence and retried; the retry finishes.
job_yaml stalled "$work/runs/stalled" 3000 500
id=$("$bin/shardtune" submit stalled.yaml)
for _ in $(seq 1 300); do [ "$(field "$id" step)" -gt 0 ] 2>/dev/null && break; sleep 0.1; done
victim=$(rank0_of "$id" 1)
if [ -n "$victim" ]; then
  kill -STOP "$victim"
  stopped_at=$(date +%s)
  pass "stopped rank 0 (pid $victim) at step $(field "$id" step)"
else
  fail "found no rank 0 of $id to stop"
fi
for _ in $(seq 1 300); do [ "$(field "$id" attempt)" == "2" ] && break; sleep 0.1; done
expect_eq "the silent attempt was retried" "$(field "$id" attempt)" "2"
detected=$(($(date +%s) - ${stopped_at:-0}))
[ "$detected" -le 12 ] && pass "within heartbeat_timeout_s and a tick ($detected s)" || fail "retried only after $detected s"
events=$("$bin/shardtune" events "$id")
grep -F "no heartbeat" <<< "$events"
expect_contains "the error names the code and why" "$events" "timeout: no heartbeat from rank 0 for"
expect_contains "the retry says so" "$events" "attempt 1 failed (no heartbeat from rank 0"
[ -d "/proc/$victim" ] && fail "the stopped rank 0 (pid $victim) still exists" || pass "the stopped rank 0 was killed"
wait_status "$id" JOB_STATUS_SUCCEEDED 120 && pass "attempt 2 finished: SUCCEEDED" || fail "attempt 2: $(field "$id" status)"

# 2. A full disk during a checkpoint write: the tmpfs is shrunk, once the first checkpoint is
#    written, to what is used plus half a checkpoint, so that the next one fills it (its write
#    fails, its temporary file is removed, and the logs still have room to say so).
out_fs="$work/small"
mkdir -p "$out_fs"
if ! mount -t tmpfs -o size=64m tmpfs "$out_fs" 2> mount.err; then
  skip "disk full: cannot mount a tmpfs here ($(cat mount.err)); run as root to test it"
  summary
fi
mounted=$out_fs
job_yaml full "$out_fs/run" 600 200
id=$("$bin/shardtune" submit full.yaml)
# Up to 300 s: a build with sanitizers takes minutes to get there.
for _ in $(seq 1 6000); do [ -f "$out_fs/run/checkpoints/step-200/index.json" ] && break; sleep 0.05; done
if [ ! -f "$out_fs/run/checkpoints/step-200/index.json" ]; then
  fail "job $id wrote no checkpoint step-200 in 300 s (it is $(field "$id" status) at step $(field "$id" step))"
  summary
fi
checkpoint_kib=$(du -sk "$out_fs/run/checkpoints/step-200" | cut -f1)
mount -o remount,size=$(($(du -sk "$out_fs" | cut -f1) + checkpoint_kib / 2))k "$out_fs" &&
  pass "the output file system shrunk to what it holds and half a checkpoint ($checkpoint_kib KiB)" ||
  fail "could not shrink the tmpfs"
sum_before=$(cat "$out_fs"/run/checkpoints/step-200/* | sha256sum)
expect_contains "the server answers while the job runs out of space" "$("$bin/shardtune" get "$id")" "$id"
wait_status "$id" JOB_STATUS_FAILED 120 && pass "the job failed (its retry too: the disk is still full)" ||
  fail "the job is $(field "$id" status)"
message=$("$bin/shardtune" get "$id" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["error"]["message"])')
echo "the job's error: $message"
expect_contains "its error says no space" "$message" "no space left on the device"
expect_contains "and names the file" "$message" "$out_fs/run/checkpoints/step-400.tmp/rank-00000.safetensors"
expect_eq "checkpoint step-200 is intact" "$(cat "$out_fs"/run/checkpoints/step-200/* | sha256sum)" "$sum_before"
[ ! -e "$out_fs/run/checkpoints/step-400" ] && pass "no checkpoint step-400 (only its staging step-400.tmp)" ||
  fail "a checkpoint step-400 exists"
mount -o remount,size=64m "$out_fs"
id=$("$bin/shardtune" submit full.yaml)
wait_status "$id" JOB_STATUS_SUCCEEDED 120 && pass "space freed: submitted again, it finished" || fail "resubmitted: $(field "$id" status)"
expect_contains "it resumed from checkpoint step-200" "$(cat "$out_fs"/run/logs/rank-00000.log)" \
  "resuming from $out_fs/run/checkpoints/step-200"
summary
