"""`shardtune export` of an np-4 stage-3 checkpoint of a LoRA job on the ~1.1B Llama: peak RSS of
the streaming export (one process, under a memory limit below the model's fp32 size) against
2 x its largest tensor + 512 MiB, the same export on 4 processes (--np 4), and the output of both
compared tensor by tensor. Side by side, where a build of the engine-based export is at hand
(SHARDTUNE_BASELINE_BIN=DIR holding its `shardtune`), that export's peak RSS without a limit."""
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path

from scale.common import mib, run

LIMIT_BYTES = 3 << 30  # below the model's fp32 size (~4.1 GiB): what the export must live within

# Runs a command and prints the peak RSS of its largest process (RUSAGE_CHILDREN: every
# descendant waited for, mpirun's ranks included) on stderr's last line.
PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


def memory_cgroup(limit):
    """A child of this process's memory cgroup (v1, else v2) limited to `limit` bytes, or None."""
    parent = None
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if controllers == "memory":
            parent, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
            break
        if controllers == "":
            parent, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
    if parent is None:
        return None
    group = parent / f"shardtune-export-bench-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / limit_file).write_text(str(limit))
        return group
    except OSError:
        return None


def limited(argv, limit):
    """argv run under `limit` bytes: a memory cgroup where one can be made, else prlimit --as."""
    group = memory_cgroup(limit)
    if group is not None:
        # The shell joins the group, then becomes the command: the group holds it and its children.
        return ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *argv], f"memory cgroup ({group.name})"
    return ["prlimit", f"--as={limit}", *argv], "prlimit --as"


def measured(argv, env=None):
    start = time.time()
    r = run([sys.executable, "-c", PEAK, *argv], env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({r.returncode}): {r.stderr[-3000:]}")
    kib = int(r.stderr.strip().splitlines()[-1].split()[1])
    return kib << 10, time.time() - start


def tensors(model_dir):
    """name -> (dtype, shape, sha256 of the bytes) of every tensor of a Hugging Face directory."""
    out = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                f.seek(base + begin)
                digest, left = hashlib.sha256(), end - begin
                while left:
                    chunk = f.read(min(left, 64 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                out[name] = (info["dtype"], tuple(info["shape"]), digest.hexdigest())
    return out


def fp32_sizes(model_dir):
    """fp32 bytes of the model's largest tensor (the export works on fp32 values) and of all."""
    largest = total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            for name, info in json.loads(f.read(n)).items():
                if name != "__metadata__":
                    count = 1
                    for d in info["shape"]:
                        count *= d
                    largest, total = max(largest, 4 * count), total + 4 * count
    return largest, total


def checkpoint(ctx):
    """checkpoints/step-1 of a LoRA job on 4 ranks at stage 3 (short sequences, 2 steps)."""
    run_dir = ctx.work / "export-lora"
    ckpt = run_dir / "checkpoints" / "step-1"
    if ckpt.exists():
        return ckpt
    data = ctx.work / "export-tokens.jsonl"
    with open(data, "w") as f:
        for i in range(16):
            f.write(json.dumps({"input_ids": [1] + [3 + (i * 7 + t) % 31000 for t in range(15)]}) + "\n")
    job = ctx.work / "export-lora.yaml"
    job.write_text(f"""name: export-lora
model: {{path: {ctx.model()}, dtype: bf16}}
method: {{type: lora, lora: {{r: 8, alpha: 16}}}}
data: {{train: {data}, format: tokens, max_seq_len: 16}}
training: {{max_steps: 2, micro_batch_size: 1, global_batch_size: 4}}
sharding: {{zero_stage: 3}}
output: {{dir: {run_dir}, checkpoint_every: 1, export: [peft]}}
""")
    ctx.shardtune("train", job, "--np", "4", "--log-level", "warn")
    return ckpt


def measure(ctx):
    model = ctx.model()
    ckpt = checkpoint(ctx)
    largest, fp32_bytes = fp32_sizes(model)
    bound = 2 * largest + (512 << 20)
    outs = {name: ctx.work / f"export-{name}" for name in ("np1", "np4", "baseline")}
    for d in outs.values():
        run(["rm", "-rf", d, f"{d}.tmp"])
    export = ["export", ckpt, "--to", "hf", "--log-level", "warn"]
    argv, how = limited([ctx.bin / "shardtune", *export, "--out", outs["np1"]], LIMIT_BYTES)
    np1_rss, np1_s = measured(argv)
    argv, _ = limited([ctx.bin / "shardtune", *export, "--np", "4", "--out", outs["np4"]], LIMIT_BYTES)
    np4_rss, np4_s = measured(argv)
    a, b = tensors(outs["np1"]), tensors(outs["np4"])
    equal = a == b and len(a) > 0

    lines = [
        "### export\n",
        "`shardtune export` of the np-4 stage-3 checkpoint (`checkpoints/step-1`) of a LoRA job "
        "(r 8 on q_proj/v_proj, bf16) on the ~1.1B Llama, `--to hf` (the adapter merged, fp32 out), "
        f"under a {mib(LIMIT_BYTES)} limit ({how}); the model in fp32 is {mib(fp32_bytes)}.\n",
        "| run | peak RSS (largest process) | wall | bound: 2 x largest tensor + 512 MiB |",
        "|---|---|---|---|",
        f"| streaming, 1 process | {mib(np1_rss)} | {np1_s:.0f} s | {mib(bound)} "
        f"({'within' if np1_rss <= bound else 'OVER'}; largest tensor {mib(largest)} in fp32) |",
        f"| streaming, `--np 4` | {mib(np4_rss)} per process | {np4_s:.0f} s | |",
    ]
    # A build from before the streaming export (commit 25579aa or earlier) to compare with.
    baseline = Path(os.environ.get("SHARDTUNE_BASELINE_BIN", "/nonexistent")) / "shardtune"
    if baseline.exists():
        try:
            base_rss, base_s = measured([baseline, *export, "--out", outs["baseline"]])
            same = sum(1 for name, t in tensors(outs["baseline"]).items() if a.get(name) == t)
            lines.append(f"| engine-based export (baseline build, no limit; {same} of {len(a)} tensors equal "
                         f"to the streaming one's) | {mib(base_rss)} | {base_s:.0f} s | streaming: "
                         f"{np1_rss / base_rss:.2f}x of it |")
        except RuntimeError as e:
            lines.append(f"| engine-based export (baseline build) | failed: {str(e)[-200:]} | | |")
    lines += [
        "",
        f"The `--np 4` output loads back equal, tensor by tensor (dtype, shape, bytes), to the "
        f"1-process export: {'yes' if equal else 'NO'} ({len(a)} tensors).",
        "",
        f"Command: `python3 bench/scale_bench.py build {ctx.work} --only export`",
        "",
    ]
    for d in outs.values():
        run(["rm", "-rf", d])
    group = memory_cgroup(LIMIT_BYTES)
    if group is not None:
        try:
            group.rmdir()
        except OSError:
            pass
    return "\n".join(lines)
