#!/usr/bin/env bash
# The control plane end to end on loopback, with real processes: shardtune-server (SQLite file,
# local mpirun backend), the shardtune CLI, and 2-rank worker jobs. Covers success, cancel,
# a rank killed (retried from its checkpoint), the server killed (re-attached after restart),
# pause and resume on another rank count, auth and tenants, hostile paths, and each job error
# code set where it happens (INVALID_SPEC, INVALID_DATA, TIMEOUT on rank 0 and on rank 1 alone, NODE_LOST),
# and a killed supervisor's ranks killed by the server.
# Usage: server_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
server_pid=""
fault_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null
  [ -n "$fault_pid" ] && kill -9 "$fault_pid" 2>/dev/null
  # Nothing a test job started may outlive the test.
  for p in /proc/[0-9]*; do
    grep -qz "^SHARDTUNE_JOB_ID=job-" "$p/environ" 2>/dev/null && grep -qz "^SHARDTUNE_SERVER=127.0.0.1:\($port\|$fault_port\)$" "$p/environ" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
source "$(dirname "$0")/checks.sh"

port=$(free_port)
fault_port=$((port + 2))
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=key-a
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$work"
cat > server.yaml <<YAML
listen: 127.0.0.1:$port
database: $work/state/jobs.db
api_keys:
  - {key: key-a, tenant: team-a, role: user}
  - {sha256: $(printf key-b | sha256sum | cut -d' ' -f1), tenant: team-b, role: user}
  - {key: key-admin, tenant: ops, role: admin}
  - {key: key-viewer, tenant: team-a, role: viewer}
local: {hosts: [{host: localhost, slots: 4}], extra_args: [--oversubscribe], memory_per_slot_gib: 1}
retry: {max_attempts: 3}
cancel_grace_s: 2
quotas: {team-b: {max_running_jobs: 1, max_ranks: 2}}
YAML
job_processes() {  # pids whose environment names the job
  for p in /proc/[0-9]*; do grep -qz "^SHARDTUNE_JOB_ID=$1\$" "$p/environ" 2>/dev/null && echo "${p#/proc/}"; done
}
final_loss() { grep '"loss"' "$1/metrics.jsonl" | tail -n 1 | sed -E 's/.*"loss":([0-9.e+-]+).*/\1/'; }

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > "$work/train.jsonl"
write_job() {  # write_job FILE NAME OUTPUT_DIR STEPS CHECKPOINT_EVERY
  cat > "$1" <<YAML
name: $2
labels: {suite: e2e}
model: {path: base}
data: {train: train.jsonl, validation_split: 0.1, format: tokens}
training: {max_steps: $4, micro_batch_size: 2, global_batch_size: 8, optimizer: {lr: 1.0e-3}}
sharding: {zero_stage: 3}
output: {dir: "$3", checkpoint_every: $5}
resources: {ranks_per_node: 2}
YAML
}
start_server

# 1. A 2-rank ZeRO-3 job through the CLI: SUCCEEDED, with metrics and checkpoints.
write_job ok.yaml ok runs/ok 20 5
id=$("$bin/shardtune" submit ok.yaml)
expect_eq "submit exits 0" "$?" "0"
out=$(timeout 120 "$bin/shardtune" watch "$id" --logs)
expect_eq "watch exits 0 for a job that succeeds" "$?" "0"
expect_contains "watch ends with the status" "$out" "job $id succeeded"
expect_eq "the job reached its last step" "$(field "$id" step)" "20"
expect_contains "metrics reached the server" "$("$bin/shardtune" get "$id")" "val_loss"
# Every 5 steps but the last (step 20 is final/, not a checkpoint).
expect_eq "checkpoints at steps 5, 10 and 15 listed" "$("$bin/shardtune" checkpoints "$id" | awk '{print $2}' | tr '\n' ' ')" \
  "5 10 15 "
expect_eq "its statuses in order" "$("$bin/shardtune" events "$id" | awk '$4 == "status" {print $5}' | tr '\n' ' ')" \
  "validating: queued: running: succeeded: "
expect_contains "watch shows the ranks' log lines" "$out" "[rank 0] [info] step 20/20"
expect_contains "list shows the job" "$("$bin/shardtune" list --label suite=e2e)" "$id"
out=$("$bin/shardtune" submit ok.yaml 2>&1)
expect_eq "a job whose output.dir holds a finished run is refused: exit 2" "$?" "2"
expect_contains "it says why" "$out" "holds a finished run"
write_job twice.yaml twice runs/twice 4 0
first=$("$bin/shardtune" submit twice.yaml --idempotency-key k1); again=$("$bin/shardtune" submit twice.yaml --idempotency-key k1)
expect_eq "a retried submit with the same idempotency key gets the same job" "$again" "$first"

# 2. Cancel mid-run: CANCELLED, and no process of the job left.
write_job long.yaml long runs/long 2000 50
id=$("$bin/shardtune" submit long.yaml)
wait_status "$id" JOB_STATUS_RUNNING 30
for _ in $(seq 1 100); do [ "$(field "$id" step)" -gt 5 ] 2>/dev/null && break; sleep 0.1; done
"$bin/shardtune" cancel "$id" > /dev/null
wait_status "$id" JOB_STATUS_CANCELLED 30 && pass "cancel -> CANCELLED" || fail "cancel -> $(field "$id" status)"
sleep 0.5
expect_eq "no process of the cancelled job is left" "$(job_processes "$id" | wc -l)" "0"

# 3. kill -9 of a rank: retried from the latest checkpoint, same final loss as the unbroken run.
write_job unbroken.yaml unbroken runs/unbroken 300 25
write_job broken.yaml broken runs/broken 300 25
ref=$("$bin/shardtune" submit unbroken.yaml)
id=$("$bin/shardtune" submit broken.yaml)
# Its first checkpoint (step 25, then rotated): a loaded machine may take a while to get there.
for _ in $(seq 1 2400); do compgen -G "runs/broken/checkpoints/step-*" > /dev/null && break; sleep 0.05; done
victim=$(for p in $(job_processes "$id"); do grep -qz '^OMPI_COMM_WORLD_RANK=1$' /proc/$p/environ 2>/dev/null && echo $p; done | head -n 1)
if [ -n "$victim" ]; then kill -9 "$victim"; pass "killed rank 1 (pid $victim)"; else fail "found no rank 1 to kill"; fi
wait_status "$id" JOB_STATUS_SUCCEEDED 180 && pass "a killed rank's job is retried and succeeds" || fail "after kill -9: $(field "$id" status)"
expect_eq "the job ran a second attempt" "$(field "$id" attempt)" "2"
wait_status "$ref" JOB_STATUS_SUCCEEDED 120
expect_eq "the retried job's final loss equals the unbroken run's" "$(final_loss runs/broken)" "$(final_loss runs/unbroken)"

# 3b. kill -9 of an attempt's supervisor: its ranks are orphaned, not stopped; the server finds
#     no exit file, kills what is left of that attempt, and retries (nothing of attempt 1 trains on).
attempt_processes() {  # JOB ATTEMPT: pids of that attempt
  for p in $(job_processes "$1"); do grep -qz "^SHARDTUNE_JOB_ATTEMPT=$2\$" /proc/$p/environ 2>/dev/null && echo "$p"; done
}
write_job orphaned.yaml orphaned runs/orphaned 100000 50
id=$("$bin/shardtune" submit orphaned.yaml)
for _ in $(seq 1 300); do [ "$(field "$id" step)" -gt 2 ] 2>/dev/null && break; sleep 0.1; done
supervisor=$(for p in /proc/[0-9]*; do tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "supervise --job $id " && echo "${p#/proc/}"; done | head -n 1)
if [ -n "$supervisor" ]; then kill -9 "$supervisor"; pass "killed the supervisor (pid $supervisor)"; else fail "found no supervisor of $id"; fi
for _ in $(seq 1 300); do [ "$(field "$id" attempt)" == "2" ] && break; sleep 0.1; done
expect_eq "the job runs a second attempt" "$(field "$id" attempt)" "2"
sleep 0.5
expect_eq "no process of the attempt whose supervisor was killed is left" "$(attempt_processes "$id" 1 | wc -l)" "0"
"$bin/shardtune" cancel "$id" > /dev/null
wait_status "$id" JOB_STATUS_CANCELLED 30 || fail "orphaned: $(field "$id" status)"

# 4. kill -9 of the server mid-job: after a restart the job is still tracked and ends correctly.
write_job survivor.yaml survivor runs/survivor 8000 2000
id=$("$bin/shardtune" submit survivor.yaml)
wait_status "$id" JOB_STATUS_RUNNING 30
kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null; server_pid=""
sleep 1
start_server
expect_eq "after the restart the job is still running" "$(field "$id" status)" "JOB_STATUS_RUNNING"
wait_status "$id" JOB_STATUS_SUCCEEDED 300 && pass "the job ends SUCCEEDED under the restarted server" || fail "after server restart: $(field "$id" status)"
expect_contains "the restart is in the job's events" "$("$bin/shardtune" events "$id")" "re-attached"

# 5. Pause, then resume on another number of ranks (the checkpoint reshards).
write_job pausing.yaml pausing runs/pausing 20000 100000
id=$("$bin/shardtune" submit pausing.yaml)
for _ in $(seq 1 300); do [ "$(field "$id" step)" -gt 10 ] 2>/dev/null && break; sleep 0.1; done
"$bin/shardtune" pause "$id" > /dev/null
wait_status "$id" JOB_STATUS_PAUSED 60 && pass "pause -> PAUSED" || fail "pause -> $(field "$id" status)"
paused_at=$(field "$id" step)
[ -d "runs/pausing/checkpoints/step-$paused_at" ] && pass "paused at a checkpoint (step $paused_at)" || fail "no checkpoint at step $paused_at"
out=$("$bin/shardtune" resume "$id" --ranks 3 2>&1)
expect_eq "a resume whose ranks do not divide the global batch is refused: exit 2" "$?" "2"
expect_contains "the server's refusal names the job error code" "$out" "invalid_spec: "
"$bin/shardtune" resume "$id" --ranks 4 > /dev/null
wait_status "$id" JOB_STATUS_RUNNING 60
for _ in $(seq 1 300); do [ "$(field "$id" ranks)" == "4" ] && [ "$(field "$id" step)" -gt "$paused_at" ] 2>/dev/null && break; sleep 0.2; done
expect_eq "the resumed attempt runs on 4 ranks" "$(field "$id" ranks)" "4"
"$bin/shardtune" cancel "$id" > /dev/null
wait_status "$id" JOB_STATUS_CANCELLED 60
expect_contains "the resumed run continued from the pause" "$(cat runs/pausing/logs/rank-00000.log)" "resuming from $work/runs/pausing/checkpoints/step-$paused_at"

# 6. Auth: missing and wrong keys, tenants.
out=$(SHARDTUNE_TOKEN= "$bin/shardtune" list 2>&1)
expect_eq "no key exits 2" "$?" "2"
expect_contains "no key is UNAUTHENTICATED" "$out" "no API key"
out=$("$bin/shardtune" list --token wrong 2>&1)
expect_contains "a wrong key is refused" "$out" "unknown API key"
out=$("$bin/shardtune" get "$id" --token key-b 2>&1)
expect_eq "another tenant's job: exit 2" "$?" "2"
expect_contains "another tenant's job is NOT_FOUND" "$out" "no job '$id'"
"$bin/shardtune" cancel "$ref" --token key-b > /dev/null 2>&1
expect_eq "another tenant cannot cancel" "$(field "$ref" status)" "JOB_STATUS_SUCCEEDED"
expect_eq "team-b sees none of team-a's jobs" "$("$bin/shardtune" list --token key-b | wc -l)" "0"
expect_contains "an admin sees every tenant's jobs" "$("$bin/shardtune" list --token key-admin)" "$id"
expect_contains "a viewer sees its tenant's jobs" "$("$bin/shardtune" list --token key-viewer)" "$id"
out=$("$bin/shardtune" submit ok.yaml --token key-viewer 2>&1)
expect_eq "a viewer cannot submit: exit 2" "$?" "2"
expect_contains "a viewer is PERMISSION_DENIED" "$out" "viewer's: it may list and watch jobs and sweeps, not change them"

# TLS: a second server with a self-signed certificate; clients need its CA.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
  -keyout tls.key -out tls.crt > /dev/null 2>&1
tls_port=$((port + 1))
sed -e "s|listen: 127.0.0.1:$port|listen: 127.0.0.1:$tls_port\ntls: {cert: tls.crt, key: tls.key}|" \
    -e "s|$work/state/jobs.db|$work/tls-state/jobs.db|" server.yaml > tls-server.yaml
"$bin/shardtune-server" --config tls-server.yaml > tls-server.log 2>&1 &
tls_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list --server 127.0.0.1:$tls_port --tls-ca tls.crt > /dev/null 2>&1 && break; sleep 0.1; done
"$bin/shardtune" list --server 127.0.0.1:$tls_port --tls-ca tls.crt > /dev/null 2>&1
expect_eq "a TLS server answers a client that trusts its certificate" "$?" "0"
timeout 20 "$bin/shardtune" list --server 127.0.0.1:$tls_port > /dev/null 2>&1
[ "$?" -ne 0 ] && pass "a plaintext client gets nothing from a TLS server" || fail "plaintext reached a TLS server"
kill -9 "$tls_pid" 2>/dev/null

# Pages of a list, and a tenant's quota of running jobs.
page1=$("$bin/shardtune" list --page-size 1)
token=$(sed -n 's/^(more: --page-token \(.*\))$/\1/p' <<< "$page1")
[ -n "$token" ] && pass "list pages: a token for the next page" || fail "list pages: no token in: $page1"
newest=$(grep -o 'job-[0-9a-f]*' <<< "$page1" | head -n 1)
page2=$("$bin/shardtune" list --page-size 1 --page-token "$token")
[ -n "$(grep -o 'job-[0-9a-f]*' <<< "$page2")" ] && ! grep -q "$newest" <<< "$page2" &&
  pass "the next page lists the next job" || fail "page 2 after $newest: $page2"
out=$("$bin/shardtune" list --page-size 1 --page-token "$token" --status RUNNING 2>&1)
expect_contains "a token used with another filter is refused" "$out" "page_token is not one this server gave"
write_job quota1.yaml quota-one runs/quota1 100000 100000
write_job quota2.yaml quota-two runs/quota2 100000 100000
q1=$("$bin/shardtune" submit quota1.yaml --token key-b)
q2=$("$bin/shardtune" submit quota2.yaml --token key-b)
SHARDTUNE_TOKEN=key-b wait_status "$q1" JOB_STATUS_RUNNING 30
# Its data check done, the second job must wait in the queue (a RUNNING one would not match).
SHARDTUNE_TOKEN=key-b wait_status "$q2" JOB_STATUS_QUEUED 30
sleep 1
expect_eq "within its quota a tenant's first job runs" "$(SHARDTUNE_TOKEN=key-b field "$q1" status)" "JOB_STATUS_RUNNING"
expect_eq "beyond its quota the second waits" "$(SHARDTUNE_TOKEN=key-b field "$q2" status)" "JOB_STATUS_QUEUED"
# A resume is admission again: on more ranks than the tenant's max_ranks it is refused.
"$bin/shardtune" pause "$q2" --token key-b > /dev/null
out=$("$bin/shardtune" resume "$q2" --ranks 4 --token key-b 2>&1)
expect_eq "a resume past the tenant's max_ranks exits 2" "$?" "2"
expect_contains "it names the quota" "$out" "tenant 'team-b' may use at most 2"
expect_eq "the job stays paused" "$(SHARDTUNE_TOKEN=key-b field "$q2" status)" "JOB_STATUS_PAUSED"
"$bin/shardtune" cancel "$q1" --token key-b > /dev/null; "$bin/shardtune" cancel "$q2" --token key-b > /dev/null

# 7. Requests the server refuses, and hostile names and paths.
sed -e 's/ranks_per_node: 2/ranks_per_node: 8/' -e 's/global_batch_size: 8/global_batch_size: 16/' ok.yaml > huge.yaml
out=$("$bin/shardtune" submit huge.yaml 2>&1)
expect_eq "a job that can never fit exits 2" "$?" "2"
expect_contains "it says why" "$out" "could never start"
sed -e 's/micro_batch_size: 2, global_batch_size: 8/micro_batch_size: 64, global_batch_size: 128/' \
    -e 's/format: tokens}/format: tokens, max_seq_len: 65536}/' ok.yaml > big.yaml
out=$("$bin/shardtune" submit big.yaml 2>&1)
expect_eq "a job whose plan does not fit its slots' memory exits 2" "$?" "2"
expect_contains "the refusal carries the plan" "$out" "does not fit:"
out=$("$bin/shardtune" validate big.yaml 2>&1)
expect_contains "validate shows the plan" "$out" "per rank (host)"
printf 'name: x\nmodel: {path: base}\ndata: {train: train.jsonl, format: tokens}\noutput: {dir: o}\ntraining: {epoch: 1}\n' > bad.yaml
out=$("$bin/shardtune" submit bad.yaml 2>&1)
expect_contains "a bad spec is refused with its problems" "$out" "unknown key 'epoch'"
printf 'name: x\nmodel: {path: base}\ndata: {train: train.jsonl, format: tokens}\noutput: {dir: o}\nresources: {partition: gpu}\n' > bad.yaml
out=$("$bin/shardtune" submit bad.yaml 2>&1)
expect_contains "the local backend refuses a scheduler's resources" "$out" "resources: time_limit, partition, account and qos are for a batch scheduler"
cp train.jsonl baddata.jsonl; echo '{"input_ids": [1, "two"]}' >> baddata.jsonl
sed -e 's/train: train.jsonl/train: baddata.jsonl/' -e 's|runs/ok|runs/baddata|' ok.yaml > baddata.yaml
id=$("$bin/shardtune" submit baddata.yaml)
expect_eq "a job whose spec is good is accepted before its data is read" "$?" "0"
wait_status "$id" JOB_STATUS_FAILED 60 && pass "bad data: VALIDATING -> FAILED" || fail "bad data: $(field "$id" status)"
out=$("$bin/shardtune" get "$id")
expect_contains "the error names the data file's line" "$out" "baddata.jsonl:65"
expect_contains "the error is a data error" "$out" "error:     invalid_data: "
expect_eq "a job with bad data never ran" "$("$bin/shardtune" events "$id" | awk '$4 == "status" {print $5}' | tr '\n' ' ')" \
  "validating: failed: "
# A spec the server accepts but the worker refuses (more ranks x micro-batches than sequences).
sed -e 's/global_batch_size: 8/global_batch_size: 64/' -e 's|runs/ok|runs/toobig|' ok.yaml > toobig.yaml
id=$("$bin/shardtune" submit toobig.yaml)
wait_status "$id" JOB_STATUS_FAILED 120 && pass "a spec the worker refuses: FAILED" || fail "worker-refused spec: $(field "$id" status)"
out=$("$bin/shardtune" get "$id")
expect_contains "the worker's refusal is INVALID_SPEC, from rank 0" "$out" "error:     invalid_spec: rank 0: "
expect_contains "it says why" "$out" "fewer than one global batch of 64"
expect_eq "a refused spec is not retried" "$(field "$id" attempt)" "1"
hostile='runs/a b;$(touch pwned);`touch pwned2`'"'"'x'
write_job hostile.yaml hostile "$hostile" 4 0
id=$("$bin/shardtune" submit hostile.yaml)
wait_status "$id" JOB_STATUS_SUCCEEDED 120 && pass "a job with a hostile output path runs" || fail "hostile: $(field "$id" status)"
[ -d "$work/$hostile/final" ] && pass "its output is where the spec says" || fail "hostile output missing"
if [ -e pwned ] || [ -e pwned2 ] || [ -e "$work/runs/pwned" ]; then fail "a path was run as a command"; else pass "quotes, ; and \$() in paths are inert"; fi

# 8. A client in another language: Python (Debian's python3-grpcio) with stubs from the proto.
if /usr/bin/python3 -c "import grpc, google.protobuf" 2>/dev/null; then
  out=$(/usr/bin/python3 "$src/tests/e2e/python_client.py" "$src/proto" "127.0.0.1:$port" key-a "$work/base" \
        "$work/train.jsonl" "$work/runs/python" 2>&1)
  expect_eq "the Python client creates, watches and cancels a job" "$?" "0"
  echo "$out"
else
  skip "python3-grpcio is not installed (scripts/install-deps.sh installs it)"
fi

# 9. Failures where they happen, on a second server whose rank 1 stalls at step 3
#    (SHARDTUNE_TEST_STALL) and whose second host, nodeb, is this machine reached through a fake
#    ssh: Open MPI starts a daemon (orted) for it, whose death loses that host for real.
cat > fakessh <<'SH'
#!/bin/bash
# ssh [OPTIONS] HOST COMMAND...: runs COMMAND here.
while [[ "$1" == -* ]]; do shift; done
shift
exec /bin/bash -c "$*"
SH
chmod +x fakessh
cat > fault-server.yaml <<YAML
listen: 127.0.0.1:$fault_port
database: $work/fault-state/jobs.db
api_keys: [{key: key-a, tenant: team-a, role: user}]
local: {hosts: [{host: localhost, slots: 1}, {host: nodeb, slots: 1}],
        extra_args: [--oversubscribe, --mca, plm_rsh_agent, $work/fakessh]}
retry: {max_attempts: 1}
cancel_grace_s: 2
YAML
SHARDTUNE_TEST_STALL=1:3 "$bin/shardtune-server" --config fault-server.yaml > fault-server.log 2>&1 &
fault_pid=$!
export SHARDTUNE_SERVER=127.0.0.1:$fault_port
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
# A collective timeout: rank 0 waits for the stalled rank 1 for 5 s.
sed -e 's/sharding: {zero_stage: 3}/sharding: {zero_stage: 3, collective_timeout_s: 5}/' -e 's|runs/ok|runs/stalled|' \
  ok.yaml > stalled.yaml
id=$("$bin/shardtune" submit stalled.yaml)
wait_status "$id" JOB_STATUS_FAILED 120 && pass "a stalled rank fails the job" || fail "stalled: $(field "$id" status); $(tail -n 5 fault-server.log)"
out=$("$bin/shardtune" get "$id")
expect_contains "a collective timeout is TIMEOUT, from rank 0" "$out" "error:     timeout: rank 0: "
expect_contains "it names the collective and its step" "$out" "in shard group 0 at step 3"
expect_contains "and the limit" "$out" "did not complete within the collective timeout of 5 s"
# A lost host: rank 1 (on nodeb) stalls, with the default timeout nothing else ends the job, and
# its daemon is killed.
sed -e 's|runs/ok|runs/lost|' -e 's/max_steps: 20/max_steps: 100000/' ok.yaml > lost.yaml
id=$("$bin/shardtune" submit lost.yaml)
for _ in $(seq 1 600); do [ "$(field "$id" step)" -ge 2 ] 2>/dev/null && break; sleep 0.1; done
daemon=$(for p in $(job_processes "$id"); do [ "$(head -c 5 /proc/$p/cmdline 2>/dev/null | tr -d '\0')" == "orted" ] && echo "$p"; done | head -n 1)
if [ -n "$daemon" ]; then kill -9 "$daemon"; pass "killed nodeb's daemon (pid $daemon)"; else fail "found no orted of job $id"; fi
wait_status "$id" JOB_STATUS_FAILED 60 && pass "a lost host fails the job" || fail "lost host: $(field "$id" status)"
out=$("$bin/shardtune" get "$id")
expect_contains "a lost host is NODE_LOST, from mpirun" "$out" "error:     node_lost: mpirun lost a host"
expect_contains "it names the host" "$out" "on node nodeb"
sleep 0.5
expect_eq "no process of the job outlives it (not even the orphaned rank of the lost daemon)" \
  "$(job_processes "$id" | wc -l)" "0"
kill -9 "$fault_pid" 2>/dev/null; fault_pid=""
# A timeout seen only by a rank other than 0: rank 0 itself stalls, rank 1 times out and aborts the
# job (rank 0, the only reporter, dies unheard): the exit status carries TIMEOUT.
wait "$fault_pid" 2>/dev/null
SHARDTUNE_TEST_STALL=0:3 "$bin/shardtune-server" --config fault-server.yaml >> fault-server.log 2>&1 &
fault_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
sed -e 's|runs/stalled|runs/stalled0|' stalled.yaml > stalled0.yaml
id=$("$bin/shardtune" submit stalled0.yaml)
wait_status "$id" JOB_STATUS_FAILED 120 && pass "a stalled rank 0 fails the job" || fail "stalled rank 0: $(field "$id" status); $(tail -n 5 fault-server.log)"
expect_contains "a timeout on rank 1 alone is TIMEOUT" "$("$bin/shardtune" get "$id")" "error:     timeout: "
kill -9 "$fault_pid" 2>/dev/null; fault_pid=""

summary
