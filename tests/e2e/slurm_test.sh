#!/usr/bin/env bash
# The Slurm backend on a real single-node Slurm cluster started here (deploy/slurm/local-cluster.sh):
# two 2-rank jobs submitted at once through shardtune-server and the CLI run as Slurm jobs to SUCCEEDED,
# a requeued one resumes, a cancelled one ends CANCELLED with its Slurm job gone, and one whose
# node fails ends FAILED with NODE_LOST, and one sbatch refuses ends FAILED with BACKEND. Exits 77
# (skipped) where Slurm cannot be installed.
# Usage: slurm_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
bash "$src/deploy/slurm/local-cluster.sh" start
rc=$?
if [ "$rc" -eq 77 ]; then echo "SKIPPED: Slurm cannot be installed or started here"; exit 77; fi
[ "$rc" -eq 0 ] || { echo "FAILED: the Slurm cluster did not start"; exit 1; }
work=$(mktemp -d)
server_pid=""
node=$(sinfo -h -N -o %N | head -n 1)
trap '[ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null; scontrol update NodeName="$node" State=RESUME > /dev/null 2>&1
      bash "$src/deploy/slurm/local-cluster.sh" stop; rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"

port=$((20000 + RANDOM % 20000))
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=key-a OMP_NUM_THREADS=1
cd "$work"
cp "$src/deploy/slurm/job.sbatch.in" job.sbatch.in  # read at each launch: the last test changes it
cat > server.yaml <<YAML
listen: 127.0.0.1:$port
database: $work/state/jobs.db
api_keys: [{key: key-a, tenant: team-a, role: user}]
backend: slurm
slurm: {partition: debug, template: $work/job.sbatch.in}
local: {hosts: [{host: localhost, slots: 4}]}
retry: {max_attempts: 1}
cancel_grace_s: 5
YAML
"$bin/shardtune-server" --config server.yaml > server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > train.jsonl
write_job() {  # FILE NAME STEPS
  cat > "$1" <<YAML
name: $2
model: {path: base}
data: {train: train.jsonl, format: tokens}
training: {max_steps: $3, micro_batch_size: 2, global_batch_size: 8}
sharding: {zero_stage: 3}
output: {dir: runs/$2, checkpoint_every: 10}
resources: {ranks_per_node: 2}
YAML
}

# Two jobs at once (each Slurm job polled, in one squeue call: an older one once never was).
write_job ok.yaml ok 20
write_job ok2.yaml ok2 20
id=$("$bin/shardtune" submit ok.yaml)
id2=$("$bin/shardtune" submit ok2.yaml)
wait_status "$id" SUCCEEDED 180 && pass "a job through the slurm backend SUCCEEDED" || fail "slurm job: $(field "$id" status); $(tail -n 5 server.log)"
wait_status "$id2" SUCCEEDED 180 && pass "a second Slurm job submitted with it SUCCEEDED" || fail "second slurm job: $(field "$id2" status)"
expect_eq "it ran as a Slurm job" "$("$bin/shardtune" events "$id" | grep -c 'Slurm job')" "1"
[ -f "$work/runs/ok/final/model.safetensors" ] && pass "its model was exported" || fail "no final model"

# Preemption: Slurm requeues the running job; it runs the batch script again, resumes from its
# latest checkpoint, and the server keeps following the same attempt to SUCCEEDED.
write_job requeued.yaml requeued 3000
id=$("$bin/shardtune" submit requeued.yaml)
for _ in $(seq 1 600); do [ -d runs/requeued/checkpoints/step-20 ] && break; sleep 0.1; done
slurm_id=$("$bin/shardtune" events "$id" | sed -n 's/.*Slurm job \([0-9]*\).*/\1/p' | head -n 1)
scontrol requeue "$slurm_id"
sleep 1
scontrol update JobId="$slurm_id" StartTime=now  # no wait before it is eligible again (the default is minutes)
wait_status "$id" SUCCEEDED 180 && pass "a requeued (preempted) job ends SUCCEEDED" || fail "requeued: $(field "$id" status)"
grep -q "resuming from" runs/requeued/logs/rank-00000.log && pass "the requeued run resumed from its checkpoint" || fail "the requeued run did not resume"
expect_eq "a requeue is Slurm's, not a retry: still attempt 1" "$(field "$id" attempt)" "1"

write_job long.yaml long 100000
id=$("$bin/shardtune" submit long.yaml)
for _ in $(seq 1 600); do [ "$(field "$id" step)" -gt 3 ] 2>/dev/null && break; sleep 0.2; done
slurm_id=$("$bin/shardtune" events "$id" | sed -n 's/.*Slurm job \([0-9]*\).*/\1/p' | head -n 1)
"$bin/shardtune" cancel "$id" > /dev/null
wait_status "$id" CANCELLED 60 && pass "scancel through the server -> CANCELLED" || fail "cancel: $(field "$id" status)"
state=$(squeue --noheader --jobs="$slurm_id" --format=%T 2>/dev/null)
if [ -z "$state" ] || [ "$state" == "CANCELLED" ]; then pass "the Slurm job is gone"; else fail "Slurm job $slurm_id is $state"; fi

# A node failure: the node goes DOWN under a running job, which Slurm ends NODE_FAIL (the
# template now says --no-requeue, or Slurm would requeue it to wait for the node).
sed -i 's/^#SBATCH --ntasks={{RANKS}}$/&\n#SBATCH --no-requeue/' job.sbatch.in
write_job nodefail.yaml nodefail 100000
id=$("$bin/shardtune" submit nodefail.yaml)
for _ in $(seq 1 600); do [ "$(field "$id" step)" -gt 3 ] 2>/dev/null && break; sleep 0.2; done
scontrol update NodeName="$node" State=DOWN Reason=shardtune-e2e
wait_status "$id" FAILED 60 && pass "a job whose node fails: FAILED" || fail "node failure: $(field "$id" status)"
scontrol update NodeName="$node" State=RESUME > /dev/null 2>&1
out=$("$bin/shardtune" get "$id")
expect_contains "a failed node is NODE_LOST" "$out" "error:     NODE_LOST: Slurm job"
expect_contains "it names Slurm's state" "$out" "ended NODE_FAIL"

# sbatch refusing the job (more nodes than the cluster has): BACKEND, and not retried.
sed -i 's/^#SBATCH --ntasks={{RANKS}}$/&\n#SBATCH --nodes=99/' job.sbatch.in
write_job refused.yaml refused 20
id=$("$bin/shardtune" submit refused.yaml)
wait_status "$id" FAILED 60 && pass "a job sbatch refuses: FAILED" || fail "refused: $(field "$id" status)"
expect_contains "sbatch refusing it is BACKEND" "$("$bin/shardtune" get "$id")" "error:     BACKEND: sbatch failed"

summary
