#!/usr/bin/env bash
# Operability end to end on loopback (docs/server.md, "HTTP listener", "Metrics", "Logs"):
# shardtune-server with an HTTP listener over TLS and a metrics_listen, started with
# --log-format json. Runs a job that succeeds, one whose data fails its check (INVALID_DATA), and
# one whose rank is killed (retried) then cancelled; scrapes GET /metrics before, during and after,
# checks every scrape with `promtool check metrics` (Debian's prometheus package; that part is
# skipped visibly without it) and asserts on the values: jobs by status, attempts, retries and
# failures by code, per-job step/loss/throughput/ETA while running, slots, gRPC and HTTP request
# counts. Then parses every line of the server's log and of a worker's log as JSON.
# Usage: metrics_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
source "$(dirname "$0")/checks.sh"
with_scratch_server
http_port=$((port + 1))
metrics_port=$((port + 2))
export SHARDTUNE_SERVER=127.0.0.1:$port SHARDTUNE_TOKEN=key-a
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
  -keyout tls.key -out tls.crt > /dev/null 2>&1
cat > server.yaml <<YAML
listen: 127.0.0.1:$port
http: {listen: 127.0.0.1:$http_port, tls: {cert: tls.crt, key: tls.key}}
metrics_listen: 127.0.0.1:$metrics_port
database: $work/state/jobs.db
api_keys:
  - {key: key-a, tenant: team-a, role: user}
  - {key: key-admin, tenant: ops, role: admin}
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
retry: {max_attempts: 3}
cancel_grace_s: 2
YAML
"$bin/shardtune-server" --config server.yaml --log-format json > server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && break; sleep 0.1; done
"$bin/shardtune" list > /dev/null 2>&1 || { echo "the server did not start:"; cat server.log; exit 1; }

# scrape FILE: GET /metrics from metrics_listen (no key) into FILE, and its samples into FILE.flat,
# one a line: NAME, each LABEL=VALUE (unescaped), the value, tab-separated.
scrape() {
  curl -sS --max-time 10 "http://127.0.0.1:$metrics_port/metrics" -o "$1" || return 1
  python3 - "$1" > "$1.flat" <<'PY'
import re, sys
for line in open(sys.argv[1]):
    m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line.strip())
    if m:
        labels = re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")
        unescaped = [k + "=" + re.sub(r'\\(.)', lambda e: "\n" if e.group(1) == "n" else e.group(1), v) for k, v in labels]
        print("\t".join([m.group(1)] + unescaped + [m.group(3)]))
PY
}
# value FILE NAME [LABEL=VALUE ...]: the sum of NAME's samples (in FILE.flat) whose labels include those given.
value() {
  local file=$1 name=$2
  shift 2
  awk -F'\t' -v name="$name" -v wanted="$*" '
    BEGIN { n = split(wanted, want, " ") }
    $1 == name {
      for (i = 1; i <= n; i++) { found = 0; for (f = 2; f < NF; f++) if ($f == want[i]) found = 1; if (!found) next }
      total += $NF
    }
    END { printf "%g\n", total }' "$file.flat"
}
# positive VALUE: whether VALUE > 0.
positive() { awk -v v="$1" 'BEGIN { exit !(v > 0) }'; }
# promtool_check FILE WHEN: `promtool check metrics` (its lint too) accepts the scrape.
promtool_check() {
  if ! command -v promtool > /dev/null; then
    skip "promtool check metrics ($2): promtool is not installed (Debian package prometheus)"
    return
  fi
  out=$(promtool check metrics < "$1" 2>&1)
  if [ "$?" -eq 0 ]; then pass "promtool check metrics accepts the scrape $2"; else fail "promtool ($2): $out"; fi
}
job_processes() {  # pids whose environment names the job
  for p in /proc/[0-9]*; do grep -qz "^SHARDTUNE_JOB_ID=$1\$" "$p/environ" 2>/dev/null && echo "${p#/proc/}"; done
}

# 1. The listeners: metrics_listen needs no key; on the HTTP listener (TLS) /metrics is an admin's.
scrape before.txt
expect_eq "metrics_listen serves /metrics without a key" "$?" "0"
promtool_check before.txt "of an idle server"
expect_eq "no job yet" "$(value before.txt shardtune_jobs)" "0"
expect_eq "an idle pool: 2 slots free" "$(value before.txt shardtune_slots_free)" "2"
https() { curl -sS --max-time 10 --cacert tls.crt -o body.json -w '%{http_code}' "$@"; }
expect_eq "HTTP listener, no key: 401" "$(https "https://127.0.0.1:$http_port/metrics")" "401"
expect_eq "the 401's body is an OpenAI-shaped error" \
  "$(python3 -c "import json; e = json.load(open('body.json'))['error']; print(e['code'], e['type'], e['param'])")" \
  "invalid_api_key invalid_request_error None"
expect_eq "a user's key: 403" "$(https -H 'Authorization: Bearer key-a' "https://127.0.0.1:$http_port/metrics")" "403"
expect_eq "an admin's key: 200" \
  "$(https -H 'Authorization: Bearer key-admin' "https://127.0.0.1:$http_port/metrics")" "200"
expect_contains "it is the Prometheus text" "$(cat body.json)" "# TYPE shardtune_jobs gauge"
expect_eq "an unknown path: 404" "$(https "https://127.0.0.1:$http_port/v1/nothing")" "404"
expect_eq "with a JSON error naming it" "$(python3 -c "import json; print(json.load(open('body.json'))['error']['message'])")" \
  "Invalid URL (GET /v1/nothing)"
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/metrics" 2>/dev/null)
[ "$code" != "200" ] && pass "plain HTTP gets nothing from the TLS listener" || fail "plain HTTP reached the TLS listener"

# 2. Jobs: one succeeds, one fails its data check, one is killed (retried) and cancelled.
"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out base --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 32; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > train.jsonl
cp train.jsonl bad.jsonl && echo '{"input_ids": [1, "two"]}' >> bad.jsonl
write_job() {  # write_job FILE NAME DATA STEPS
  cat > "$1" <<YAML
name: $2
model: {path: base}
data: {train: $3, format: tokens}
training: {max_steps: $4, micro_batch_size: 2, global_batch_size: 4, optimizer: {lr: 1.0e-3}}
output: {dir: runs/$2, checkpoint_every: 5}
resources: {ranks_per_node: 1}
YAML
}
write_job ok.yaml ok train.jsonl 8
write_job bad.yaml bad bad.jsonl 8
write_job long.yaml long train.jsonl 100000
ok=$("$bin/shardtune" submit ok.yaml)
timeout 120 "$bin/shardtune" watch "$ok" > /dev/null
expect_eq "the job succeeds" "$(field "$ok" status)" "JOB_STATUS_SUCCEEDED"
bad=$("$bin/shardtune" submit bad.yaml)
wait_status "$bad" JOB_STATUS_FAILED 60 && pass "bad data: FAILED" || fail "bad data: $(field "$bad" status)"
long=$("$bin/shardtune" submit long.yaml)
for _ in $(seq 1 600); do [ "$(field "$long" step)" -gt 2 ] 2>/dev/null && break; sleep 0.1; done
scrape running.txt
promtool_check running.txt "while a job runs"
for series in shardtune_job_step shardtune_job_loss shardtune_job_tokens_per_second shardtune_job_eta_seconds; do
  v=$(value running.txt "$series" job="$long" tenant=team-a name=long)
  positive "$v" && pass "$series of the running job: $v" ||
    fail "$series of the running job is $v"
done
expect_eq "its total steps" "$(value running.txt shardtune_job_total_steps job="$long")" "100000"
expect_eq "no per-job series of an ended job" "$(value running.txt shardtune_job_step job="$ok")" "0"
expect_eq "1 slot in use" "$(value running.txt shardtune_slots_in_use)" "1"
expect_eq "1 slot free" "$(value running.txt shardtune_slots_free)" "1"
expect_eq "jobs{status=running}" "$(value running.txt shardtune_jobs status=running tenant=team-a)" "1"
victim=$(for p in $(job_processes "$long"); do grep -qz '^OMPI_COMM_WORLD_RANK=0$' /proc/$p/environ 2>/dev/null && echo $p; done | head -n 1)
if [ -n "$victim" ]; then kill -9 "$victim"; pass "killed the rank (pid $victim)"; else fail "found no rank to kill"; fi
for _ in $(seq 1 300); do [ "$(field "$long" attempt)" == "2" ] && [ "$(field "$long" status)" == "JOB_STATUS_RUNNING" ] && break; sleep 0.1; done
expect_eq "the killed job runs a second attempt" "$(field "$long" attempt)" "2"
"$bin/shardtune" cancel "$long" > /dev/null
wait_status "$long" JOB_STATUS_CANCELLED 30 && pass "cancel -> CANCELLED" || fail "cancel -> $(field "$long" status)"
"$bin/shardtune" get job-0000000000000000 > /dev/null 2>&1
"$bin/shardtune" list --token wrong-key > /dev/null 2>&1

# 3. After: what happened, counted.
scrape after.txt
promtool_check after.txt "after the jobs"
expect_eq "jobs{status=succeeded} == 1" "$(value after.txt shardtune_jobs status=succeeded tenant=team-a)" "1"
expect_eq "jobs{status=failed} == 1" "$(value after.txt shardtune_jobs status=failed)" "1"
expect_eq "jobs{status=cancelled} == 1" "$(value after.txt shardtune_jobs status=cancelled)" "1"
expect_eq "queue depth 0" "$(value after.txt shardtune_queue_depth)" "0"
expect_eq "all slots free again" "$(value after.txt shardtune_slots_free)" "2"
expect_eq "attempts: ok 1 + long 2" "$(value after.txt shardtune_job_attempts_total tenant=team-a)" "3"
expect_eq "one retry" "$(value after.txt shardtune_job_retries_total tenant=team-a)" "1"
expect_eq "one failed attempt" "$(value after.txt shardtune_job_attempt_failures_total)" "1"
echo "the killed attempt's code: $(grep '^shardtune_job_retries_total' after.txt)"
expect_eq "the bad job's failure, by its code" "$(value after.txt shardtune_job_failures_total code=INVALID_DATA)" "1"
expect_eq "failures in all" "$(value after.txt shardtune_job_failures_total)" "1"
expect_eq "ended: succeeded" "$(value after.txt shardtune_jobs_ended_total status=succeeded)" "1"
expect_eq "ended: cancelled" "$(value after.txt shardtune_jobs_ended_total status=cancelled)" "1"
create=shardtune.v1.JobService/CreateJob
expect_eq "3 CreateJob calls, OK" "$(value after.txt shardtune_grpc_requests_total method=$create code=OK)" "3"
expect_eq "their latency observed 3 times" \
  "$(value after.txt shardtune_grpc_request_duration_seconds_count method=$create)" "3"
expect_eq "every CreateJob within +Inf" \
  "$(value after.txt shardtune_grpc_request_duration_seconds_bucket method=$create le=+Inf)" "3"
expect_eq "the unknown job's GetJob: NOT_FOUND" \
  "$(value after.txt shardtune_grpc_requests_total method=shardtune.v1.JobService/GetJob code=NOT_FOUND)" "1"
expect_eq "the wrong key's ListJobs: UNAUTHENTICATED" \
  "$(value after.txt shardtune_grpc_requests_total method=shardtune.v1.JobService/ListJobs code=UNAUTHENTICATED)" "1"
v=$(value after.txt shardtune_grpc_requests_total method=shardtune.v1.WorkerService/ReportProgress code=OK)
positive "$((${v%.*} - 2))" && pass "the workers' progress reports counted ($v)" ||
  fail "progress reports counted: $v"
expect_eq "HTTP 401 on /metrics" "$(value after.txt shardtune_http_requests_total route=/metrics code=401)" "1"
expect_eq "HTTP 403 on /metrics" "$(value after.txt shardtune_http_requests_total route=/metrics code=403)" "1"
expect_eq "HTTP 404, unmatched" "$(value after.txt shardtune_http_requests_total route=unmatched code=404)" "1"
expect_eq "scrapes so far: before, running (and the admin's)" \
  "$(value after.txt shardtune_http_requests_total route=/metrics method=GET code=200)" "3"

# 4. --log-format json: every line of the server's log and of the worker's log is a JSON object.
check_json_log() {  # FILE WHAT JOB_ID RANK(or -)
  python3 - "$@" <<'PY'
import json, re, sys
path, what, job, rank = sys.argv[1:]
lines = open(path, encoding="utf-8").read().splitlines()
assert lines, f"{path} is empty"
with_job = 0
for n, text in enumerate(lines, 1):
    try:
        line = json.loads(text)
    except ValueError as e:
        sys.exit(f"{what} line {n} is not JSON ({e}): {text}")
    for key in ("time", "level", "message"):
        assert key in line, f"{what} line {n} has no {key}: {text}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), f"{what} line {n}: time {line['time']}"
    assert line["level"] in ("trace", "debug", "info", "warning", "error", "critical"), f"{what} line {n}: {text}"
    if rank == "-":
        assert "rank" not in line, f"{what} line {n} has a rank: {text}"
    else:
        assert line.get("rank") == int(rank), f"{what} line {n}: rank {line.get('rank')}"
    with_job += line.get("job") == job
assert with_job > 0, f"no line of {what} names job {job}"
print(f"{len(lines)} lines, {with_job} naming {job}")
PY
}
out=$(check_json_log server.log "the server's log" "$ok" -)
expect_eq "every line of the server's log is JSON with time, level, message, and job where known ($out)" "$?" "0"
out=$(check_json_log runs/ok/logs/rank-00000.log "the worker's log" "$ok" 0)
expect_eq "every line of the worker's log is JSON with time, level, rank, job, message ($out)" "$?" "0"
summary
