#!/usr/bin/env bash
# The storage sandbox end to end (docs/server.md, "Storage and tenants"): a real shardtune-server
# with `storage:` on loopback, the shardtune CLI, real jobs. Each refusal over gRPC
# (PERMISSION_DENIED naming the key and the path): another tenant's output dir, /etc/passwd as
# data, a symlink in the root pointing out, `..`, a hard link, a tenant without storage. A data
# file swapped for a symlink after admission (the job queued behind another) fails in the worker,
# which never opens the target (a FIFO: opening it would hang the job). A server without storage
# refuses a non-loopback listen. As root: jobs run as `run_as: nobody` with `job_umask: 027`,
# their outputs owned by nobody with the umask's modes, and the job trains to completion.
# Usage: sandbox_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
source "$(dirname "$0")/checks.sh"
with_scratch_server
chmod 755 "$work"  # the job's user (run_as) reads the shared model and its tenant's root under it
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=key-a
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$work"
mkdir -p roots/team-a roots/team-b shared outside
"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/shared/base" --seed 1 \
  --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > roots/team-a/train.jsonl
cp roots/team-a/train.jsonl roots/team-b/train.jsonl
cp roots/team-a/train.jsonl outside/secret.jsonl
as_root=0
[ "$(id -u)" == "0" ] && getent passwd nobody > /dev/null && as_root=1
cat > server.yaml <<YAML
listen: 127.0.0.1:$port
database: $work/state/jobs.db
api_keys:
  - {key: key-a, tenant: team-a, role: user}
  - {key: key-b, tenant: team-b, role: user}
  - {key: key-c, tenant: team-c, role: user}
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
storage:
  tenants:
    team-a: {root: $work/roots/team-a}
    team-b: {root: $work/roots/team-b}
  read_only: [$work/shared]
job_umask: 027
YAML
[ "$as_root" == 1 ] && echo "run_as: nobody" >> server.yaml
"$bin/shardtune-server" --config server.yaml >> server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done

write_job() {  # write_job FILE NAME DATA OUTPUT_DIR STEPS RANKS
  cat > "$1" <<YAML
name: $2
model: {path: $work/shared/base}
data: {train: "$3", format: tokens}
training: {max_steps: $5, micro_batch_size: 2, optimizer: {lr: 1.0e-3}}
output: {dir: "$4"}
resources: {ranks_per_node: $6}
YAML
}
# expect_denied WHAT KEY PATH [CLI ARGS]: the last job file written is refused with PERMISSION_DENIED naming KEY: PATH.
expect_denied() {
  local out
  out=$("$bin/shardtune" submit job.yaml "${@:4}" 2>&1)
  expect_eq "$1: refused, exit 2" "$?" "2"
  expect_contains "$1: PERMISSION_DENIED" "$out" "refused PERMISSION_DENIED"
  expect_contains "$1: names the key and the path" "$out" "$2: $3"
}
a=$work/roots/team-a
write_job job.yaml theft "$a/train.jsonl" "$work/roots/team-b/runs/theft" 4 1
expect_denied "another tenant's output.dir" output.dir "$work/roots/team-b/runs/theft"
write_job job.yaml passwd /etc/passwd "$a/runs/passwd" 4 1
expect_denied "/etc/passwd as data" data.train /etc/passwd
ln -s "$work/outside/secret.jsonl" "$a/innocent.jsonl"
write_job job.yaml symlink "$a/innocent.jsonl" "$a/runs/symlink" 4 1
expect_denied "a symlink in the root pointing out" data.train "$a/innocent.jsonl"
write_job job.yaml dotdot "$a/../team-b/train.jsonl" "$a/runs/dotdot" 4 1
expect_denied "'..' in a path" data.train "$a/../team-b/train.jsonl"
ln "$work/outside/secret.jsonl" "$a/hard.jsonl"
write_job job.yaml hardlink "$a/hard.jsonl" "$a/runs/hardlink" 4 1
expect_denied "a hard link in the root" data.train "$a/hard.jsonl"
out=$("$bin/shardtune" validate job.yaml 2>&1)
expect_contains "ValidateJob refuses it too" "$out" "refused PERMISSION_DENIED"
write_job job.yaml nostorage "$a/train.jsonl" "$a/runs/nostorage" 4 1
out=$("$bin/shardtune" submit job.yaml --token key-c 2>&1)
expect_contains "a tenant without storage is refused" "$out" "tenant 'team-c' has no storage"

# A job run as the tenant: it trains to completion (as nobody, when root, with the umask's modes).
write_job ok.yaml ok "$a/train.jsonl" "$a/runs/ok" 6 2
ok=$("$bin/shardtune" submit ok.yaml)
wait_status "$ok" JOB_STATUS_SUCCEEDED 90 && pass "a job inside its roots succeeds" || fail "ok: $(field "$ok" status) $(field "$ok" error)"
if [ "$as_root" == 1 ]; then
  expect_eq "run_as: its output dir is nobody's" "$(stat -c %U "$a/runs/ok")" "nobody"
  expect_eq "run_as: metrics.jsonl is nobody's" "$(stat -c %U "$a/runs/ok/metrics.jsonl")" "nobody"
  expect_eq "job_umask 027: a file it writes is 640" "$(stat -c %a "$a/runs/ok/metrics.jsonl")" "640"
  expect_eq "job_umask 027: a directory it makes is 750" "$(stat -c %a "$a/runs/ok/final")" "750"
  expect_eq "no file of the job is root's" "$(find "$a/runs/ok" -user root | wc -l)" "0"
else
  skip "run_as: not root here"
fi

# Swapped after admission: a job queued behind another (both slots taken) has its data file
# replaced by a symlink to a FIFO outside; when it starts, the worker refuses it by its key and
# path, and never opens the FIFO (that would block the job).
write_job blocker.yaml blocker "$a/train.jsonl" "$a/runs/blocker" 100000 2
blocker=$("$bin/shardtune" submit blocker.yaml)
wait_status "$blocker" JOB_STATUS_RUNNING 30 || fail "blocker: $(field "$blocker" status)"
cp "$a/train.jsonl" "$a/swap.jsonl"
write_job swap.yaml swap "$a/swap.jsonl" "$a/runs/swap" 4 1
swap=$("$bin/shardtune" submit swap.yaml)
wait_status "$swap" JOB_STATUS_QUEUED 30 && pass "the job is admitted and queued" || fail "swap: $(field "$swap" status)"
mkfifo "$work/outside/fifo"
rm "$a/swap.jsonl" && ln -s "$work/outside/fifo" "$a/swap.jsonl"
"$bin/shardtune" cancel "$blocker" > /dev/null
wait_status "$swap" JOB_STATUS_FAILED 60 && pass "the swapped job fails" || fail "swapped: $(field "$swap" status)"
expect_eq "as a user error (INVALID_INPUT)" "$(field "$swap" error | python3 -c 'import ast,sys; print(ast.literal_eval(sys.stdin.read()).get("code"))')" "JOB_ERROR_CODE_INVALID_INPUT"
expect_contains "the worker's error names the key and the path" "$(field "$swap" error)" "data.train: $a/swap.jsonl"
expect_contains "and where it leads" "$(field "$swap" error)" "$work/outside/fifo"
expect_eq "the job ran one attempt (not retried)" "$(field "$swap" attempt)" "1"

# Without storage: loopback only, with a warning; any other address refuses to start.
kill "$server_pid"; wait "$server_pid" 2>/dev/null; server_pid=""
printf 'listen: 0.0.0.0:%s\ndatabase: %s/open/jobs.db\napi_keys: [{key: key-a, tenant: team-a}]\n' $((port + 1)) "$work" \
  > open.yaml
out=$(timeout 20 "$bin/shardtune-server" --config open.yaml 2>&1)
code=$?
expect_eq "without storage, a non-loopback listen refuses to start (exit 2)" "$code" "2"
expect_contains "it says why" "$out" "no \`storage:\` in the configuration"
sed -i "s|^listen: .*|listen: 127.0.0.1:$((port + 1))|" open.yaml
[ "$as_root" == 1 ] && echo "run_as: nobody" >> open.yaml
timeout 3 "$bin/shardtune-server" --config open.yaml > open.log 2>&1
expect_eq "on loopback it serves (until stopped)" "$?" "124"
expect_contains "with a warning" "$(cat open.log)" "serving on loopback (127.0.0.1:$((port + 1))) only"
summary
