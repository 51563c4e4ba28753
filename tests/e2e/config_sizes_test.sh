#!/usr/bin/env bash
# A config.json whose sizes no real model has, as a new user meets it: `shardtune generate`,
# `train` and `init-model` each exit non-zero with one clear line naming config.json, the key and
# the limit, before any tensor is made (no LibTorch exception, no stack trace).
# Usage: config_sizes_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"

mkdir -p "$work/huge"
sed 's/"hidden_size": 64/"hidden_size": 1000000000/' "$src/examples/tiny-llama/config.json" > "$work/huge/config.json"
expected="$work/huge/config.json: 'hidden_size' must be between 1 and 131072 (larger than any real model), got 1000000000"

# expect_refusal NAME OUTPUT STATUS: non-zero, the message, and nothing of a crash.
expect_refusal() {
  if [ "$3" -ne 0 ]; then pass "$1 exits non-zero ($3)"; else fail "$1 exits 0"; fi
  expect_contains "$1 names config.json, the key and the limit" "$2" "$expected"
  if grep -qE 'Exception raised from|frame #|terminate called|negative dimension|Aborted' <<<"$2"; then
    fail "$1 shows a crash or a stack trace: $2"
  else
    pass "$1 shows no stack trace"
  fi
}

out=$("$bin/shardtune" generate --model "$work/huge" --input-ids "1 5 6" --max-new-tokens 2 --format ids 2>&1)
expect_refusal "generate" "$out" $?

out=$("$bin/shardtune" init-model --config "$work/huge/config.json" --out "$work/never" 2>&1)
expect_refusal "init-model" "$out" $?
if [ -e "$work/never" ]; then fail "init-model left $work/never behind"; else pass "init-model wrote nothing"; fi

printf '{"input_ids": [1, 5, 6, 7]}\n%.0s' {1..8} > "$work/train.jsonl"
cat > "$work/job.yaml" <<YAML
name: huge
model: {path: huge}
data: {train: train.jsonl, format: tokens}
training: {max_steps: 1, micro_batch_size: 1, global_batch_size: 1}
output: {dir: runs/huge}
YAML
out=$("$bin/shardtune" train "$work/job.yaml" 2>&1)
expect_refusal "train" "$out" $?

summary
