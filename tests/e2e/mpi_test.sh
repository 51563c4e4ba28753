#!/usr/bin/env bash
# Multi-rank jobs as a user runs them: `shardtune train --np N` through mpirun, the same job on two
# hosts (`--hostfile`; two loopback addresses of this machine) to the one-host result, a rank that hangs
# (the others fail within the collective timeout, naming rank, collective, bucket and step), the
# token cache built once by a job's ranks and reused by its resumed attempt, a rank killed with -9
# (the whole job ends, non-zero, promptly), a rank killed during an asynchronous checkpoint's
# write (the previous checkpoint resumes, to the uninterrupted run's end), and a BERT sentiment
# classifier trained on two ranks and evaluated.
# Usage: mpi_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
source "$(dirname "$0")/checks.sh"

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out "$work/base" --seed 2 --log-level warn
awk 'BEGIN { srand(5); for (n = 0; n < 64; n++) { s = 3 + int(rand() * 61); l = "{\"input_ids\": [1";
             for (i = 0; i < 16; i++) l = l ", " (3 + (s - 3 + i) % 61); print l "]}" } }' > "$work/train.jsonl"
write_job() {  # name stage steps timeout
  cat > "$work/$1.yaml" <<YAML
name: $1
model: {path: base}
data: {train: train.jsonl, format: tokens, max_seq_len: 64}
training: {max_steps: $3, micro_batch_size: 2, global_batch_size: 4}
sharding: {zero_stage: $2, collective_timeout_s: $4}
output: {dir: runs/$1}
YAML
}

# 1. Two ranks at stage 3 through `shardtune train --np 2`.
write_job two 3 4 60
out=$("$bin/shardtune" train "$work/two.yaml" --np 2 2>&1)
if [ $? -eq 0 ]; then pass "train --np 2 exits 0"; else fail "train --np 2 failed: $out"; fi
expect_contains "the plan names the ranks and the stage" "$out" "plan: 2 ranks, ZeRO stage 3"
expect_contains "the memory breakdown is printed" "$out" "memory per rank: parameters"
# Two ranks on a machine of two cores (no SMT, the whole machine this process's) get one each.
cpus=$(python3 -c 'import os; print(len(os.sched_getaffinity(0)), os.cpu_count())')
if [ "$cpus" = "2 2" ] && [ "$(cat /sys/devices/system/cpu/smt/active 2>/dev/null)" = 0 ]; then
  expect_contains "the ranks fill this machine's two cores: each is bound to one" "$out" "starting: mpirun --bind-to core"
else
  expect_contains "the ranks leave cores free or share them: unbound" "$out" "starting: mpirun --bind-to none"
fi
if [ -f "$work/runs/two/final/model.safetensors" ] && [ -f "$work/runs/two/logs/rank-00001.log" ]; then
  pass "export and per-rank logs"; else fail "missing final/ or rank 1's log"; fi

# 1a. The same job on two hosts: `train --np 2 --hostfile F` whose hosts are two loopback
# addresses of this machine. mpirun starts its daemon on 127.0.0.2 through its launch agent (ssh
# on a cluster; here a stand-in that runs the command on this machine and notes the host), the
# ranks talk over TCP on loopback only (no shared memory), and the result is the one-host run's.
printf '127.0.0.1 slots=1\n127.0.0.2 slots=1\n' > "$work/hosts"
cat > "$work/agent.sh" <<AGENT
#!/bin/sh
# ssh's stand-in: HOST COMMAND...
echo "\$*" >> "$work/agent.log"
shift
exec sh -c "\$*"
AGENT
chmod +x "$work/agent.sh"
sed 's/^name: two$/name: two-hosts/; s|runs/two|runs/two-hosts|' "$work/two.yaml" > "$work/two-hosts.yaml"
out=$(OMPI_MCA_plm_rsh_agent="$work/agent.sh" OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo \
  OMPI_MCA_oob_tcp_if_include=lo "$bin/shardtune" train "$work/two-hosts.yaml" --np 2 --hostfile "$work/hosts" 2>&1)
if [ $? -eq 0 ]; then pass "train --np 2 --hostfile (two loopback hosts) exits 0"; else fail "two hosts: $out"; fi
expect_eq "mpirun started its daemon (orted) on the second host, once" "$(grep -c '^127\.0\.0\.2 .*orted' "$work/agent.log")" "1"
losses() { python3 -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1]) if "\"loss\"" in l))' "$1"; }
python3 - "$work/runs/two/final/model.safetensors" "$work/runs/two-hosts/final/model.safetensors" \
  "$(losses "$work/runs/two/metrics.jsonl")" "$(losses "$work/runs/two-hosts/metrics.jsonl")" <<'PY' && pass "two hosts: the one-host run's losses and weights (to rounding)" || fail "two hosts differ from one host"
import json, struct, sys, array
def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__": continue
        assert t["dtype"] == "F32", t["dtype"]
        begin, end = t["data_offsets"]
        out[name] = array.array("f", data[8 + n + begin:8 + n + end])
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a.keys() == b.keys() and a, "different tensors"
worst = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
la, lb = [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
assert len(la) == len(lb) == 4, (la, lb)
loss_gap = max(abs(x - y) for x, y in zip(la, lb))
print(f"two hosts vs one: max weight difference {worst:g}, max loss difference {loss_gap:g}")
sys.exit(0 if worst <= 1e-6 and loss_gap <= 1e-6 else 1)
PY

# 1b. The export at the end of training is written by all ranks, each its share of the files: on
# 2 and 4 ranks it equals, byte for byte, the one-process export of the same weights (final/ of a
# keep_best run holds checkpoints/best's), for full fine-tuning and a merged LoRA.
for np in 2 4; do
  for method in full lora; do
    name="parallel-$method-$np"
    method_spec="{type: full}" formats="[hf]"
    [ "$method" = lora ] && method_spec="{type: lora, lora: {r: 4, alpha: 8, target_modules: all-linear}}" formats="[hf, peft]"
    cat > "$work/$name.yaml" <<YAML
name: $name
model: {path: base}
method: $method_spec
data: {train: train.jsonl, validation_split: 0.25, format: tokens, max_seq_len: 64}
training: {max_steps: 4, eval_every: 2, micro_batch_size: 2, global_batch_size: 8, optimizer: {lr: 1.0e-2}}
sharding: {zero_stage: 3}
output: {dir: runs/$name, keep_best: true, export: $formats}
YAML
    out=$(SHARDTUNE_TEST_EXPORT_SHARD_BYTES=40000 "$bin/shardtune" train "$work/$name.yaml" --np $np 2>&1)
    if [ $? -eq 0 ]; then pass "$method on $np ranks trains and exports"; else fail "$name failed: $out"; fi
    SHARDTUNE_TEST_EXPORT_SHARD_BYTES=40000 "$bin/shardtune" export "$work/runs/$name/checkpoints/best" \
      --out "$work/$name-np1" --log-level warn
    files=$(ls "$work/$name-np1" | grep -c '^model-.*-of-.*\.safetensors$')
    [ "$files" -ge 5 ] && pass "the model is $files files" || fail "the model is $files files"
    differ=""
    for f in "$work/$name-np1"/*; do cmp -s "$f" "$work/runs/$name/final/$(basename "$f")" || differ="$differ $(basename "$f")"; done
    expect_eq "$np ranks' final/ equals the one-process export ($method)" "${differ:-none}" "none"
  done
done

# 2. Rank 1 hangs before step 2: rank 0's collective times out and takes the job down.
write_job stall 2 6 3
start=$(date +%s)
out=$(SHARDTUNE_TEST_STALL=1:2 "$bin/shardtune" train "$work/stall.yaml" --np 2 2>&1)
code=$?
elapsed=$(( $(date +%s) - start ))
if [ $code -ne 0 ]; then pass "a hung rank fails the job (exit $code)"; else fail "a hung rank did not fail the job"; fi
if [ $elapsed -lt 60 ]; then pass "ended in ${elapsed}s"; else fail "took ${elapsed}s for a 3 s timeout"; fi
expect_contains "the timeout names rank, collective, bucket and step" "$out" "rank 0: reduce_scatter of head in shard group 0 at step 2"
expect_contains "the timeout says what happened" "$out" "did not complete within the collective timeout of 3 s"

# 2b. The token cache: the two ranks of a job build one cache (rank 0 writes it), and a resumed
# attempt reuses it unchanged. The first attempt stalls at step 3 after checkpointing steps 1-2.
write_job cached 2 4 3
echo "output: {dir: runs/cached, checkpoint_every: 1}" >> "$work/cached.yaml"
sed -i '/^output: {dir: runs\/cached}$/d' "$work/cached.yaml"
out=$(SHARDTUNE_TEST_STALL=1:3 "$bin/shardtune" train "$work/cached.yaml" --np 2 2>&1)
expect_eq "the token cache is built once, by the job" "$(grep -c 'token cache: built' <<< "$out")" "1"
caches=$(ls "$work/runs/cached/cache")
expect_eq "one cache file for both ranks" "$(wc -l <<< "$caches")" "1"
identity=$(stat -c '%i %y' "$work/runs/cached/cache/$caches")
out=$("$bin/shardtune" train "$work/cached.yaml" --np 2 2>&1)
expect_eq "the resumed attempt exits 0" "$?" "0"
expect_contains "the attempt resumed" "$out" "resuming from"
expect_contains "the resumed attempt reuses the cache" "$out" "token cache: reusing $work/runs/cached/cache/$caches"
expect_eq "the cache file is the same file, unchanged" "$(stat -c '%i %y' "$work/runs/cached/cache/$caches")" "$identity"
expect_eq "and still the only one" "$(ls "$work/runs/cached/cache")" "$caches"

# 3. kill -9 of one rank mid-training ends the whole job, non-zero.
write_job killed 0 100000 30
"$bin/shardtune" train "$work/killed.yaml" --np 2 > "$work/killed.log" 2>&1 &
launcher=$!
for _ in $(seq 1 300); do [ -f "$work/runs/killed/metrics.jsonl" ] && [ "$(wc -l < "$work/runs/killed/metrics.jsonl")" -ge 3 ] && break; sleep 0.1; done
victim=$(pgrep -f "shardtune-worker $work/killed.yaml" | tail -n 1)
start=$(date +%s)
kill -9 "$victim"
wait "$launcher"
code=$?
elapsed=$(( $(date +%s) - start ))
if [ $code -ne 0 ]; then pass "job with a killed rank exits non-zero ($code)"; else fail "job with a killed rank exited 0"; fi
if [ $elapsed -lt 30 ]; then pass "the other rank ended within ${elapsed}s"; else fail "took ${elapsed}s"; fi
if pgrep -f "shardtune-worker $work/killed.yaml" > /dev/null; then fail "a rank outlived the job"; pkill -9 -f "$work/killed.yaml"; else pass "no rank left behind"; fi

# 3b. Asynchronous checkpoints: kill -9 of a rank while the write of step-6 is paused (a test knob,
#     on every rank, after its rank file is written) leaves step-3 as the newest checkpoint; the
#     same command resumes from it and ends where the uninterrupted run ends, weights byte for byte.
for name in straight paused; do
  cat > "$work/$name.yaml" <<YAML
name: $name
model: {path: base}
data: {train: train.jsonl, format: tokens, max_seq_len: 64}
training: {max_steps: 12, micro_batch_size: 2, global_batch_size: 4}
sharding: {zero_stage: 3}
output: {dir: runs/$name, checkpoint_every: 3}
YAML
done
"$bin/shardtune" train "$work/straight.yaml" --np 2 > "$work/straight.log" 2>&1 || fail "the uninterrupted run failed: $(tail -n 5 "$work/straight.log")"
SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE=6 "$bin/shardtune" train "$work/paused.yaml" --np 2 > "$work/paused.log" 2>&1 &
launcher=$!
staging="$work/runs/paused/checkpoints/step-6.tmp"
for _ in $(seq 1 600); do
  [ -f "$staging/rank-00000.safetensors" ] && [ -f "$staging/rank-00001.safetensors" ] && break; sleep 0.1
done
victim=$(pgrep -f "shardtune-worker $work/paused.yaml" | tail -n 1)
kill -9 "$victim"
wait "$launcher"
code=$?
if [ $code -ne 0 ]; then pass "the paused job with a killed rank exits non-zero ($code)"; else fail "it exited 0"; fi
if pgrep -f "shardtune-worker $work/paused.yaml" > /dev/null; then
  fail "a rank outlived the job (its writer paused)"; pkill -9 -f "$work/paused.yaml"
else
  pass "no rank left behind, paused writer or not"
fi
if [ -f "$staging/rank-00001.safetensors" ] && [ ! -e "$staging/index.json" ] && [ ! -e "$work/runs/paused/checkpoints/step-6" ]; then
  pass "killed mid-checkpoint: step-6 is staged, with no index, and not visible"
else
  fail "killed mid-checkpoint: $(ls -R "$work/runs/paused/checkpoints")"
fi
expect_eq "the previous checkpoint is whole" "$(ls "$work/runs/paused/checkpoints/step-3" | tr '\n' ' ')" \
  "index.json rank-00000.safetensors rank-00001.safetensors trainer_state.json "
out=$("$bin/shardtune" train "$work/paused.yaml" --np 2 2>&1)
expect_eq "the same command resumes and finishes" "$?" "0"
expect_contains "it resumed from step-3" "$out" "resuming from $work/runs/paused/checkpoints/step-3 (step 3)"
if [ -e "$staging" ]; then fail "the killed write's step-6.tmp is left"; else pass "the killed write's step-6.tmp is gone"; fi
if cmp -s "$work/runs/straight/final/model.safetensors" "$work/runs/paused/final/model.safetensors"; then
  pass "the resumed run's weights equal the uninterrupted run's, byte for byte"
else
  fail "the resumed run's weights differ from the uninterrupted run's"
fi
expect_eq "and its loss at every step" "$(losses "$work/runs/paused/metrics.jsonl")" "$(losses "$work/runs/straight/metrics.jsonl")"

# 4. examples/tiny-bert as a sentiment classifier on two ranks (ZeRO-2), then `shardtune evaluate`.
"$bin/shardtune" init-model --config "$src/examples/tiny-bert/config.json" --out "$work/bert" --seed 4 --log-level warn
python3 - "$work" <<'PY'
import json, random, sys
good, bad = ["good", "great", "nice", "fun", "lovely"], ["bad", "dull", "poor", "sad", "awful"]
filler = ["the", "film", "plot", "was", "really", "acting", "so"]
for name, count, seed in (("sentiment", 256, 1), ("sentiment-val", 40, 2)):
    r = random.Random(seed)
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for n in range(count):
            words = [r.choice(filler) for _ in range(r.randrange(2, 6))]
            words.insert(r.randrange(len(words) + 1), r.choice(good if n % 2 == 0 else bad))
            f.write(json.dumps({"text": " ".join(words), "label": "positive" if n % 2 == 0 else "negative"}) + "\n")
PY
cat > "$work/bert.yaml" <<YAML
name: bert
model: {path: bert, task: sequence_classification}
data: {train: sentiment.jsonl, validation: sentiment-val.jsonl, format: classification}
training: {max_steps: 60, micro_batch_size: 8, global_batch_size: 16, optimizer: {lr: 1.0e-3}}
sharding: {zero_stage: 2}
output: {dir: runs/bert}
YAML
out=$("$bin/shardtune" train "$work/bert.yaml" --np 2 2>&1)
if [ $? -eq 0 ]; then pass "BERT trains on 2 ranks"; else fail "BERT training failed: $out"; fi
expect_contains "the head is BERT's classifier" "$out" "head \`classifier\` over 2 classes"
expect_eq "the export is a BertForSequenceClassification" \
  "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["architectures"][0])' "$work/runs/bert/final/config.json")" \
  "BertForSequenceClassification"
out=$("$bin/shardtune" evaluate --model "$work/runs/bert/final" --data "$work/sentiment-val.jsonl" --log-level warn)
expect_eq "evaluate reads the exported BERT" "$?" "0"
accuracy=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])' <<<"$out")
if python3 -c "import sys; sys.exit(0 if float('$accuracy') >= 0.9 else 1)"; then
  pass "the classifier learned (accuracy $accuracy)"; else fail "accuracy $accuracy < 0.9: $out"; fi

summary
