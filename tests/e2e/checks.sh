# Sourced by the end-to-end scripts: counted checks, and (for the server tests) a job's fields.
# `summary` prints the counts and fails when any check failed; otherwise, when a part was
# skipped (`skip`: a fixture or a package this machine lacks), it exits 77, which the test's
# SKIP_RETURN_CODE makes ctest count as skipped rather than passed.
failures=0
checks=0
skipped=0
pass() { checks=$((checks + 1)); echo "ok: $1"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAILED: $1"; }
skip() { skipped=$((skipped + 1)); echo "SKIPPED: $1"; }
expect_eq() { if [ "$2" == "$3" ]; then pass "$1"; else fail "$1: expected '$3', got '$2'"; fi; }
expect_contains() { if grep -qF -- "$3" <<<"$2"; then pass "$1"; else fail "$1: '$3' not in: $2"; fi; }
summary() {
  echo "$((checks - failures)) passed, $failures failed, $skipped part(s) skipped"
  [ "$failures" -eq 0 ] || exit 1
  [ "$skipped" -eq 0 ] || exit 77
}

# kill_server_processes PORT: SIGKILL to every process started for the server on 127.0.0.1:PORT
# (its jobs' supervisors, mpirun and ranks carry it in SHARDTUNE_SERVER), for a test's cleanup.
kill_server_processes() {
  for p in /proc/[0-9]*; do
    grep -qz "^SHARDTUNE_SERVER=127.0.0.1:$1$" "$p/environ" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null
  done
}

# free_port: a port P whose next two ports are free too, below the ephemeral range, for a test's
# servers (scripts/free_port.py says why). Where the script is not at hand (deb_checks.sh runs in
# a chroot with only this file beside it), a random port below the ephemeral range.
free_port() {
  local script
  script="$(dirname "${BASH_SOURCE[0]}")/../../scripts/free_port.py"
  if [ -f "$script" ] && command -v python3 > /dev/null; then
    python3 "$script" 3 && return 0
  fi
  echo $((20000 + RANDOM % 12000))
}

# with_scratch_server: the set-up of a test that starts its own server: a scratch directory
# $work, a port $port, and an EXIT trap that kills the server ($server_pid, once set) and every
# process its jobs left, then removes $work.
with_scratch_server() {
  work=$(mktemp -d)
  server_pid=""
  port=$(free_port)
  trap 'if [ -n "$server_pid" ]; then kill -9 "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; fi
        kill_server_processes "$port"; rm -rf "$work"' EXIT
}

# start_server: shardtune-server on ./server.yaml in the background ($server_pid), its output
# appended to ./server.log; returns once `shardtune list` gets an answer (as $SHARDTUNE_SERVER and
# $SHARDTUNE_TOKEN say), or prints the log and exits after 10 s.
start_server() {
  "$bin/shardtune-server" --config server.yaml >> server.log 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do "$bin/shardtune" list > /dev/null 2>&1 && return 0; sleep 0.1; done
  echo "the server did not start:"; cat server.log; exit 1
}

# field JOB_ID NAME: one field of `shardtune get --output json` ($bin: the build's bin directory).
field() {
  "$bin/shardtune" get "$1" --output json 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin).get('$2', ''))" 2>/dev/null
}
# wait_status JOB_ID STATUS SECONDS
wait_status() {
  # Under the sanitizers (make test-asan) everything is several times slower: the wait scales.
  for _ in $(seq 1 $(($3 * 10 * ${SHARDTUNE_TEST_TIMEOUT_SCALE:-1}))); do [ "$(field "$1" status)" == "$2" ] && return 0; sleep 0.1; done
  return 1
}
