#!/usr/bin/env bash
# End-to-end checks of the executables as a user runs them: exit codes, messages, output layout,
# generation from a real checkpoint, and a kill -9 in the middle of training followed by resume.
# Usage: cli_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"

# 0. The CLI and the server link no LibTorch; the CLI hands model commands to shardtune-worker.
for exe in shardtune shardtune-server; do
  expect_eq "$exe links no LibTorch" "$(readelf -d "$bin/$exe" | grep -c 'libtorch\|libc10')" "0"
done
expect_contains "shardtune --help lists the worker's commands" "$("$bin/shardtune" --help)" "init-model"
expect_contains "shardtune generate --help is the worker's" "$("$bin/shardtune" generate --help)" "--max-new-tokens"

# A tiny model and a counting dataset.
"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 1 --log-level warn
awk 'BEGIN { srand(3); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > "$work/train.jsonl"
write_job() {  # name steps checkpoint_every
  cat > "$work/$1.yaml" <<YAML
name: $1
model: {path: base}
data: {train: train.jsonl, validation_split: 0.1, format: tokens}
training: {max_steps: $2, micro_batch_size: 4, global_batch_size: 8, optimizer: {lr: 1.0e-3}}
output: {dir: runs/$1, checkpoint_every: $3}
YAML
}

# 1. A whole job through `shardtune train`: output layout and rank-prefixed logs.
write_job small 6 3
out=$("$bin/shardtune" train "$work/small.yaml" 2>&1)
expect_eq "train exits 0" "$?" "0"
for f in job.yaml metrics.jsonl logs/rank-00000.log final/config.json final/model.safetensors checkpoints/step-3/index.json \
         checkpoints/step-3/rank-00000.safetensors checkpoints/step-3/trainer_state.json; do
  if [ -f "$work/runs/small/$f" ]; then pass "output has $f"; else fail "output lacks $f"; fi
done
expect_eq "metrics: the load record, one line per step plus one eval" "$(wc -l < "$work/runs/small/metrics.jsonl")" "8"
expect_contains "metrics begin with the load record" "$(head -n 1 "$work/runs/small/metrics.jsonl")" '"bytes_read"'
expect_contains "log lines carry the rank" "$(head -n 1 "$work/runs/small/logs/rank-00000.log")" "[rank 0]"
ids=$("$bin/shardtune" generate --model "$work/runs/small/final" --input-ids "1 5 6" --max-new-tokens 5 --format ids --log-level warn)
expect_eq "generate prints 5 ids" "$(wc -w <<<"$ids")" "5"
out=$("$bin/shardtune" evaluate --model "$work/runs/small/final" --data "$work/train.jsonl" --format tokens --log-level warn)
expect_eq "evaluate exits 0" "$?" "0"
expect_eq "evaluate counts every example" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["examples"])' <<<"$out")" "64"
expect_contains "evaluate reports token accuracy" "$out" "token_accuracy"
out=$("$bin/shardtune" evaluate --model "$work/runs/small/final" --data "$work/train.jsonl" 2>&1)
expect_eq "evaluate of a language model without --format exits 2" "$?" "2"
expect_contains "it asks for the format" "$out" "--format: give the data's format"
out=$("$bin/shardtune" report "$work/runs/small")
expect_eq "report exits 0" "$?" "0"
expect_contains "report names the best evaluation" "$out" "best evaluation: val_loss"
expect_contains "report.txt holds the summary" "$(cat "$work/runs/small/report.txt")" "training loss:"
png=$(/usr/bin/python3 "$src/tests/e2e/check_png.py" "$work/runs/small/report.png" 31,119,180 255,127,14 2>&1)
expect_eq "report.png is a valid PNG" "$?" "0"
expect_contains "it is 960x540" "$png" "960x540"
loss_px=$(sed -E 's/.*31,119,180:([0-9]+).*/\1/' <<<"$png"); val_px=$(sed -E 's/.*255,127,14:([0-9]+).*/\1/' <<<"$png")
[ "$loss_px" -gt 300 ] && pass "the loss curve is drawn ($loss_px pixels)" || fail "loss curve: $png"
[ "$val_px" -gt 40 ] && pass "the validation point is drawn ($val_px pixels)" || fail "validation: $png"
# --output json: the same figures, checked against metrics.jsonl read here.
out=$("$bin/shardtune" report "$work/runs/small" --output json)
expect_eq "report --output json exits 0" "$?" "0"
check=$(/usr/bin/python3 - "$work/runs/small/metrics.jsonl" "$out" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
report = json.loads(sys.argv[2])
train = [r for r in records if "loss" in r]
evals = [r for r in records if "val_loss" in r]
lowest = min(train, key=lambda r: r["loss"])
best = min(evals, key=lambda r: r["val_loss"])
ok = (report["ok"] is True and report["steps"] == train[-1]["step"]
      and abs(report["train_loss"]["first"]["loss"] - train[0]["loss"]) < 1e-9
      and report["train_loss"]["lowest"]["step"] == lowest["step"]
      and report["best_eval"]["step"] == best["step"]
      and abs(report["best_eval"]["loss"] - best["val_loss"]) < 1e-9
      and report["summary"].startswith("run: "))
print("match" if ok else f"mismatch: {report}")
PY
)
expect_eq "report's JSON figures are metrics.jsonl's" "$check" "match"
out=$("$bin/shardtune" report "$work/nothing-here" 2>&1)
expect_eq "report of a directory without metrics exits 2" "$?" "2"
expect_contains "it says what is missing" "$out" "no metrics.jsonl"
out=$("$bin/shardtune" report "$work/nothing-here" --output json 2>/dev/null)
expect_eq "with --output json it still exits 2" "$?" "2"
expect_eq "and prints the failure as JSON" "$(/usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ok"], d["error"]["kind"])' <<<"$out")" "False invalid_input"

# A checkpoint exported on its own, loadable like any model directory.
out=$("$bin/shardtune" export "$work/runs/small/checkpoints/step-3" --to hf --out "$work/exported" 2>&1)
expect_eq "export of a checkpoint exits 0" "$?" "0"
ids=$("$bin/shardtune" generate --model "$work/exported" --input-ids "1 5 6" --max-new-tokens 3 --format ids --log-level warn)
expect_eq "the exported checkpoint generates" "$(wc -w <<<"$ids")" "3"
out=$("$bin/shardtune" export "$work/runs/small/checkpoints/step-3" --to peft --out "$work/exported-peft" 2>&1)
expect_eq "export --to peft of a full fine-tune exits 2" "$?" "2"

# 1b. LoRA on 2 ranks at ZeRO-3 through `shardtune train --np 2`: the adapter and the merged model
# generate the same tokens; a checkpoint exports as an adapter; a base + adapter loads anywhere.
cat > "$work/lora.yaml" <<YAML
name: lora
model: {path: base}
method: {type: lora, lora: {r: 4, alpha: 8, target_modules: all-linear}}
data: {train: train.jsonl, format: tokens}
training: {max_steps: 6, micro_batch_size: 2, global_batch_size: 8, optimizer: {lr: 1.0e-2}}
sharding: {zero_stage: 3}
output: {dir: runs/lora, checkpoint_every: 3, export: [hf, peft]}
YAML
out=$("$bin/shardtune" train "$work/lora.yaml" --np 2 2>&1)
expect_eq "LoRA on 2 ranks exits 0" "$?" "0"
expect_contains "LoRA logs its trainable parameters" "$out" "trainable parameters"
for f in final/adapter_config.json final/adapter_model.safetensors final/model.safetensors final/config.json; do
  if [ -f "$work/runs/lora/$f" ]; then pass "LoRA output has $f"; else fail "LoRA output lacks $f"; fi
done
adapted=$("$bin/shardtune" generate --model "$work/base" --adapter "$work/runs/lora/final" --input-ids "1 5 6" --max-new-tokens 8 --ignore-eos --format ids --log-level warn)
merged=$("$bin/shardtune" generate --model "$work/runs/lora/final" --input-ids "1 5 6" --max-new-tokens 8 --ignore-eos --format ids --log-level warn)
expect_eq "base + adapter generates what the merged model generates" "$adapted" "$merged"
out=$("$bin/shardtune" export "$work/runs/lora/checkpoints/step-3" --to peft --out "$work/lora-step-3" 2>&1)
expect_eq "export --to peft of a LoRA checkpoint exits 0" "$?" "0"
ids=$("$bin/shardtune" generate --model "$work/base" --adapter "$work/lora-step-3" --input-ids "1 5 6" --max-new-tokens 3 --format ids --log-level warn)
expect_eq "the exported adapter generates" "$(wc -w <<<"$ids")" "3"
out=$("$bin/shardtune" generate --model "$work/base" --adapter "$work/runs/small/final" --input-ids 1 --format ids 2>&1)
expect_eq "--adapter on a non-adapter exits 2" "$?" "2"
expect_contains "--adapter names what is missing" "$out" "no adapter_config.json"

# 1c. `shardtune export` streams a checkpoint from its rank files, and with --np N its processes
# split the model files among them: byte for byte what the engine's export writes. final/ of a run
# with keep_best holds checkpoints/best's weights; a small file size makes each model 5+ files.
export SHARDTUNE_TEST_EXPORT_SHARD_BYTES=40000
same_as() {  # DIR REFERENCE: the files of DIR that differ from REFERENCE's of the same name, or "none"
  local f differ=""
  for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || differ="$differ $(basename "$f")"; done
  echo "${differ:-none}"
}
model_files() { ls "$1" | grep -c '^model-.*-of-.*\.safetensors$'; }
cat > "$work/best.yaml" <<YAML
name: best
model: {path: base}
data: {train: train.jsonl, validation_split: 0.25, format: tokens}
training: {max_steps: 6, eval_every: 2, micro_batch_size: 4, global_batch_size: 8, optimizer: {lr: 1.0e-3}}
output: {dir: runs/best, keep_best: true}
YAML
out=$("$bin/shardtune" train "$work/best.yaml" 2>&1)
expect_eq "a full fine-tune with keep_best trains" "$?" "0"
files=$(model_files "$work/runs/best/final")
[ "$files" -ge 5 ] && pass "final/ is $files model files" || fail "final/ has $files model files: $(ls "$work/runs/best/final")"
"$bin/shardtune" export "$work/runs/best/checkpoints/best" --out "$work/best-np1" --log-level warn
expect_eq "export of a checkpoint (1 process) exits 0" "$?" "0"
expect_eq "it writes the engine's export, byte for byte" "$(same_as "$work/best-np1" "$work/runs/best/final")" "none"
expect_eq "with as many model files" "$(model_files "$work/best-np1")" "$files"
"$bin/shardtune" export "$work/runs/best/checkpoints/best" --np 3 --out "$work/best-np3" --log-level warn
expect_eq "export --np 3 exits 0" "$?" "0"
expect_eq "3 processes write the same directory as 1" "$(diff -r "$work/best-np1" "$work/best-np3" && echo same)" "same"
out=$("$bin/shardtune-worker" export "$work/runs/best/checkpoints/best" --np 3 --out "$work/best-direct" 2>&1)
expect_eq "--np 3 outside mpirun exits 2" "$?" "2"
expect_contains "it says how to start the processes" "$out" "run \`shardtune export ... --np 3\`"

cat > "$work/lora-best.yaml" <<YAML
name: lora-best
model: {path: base}
method: {type: lora, lora: {r: 4, alpha: 8, target_modules: all-linear}}
data: {train: train.jsonl, validation_split: 0.25, format: tokens}
training: {max_steps: 6, eval_every: 2, micro_batch_size: 2, global_batch_size: 8, optimizer: {lr: 1.0e-2}}
sharding: {zero_stage: 3}
output: {dir: runs/lora-best, keep_best: true, export: [hf, peft]}
YAML
out=$("$bin/shardtune" train "$work/lora-best.yaml" --np 2 2>&1)
expect_eq "LoRA with keep_best on 2 ranks trains" "$?" "0"
lora_best="$work/runs/lora-best/checkpoints/best"
"$bin/shardtune" export "$lora_best" --to hf --out "$work/lora-best-hf" --log-level warn
expect_eq "the merged LoRA checkpoint equals the engine's merge, byte for byte" \
  "$(same_as "$work/lora-best-hf" "$work/runs/lora-best/final")" "none"
"$bin/shardtune" export "$lora_best" --to hf --np 3 --out "$work/lora-best-hf3" --log-level warn
expect_eq "and on 3 processes" "$(diff -r "$work/lora-best-hf" "$work/lora-best-hf3" && echo same)" "same"
"$bin/shardtune" export "$lora_best" --to peft --out "$work/lora-best-peft" --log-level warn
expect_eq "the adapter equals the engine's" "$(same_as "$work/lora-best-peft" "$work/runs/lora-best/final")" "none"

# A checkpoint with a missing or truncated rank file: the error names the file; nothing is written.
cp -r "$lora_best" "$work/broken-ckpt-missing" && rm "$work/broken-ckpt-missing/rank-00001.safetensors"
cp -r "$lora_best" "$work/broken-ckpt-short"
truncate -s -100 "$work/broken-ckpt-short/rank-00001.safetensors"
for c in missing short; do
  mkdir -p "$work/runs/broken-$c/checkpoints" && cp "$work/runs/lora-best/job.yaml" "$work/runs/broken-$c/"
  mv "$work/broken-ckpt-$c" "$work/runs/broken-$c/checkpoints/step-1"
  out=$("$bin/shardtune" export "$work/runs/broken-$c/checkpoints/step-1" --np 2 --out "$work/broken-$c-out" 2>&1)
  code=$?
  [ $code -ne 0 ] && pass "export of a checkpoint with a $c rank file fails ($code)" || fail "a $c rank file exported"
  expect_contains "it names the file" "$out" "broken-$c/checkpoints/step-1/rank-00001.safetensors"
  if ls -d "$work/broken-$c-out"* > /dev/null 2>&1; then fail "it left output behind"; else pass "nothing is written"; fi
done
unset SHARDTUNE_TEST_EXPORT_SHARD_BYTES

# 2. Errors: exit code 2 and messages that point at the problem.
printf 'name: bad\nmodel: {path: base}\ndata: {train: train.jsonl, format: tokens}\noutput: {dir: runs/bad}\ntraining:\n  epoch: 2\n' > "$work/bad.yaml"
out=$("$bin/shardtune" train "$work/bad.yaml" 2>&1)
expect_eq "bad spec exits 2" "$?" "2"
expect_contains "bad spec names key, line and suggestion" "$out" "training.epoch (line 6, column 3): unknown key 'epoch' (did you mean 'epochs'?)"
if [ -e "$work/runs/bad" ]; then fail "a rejected spec left output behind"; else pass "a rejected spec writes nothing"; fi
out=$("$bin/shardtune-worker" "$work/small.yaml" --log-level loud 2>&1)
expect_eq "bad --log-level exits 2" "$?" "2"
expect_contains "bad --log-level is named" "$out" "--log-level 'loud' is not a level"
out=$("$bin/shardtune" generate --model "$work/base" --prompt "hello" 2>&1)
expect_eq "--prompt without tokenizer exits 2" "$?" "2"
expect_contains "--prompt explains itself" "$out" "need a tokenizer"
printf 'garbage' > "$work/base-broken.safetensors"
mkdir -p "$work/broken" && cp "$work/base/config.json" "$work/broken/" && head -c 100 "$work/base/model.safetensors" > "$work/broken/model.safetensors"
out=$("$bin/shardtune" generate --model "$work/broken" --input-ids 1 --format ids 2>&1)
expect_eq "truncated safetensors exits 2" "$?" "2"
expect_contains "truncated safetensors is named" "$out" "broken/model.safetensors: header length"

# 3. kill -9 during training, then the same command resumes from the newest checkpoint.
write_job long 400 20
"$bin/shardtune-worker" "$work/long.yaml" --log-level warn > /dev/null 2>&1 &
pid=$!
# Up to 300 s: a build with sanitizers takes minutes to get there.
for _ in $(seq 1 6000); do [ -d "$work/runs/long/checkpoints/step-40" ] && break; sleep 0.05; done
[ -d "$work/runs/long/checkpoints/step-40" ] || fail "no checkpoint step-40 in 300 s: resume not tested"
kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
# A run that finished before the kill would leave nothing to resume: that is a failure of this
# check's set-up, not a pass.
if [ -d "$work/runs/long/final" ]; then fail "the run finished before it could be killed: resume not tested"; fi
out=$("$bin/shardtune-worker" "$work/long.yaml" 2>&1)
expect_eq "resumed run exits 0" "$?" "0"
expect_contains "resumed from a checkpoint" "$out" "resuming from"
steps=$(grep -c '"loss"' "$work/runs/long/metrics.jsonl")
expect_eq "metrics hold each step once after resume" "$steps" "400"

# 4. Text data and a tokenizer: validate-data, a chat job, generation from a prompt.
tiktoken="$src/../shared/fixtures/tokenizers/tiktoken-small-tokenizer.json"
if [ -f "$tiktoken" ]; then
  sed 's/"vocab_size": 64/"vocab_size": 2000/' "$src/examples/tiny-llama/config.json" > "$work/chat-config.json"
  "$bin/shardtune" init-model --config "$work/chat-config.json" --out "$work/chat-base" --seed 3 --log-level warn
  cp "$tiktoken" "$work/chat-base/tokenizer.json"
  for i in $(seq 1 16); do
    echo '{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}]}'
  done > "$work/chat.jsonl"
  cat > "$work/chat.yaml" <<YAML
name: chat
model: {path: chat-base}
data: {train: chat.jsonl, format: chat, chat_template: plain}
training: {max_steps: 4, micro_batch_size: 4}
output: {dir: runs/chat}
YAML
  out=$("$bin/shardtune" validate-data "$work/chat.yaml" 2>&1)
  expect_eq "validate-data accepts good data" "$?" "0"
  expect_contains "validate-data summarizes" "$out" "train $work/chat.jsonl: 16 examples"
  { head -n 1 "$work/chat.jsonl"; echo '{"messages": [{"role": "bot", "content": "Hi"}]}'; } > "$work/bad-chat.jsonl"
  sed 's/chat.jsonl/bad-chat.jsonl/' "$work/chat.yaml" > "$work/bad-chat.yaml"
  out=$("$bin/shardtune" validate-data "$work/bad-chat.yaml" 2>&1)
  expect_eq "validate-data rejects bad data" "$?" "2"
  expect_contains "validate-data names file, line and code" "$out" "bad-chat.jsonl:2: [unrecognized_role]"
  out=$("$bin/shardtune" train "$work/chat.yaml" 2>&1)
  expect_eq "a chat job trains" "$?" "0"
  # Generation metrics: the figures equal an independent ROUGE-L and exact match of the answers.
  "$bin/shardtune" evaluate --model "$work/runs/chat/final" --data "$work/chat.jsonl" --format chat --log-level warn \
    --metrics exact_match,rouge_l,bleu --max-new-tokens 6 --generations-out "$work/answers.jsonl" > "$work/gen.json"
  expect_eq "evaluate --metrics exits 0" "$?" "0"
  scores=$(python3 - "$work/gen.json" "$work/answers.jsonl" <<'PY'
import json, re, sys
figures = json.load(open(sys.argv[1]))["generation"]
answers = [json.loads(l) for l in open(sys.argv[2])]
def tokens(t): return re.sub(r"[^a-z0-9]+", " ", t.lower()).split()
def rouge_l(ref, gen):
    r, g = tokens(ref), tokens(gen)
    if not r or not g: return 0.0
    table = [[0] * (len(g) + 1) for _ in range(len(r) + 1)]
    for i in range(len(r)):
        for j in range(len(g)):
            table[i + 1][j + 1] = table[i][j] + 1 if r[i] == g[j] else max(table[i][j + 1], table[i + 1][j])
    p, rec = table[-1][-1] / len(g), table[-1][-1] / len(r)
    return 2 * p * rec / (p + rec) if p + rec else 0.0
rouge = sum(rouge_l(a["reference"], a["generated"]) for a in answers) / len(answers)
exact = sum(a["reference"].strip() == a["generated"].strip() for a in answers) / len(answers)
print(figures["generated"], len(answers), abs(figures["rouge_l"] - rouge) < 1e-9, abs(figures["exact_match"] - exact) < 1e-12,
      answers[0]["reference"].strip(), 0 <= figures["bleu"] <= 100)
PY
)
  expect_eq "generation metrics match a reference implementation over the written answers" "$scores" \
    "16 16 True True Hi there! True"
  out=$("$bin/shardtune" evaluate --model "$work/runs/chat/final" --data "$work/chat.jsonl" --format chat --metrics rouge 2>&1)
  expect_contains "an unknown generation metric is named" "$out" "unknown generation metric 'rouge'"
  out=$("$bin/shardtune" evaluate --model "$work/runs/chat/final" --data "$work/chat.jsonl" --format chat \
        --metrics pass@1 2>&1)
  expect_eq "pass@k on chat data exits 2" "$?" "2"
  expect_contains "pass@k names the records it runs" "$out" "runs completion records with tests"
  # synthesize through the CLI on 2 ranks (mpirun): every candidate accounted for. (A teacher that
  # writes examples worth keeping is tests/unit/synthesize_test.cc's.)
  out=$("$bin/shardtune" synthesize --model "$work/runs/chat/final" --seed-data "$work/chat.jsonl" --format chat \
        --num 2 --max-candidates 4 --max-new-tokens 8 --batch-size 2 --out "$work/synthetic.jsonl" --np 2 \
        --output json --log-level warn 2>&1)
  expect_eq "synthesize --np 2 exits 0" "$?" "0"
  counts=$(python3 -c 'import json,sys; r=json.loads([l for l in sys.stdin.read().splitlines() if l.startswith("{")][-1]); print(r["ranks"], r["candidates"] == 4 or r["kept"] == 2, r["candidates"] == r["kept"] + sum(r["removed"].values()))' <<<"$out")
  expect_eq "synthesize reports its ranks and every candidate" "$counts" "2 True True"
  [ -f "$work/synthetic.jsonl" ] && pass "synthesize wrote its file" || fail "synthesize wrote no file"
  out=$("$bin/shardtune" synthesize --model "$work/runs/chat/final" --seed-data "$work/chat.jsonl" --format ner \
        --out "$work/x.jsonl" 2>&1)
  expect_eq "synthesize of ner data exits 2" "$?" "2"
  expect_contains "synthesize names the formats it writes" "$out" "alpaca, chat, classification or completion"
  text=$("$bin/shardtune" generate --model "$work/runs/chat/final" --prompt "Say hi" --max-new-tokens 5 --log-level warn)
  expect_eq "generate --prompt answers in text" "$?" "0"
  # The same answer through ids: the prompt tokenized, its greedy continuation, decoded.
  prompt_ids=$(printf '%s' "Say hi" | "$bin/shardtune" tokenize --tokenizer "$work/chat-base/tokenizer.json")
  greedy=$("$bin/shardtune" generate --model "$work/runs/chat/final" --input-ids "$prompt_ids" --max-new-tokens 5 \
           --format ids --log-level warn)
  [ -n "$greedy" ] && pass "the greedy continuation is not empty" || fail "the greedy continuation is empty"
  expect_eq "generate --prompt prints the prompt's greedy continuation, decoded" "$text" \
    "$(printf '%s' "$greedy" | "$bin/shardtune" tokenize --tokenizer "$work/chat-base/tokenizer.json" --decode --no-special)"
else
  skip "fixture not found: $tiktoken"
fi

# 5. The real stories260K checkpoint through the CLI.
stories="$src/../shared/fixtures/models/stories260K-hf"
if [ -d "$stories" ]; then
  ids=$("$bin/shardtune" generate --model "$stories" --input-ids 1 --max-new-tokens 40 --format ids --log-level warn)
  expect_eq "stories260K greedy ids" "$ids" "$(tr '\n' ' ' < "$stories/greedy_ids_from_bos.txt" | sed 's/ $//')"
else
  skip "fixture not found: $stories"
fi

summary
