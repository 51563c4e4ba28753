#!/usr/bin/env bash
# The OpenAI-compatible API end to end (docs/openai-api.md): shardtune-server's `http:` listener
# driven by the official `openai` Node SDK, unchanged (tests/e2e/openai_client.mjs), with a tiny
# chat model from the `models:` catalog: files, a job that trains to success with its events and
# checkpoints, listing with the SDK's auto-paging, cancel, continued fine-tuning, and the error
# paths (401, another tenant's 404, a bad training file's 400 with its problems and codes).
# The SDK comes from the npm registry into BUILD_DIR/openai-sdk (kept for the next run); without
# Node or the registry the test is skipped, visibly.
# Usage: openai_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
source "$(dirname "$0")/checks.sh"
with_scratch_server
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tokenizer="$src/../shared/fixtures/tokenizers/tiktoken-small-tokenizer.json"
sdk="$bin/../openai-sdk"
if ! command -v node > /dev/null || [ "$(node -e 'console.log(process.versions.node.split(".")[0] >= 18)')" != "true" ]; then
  skip "Node 18 or newer is not installed"; summary
fi
if [ ! -f "$tokenizer" ]; then skip "fixture not found: $tokenizer"; summary; fi
if [ ! -f "$sdk/node_modules/openai/package.json" ]; then
  mkdir -p "$sdk"
  if ! timeout 180 npm install --prefix "$sdk" --no-audit --no-fund openai > "$work/npm.log" 2>&1; then
    cat "$work/npm.log"; skip "npm install openai failed (no registry?)"; summary
  fi
fi
echo "openai SDK $(node -p "require('$sdk/node_modules/openai/package.json').version")"

cd "$work"
http_port=$((port + 1))
sed 's/"vocab_size": 64/"vocab_size": 2000/' "$src/examples/tiny-llama/config.json" > chat-config.json
"$bin/shardtune" init-model --config chat-config.json --out "$work/models/tiny-chat" --seed 3 --log-level warn
cp "$tokenizer" "$work/models/tiny-chat/tokenizer.json"
for i in $(seq 1 16); do
  echo '{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}]}'
done > chat.jsonl
{ head -n 1 chat.jsonl; echo '{"messages": [{"role": "bot", "content": "Hi"}]}'; } > bad.jsonl
cat > server.yaml <<YAML
listen: 127.0.0.1:$port
http: {listen: 127.0.0.1:$http_port}
database: $work/state/jobs.db
api_keys:
  - {key: key-a, tenant: team-a, role: user}
  - {key: key-b, tenant: team-b, role: user}
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
# The sandbox as in production: the catalog model in a shared read-only root, outputs (and the
# ft: model a later job starts from) under the tenant's root.
storage:
  tenants: {team-a: {root: tenants/team-a}, team-b: {root: tenants/team-b}}
  read_only: [models]
models: {tiny-chat: models/tiny-chat}
YAML
"$bin/shardtune-server" --config server.yaml > server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$http_port/v1/files" && break; sleep 0.1; done

# 1. Plain HTTP: the shapes the SDK does not show (an error body in full, an unknown route).
body=$(curl -s "http://127.0.0.1:$http_port/v1/fine_tuning/jobs" -H 'Authorization: Bearer wrong')
expect_eq "401 body in OpenAI's shape" "$body" \
  '{"error":{"message":"unknown API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$http_port/v1/fine_tuning/jobs" \
  -H 'Authorization: Bearer key-a' -d 'not json')
expect_eq "a body that is not JSON -> 400" "$code" "400"
# A large body is refused before it is read unless its key is known (cpp-httplib would read it whole first).
got=$(python3 - "$http_port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
          b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 400000000\r\n\r\n")
s.settimeout(5)
print(s.recv(4096).decode(errors="replace").split("\r\n")[0])
PY
)
expect_eq "a 400 MB upload with a bad key: 401 before its body" "$got" "HTTP/1.1 401 Unauthorized"

out=$("$bin/shardtune-server" --config server.yaml --check 2>&1)
expect_contains "--check counts the catalog" "$out" "models: 1 in the catalog"

# 2. The SDK, unchanged.
out=$(timeout 150 node "$src/tests/e2e/openai_client.mjs" "$sdk" "http://127.0.0.1:$http_port/v1" "$work" 2>&1)
status=$?
while IFS= read -r line; do
  case "$line" in
    ok:*) pass "${line#ok: }" ;;
    FAILED:*) fail "${line#FAILED: }" ;;
    *) echo "$line" ;;
  esac
done <<<"$out"
expect_eq "the SDK's script exits 0" "$status" "0"
job=$(sed -n 's/^job //p' <<<"$out")
expect_eq "the job wrote under its tenant's root" "$(ls -d "$work"/tenants/team-a/fine_tuning/ft-e2e-*/final 2>/dev/null | wc -l)" "1"

# 3. A restart loses nothing: the OpenAI fields come back from the store.
kill "$server_pid"; wait "$server_pid" 2>/dev/null
"$bin/shardtune-server" --config server.yaml >> server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$http_port/v1/files" && break; sleep 0.1; done
got=$(curl -s "http://127.0.0.1:$http_port/v1/fine_tuning/jobs/$job" -H 'Authorization: Bearer key-a' |
  python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["fine_tuned_model"], j["seed"], j["metadata"], j["hyperparameters"]["n_epochs"])')
expect_eq "after a restart: fine_tuned_model, seed, metadata, hyperparameters" "$got" \
  "ft:tiny-chat:e2e:$job 7 {'run': 'e2e'} 3"
[ "$failures" -eq 0 ] || tail -n 40 server.log
summary
