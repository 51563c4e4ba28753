#!/usr/bin/env bash
# The CLI never ignores what it is told: an option given with a job spec overrides the spec's
# value (plan), `--output table|json` means the same on every command that prints a result
# (plan, validate-data, train, evaluate; the server commands' in server_test.sh), and a value
# outside table|json is refused by name. Usage: cli_options_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$2)" <<<"$1" 2>/dev/null; }

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 1 --log-level warn
cp "$src/examples/data/count-up.jsonl" "$work/train.jsonl"
cat > "$work/job.yaml" <<YAML
name: options
model: {path: base}
data: {train: train.jsonl, validation_split: 0.1, format: tokens, max_seq_len: 32}
training: {max_steps: 3, micro_batch_size: 4, global_batch_size: 8, optimizer: {lr: 1.0e-3}}
sharding: {zero_stage: 1}
output: {dir: runs/options}
YAML

# 1. plan JOB.yaml: the spec's values, each overridden by the option given.
out=$("$bin/shardtune" plan "$work/job.yaml" --cpu --output json)
expect_eq "plan JOB.yaml plans the spec's ranks" "$(json_field "$out" '["ranks"]')" "1"
expect_eq "plan JOB.yaml plans the spec's ZeRO stage" "$(json_field "$out" '["zero_stage"]')" "1"
out=$("$bin/shardtune" plan "$work/job.yaml" --gpus 4 --cpu --output json)
expect_eq "plan JOB.yaml --gpus 4 plans 4 ranks" "$(json_field "$out" '["ranks"]')" "4"
out=$("$bin/shardtune" plan "$work/job.yaml" --zero-stage 3 --method lora --dtype bf16 --micro-batch 2 --cpu --output json)
expect_eq "--zero-stage overrides the spec's" "$(json_field "$out" '["zero_stage"]')" "3"
expect_eq "--method overrides the spec's" "$(json_field "$out" '["method"]')" "lora"
expect_eq "--dtype overrides the spec's" "$(json_field "$out" '["dtype"]')" "bf16"
# QLoRA: the issue's 100B-class example on one 141 GiB device, with and without the 4-bit base.
m100="$src/examples/models/llama-100b-class.json"
out=$("$bin/shardtune" plan --model "$m100" --method lora --lora-r 16 --quantization nf4 --gpus 1 --gpu-memory 141 \
  --activation-checkpointing --output json)
expect_eq "plan --quantization nf4: LoRA on the 100B-class model fits one 141 GiB device" "$(json_field "$out" '["fits"]')" "True"
expect_eq "plan --quantization nf4 says so" "$(json_field "$out" '["quantization"]')" "nf4"
out=$("$bin/shardtune" plan --model "$m100" --method lora --lora-r 16 --gpus 1 --gpu-memory 141 --activation-checkpointing)
expect_contains "plan without it does not fit and suggests QLoRA" "$out" "suggestion: model.quantization: {type: nf4}"
out=$("$bin/shardtune" plan --model "$m100" --quantization nf4 --gpus 1 2>&1)
expect_eq "plan --quantization with full fine-tuning is refused" "$?" "2"
expect_contains "and says why" "$out" "parameter-efficient --method"
out=$("$bin/shardtune" plan "$work/job.yaml" --gpus 4 --cpu --output table)
expect_contains "plan --output table names the ranks it planned" "$out" "4 ranks"
out=$("$bin/shardtune" plan "$work/job.yaml" --model "$src/examples/tiny-llama/config.json" 2>&1)
expect_eq "plan with a job spec and --model is refused" "$?" "2"
out=$("$bin/shardtune" plan "$work/job.yaml" --output text 2>&1)
expect_eq "plan --output text is refused (table|json)" "$?" "2"
expect_contains "the refusal names --output" "$out" "--output"

# 2. validate-data --output json: the report, or the failure, as one JSON object on stdout.
out=$("$bin/shardtune" validate-data "$work/job.yaml" --output json --log-level warn)
expect_eq "validate-data --output json exits 0" "$?" "0"
expect_eq "validate-data's JSON says ok" "$(json_field "$out" '["ok"]')" "True"
expect_eq "validate-data's JSON counts the examples" "$(json_field "$out" '["files"][0]["examples"]')" "64"
out=$("$bin/shardtune" validate-data "$work/job.yaml" --log-level warn)
expect_contains "validate-data's table is the summary" "$out" "train $work/train.jsonl: 64 examples"
printf '{"input_ids": [1, 2, 3]}\nnot json\n' > "$work/bad.jsonl"
sed 's|train: train.jsonl|train: bad.jsonl|' "$work/job.yaml" > "$work/bad.yaml"
out=$("$bin/shardtune" validate-data "$work/bad.yaml" --output json --log-level off)
expect_eq "validate-data --output json on bad data exits 2" "$?" "2"
expect_eq "its JSON says not ok" "$(json_field "$out" '["ok"]')" "False"
expect_contains "its JSON names the line" "$(json_field "$out" '["error"]["message"]')" "bad.jsonl:2"
out=$("$bin/shardtune" validate-data "$work/job.yaml" --output yaml 2>&1)
expect_eq "validate-data --output yaml is refused" "$?" "2"

# 3. train --output json: rank 0's outcome on stdout (the log stays on stderr).
out=$("$bin/shardtune" train "$work/job.yaml" --output json 2> "$work/train.log")
expect_eq "train --output json exits 0" "$?" "0"
expect_eq "train's JSON says ok" "$(json_field "$out" '["ok"]')" "True"
expect_eq "train's JSON counts the steps" "$(json_field "$out" '["steps"]')" "3"
expect_eq "train's JSON names the final model" "$(json_field "$out" '["final"]')" "$work/runs/options/final"
out=$("$bin/shardtune" train "$work/bad.yaml" --output json 2> /dev/null)
expect_eq "train --output json on bad data exits 2" "$?" "2"
expect_eq "train's failure JSON says not ok" "$(json_field "$out" '["ok"]')" "False"
# A spec's scheduler-only resources are said to go unused, not silently ignored.
sed 's|^output: .*|output: {dir: runs/slurm-only}\nresources: {partition: debug, time_limit: "10"}|' "$work/job.yaml" > "$work/slurm-only.yaml"
"$bin/shardtune" train "$work/slurm-only.yaml" > /dev/null 2> "$work/slurm-only.log"
expect_eq "train with a partition exits 0" "$?" "0"
expect_contains "train says the partition and time limit go unused" "$(cat "$work/slurm-only.log")" \
  "resources.time_limit, partition, account and qos are for shardtune-server's Slurm backend; this run does not use them"

# 4. evaluate: --output table|json (JSON by default: its figures nest), --out FILE.
out=$("$bin/shardtune" evaluate --model "$work/runs/options/final" --data "$work/train.jsonl" --format tokens \
      --output table --out "$work/eval.json" --log-level warn)
expect_eq "evaluate --output table exits 0" "$?" "0"
expect_contains "evaluate's table has a line per figure" "$out" "token_accuracy: "
expect_eq "evaluate --out writes the JSON" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["examples"])' "$work/eval.json")" "64"

summary
