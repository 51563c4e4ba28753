#!/usr/bin/env python3
"""Seed corpora for the fuzz targets of tests/fuzz (scripts/fuzz.sh runs this).

Usage: fuzz_seeds.py SOURCE_DIR FIXTURES_DIR CORPUS_DIR

Writes CORPUS_DIR/TARGET/* from the repository's own files (the docs' YAML blocks, examples/'s
config.json files), from ../shared/fixtures where present (read in place, never copied into the
repository; a target whose fixtures are absent says so), and small valid inputs built here in
each binary format (safetensors, TensorBoard events, SentencePiece .model, checkpoints, gRPC
requests), so that every target starts from inputs its parser accepts.
"""

import json
import os
import re
import struct
import sys
from pathlib import Path

source, fixtures, corpus = (Path(a) for a in sys.argv[1:4])
# The largest seed kept (bytes): a target's -max_len in fuzz.sh is at least this for the formats
# whose seeds are large (tokenizer.json).
MAX_SEED = 65536


def put(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_SEED:
        return
    path = corpus / target
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(data)


def fixture(relative):
    path = fixtures / relative
    if path.exists():
        return path.read_bytes()
    print(f"fuzz_seeds: skipped {path} (absent: ../shared/fixtures is not on this machine)")
    return None


# --- protobuf wire format, for the binary seeds -------------------------------------------
def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_float(number, value):
    return varint(number << 3 | 5) + struct.pack("<f", value)


def field_double(number, value):
    return varint(number << 3 | 1) + struct.pack("<d", value)


# --- YAML: job specs and server configs from the docs -------------------------------------
blocks = []
for doc in [source / "README.md"] + sorted((source / "docs").glob("*.md")):
    for i, block in enumerate(re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S)):
        blocks.append((f"{doc.stem}-{i}", block))
# The specs and server configs the tests write: raw strings in the unit tests, heredocs in e2e.
for test in sorted(source.glob("tests/unit/*.cc")):
    for i, block in enumerate(re.findall(r'R"\((name:.*?)\)"', test.read_text(), re.S)):
        blocks.append((f"{test.stem}-{i}", block))
for test in sorted(source.glob("tests/e2e/*.sh")):
    for i, block in enumerate(re.findall(r"<<'?\"?(?:YAML|EOF)'?\"?\n(.*?)\n(?:YAML|EOF)\n", test.read_text(), re.S)):
        blocks.append((f"{test.stem}-{i}", block))
for name, block in blocks:
    if re.search(r"^(name|model|data|training):", block, re.M):
        put("job_spec", name + ".yaml", block)
    if re.search(r"^(listen|api_keys|backend|local|storage|quotas):", block, re.M):
        put("server_config", name + ".yaml", block)
    if re.search(r"^(parameters|strategy|early_termination):", block, re.M):
        put("sweep_spec", name + ".yaml", block)
# Sweep specs: the committed ones (a base job spec may follow "\n--base--\n").
for path in sorted((source / "tests/fuzz/regressions/sweep_spec").glob("*")):
    put("sweep_spec", path.name, path.read_bytes())
put("job_spec", "minimal.yaml", "name: x\nmodel: {path: /m}\ndata: {train: /d.jsonl, format: tokens}\n"
    "training: {max_steps: 2, micro_batch_size: 1, global_batch_size: 2}\noutput: {dir: /o}\n")
put("server_config", "minimal.yaml", "listen: 127.0.0.1:50051\ndata_dir: /tmp/st\napi_keys:\n"
    "  - {tenant: a, role: admin, sha256: " + "0" * 64 + "}\nlocal: {slots: 2}\n")

# --- config.json ---------------------------------------------------------------------------
for path in sorted(list(source.glob("examples/**/*.json")) + list(source.glob("bench/models/*.json"))):
    put("model_config", path.parent.name + "-" + path.name, path.read_bytes())
data = fixture("models/stories260K-hf/config.json")
if data:
    put("model_config", "stories260K.json", data)


# --- safetensors ---------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(payload)]}
        blob += payload
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob


put("safetensors", "two.safetensors", safetensors(
    {"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), "b": ("BF16", [3], b"\x80\x3f" * 3)}, {"format": "pt"}))
put("safetensors", "scalar.safetensors", safetensors({"s": ("I64", [], struct.pack("<q", 7))}))
put("safetensors", "empty.safetensors", safetensors({"e": ("F16", [0, 4], b"")}))

# --- TensorBoard events --------------------------------------------------------------------
CRC_TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    CRC_TABLE.append(c)


def masked_crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(event):
    length = struct.pack("<Q", len(event))
    return length + struct.pack("<I", masked_crc32c(length)) + event + struct.pack("<I", masked_crc32c(event))


events = record(field_double(1, 1.7e9) + field_bytes(3, "brain.Event:2"))
for step in range(3):
    value = field_bytes(1, "train/loss") + field_float(2, 2.5 - step)
    events += record(field_double(1, 1.7e9 + step) + field_varint(2, step) + field_bytes(5, field_bytes(1, value)))
put("tensorboard", "events.out.tfevents", events)

# --- tokenizers ----------------------------------------------------------------------------
for name in ["qwen2-style-tiny-bpe-tokenizer.json", "tiktoken-small-tokenizer.json"]:
    data = fixture("tokenizers/" + name)
    if data:
        put("tokenizer_json", name, data)
letters = {c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
put("tokenizer_json", "wordpiece.json", json.dumps({
    "normalizer": {"type": "BertNormalizer", "lowercase": True},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100,
              "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, **letters, **{"##" + c: i + 40 for c, i in letters.items()}}},
    "added_tokens": [{"id": 1, "content": "[CLS]", "special": True}, {"id": 2, "content": "[SEP]", "special": True}],
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                                                                 {"Sequence": {"id": "A", "type_id": 0}},
                                                                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                       "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
                                          "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}}},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}))
bpe_vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
for piece in ["▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo", "▁hello"]:
    bpe_vocab.setdefault(piece, len(bpe_vocab))
put("tokenizer_json", "bpe-byte-fallback.json", json.dumps({
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "pre_tokenizer": None,
    "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True, "vocab": bpe_vocab,
              "merges": ["▁ h", "l l", "▁h e", "ll o", "▁he llo"]},
    "added_tokens": [{"id": 1, "content": "<s>", "special": True}, {"id": 2, "content": "</s>", "special": True}],
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                 {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip",
                                                                                               "content": " ",
                                                                                               "start": 1,
                                                                                               "stop": 0}]}}))
put("tokenizer_json", "unigram.json", json.dumps({
    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True},
    "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁", -1.0], ["▁he", -2.0], ["llo", -2.5],
                                                         ["h", -3.0], ["e", -3.0], ["l", -3.0], ["o", -3.0]]},
    "decoder": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}}))
put("tokenizer_json", "byte-level.json", json.dumps({
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġa": 4}, "merges": [["a", "b"], ["Ġ", "a"]]},
    "decoder": {"type": "ByteLevel"}, "post_processor": {"type": "ByteLevel", "trim_offsets": True}}))


def sentencepiece(model_type, pieces, byte_fallback=False):
    out = b""
    for text, score, kind in pieces:
        out += field_bytes(1, field_bytes(1, text) + field_float(2, score) + field_varint(3, kind))
    spec = field_varint(3, model_type) + field_varint(35, int(byte_fallback)) + field_varint(40, 0)
    spec += field_varint(41, 1) + field_varint(42, 2) + field_varint(43, (1 << 64) - 1)
    out += field_bytes(2, spec)
    out += field_bytes(3, field_varint(3, 1) + field_varint(4, 1) + field_varint(5, 1))
    return out


base = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
words = [("▁", -1.0, 1), ("▁he", -2.0, 1), ("llo", -2.0, 1), ("h", -3.0, 1), ("e", -3.0, 1), ("l", -3.0, 1),
         ("o", -3.0, 1), ("<user>", 0.0, 4)]
put("sentencepiece", "unigram.model", sentencepiece(1, base + words))
put("sentencepiece", "bpe-bytes.model",
    sentencepiece(2, base + [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)] + words, byte_fallback=True))
for name in ["small-sentencepiece.model"]:
    data = fixture("tokenizers/" + name)
    if data:
        put("sentencepiece", "fixture-head-" + name, data[:MAX_SEED])

# --- data files: the first byte picks the format (data_format_fuzz.cc) ---------------------
FORMATS = ["chat", "completion", "alpaca", "sharegpt", "text", "classification", "ner", "tokens"]
lines = {
    "chat": ['{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}, '
             '{"role": "assistant", "content": "hello", "weight": 1}]}'],
    "completion": ['{"prompt": "the cat", "completion": " sat on the mat"}'],
    "alpaca": ['{"instruction": "say hi", "input": "", "output": "hi"}'],
    "sharegpt": ['{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}'],
    "text": ['{"text": "a good day to you"}'],
    "classification": ['{"text": "great film", "label": "positive"}', '{"text": "bad", "label": "negative"}'],
    "ner": ['{"tokens": ["ann", "lives", "here"], "tags": ["B-PER", "O", "O"]}'],
    "tokens": ['{"input_ids": [1, 5, 6, 7], "labels": [-100, 5, 6, 7]}'],
}
for index, fmt in enumerate(FORMATS):
    for template in range(5):
        put("data_format", f"{fmt}-{template}.jsonl", bytes([index + 8 * template]) + "\n".join(lines[fmt]).encode())
put("data_format", "alpaca-array.json", bytes([2]) + b'[{"instruction": "a", "output": "b"}]')
for name, fmt in [("datasets/chat_tiny.json", "sharegpt"), ("datasets/alpaca_tiny.json", "alpaca")]:
    data = fixture(name)
    if data:
        put("data_format", "fixture-" + Path(name).name, bytes([FORMATS.index(fmt)]) + data[:8192])

# --- checkpoints: index.json and two rank files (checkpoint_index_fuzz.cc) -----------------
index = {"format": "shardtune-checkpoint", "version": 1, "step": 1,
         "units": [{"parameters": [{"name": "a", "shape": [2, 3], "numel": 6, "offset": 0},
                                   {"name": "b", "shape": [4], "numel": 4, "offset": 6}]}],
         "files": [{"file": "rank-00000.safetensors", "rank": 0, "elements": 5,
                    "ranges": [{"unit": 0, "begin": 0, "size": 5, "local_offset": 0}]},
                   {"file": "rank-00001.safetensors", "rank": 1, "elements": 5,
                    "ranges": [{"unit": 0, "begin": 5, "size": 5, "local_offset": 0}]}]}
rank = [safetensors({"values": ("F32", [5], struct.pack("<5f", *range(5 * r, 5 * r + 5)))}) for r in range(2)]
put("checkpoint_index", "two-ranks", json.dumps(index).encode() + b"\n--file--\n" + rank[0] + b"\n--file--\n" + rank[1])


# --- gRPC requests: the first byte picks CreateJobRequest (even) or ValidateJobRequest ------
def struct_value(value):
    if isinstance(value, dict):
        return field_bytes(5, b"".join(field_bytes(1, field_bytes(1, k) + field_bytes(2, struct_value(v)))
                                       for k, v in value.items()))
    if isinstance(value, bool):
        return field_varint(4, int(value))
    if isinstance(value, (int, float)):
        return field_double(2, float(value))
    return field_bytes(3, value)


spec = {"name": "x", "model": {"path": "/m"}, "data": {"train": "/d.jsonl", "format": "tokens"},
        "training": {"max_steps": 2, "micro_batch_size": 1, "global_batch_size": 2}, "output": {"dir": "/o"}}
put("job_request", "create-yaml", b"\x00" + field_bytes(1, (corpus / "job_spec" / "minimal.yaml").read_bytes())
    + field_bytes(2, "key-1") + field_varint(3, 2))
put("job_request", "validate-yaml", b"\x01" + field_bytes(1, (corpus / "job_spec" / "minimal.yaml").read_bytes()))
struct_message = b"".join(field_bytes(1, field_bytes(1, k) + field_bytes(2, struct_value(v))) for k, v in spec.items())
put("job_request", "create-fields", b"\x00" + field_bytes(4, struct_message))
put("job_request", "validate-fields", b"\x01" + field_bytes(2, struct_message))

# --- OpenAI-compatible request bodies: the committed regressions, and the bodies the unit test refuses ------
for path in sorted((source / "tests/fuzz/regressions/openai_request").glob("*")):
    put("openai_request", path.name, path.read_bytes())
for i, body in enumerate(re.findall(r'\{"\{" \+ ok \+ R"\((.*?)\)"', (source / "tests/unit/openai_test.cc").read_text())):
    put("openai_request", f"unit-{i}", '{"model": "m", "training_file": "f"' + body)

for target in sorted(p.name for p in corpus.iterdir()):
    print(f"fuzz_seeds: {target}: {len(list((corpus / target).iterdir()))} seeds")
