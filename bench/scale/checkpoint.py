"""checkpoint: the training thread's stall with asynchronous checkpoints (output.async_checkpoint:
true, the default) against the synchronous write (false), side by side: the same job, a full
fine-tuning of bench/models/llama-125m.json on one rank, whose checkpoint (fp32 weights and AdamW's
two moments, ~1.5 GB) takes seconds to write and fsync here.

The host memory the snapshots reuse is allocated and touched before the first step (on this
VM a first touch of 1.5 GB takes seconds). The figures come from metrics.jsonl: every step line carries checkpoint_stall_s (the training
thread's time on checkpoints since the line before: snapshot to host memory, waiting for a
previous write, the commit) and checkpoint_write_s (the background write and fsync of the
checkpoints committed since). Synchronous, the stall is the whole write. A write still running
when training ends is waited for before the export; that wait is no step's and is not counted,
but it is in the run's wall time, which is shown too.
"""
import random
import shutil
import time

from .common import BENCH, metrics

CONFIG = BENCH / "models" / "llama-125m.json"


def model(ctx):
    d = ctx.work / "model-125m"
    if not d.exists():
        ctx.shardtune("init-model", "--config", CONFIG, "--out", d, "--log-level", "warn")
    return d


def data(ctx):
    path = ctx.work / "checkpoint-tokens.jsonl"
    r = random.Random(17)
    with open(path, "w") as f:
        for _ in range(64):
            f.write('{"input_ids": [%s]}\n' % ", ".join(str(r.randrange(3, 32000)) for _ in range(64)))
    return path


def run(ctx, base, tokens, every, asynchronous):
    name = "async" if asynchronous else "sync"
    out = ctx.work / f"checkpoint-{name}"
    shutil.rmtree(out, ignore_errors=True)
    spec = ctx.work / f"checkpoint-{name}.yaml"
    spec.write_text(
        f"name: checkpoint-{name}\n"
        f"model: {{path: {base}, dtype: fp32}}\n"
        f"data: {{train: {tokens}, format: tokens, max_seq_len: 64}}\n"
        f"training: {{max_steps: {3 * every}, micro_batch_size: 1, global_batch_size: 1}}\n"
        f"output: {{dir: {out}, checkpoint_every: {every}, async_checkpoint: {str(asynchronous).lower()}}}\n")
    start = time.monotonic()
    ctx.shardtune("train", spec, "--log-level", "warn")
    wall = time.monotonic() - start
    steps = [line for line in metrics(out) if "loss" in line]
    checkpoint = out / "checkpoints" / f"step-{every}"
    return {
        "wall": wall,
        "bytes": sum(f.stat().st_size for f in checkpoint.iterdir()),
        "checkpoints": 2,  # steps `every` and 2 x `every`; the last step is final/, not a checkpoint
        "stall": sum(line["checkpoint_stall_s"] for line in steps),
        "write": sum(line["checkpoint_write_s"] for line in steps),
        "writes": sum(1 for line in steps if line["checkpoint_write_s"] > 0),
        "step": sorted(line["step_s"] for line in steps)[len(steps) // 2],
    }


def measure(ctx):
    base, tokens = model(ctx), data(ctx)
    every = 10 if ctx.quick else 20
    sync = run(ctx, base, tokens, every, False)
    asynchronous = run(ctx, base, tokens, every, True)
    sync_write = sync["stall"] / sync["checkpoints"]
    stall = asynchronous["stall"] / asynchronous["checkpoints"]
    lines = [
        "### checkpoint\n",
        f"Full fine-tuning of `bench/models/llama-125m.json` (fp32) on one rank, {3 * every} steps, "
        f"a checkpoint every {every} (two), each {sync['bytes'] / 1e9:.2f} GB; the same job with "
        "`output.async_checkpoint` false and true (`python3 bench/scale_bench.py build WORK --only checkpoint`).\n",
        "| output.async_checkpoint | median step (s) | write and fsync per checkpoint (s) "
        "| training-thread stall per checkpoint (s) | stall / synchronous write | run wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in (("false", sync), ("true", asynchronous)):
        write = r["write"] / max(1, r["writes"])
        per = r["stall"] / r["checkpoints"]
        lines.append(f"| {label} | {r['step']:.2f} | {write:.2f} | {per:.3f} | {per / sync_write:.1%} | {r['wall']:.1f} |")
    ratio = stall / sync_write
    fsync_only = stall / (sync["write"] / max(1, sync["writes"]))
    lines.append(
        f"\nAsynchronous stall / synchronous write: {ratio:.1%} of the step's whole synchronous checkpoint, "
        f"{fsync_only:.1%} of its write and fsync alone (target <= 10%: {'met' if max(ratio, fsync_only) <= 0.10 else 'NOT met'}).\n")
    return "\n".join(lines)
