#!/usr/bin/env bash
# The Slurm backend on a real single-node Slurm cluster started here (deploy/slurm/local-cluster.sh):
# two 2-rank jobs submitted at once through shardtune-server and the CLI run as Slurm jobs to SUCCEEDED
# (one with a time limit and CPUs per rank, which Slurm shows it was given), a requeued one
# resumes, a cancelled one ends CANCELLED with its Slurm job gone, one whose node fails ends FAILED
# with NODE_LOST, and one sbatch refuses (a partition the cluster lacks) ends FAILED with BACKEND.
# A server as root with jobs as root under mpirun refuses to start unless allowed. Then, with
# `run_as: nobody`, `job_umask: 027` and `slurm.launcher: srun`: a job Slurm runs as nobody, its
# ranks started by srun, its log and exit file nobody's with the umask's mode in a directory
# nobody may not write, its outputs likewise. Exits 77 (skipped) where Slurm cannot be installed.
# Usage: slurm_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
bash "$src/deploy/slurm/local-cluster.sh" start
rc=$?
if [ "$rc" -eq 77 ]; then echo "SKIPPED: Slurm cannot be installed or started here"; exit 77; fi
[ "$rc" -eq 0 ] || { echo "FAILED: the Slurm cluster did not start"; exit 1; }
work=$(mktemp -d)
chmod 755 "$work"  # the job's user (run_as) reads the shared model and its tenant's root under it
server_pid=""
node=$(sinfo -h -N -o %N | head -n 1)
trap '[ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null; scontrol update NodeName="$node" State=RESUME > /dev/null 2>&1
      bash "$src/deploy/slurm/local-cluster.sh" stop; rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"

port=$(free_port)
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
# Jobs as root under mpirun: refused at start unless the operator says so.
out=$(timeout 20 "$bin/shardtune-server" --config server.yaml 2>&1)
expect_contains "jobs as root under mpirun: the server refuses to start" "$out" "slurm.allow_run_as_root: true"
sed -i 's|^slurm: {partition: debug, |&allow_run_as_root: true, |' server.yaml
"$bin/shardtune-server" --config server.yaml > server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
mkdir -p shared roots/team-a
"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/shared/base" --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > train.jsonl
write_job() {  # FILE NAME STEPS [MORE RESOURCES [OUTPUT PARENT]]
  cat > "$1" <<YAML
name: $2
model: {path: $work/shared/base}
data: {train: $work/train.jsonl, format: tokens}
training: {max_steps: $3, micro_batch_size: 2, global_batch_size: 8}
sharding: {zero_stage: 3}
output: {dir: ${5:-runs}/$2, checkpoint_every: 10}
resources: {ranks_per_node: 2${4:+, $4}}
YAML
}
sbatch_script() { cat "$work/$1/jobs/$2/attempt-1.sbatch"; }  # STATE_DIR JOB_ID

# Two jobs at once (each Slurm job polled, in one squeue call: an older one once never was).
write_job ok.yaml ok 20
write_job ok2.yaml ok2 20 'cpus_per_rank: 1, time_limit: "10:00"'
id=$("$bin/shardtune" submit ok.yaml)
id2=$("$bin/shardtune" submit ok2.yaml)
wait_status "$id" JOB_STATUS_SUCCEEDED 180 && pass "a job through the slurm backend SUCCEEDED" || fail "slurm job: $(field "$id" status); $(tail -n 5 server.log)"
wait_status "$id2" JOB_STATUS_SUCCEEDED 180 && pass "a second Slurm job submitted with it SUCCEEDED" || fail "second slurm job: $(field "$id2" status)"
expect_eq "it ran as a Slurm job" "$("$bin/shardtune" events "$id" | grep -c 'Slurm job')" "1"
[ -f "$work/runs/ok/final/model.safetensors" ] && pass "its model was exported" || fail "no final model"
slurm_id=$("$bin/shardtune" events "$id2" | sed -n 's/.*Slurm job \([0-9]*\).*/\1/p' | head -n 1)
job=$(scontrol show job --oneliner "$slurm_id")
for given in "TimeLimit=00:10:00" "NumNodes=1" "NumTasks=2" "CPUs/Task=1" "Partition=debug"; do
  expect_contains "Slurm gave it $given" "$job" "$given"
done
script=$(sbatch_script state "$id")
expect_contains "allowed: the script exports Open MPI's root-only variables" "$script" "export OMPI_ALLOW_RUN_AS_ROOT=1"
expect_eq "no --oversubscribe unless configured" "$(grep -c oversubscribe <<<"$script")" "0"

# Preemption: Slurm requeues the running job; it runs the batch script again, resumes from its
# latest checkpoint, and the server keeps following the same attempt to SUCCEEDED.
write_job requeued.yaml requeued 600  # long enough to be running when requeued at step 20, short after
id=$("$bin/shardtune" submit requeued.yaml)
for _ in $(seq 1 600); do [ -d runs/requeued/checkpoints/step-20 ] && break; sleep 0.1; done
slurm_id=$("$bin/shardtune" events "$id" | sed -n 's/.*Slurm job \([0-9]*\).*/\1/p' | head -n 1)
scontrol requeue "$slurm_id"
sleep 1
scontrol update JobId="$slurm_id" StartTime=now  # no wait before it is eligible again (the default is minutes)
wait_status "$id" JOB_STATUS_SUCCEEDED 180 && pass "a requeued (preempted) job ends SUCCEEDED" || fail "requeued: $(field "$id" status)"
grep -q "resuming from" runs/requeued/logs/rank-00000.log && pass "the requeued run resumed from its checkpoint" || fail "the requeued run did not resume"
expect_eq "a requeue is Slurm's, not a retry: still attempt 1" "$(field "$id" attempt)" "1"

write_job long.yaml long 100000
id=$("$bin/shardtune" submit long.yaml)
for _ in $(seq 1 600); do [ "$(field "$id" step)" -gt 3 ] 2>/dev/null && break; sleep 0.2; done
slurm_id=$("$bin/shardtune" events "$id" | sed -n 's/.*Slurm job \([0-9]*\).*/\1/p' | head -n 1)
"$bin/shardtune" cancel "$id" > /dev/null
wait_status "$id" JOB_STATUS_CANCELLED 60 && pass "scancel through the server -> CANCELLED" || fail "cancel: $(field "$id" status)"
state=$(squeue --noheader --jobs="$slurm_id" --format=%T 2>/dev/null)
if [ -z "$state" ] || [ "$state" == "CANCELLED" ]; then pass "the Slurm job is gone"; else fail "Slurm job $slurm_id is $state"; fi

# A node failure: the node goes DOWN under a running job, which Slurm ends NODE_FAIL (the
# template now says --no-requeue, or Slurm would requeue it to wait for the node).
sed -i '1a #SBATCH --no-requeue' job.sbatch.in
write_job nodefail.yaml nodefail 100000
id=$("$bin/shardtune" submit nodefail.yaml)
for _ in $(seq 1 600); do [ "$(field "$id" step)" -gt 3 ] 2>/dev/null && break; sleep 0.2; done
scontrol update NodeName="$node" State=DOWN Reason=shardtune-e2e
wait_status "$id" JOB_STATUS_FAILED 60 && pass "a job whose node fails: FAILED" || fail "node failure: $(field "$id" status)"
scontrol update NodeName="$node" State=RESUME > /dev/null 2>&1
out=$("$bin/shardtune" get "$id")
expect_contains "a failed node is NODE_LOST" "$out" "error:     node_lost: Slurm job"
expect_contains "it names Slurm's state" "$out" "ended NODE_FAIL"

# sbatch refusing the job (a partition the cluster lacks): BACKEND, and not retried.
write_job refused.yaml refused 20 "partition: nosuch"
id=$("$bin/shardtune" submit refused.yaml)
wait_status "$id" JOB_STATUS_FAILED 60 && pass "a job sbatch refuses: FAILED" || fail "refused: $(field "$id" status)"
out=$("$bin/shardtune" get "$id")
expect_contains "sbatch refusing it is BACKEND" "$out" "error:     backend: sbatch failed"
expect_contains "sbatch says why" "$out" "invalid partition"

# As root with run_as: the job is submitted as nobody (sbatch --uid), its ranks started by srun.
kill "$server_pid"
wait "$server_pid" 2> /dev/null
port=$(free_port)
export SHARDTUNE_SERVER=127.0.0.1:$port
cp train.jsonl roots/team-a/train.jsonl
cat > server-nobody.yaml <<YAML
listen: 127.0.0.1:$port
database: $work/state2/jobs.db
api_keys: [{key: key-a, tenant: team-a, role: user}]
backend: slurm
slurm: {partition: debug, template: $src/deploy/slurm/job.sbatch.in, launcher: srun}
local: {hosts: [{host: localhost, slots: 4}]}
retry: {max_attempts: 1}
storage: {tenants: {team-a: {root: $work/roots/team-a}}, read_only: [$work/shared]}
run_as: nobody
job_umask: 027
YAML
"$bin/shardtune-server" --config server-nobody.yaml > server2.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
a=$work/roots/team-a
write_job nobody.yaml nobody 10 "" "$a/runs"
sed -i "s|$work/train.jsonl|$a/train.jsonl|" nobody.yaml
id=$("$bin/shardtune" submit nobody.yaml)
wait_status "$id" JOB_STATUS_SUCCEEDED 180 && pass "run_as nobody, srun: SUCCEEDED" || fail "run_as/srun job: $(field "$id" status); $(tail -n 5 server2.log)"
slurm_id=$("$bin/shardtune" events "$id" | sed -n 's/.*Slurm job \([0-9]*\).*/\1/p' | head -n 1)
expect_contains "Slurm ran it as nobody" "$(scontrol show job --oneliner "$slurm_id")" "UserId=nobody("
script=$(sbatch_script state2 "$id")
expect_contains "its ranks started by srun" "$script" "'srun' '--mpi=pmix' '--ntasks=2'"
expect_contains "the script sets the job's umask" "$script" "umask 0027"
expect_contains "no root-only variables: the script unsets them" "$script" "unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"
expect_eq "and sets none" "$(grep -c 'export OMPI_ALLOW_RUN_AS_ROOT' <<<"$script")" "0"
expect_contains "srun started one world of 2 ranks" "$(cat "$a/runs/nobody/logs/rank-00000.log" 2>&1)" "plan: 2 ranks"
expect_eq "rank 1 ran, as nobody" "$(stat -c %U "$a/runs/nobody/logs/rank-00001.log" 2>&1)" "nobody"
dir=$work/state2/jobs/$id
expect_eq "its log: nobody's, mode 640" "$(stat -c '%U %a' "$dir/attempt-1.log")" "nobody 640"
expect_eq "its exit file: nobody's, mode 640, exit 0" "$(stat -c '%U %a' "$dir/exit-1") $(cat "$dir/exit-1")" "nobody 640 0"
expect_eq "in a directory nobody may not write" "$(stat -c '%U %a' "$dir")" "root 711"
expect_contains "the server read its log as events" "$("$bin/shardtune" events "$id")" "job 'nobody' finished"
expect_eq "its outputs: nobody's, mode 640" "$(stat -c '%U %a' "$a/runs/nobody/metrics.jsonl")" "nobody 640"
expect_eq "its directories: mode 750" "$(stat -c '%U %a' "$a/runs/nobody/final")" "nobody 750"

summary
