"""The data part of the Scale path (issue 17): a ~20M-token chat dataset tokenized once per job
into the token cache, by 1 rank and by 4; each rank's memory while training from it.

The jobs train a tiny Llama with the Llama-2 vocabulary (32,000 ids) for one step, so that what
the data costs is not hidden under the model: the runs differ only in the dataset (20M tokens
against ~20 thousand) and the ranks. A sampler reads every rank's /proc/PID/status each 50 ms:
RssAnon (the process's own memory) and RssFile (mapped files: the cache's pages, shared by the
ranks of a node through the page cache). Where the build of main (before the cache) is at
/work/main/build, the same 20M-token job on 4 ranks runs with it side by side.
"""
import json
import os
import random
import re
import shutil
import threading
import time
from pathlib import Path

from scale.common import BENCH, mib, run

TOKENIZER = BENCH.parent.parent / "shared" / "fixtures" / "tokenizers" / "llama2-tokenizer.json"
BEFORE = Path("/work/main/build/bin/shardtune")
TARGET_TOKENS = 20_000_000
CHARS_PER_TOKEN = 3.2  # of the JSONL per Llama-2 token of the generated text (the cache counts them)


def write_chat(path, tokens, seed):
    """Synthetic conversations (system, user and assistant turns of made-up words) of about
    `tokens` Llama-2 tokens, as JSONL."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tos", "va", "quel", "dor", "pi", "sun", "ber", "gal", "ix", "no", "tra"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    words += ["the", "a", "of", "and", "to", "is", "in", "that", "it", "for"] * 40

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(4, 18))).capitalize() + rng.choice(".?!")

    budget = tokens * CHARS_PER_TOKEN
    with open(path, "w") as f:
        while budget > 0:
            messages = [{"role": "system", "content": sentence()}] if rng.random() < 0.3 else []
            for _ in range(rng.randint(1, 4)):
                messages.append({"role": "user", "content": " ".join(sentence() for _ in range(rng.randint(1, 3)))})
                messages.append({"role": "assistant", "content": " ".join(sentence() for _ in range(rng.randint(1, 6)))})
            line = json.dumps({"messages": messages})
            budget -= len(line)
            f.write(line + "\n")


class RssSampler:
    """Peak RssAnon and RssFile of each process whose command line holds `marker`."""

    def __init__(self, marker):
        self.marker = marker
        self.peaks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if "shardtune-worker" not in cmdline or self.marker not in cmdline:
                        continue
                    status = (proc / "status").read_text()
                except OSError:
                    continue
                fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", status, re.M))
                peak = self.peaks.setdefault(proc.name, {"anon": 0, "file": 0})
                peak["anon"] = max(peak["anon"], int(fields.get("RssAnon", 0)) * 1024)
                peak["file"] = max(peak["file"], int(fields.get("RssFile", 0)) * 1024)
            time.sleep(0.05)

    def worst(self, key):
        return max((p[key] for p in self.peaks.values()), default=0)


def job(ctx, name, data, cache, model, np, binary=None):
    """One training step on `np` ranks; returns (log, peak RSS per rank, wall seconds)."""
    out = ctx.work / "data-runs" / name
    shutil.rmtree(out, ignore_errors=True)
    spec = ctx.work / f"data-{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        f"model: {{path: {model}, tokenizer: {TOKENIZER}}}\n"
        f"data: {{train: {data}, format: chat, chat_template: llama2, max_seq_len: 512, cache_dir: {cache}}}\n"
        "training: {max_steps: 1, micro_batch_size: 1, global_batch_size: 4}\n"
        f"output: {{dir: {out}}}\n")
    start = time.monotonic()
    with RssSampler(str(spec)) as sampler:
        result = run([binary or ctx.bin / "shardtune", "train", spec, "--np", np], env={"OMP_NUM_THREADS": "1"})
    return result.stdout + result.stderr, sampler, time.monotonic() - start


def signed_mib(n):
    return f"{'+' if n >= 0 else '-'}{abs(n) / 2**20:.1f} MiB"


def cache_seconds(log, verb):
    m = re.search(rf"token cache: {verb} \S+ \((\d+) examples, (\d+) tokens\D+([\d.]+) s", log)
    if not m:
        raise RuntimeError(f"no 'token cache: {verb}' line in:\n{log[-3000:]}")
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def measure(ctx):
    if not TOKENIZER.exists():
        return f"### data\n\nSKIPPED: {TOKENIZER} (the fixtures) is not there\n"
    config = json.loads((BENCH.parent / "examples" / "tiny-llama" / "config.json").read_text())
    config.update(vocab_size=32000, max_position_embeddings=512)
    (ctx.work / "data-model.json").write_text(json.dumps(config))
    model = ctx.work / "data-model"
    if not model.exists():
        ctx.shardtune("init-model", "--config", ctx.work / "data-model.json", "--out", model, "--log-level", "warn")
    big, small = ctx.work / "chat-20m.jsonl", ctx.work / "chat-small.jsonl"
    if not big.exists():
        write_chat(big, TARGET_TOKENS // (10 if ctx.quick else 1), seed=1)
    write_chat(small, 20_000, seed=2)
    caches = ctx.work / "data-caches"
    shutil.rmtree(caches, ignore_errors=True)

    rows = []
    log, rss1, wall1 = job(ctx, "build-np1", big, caches / "np1", model, 1)
    examples, tokens, build1 = cache_seconds(log, "built")
    rows.append(("build, np 1", build1, wall1, rss1))
    log, rss4, wall4 = job(ctx, "build-np4", big, caches / "np4", model, 4)
    _, _, build4 = cache_seconds(log, "built")
    rows.append(("build, np 4", build4, wall4, rss4))
    log, reuse4, wall_reuse = job(ctx, "reuse-np4", big, caches / "np4", model, 4)
    _, _, check4 = cache_seconds(log, "reusing")
    rows.append(("reuse (resumed attempt), np 4", check4, wall_reuse, reuse4))
    log, tiny4, wall_tiny = job(ctx, "small-np4", small, caches / "small", model, 4)
    _, small_tokens, small_build = cache_seconds(log, "built")
    rows.append((f"baseline: {small_tokens:,}-token dataset, np 4", small_build, wall_tiny, tiny4))
    before = None
    if BEFORE.exists():
        try:
            _, before, wall_before = job(ctx, "before-np4", big, caches / "before", model, 4, binary=BEFORE)
            rows.append(("before the cache (main's build), np 4", float("nan"), wall_before, before))
        except Exception as e:  # main may not run this spec: the comparison is then left out
            print(f"(main's build did not run: {e})")

    cache_bytes = sum(f.stat().st_size for f in (caches / "np4").glob("*.tokens"))
    lines = [
        "### data",
        "",
        f"A synthetic chat dataset of {examples:,} conversations, {tokens:,} tokens "
        f"({big.stat().st_size / 2**20:.0f} MiB of JSONL; the Llama-2 tokenizer, llama2 template), tokenized into "
        f"a {mib(cache_bytes)} token cache; a tiny Llama with the Llama-2 vocabulary trained one step, "
        f"on this machine's {os.cpu_count()} cores. "
        "Peak RSS per rank, the worst rank: RssAnon is the rank's own memory, RssFile its mapped files "
        "(the cache's pages are among them, shared by the ranks).",
        "",
        "| run | cache build / check (s) | job wall (s) | RssAnon peak per rank | RssFile peak per rank |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, wall, rss in rows:
        shown = "—" if seconds != seconds else f"{seconds:.1f}"
        lines.append(f"| {name} | {shown} | {wall:.1f} | {mib(rss.worst('anon'))} | {mib(rss.worst('file'))} |")
    added = reuse4.worst("anon") - tiny4.worst("anon")
    lines += [
        "",
        f"- Tokenizing once per job: np 4 builds the cache in {build4:.1f} s against {build1:.1f} s on one rank "
        f"({build1 / build4:.2f}x faster); a resumed attempt reuses it after checking its digest in {check4:.1f} s.",
        f"- Memory the 20M-token dataset adds per rank at np 4, beyond the cache's mapped pages (RssAnon against "
        f"the ~20k-token job): {signed_mib(added)} (target: < 64 MiB); while building it: "
        f"{signed_mib(rss4.worst('anon') - tiny4.worst('anon'))}.",
    ]
    if before is not None:
        lines.append(f"- Before the cache (every rank tokenizing and holding the dataset): "
                     f"{signed_mib(before.worst('anon') - tiny4.worst('anon'))} per rank.")
    lines.append("")
    lines.append(f"Command: `python3 bench/scale_bench.py build WORK --only data` ({'--quick, ' if ctx.quick else ''}"
                 "the dataset is kept in WORK between runs).")
    return "\n".join(lines) + "\n"
