#!/usr/bin/env bash
# The small-data study (docs/data.md, "What helps with little data"): the sentiment example cut
# to 32 training examples, a tiny BERT classifier trained four ways, macro-F1 on the whole
# validation file, mean and sd over 5 seeds:
#   plain      the 32 examples
#   balanced   data.balance: oversample
#   augmented  data.augment: {copies: 4} (EDA with WordNet)
#   synthetic  the 32 plus 64 examples that `shardtune synthesize` wrote with a teacher (a
#              byte-level tiny Llama fine-tuned on the 32, rendered as the classification template)
# Every run has the same steps (160 of 16 examples: 80 epochs of the 32, 16 of the augmented
# data). Also prints synthesize's tokens/s and the synthetic examples' labels.
# Usage: bench/small_data_study.sh [BUILD_BIN_DIR]   (default build/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/bin}")
src=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The 32 training examples: a seeded sample of the example's 64.
python3 - "$src/examples/data/sentiment-train.jsonl" <<'PY'
import json, random, sys
lines = open(sys.argv[1]).read().splitlines()
random.Random(32).shuffle(lines)
open("train32.jsonl", "w").write("\n".join(lines[:32]) + "\n")
labels = [json.loads(l)["label"] for l in lines[:32]]
print("train32:", {l: labels.count(l) for l in sorted(set(labels))})
PY
cp "$src/examples/data/sentiment-val.jsonl" val.jsonl

# The teacher: a byte-level tokenizer (every byte a token, then <s> </s> <pad>) on a tiny Llama,
# fine-tuned on blocks of three of the 32 examples as the classification template shows them.
python3 - <<'PY'
import json, random
def byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
table = byte_to_unicode()
vocab = {table[b]: b for b in range(256)}
added = []
for i, token in enumerate(["<s>", "</s>", "<pad>"]):
    vocab[token] = 256 + i
    added.append({"id": 256 + i, "content": token, "special": True, "normalized": False})
tokenizer = {"model": {"type": "BPE", "vocab": vocab, "merges": []},
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
             "decoder": {"type": "ByteLevel"}, "added_tokens": added}
json.dump(tokenizer, open("tokenizer.json", "w"))
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 259, "hidden_size": 128,
          "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
          "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "hidden_act": "silu", "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258, "torch_dtype": "float32"}
json.dump(config, open("teacher-config.json", "w"))
examples = [json.loads(l) for l in open("train32.jsonl")]
rng = random.Random(1)
with open("teaching.jsonl", "w") as f:
    for _ in range(96):
        block = "".join(f"Text: {e['text']}\nLabel: {e['label']}\n\n" for e in rng.sample(examples, 3))
        f.write(json.dumps({"text": block}) + "\n")
PY
"$bin/shardtune" init-model --config teacher-config.json --out teacher-base --seed 1 --log-level warn
cp tokenizer.json teacher-base/
cat > teacher.yaml <<YAML
name: teacher
model: {path: teacher-base}
data: {train: teaching.jsonl, format: text, max_seq_len: 512}
training: {max_steps: 300, micro_batch_size: 8, optimizer: {lr: 3.0e-3}, scheduler: {type: cosine, warmup_steps: 20}}
output: {dir: teacher-run}
YAML
"$bin/shardtune" train teacher.yaml --log-level warn > /dev/null
"$bin/shardtune" synthesize --model teacher-run/final --seed-data train32.jsonl --format classification --num 64 \
  --max-candidates 512 --shots 3 --temperature 1.0 --top-p 0.95 --max-new-tokens 64 --batch-size 16 \
  --out synth.jsonl --output json --log-level warn > synth-report.json
python3 -c 'import json; r = json.load(open("synth-report.json")); print("synthesize:", r["kept"], "kept of", r["candidates"], "candidates; removed", r["removed"], "; %.0f tokens/s (%d tokens in %.1f s)" % (r["tokens_per_s"], r["generated_tokens"], r["seconds"]))'
python3 -c 'import json,collections; print("synthetic labels:", dict(collections.Counter(json.loads(l)["label"] for l in open("synth.jsonl"))), "; e.g.", open("synth.jsonl").readline().strip())'
cat train32.jsonl synth.jsonl > train-synthetic.jsonl

run() {  # name seed train-file extra-data-keys
  local name=$1 seed=$2
  "$bin/shardtune" init-model --config "$src/examples/tiny-bert/config.json" --out "bert-$name-$seed" --seed "$seed" \
    --log-level warn
  cat > "$name-$seed.yaml" <<YAML
name: $name-$seed
model: {path: bert-$name-$seed, task: sequence_classification, labels: [negative, positive]}
data: {train: $3, validation: val.jsonl, format: classification, max_seq_len: 32$4}
training: {max_steps: 160, micro_batch_size: 16, optimizer: {lr: 1.0e-3}, seed: $seed}
output: {dir: runs/$name-$seed}
YAML
  "$bin/shardtune" train "$name-$seed.yaml" --log-level warn > /dev/null
  python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "macro_f1" in l][-1]["macro_f1"])' \
    "runs/$name-$seed/metrics.jsonl" >> "$name.f1"
}
for seed in 1 2 3 4 5; do
  run plain "$seed" train32.jsonl ""
  run balanced "$seed" train32.jsonl ", balance: oversample"
  run augmented "$seed" train32.jsonl ", augment: {copies: 4}"
  run synthetic "$seed" train-synthetic.jsonl ""
done
echo "macro-F1 on the sentiment validation file ($(wc -l < val.jsonl) examples), 5 seeds:"
for name in plain balanced augmented synthetic; do
  python3 - "$name" <<'PY'
import statistics, sys
values = [float(l) for l in open(sys.argv[1] + ".f1")]
print(f"  {sys.argv[1]:10s} {statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}   ({', '.join(f'{v:.3f}' for v in values)})")
PY
done
