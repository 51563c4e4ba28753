#!/usr/bin/env python3
"""The GPU half of bench/ (run by bench/gpu/run.sh): a large bf16 matrix product, then a 1.1B
Llama trained in bf16 on one GPU, with MFU against the dense bf16 peak and the measured product,
and against PyTorch training the same model and batch (bench/gpu/torch_baseline.py) in
alternating runs.

Usage: gpu_bench.py BUILD_DIR
"""
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_bench import config_of, gflops_of, training_flops_per_token  # noqa: E402

PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16, NVIDIA's datasheet
SEQ, STEPS, WARMUP, PAIRS = 2048, 12, 2, 2


def largest_micro_batch(bin_dir, config):
    """The largest micro batch (of 8, 4, 2, 1) that the planner says fits this GPU, so that the run
    does not spend device time on running out of memory."""
    mib = int(subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             check=True, capture_output=True, text=True).stdout.split()[0])
    for micro in (8, 4, 2, 1):
        # `shardtune plan` exits 1 when the plan does not fit, 0 when it does.
        answer = subprocess.run(
            [bin_dir / "shardtune", "plan", "--model", config, "--gpus", "1", "--gpu-memory", str(mib / 1024),
             "--dtype", "bf16", "--micro-batch", str(micro), "--seq-len", str(SEQ), "--output", "json"],
            capture_output=True, text=True)
        if answer.returncode not in (0, 1):
            sys.exit(f"shardtune plan failed: {answer.stderr}")
        if json.loads(answer.stdout)["fits"]:
            return micro
    sys.exit(f"the planner says no micro batch of {config} fits {mib} MiB")


def main():
    bin_dir = Path(sys.argv[1]).resolve() / "bin"
    micro = largest_micro_batch(bin_dir, config_of("1b"))
    gemm = subprocess.run([bin_dir / "gemm_peak", "8192", "5", "cuda", "bf16"], check=True, capture_output=True,
                          text=True).stdout
    measured = gflops_of(gemm) / 1000
    print(f"- bf16 8192 x 8192 matrix product: {measured:.0f} TFLOP/s ({measured / PEAK_TFLOPS:.0%} of {PEAK_TFLOPS:.0f})")
    config = json.load(open(config_of("1b")))
    flops = training_flops_per_token(config, SEQ)
    with tempfile.TemporaryDirectory(prefix="shardtune-gpu-bench-") as work:
        work = Path(work)
        subprocess.run([bin_dir / "shardtune", "init-model", "--config", config_of("1b"), "--out", work / "model",
                        "--log-level", "warn"], check=True)
        r = random.Random(0)
        with open(work / "train.jsonl", "w") as f:
            for _ in range(micro * STEPS):
                f.write(json.dumps({"input_ids": [r.randrange(3, 32000) for _ in range(SEQ)]}) + "\n")
        (work / "job.yaml").write_text(
            f"name: gpu-bench\nmodel: {{path: {work / 'model'}, dtype: bf16}}\n"
            f"data: {{train: {work / 'train.jsonl'}, format: tokens, max_seq_len: {SEQ}}}\n"
            f"training: {{max_steps: {STEPS}, micro_batch_size: {micro}, global_batch_size: {micro},"
            f" optimizer: {{lr: 1.0e-4}}}}\noutput: {{dir: {work / 'run'}}}\n")
        ours, theirs, rss = [], [], 0
        for _ in range(PAIRS):  # alternating, so that a drift of the machine touches both alike
            shutil.rmtree(work / "run", ignore_errors=True)
            subprocess.run([bin_dir / "shardtune-worker", work / "job.yaml", "--log-level", "warn"], check=True)
            lines = [json.loads(l) for l in open(work / "run" / "metrics.jsonl") if '"step_s"' in l][WARMUP:]
            ours.append(statistics.median(m["tokens_per_s"] for m in lines))
            rss = max(rss, max(m["peak_rss_bytes"] for m in lines))
            baseline = subprocess.run(
                [sys.executable, Path(__file__).resolve().parent / "torch_baseline.py", config_of("1b"), "--seq-len",
                 str(SEQ), "--micro-batch", str(micro), "--steps", str(STEPS), "--warmup", str(WARMUP)],
                check=True, capture_output=True, text=True)
            theirs.append(json.loads(baseline.stdout.splitlines()[-1]))
    tokens_per_s = statistics.median(ours)
    achieved = tokens_per_s * flops / 1e12
    print(f"- Llama 1.1B, bf16, seq {SEQ}, micro batch {micro}, one GPU: {tokens_per_s:.0f} tokens/s, "
          f"{achieved:.0f} TFLOP/s: MFU {achieved / PEAK_TFLOPS:.1%} of the datasheet peak, "
          f"{achieved / measured:.1%} of the measured product")
    ratios = sorted(o / t["tokens_per_s"] for o, t in zip(ours, theirs))
    baseline_tokens = statistics.median(t["tokens_per_s"] for t in theirs)
    print(f"- PyTorch on the same model and batch (bf16 autocast, flash attention, fused AdamW): "
          f"{baseline_tokens:.0f} tokens/s, MFU {baseline_tokens * flops / 1e12 / PEAK_TFLOPS:.1%}; shardtune / PyTorch "
          f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f} over {PAIRS} alternating pairs)")
    print(f"- peak memory: shardtune's process {rss / 2**30:.1f} GiB of host RSS; PyTorch's "
          f"{max(t['peak_gpu_bytes'] for t in theirs) / 2**30:.1f} GiB of GPU memory allocated")


if __name__ == "__main__":
    main()
