#!/usr/bin/env bash
# QLoRA on a pre-quantized base through the CLI: `shardtune quantize` writes the layout transformers
# saves for a bitsandbytes 4-bit model; a LoRA job on it (no model.quantization: the checkpoint's
# own is used) trains exactly as the same job on the original weights with model.quantization
# nf4; generate --adapter runs on either base; what a 4-bit-only base cannot give (an hf merge,
# full fine-tuning) is refused by name. Usage: qlora_test.sh BUILD_BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/checks.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cd "$work" || exit 1

"$bin/shardtune" init-model --config "$src/examples/tiny-llama/config.json" --out base --seed 1 --dtype bf16 \
  --log-level warn
cp "$src/examples/data/count-up.jsonl" train.jsonl

# 1. quantize: the tensors and config.json transformers writes for load_in_4bit.
out=$("$bin/shardtune" quantize base --out base-nf4 2>&1)
expect_eq "quantize exits 0" "$?" "0"
expect_contains "quantize says what it stored" "$out" "14 weights"
python3 - base-nf4 > layout.txt <<'PY'
import json, struct, sys
path = sys.argv[1]
with open(path + "/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
def tensor(name):
    t = header[name]
    b, e = t["data_offsets"]
    return t, data[b:e]
w = "model.layers.1.mlp.down_proj.weight"  # [64, 128]: 8192 elements, 128 blocks of 64
t, _ = tensor(w)
print("weight", t["dtype"], t["shape"])
t, _ = tensor(w + ".absmax"); print("absmax", t["dtype"], t["shape"])
t, _ = tensor(w + ".nested_absmax"); print("nested_absmax", t["dtype"], t["shape"])
t, _ = tensor(w + ".nested_quant_map"); print("nested_quant_map", t["dtype"], t["shape"])
t, raw = tensor(w + ".quant_map"); print("quant_map", t["dtype"], t["shape"], struct.unpack("<16f", raw)[0])
t, raw = tensor(w + ".quant_state.bitsandbytes__nf4"); state = json.loads(raw)
print("state", state["quant_type"], state["blocksize"], state["shape"], state["dtype"], state["nested_blocksize"])
t, _ = tensor("model.embed_tokens.weight"); print("embedding", t["dtype"], t["shape"])
q = json.load(open(path + "/config.json"))["quantization_config"]
print("config", q["quant_method"], q["load_in_4bit"], q["bnb_4bit_quant_type"], q["bnb_4bit_use_double_quant"],
      q["bnb_4bit_quant_storage"])
PY
layout=$(cat layout.txt)
expect_contains "the packed weight is U8 [(n + 1) / 2, 1]" "$layout" "weight U8 [4096, 1]"
expect_contains "one 8-bit absmax per block of 64" "$layout" "absmax U8 [128]"
expect_contains "one fp32 nested absmax per 256 blocks" "$layout" "nested_absmax F32 [1]"
expect_contains "the dynamic map" "$layout" "nested_quant_map F32 [256]"
expect_contains "NF4's code values, -1 first" "$layout" "quant_map F32 [16] -1.0"
expect_contains "the quant_state JSON" "$layout" "state nf4 64 [64, 128] bfloat16 256"
expect_contains "the embedding stays as it was" "$layout" "embedding BF16 [64, 64]"
expect_contains "config.json's quantization_config" "$layout" "config bitsandbytes True nf4 True uint8"
out=$("$bin/shardtune" quantize base-nf4 --out twice 2>&1)
expect_eq "quantizing a 4-bit model is refused" "$?" "2"
expect_contains "and says why" "$out" "4-bit already"
expect_eq "and writes nothing" "$(ls -d twice 2>/dev/null)" ""

# 2. The same LoRA job on the original base with model.quantization nf4 and on the 4-bit one.
job() {  # job NAME MODEL QUANTIZATION EXPORT
  cat > "$1.yaml" <<YAML
name: $1
model: {path: $2, quantization: {type: $3}}
method: {type: lora, lora: {r: 4, target_modules: all-linear}}
data: {train: train.jsonl, format: tokens, max_seq_len: 32}
training: {max_steps: 4, micro_batch_size: 2, global_batch_size: 4, optimizer: {lr: 1.0e-3}}
sharding: {zero_stage: 3}
output: {dir: runs/$1, export: [$4], checkpoint_every: 2}
YAML
}
job original base nf4 peft
job stored base-nf4 none peft
"$bin/shardtune" train original.yaml --np 2 > original.log 2>&1
expect_eq "QLoRA on the original weights trains" "$?" "0"
"$bin/shardtune" train stored.yaml --np 2 > stored.log 2>&1
expect_eq "QLoRA on the 4-bit checkpoint trains" "$?" "0"
expect_contains "it says it uses the checkpoint's format" "$(cat stored.log)" "a 4-bit checkpoint (14 weights stored nf4"
expect_contains "job.yaml records the quantization" "$(cat runs/stored/job.yaml)" "type: nf4"
losses() { python3 -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1]) if "\"loss\"" in l))' "$1"; }
expect_eq "four steps' losses" "$(losses runs/original/metrics.jsonl | wc -w)" "4"
expect_eq "the two runs' losses are equal" "$(losses runs/stored/metrics.jsonl)" "$(losses runs/original/metrics.jsonl)"

# Without config.json's quantization_config the tensors' quant_state still say it.
cp -r base-nf4 undeclared
python3 -c 'import json,sys; p=sys.argv[1]; c=json.load(open(p)); del c["quantization_config"]; json.dump(c, open(p, "w"))' \
  undeclared/config.json
job undeclared undeclared none peft
"$bin/shardtune" train undeclared.yaml --np 2 > undeclared.log 2>&1
expect_eq "QLoRA on 4-bit tensors that config.json does not declare trains" "$?" "0"
expect_eq "with the same losses" "$(losses runs/undeclared/metrics.jsonl)" "$(losses runs/original/metrics.jsonl)"

# 3. generate --adapter on the 4-bit base, and on the original one rounded through NF4: the same.
gen() { "$bin/shardtune" generate --model "$1" --adapter runs/original/final --input-ids "1 11 12 13" \
          --max-new-tokens 6 --format ids --log-level warn "${@:2}"; }
a=$(gen base-nf4)
expect_eq "generate --adapter on the 4-bit base exits 0" "$?" "0"
b=$(gen base --quantization nf4)
expect_eq "generate --adapter --quantization nf4 exits 0" "$?" "0"
expect_eq "both bases generate the same tokens" "$a" "$b"
expect_eq "six new tokens" "$(wc -w <<<"$a")" "6"

# 4. What a 4-bit-only base cannot give.
job merged base-nf4 none hf
out=$("$bin/shardtune" train merged.yaml 2>&1)
expect_eq "an hf export from a 4-bit-only base is refused" "$?" "2"
expect_contains "naming output.export" "$out" "output.export: hf merges the adapter into the original weights"
out=$("$bin/shardtune" export runs/stored/checkpoints/step-2 --to hf --out merged 2>&1)
expect_eq "export --to hf of its checkpoint is refused" "$?" "2"
expect_contains "saying why" "$out" "holds only 4-bit weights"
"$bin/shardtune" export runs/stored/checkpoints/step-2 --to peft --out adapter --log-level warn
expect_eq "export --to peft works" "$?" "0"
expect_contains "its model card names the 4-bit base" "$(cat adapter/README.md)" "bnb_4bit_quant_type: nf4"
sed 's|method: .*|method: {type: full}|; s|export: \[peft\]|export: [hf]|' stored.yaml > full.yaml
out=$("$bin/shardtune" train full.yaml 2>&1)
expect_eq "full fine-tuning of a 4-bit base is refused" "$?" "2"
expect_contains "naming method.type" "$out" "method.type 'full'"
job mismatch base-nf4 fp4 peft
out=$("$bin/shardtune" train mismatch.yaml 2>&1)
expect_eq "model.quantization other than the checkpoint's is refused" "$?" "2"
expect_contains "naming a tensor and both formats" "$out" "model.quantization is fp4 (block size 64, double quantization), but"
mkdir keep && echo mine > keep/file
out=$("$bin/shardtune" quantize base --out keep 2>&1)
expect_eq "quantize into an existing directory is refused" "$?" "2"
expect_contains "naming it" "$out" "--out keep: exists"
expect_eq "and leaves what was there" "$(cat keep/file)" "mine"
out=$("$bin/shardtune" quantize base --out bad --type int4 2>&1)
expect_eq "quantize --type int4 is refused" "$?" "2"

summary
