#!/usr/bin/env bash
# Data quality as a user meets it: validate-data finds planted duplicates, near duplicates and
# validation examples leaked into training (text and JSON reports), data.dedup removes them
# before training, data.balance reweights or oversamples the classes, and bad data comes back as
# JSON problems with file, line and code.
# Usage: data_quality_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"
cd "$work" || exit 1

"$bin/shardtune" init-model --config "$src/examples/tiny-bert/config.json" --out bert --seed 4 --log-level warn

# 300 sentences of made-up words (no two alike), then planted: 20 exact copies, 20 near copies
# (case and punctuation changed: Jaccard 1 after normalization, not byte-identical), and a
# validation set of 40 new sentences plus 10 copies of training sentences (5 exact, 5 near).
# Every planted copy's original is a different sentence. plants.json records where each went.
python3 - <<'PY'
import json, random
rng = random.Random(7)
def sentence():
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 8)))
                    for _ in range(rng.randint(8, 14)))
base = [sentence() for _ in range(300)]
labels = ["positive" if rng.random() < 0.75 else "negative" for _ in base]  # unbalanced: about 3 to 1
originals = rng.sample(range(300), 50)
exact, near, leaked = originals[:20], originals[20:40], originals[40:]
train = [(t, l) for t, l in zip(base, labels)]
plants = {"exact": [], "near": [], "leaked": []}
for k, o in enumerate(exact + near):
    text = base[o] if k < 20 else base[o].upper() + "!"
    train.append((text, labels[o]))
    plants["exact" if k < 20 else "near"].append([len(train), o + 1])  # 1-based lines: copy, original
validation = [(sentence(), rng.choice(["positive", "negative"])) for _ in range(40)]
for k, o in enumerate(leaked):
    validation.append((base[o] if k < 5 else base[o].capitalize() + ".", labels[o]))
    plants["leaked"].append([len(validation), o + 1])
with open("train.jsonl", "w") as f:
    for t, l in train: f.write(json.dumps({"text": t, "label": l}) + "\n")
with open("val.jsonl", "w") as f:
    for t, l in validation: f.write(json.dumps({"text": t, "label": l}) + "\n")
json.dump(plants, open("plants.json", "w"))
PY

write_job() {  # name dedup balance
  cat > "$1.yaml" <<YAML
name: $1
model: {path: bert, task: sequence_classification, labels: [negative, positive]}
data: {train: train.jsonl, validation: val.jsonl, format: classification, max_seq_len: 128, dedup: $2, balance: $3}
training: {max_steps: 2, micro_batch_size: 8, global_batch_size: 8, optimizer: {lr: 1.0e-3}}
output: {dir: runs/$1}
YAML
}

# 1. validate-data finds what was planted, with its lines, and nothing else.
write_job plain none none
out=$("$bin/shardtune" validate-data plain.yaml 2>&1)
expect_eq "validate-data passes data with duplicates" "$?" "0"
expect_contains "the text report counts duplicates" "$out" "duplicates: 20 exact, 20 near"
expect_contains "the text report warns of leakage" "$out" "10 validation examples have exact or near copies"
"$bin/shardtune" validate-data plain.yaml --output json > report.json
expect_eq "validate-data --output json exits 0" "$?" "0"
python3 - <<'PY' > found.txt
import json
report, plants = json.load(open("report.json")), json.load(open("plants.json"))
train = [f for f in report["files"] if f["role"] == "train"][0]
pairs = {(p["line"], p["duplicate_of_line"], p["kind"]) for p in train["duplicates"]["pairs"]}
want = {(c, o, "exact") for c, o in plants["exact"]} | {(c, o, "near") for c, o in plants["near"]}
found = len(pairs & want)
print("top", report["duplicates"]["exact"], report["duplicates"]["near"], report["leaked"])
print("pairs", len(pairs), found)  # the first 20 pairs are listed: all must be planted ones
leaks = {(l["line"], l["validation_line"]) for l in train["leaks"]}
print("leaks", len(leaks), len(leaks & {(o, v) for v, o in plants["leaked"]}))
print("totals", report["examples"], sorted((l["name"], l["count"]) for l in report["labels"])[0][0], report["dedup"]["mode"])
PY
expect_eq "JSON: 20 exact, 20 near duplicates and 10 leaked validation examples" "$(sed -n 1p found.txt)" "top 20 20 10"
expect_eq "JSON: the listed pairs are planted ones, with the right lines and kinds" "$(sed -n 2p found.txt)" "pairs 20 20"
expect_eq "JSON: each leak names the training line and the validation line it copies" "$(sed -n 3p found.txt)" "leaks 10 10"
expect_eq "JSON: the training totals and the dedup setting" "$(sed -n 4p found.txt)" "totals 340 negative none"

# 2. data.dedup removes them before training; validation stays whole.
write_job near near none
out=$("$bin/shardtune" train near.yaml 2>&1)
expect_eq "a job with data.dedup: near trains" "$?" "0"
expect_contains "the job log counts what dedup removed" "$out" \
  "removed 50 of 340 training examples: 40 duplicates (20 exact, 20 near, Jaccard >= 0.85) and 10 copies of validation examples (10 validation examples had copies)"
expect_contains "the job trains on what is left, validates on all" "$out" "data: 290 training examples, 50 validation examples"
write_job exact exact none
out=$("$bin/shardtune" train exact.yaml 2>&1)
expect_contains "data.dedup: exact removes exact copies only" "$out" "data: 315 training examples, 50 validation examples"
cat > mapping.yaml <<YAML
name: mapping
model: {path: bert, task: sequence_classification, labels: [negative, positive]}
data: {train: train.jsonl, validation: val.jsonl, format: classification, max_seq_len: 128, dedup: {threshold: 0.9, shingle: words, ngram: 2}}
training: {max_steps: 1, micro_batch_size: 8}
output: {dir: runs/mapping}
YAML
out=$("$bin/shardtune" validate-data mapping.yaml --output json 2>&1)
expect_contains "dedup as a mapping defaults to near" "$out" '"mode":"near"'
expect_contains "dedup's shingles are configurable" "$out" '"shingle":"words"'

# 3. data.balance.
write_job weights none class_weights
out=$("$bin/shardtune" train weights.yaml 2>&1)
expect_eq "a job with class weights trains" "$?" "0"
expect_contains "the job log lists the class weights" "$out" "balance: class weights in the loss: negative"
write_job over none oversample
out=$("$bin/shardtune" train over.yaml 2>&1)
expect_eq "an oversampled job trains" "$?" "0"
expect_contains "oversampling evens the classes" "$out" "oversampled 340 training examples to"
oversampled=$(sed -n 's/.*oversampled 340 training examples to \([0-9]*\).*/\1/p' <<<"$out" | head -n 1)
out=$("$bin/shardtune" validate-data over.yaml 2>&1)
expect_contains "validate-data says what oversampling adds" "$out" \
  "data.balance oversample adds $((oversampled - 340)) training examples"
sed -e 's/task: sequence_classification, labels: \[negative, positive\]/task: token_classification/' \
    -e 's/format: classification/format: ner/' over.yaml > ner.yaml
out=$("$bin/shardtune" validate-data ner.yaml 2>&1)
expect_eq "oversample with ner is refused" "$?" "2"
expect_contains "and says why" "$out" "use class_weights for ner"
sed 's/balance: none/balance: oversample/' plain.yaml | sed 's/sequence_classification, labels: \[negative, positive\]/causal_lm/;s/format: classification/format: text/' > lm.yaml
out=$("$bin/shardtune" validate-data lm.yaml 2>&1)
expect_contains "balance needs classes" "$out" "data.balance"

# 4. data.augment: EDA copies of each training example, deterministic, labels and tags kept.
# (Made-up words have no synonyms: swap and deletion make the copies.)
sed 's/balance: none/balance: none, augment: {copies: 2, synonym_replacement: 0, random_insertion: 0, random_deletion: 0.5}/' plain.yaml | sed 's/name: plain/name: augmented/;s|runs/plain|runs/augmented|' > augmented.yaml
out=$("$bin/shardtune" train augmented.yaml 2>&1)
expect_eq "an augmented job trains" "$?" "0"
new=$(cat runs/augmented/cache/train-augmented-*.jsonl | wc -l)
[ "$new" -gt 600 ] && pass "nearly every example got two changed copies ($new)" || fail "only $new augmented examples"
expect_contains "the log counts the new examples" "$out" "augment: $new new examples, up to 2 for each of 340 training examples"
expect_contains "augmented examples train; validation is unchanged" "$out" "data: $((340 + new)) training examples, 50 validation examples"
out=$("$bin/shardtune" validate-data augmented.yaml --output json 2>&1)
expect_eq "validate-data counts what augmentation adds, as training makes it" \
  "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["augment"]["adds"])' <<<"$out")" "$new"
labels=$(python3 - runs/augmented/cache/train-augmented-*.jsonl <<'PY'
import json, sys
train = [json.loads(l) for l in open("train.jsonl")]
label_of = {" ".join(sorted(r["text"].split())): r["label"] for r in train}
augmented = [json.loads(l) for l in open(sys.argv[1])]
# A swapped copy has its original's words: its label must be the original's.
swapped = [r for r in augmented if " ".join(sorted(r["text"].split())) in label_of]
print(len(swapped) > 250, all(label_of[" ".join(sorted(r["text"].split()))] == r["label"] for r in swapped))
PY
)
expect_eq "copies keep their example's label" "$labels" "True True"
first=$(cat runs/augmented/cache/train-augmented-*.jsonl | md5sum)
rm -rf runs/augmented
"$bin/shardtune" train augmented.yaml > /dev/null 2>&1
expect_eq "augmentation is deterministic: the same records again" \
  "$(cat runs/augmented/cache/train-augmented-*.jsonl | md5sum)" "$first"
# NER: sentences around two-word entities; every augmented record keeps its original's entities.
python3 - <<'PY'
import json, random
rng = random.Random(3)
words = "the report said that a meeting was held on monday with good results and a great film".split()
people, places = [["Ada", "Lovelace"], ["Alan", "Turing"]], [["New", "York"], ["Buenos", "Aires"]]
with open("ner.jsonl", "w") as f, open("ner-val.jsonl", "w") as v:
    for n in range(60):
        toks = [rng.choice(words) for _ in range(rng.randint(4, 9))]
        tags = ["O"] * len(toks)
        for entity, kind in ((rng.choice(people), "PER"), (rng.choice(places), "LOC")):
            at = rng.choice([i for i in range(len(toks) + 1) if i == len(toks) or not tags[i].startswith("I-")])
            toks[at:at] = entity
            tags[at:at] = ["B-" + kind] + ["I-" + kind] * (len(entity) - 1)
        (v if n >= 50 else f).write(json.dumps({"tokens": toks, "tags": tags}) + "\n")
PY
cat > ner-aug.yaml <<YAML
name: ner-aug
model: {path: bert, task: token_classification}
data: {train: ner.jsonl, validation: ner-val.jsonl, format: ner, max_seq_len: 128, augment: {copies: 3, synonym_replacement: 0.3, random_insertion: 0.3, random_swap: 0.3, random_deletion: 0.3}, balance: class_weights}
training: {max_steps: 2, micro_batch_size: 8}
output: {dir: runs/ner-aug}
YAML
out=$("$bin/shardtune" train ner-aug.yaml 2>&1)
expect_eq "an augmented NER job trains" "$?" "0"
aligned=$(python3 - runs/ner-aug/cache/ner-augmented-*.jsonl <<'PY'
import json, sys
originals = [json.loads(l) for l in open("ner.jsonl")]
augmented = [json.loads(l) for l in open(sys.argv[1])]
def entities(r): return [(w, t) for w, t in zip(r["tokens"], r["tags"]) if t != "O"]
# Copies come in their originals' order (unchanged copies are dropped): match them in order.
ok, j, changed = len(augmented) >= 2 * len(originals), 0, 0
for r in augmented:
    while j < len(originals) and entities(originals[j]) != entities(r):
        j += 1
    ok &= j < len(originals) and len(r["tokens"]) == len(r["tags"])
    ok &= all(t[2:] == r["tags"][i - 1][2:] for i, t in enumerate(r["tags"]) if t.startswith("I-"))
    changed += j < len(originals) and r["tokens"] != originals[j]["tokens"]
print(ok, changed == len(augmented))
PY
)
expect_eq "augmented NER records keep every entity whole, in order, with aligned BIO tags" "$aligned" "True True"

# 5. Bad data: the JSON report lists each problem with file, line and code.
{ head -n 2 train.jsonl; echo '{"text": "no label"}'; echo 'not json'; } > bad.jsonl
sed 's/train: train.jsonl/train: bad.jsonl/' plain.yaml > bad.yaml
"$bin/shardtune" validate-data bad.yaml --output json > bad.json 2> /dev/null
expect_eq "bad data exits 2" "$?" "2"
problems=$(python3 - <<'PY'
import json
r = json.load(open("bad.json"))
print(r["ok"], r["total_problems"], *["%d:%s" % (p["line"], p["code"]) for p in r["problems"]])
PY
)
expect_eq "JSON problems carry line and code" "$problems" "False 2 3:missing_key 4:invalid_json"

summary
