#!/usr/bin/env bash
# The server under a small load, killed with SIGKILL in the middle of it and restarted
# (bench/load/server_load.py, whose checks fail this test; its timings are not asserted): 150
# jobs from 10 clients, 20 WatchJob streams, ListJobs paged throughout. Every acknowledged job
# exists exactly once, retried keys return the same jobs, pages neither repeat nor skip a row,
# and the database passes PRAGMA integrity_check. The full-size run and its figures:
# docs/reliability.md.
# Usage: load_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
if ! /usr/bin/python3 -c 'import grpc' 2> /dev/null || ! command -v grpc_python_plugin > /dev/null; then
  echo "SKIPPED: the load test needs python3-grpcio and protobuf-compiler-grpc (grpc_python_plugin)"
  exit 77
fi
exec /usr/bin/python3 "$2/bench/load/server_load.py" --bin "$1" --src "$2" --jobs 150 --clients 10 --watchers 20 \
  --processes 2 --kill-at 0.5 --time-limit 75
