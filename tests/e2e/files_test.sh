#!/usr/bin/env bash
# The Files API end to end on loopback (docs/server.md, "Files"): shardtune-server, the CLI's
# `shardtune files` and Python's grpcio. Uploads (checked as training data, with file:line
# problems), listing, a job whose data.train is file:ID, delete refused while the job runs,
# downloads of final/ (a tar stream) and metrics.jsonl, refusals that leave nothing (digest
# mismatch, over quota, an upload killed mid-stream), a restart that keeps every file, and
# tenants that cannot see each other's files.
# Usage: files_test.sh BUILD_BIN_DIR SOURCE_DIR
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
  - {key: key-b, tenant: team-b, role: user}
  - {key: key-viewer, tenant: team-a, role: viewer}
  - {key: key-admin, tenant: ops, role: admin}
local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}
quotas: {team-a: {max_file_bytes: 200000, max_files: 6}}
YAML
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', ''))" 2>/dev/null; }
# Names under the tenants' files/ directories: what uploads left visible.
stored() { find "$work/state" -path '*/files/*' -type f -printf '%f\n' 2>/dev/null | sort | tr '\n' ' '; }

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 32; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > train.jsonl
start_server

# 1. Upload from the CLI: checked as training data, listed, shown.
out=$("$bin/shardtune" files upload train.jsonl --output json)
expect_eq "upload exits 0" "$?" "0"
file_id=$(json_field id <<<"$out")
expect_contains "the file has an id file-..." "$file_id" "file-"
expect_eq "its status is processed" "$(json_field status <<<"$out")" "processed"
expect_contains "its details summarize the data" "$(json_field status_details <<<"$out")" "tokens: 32 examples"
expect_eq "its size is the file's" "$(json_field bytes <<<"$out")" "$(stat -c %s train.jsonl)"
expect_eq "its sha256 is the file's" "$(json_field sha256 <<<"$out")" "$(sha256sum train.jsonl | cut -d' ' -f1)"
expect_contains "list shows it" "$("$bin/shardtune" files list)" "$file_id"
expect_contains "get shows it" "$("$bin/shardtune" files get "$file_id")" "filename: train.jsonl"
expect_eq "the bytes are stored under the id" "$(stored)" "$file_id "
"$bin/shardtune" files download "$file_id" -o copy.jsonl > /dev/null
expect_eq "download returns the same bytes" "$(sha256sum < copy.jsonl)" "$(sha256sum < train.jsonl)"

# 2. A job whose data.train is file:ID trains; delete is refused while it is unfinished.
cat > job.yaml <<YAML
name: uploaded
model: {path: base}
data: {train: "file:$file_id", format: tokens}
training: {max_steps: 6, micro_batch_size: 2, global_batch_size: 4, optimizer: {lr: 1.0e-3}}
output: {dir: runs/uploaded, checkpoint_every: 3}
resources: {ranks_per_node: 1}
YAML
job=$("$bin/shardtune" submit job.yaml)
expect_eq "a job naming file:ID is accepted" "$?" "0"
out=$("$bin/shardtune" files delete "$file_id" 2>&1)
expect_eq "delete while the job is unfinished: exit 2" "$?" "2"
expect_contains "it names the job" "$out" "$job"
timeout 120 "$bin/shardtune" watch "$job" > watch.log
expect_eq "the job succeeds" "$(field "$job" status)" "JOB_STATUS_SUCCEEDED"
"$bin/shardtune" files download --job "$job" --artifact final -o final.tar > /dev/null
expect_eq "final/ downloads as a tar stream holding config.json" \
  "$(python3 -c "import tarfile; print('final/config.json' in tarfile.open('final.tar').getnames())")" "True"
"$bin/shardtune" files download --job "$job" --artifact metrics -o metrics.jsonl > /dev/null
expect_eq "metrics.jsonl downloads as the run wrote it" "$(sha256sum < metrics.jsonl)" \
  "$(sha256sum < runs/uploaded/metrics.jsonl)"
"$bin/shardtune" files download --job "$job" --artifact checkpoint:3 -o ckpt.tar > /dev/null
expect_contains "a checkpoint downloads as a tar stream" \
  "$(python3 -c "import tarfile; print(tarfile.open('ckpt.tar').getnames())")" "step-3/index.json"
"$bin/shardtune" files delete "$file_id" > /dev/null
expect_eq "delete once the job has ended: exit 0" "$?" "0"
expect_eq "nothing is stored after the delete" "$(stored)" ""

# 3. Bad lines: stored with status error and each problem at file:line.
printf '{"input_ids": [1, 2, 3]}\nnot json\n{"input_ids": "x"}\n' > bad.jsonl
out=$("$bin/shardtune" files upload bad.jsonl --output json)
expect_eq "status error" "$(json_field status <<<"$out")" "error"
details=$(json_field status_details <<<"$out")
expect_contains "line 2 named" "$details" "bad.jsonl:2:"
expect_contains "line 3 named" "$details" "bad.jsonl:3:"
bad_id=$(json_field id <<<"$out")

# 4. Refusals leave nothing: over quota, a viewer, and (Python) a digest mismatch and a kill mid-stream.
before=$(stored)
head -c 250000 /dev/urandom > big.bin
out=$("$bin/shardtune" files upload big.bin --purpose data 2>&1)
expect_eq "an upload over the quota: exit 2" "$?" "2"
expect_contains "RESOURCE_EXHAUSTED says the quota" "$out" "at most 200000 bytes"
out=$(SHARDTUNE_TOKEN=key-viewer "$bin/shardtune" files upload train.jsonl 2>&1)
expect_contains "a viewer may not upload" "$out" "viewer"
expect_contains "a viewer may list" "$(SHARDTUNE_TOKEN=key-viewer "$bin/shardtune" files list)" "$bad_id"
out=$(/usr/bin/python3 "$src/tests/e2e/files_client.py" "$src/proto" "127.0.0.1:$port" refusals "$work" 2>&1)
expect_eq "Python: digest mismatch and killed upload" "$?" "0"
echo "$out"
expect_eq "the refused and interrupted uploads left nothing" "$(stored)" "$before"

# 5. Tenants: another tenant's file does not exist for team-b.
for command in "get $bad_id" "delete $bad_id" "download $bad_id -o x"; do
  out=$(SHARDTUNE_TOKEN=key-b "$bin/shardtune" files $command 2>&1)
  expect_contains "team-b: files $command -> NOT_FOUND" "$out" "no file '$bad_id'"
done
out=$(SHARDTUNE_TOKEN=key-b "$bin/shardtune" files download --job "$job" --artifact metrics -o x 2>&1)
expect_contains "team-b: another tenant's job's artifact -> NOT_FOUND" "$out" "no job '$job'"
sed "s/$file_id/$bad_id/; s/runs\/uploaded/runs\/b/" job.yaml > job-b.yaml
out=$(SHARDTUNE_TOKEN=key-b "$bin/shardtune" submit job-b.yaml 2>&1)
expect_contains "team-b: a spec naming team-a's file -> no uploaded file" "$out" "no uploaded file '$bad_id'"
expect_eq "the message never shows the path" "$(grep -c "$work/state" <<<"$out")" "0"
expect_contains "an admin lists every tenant's files" "$(SHARDTUNE_TOKEN=key-admin "$bin/shardtune" files list)" "$bad_id"
expect_contains "an admin gets another tenant's file" "$(SHARDTUNE_TOKEN=key-admin "$bin/shardtune" files get "$bad_id")" "team-a"

# 6. A restart keeps the files and removes what an interrupted upload left.
kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null; server_pid=""
files_dir=$(dirname "$(find "$work/state" -path '*/files/*' -type f | head -n 1)")
echo half > "$files_dir/.upload-0123456789abcdef"
start_server
expect_contains "after a restart the file is listed" "$("$bin/shardtune" files list)" "$bad_id"
expect_eq "and its bytes are there, the leftover gone" "$(stored)" "$before"

# 7. The Python grpcio client: upload, list, a job naming file:ID, download.
out=$(/usr/bin/python3 "$src/tests/e2e/files_client.py" "$src/proto" "127.0.0.1:$port" job "$work" 2>&1)
expect_eq "Python: upload, list, file:ID job, download" "$?" "0"
echo "$out"
summary
