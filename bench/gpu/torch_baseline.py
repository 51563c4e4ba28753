#!/usr/bin/env python3
"""The GPU benchmark's baseline: the same Llama as bench/ddp_baseline.py (a Hugging Face
config.json's shape, random init) trained on one GPU as a PyTorch user writes it: fp32 weights,
bf16 autocast, PyTorch's fused (flash) attention and fused AdamW. The same micro batch, sequence
length and steps as the shardtune run beside it, on random tokens.

Usage: torch_baseline.py CONFIG.json --seq-len S --micro-batch B --steps K --warmup W
Prints one JSON line: median step seconds after the warm-up, tokens per second, peak GPU memory.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddp_baseline import Llama  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    for name in ("--seq-len", "--micro-batch", "--steps", "--warmup"):
        p.add_argument(name, type=int, required=True)
    a = p.parse_args()
    config = json.load(open(a.config))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = Llama(config).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}  # (not in the CPU's PyTorch 1.13)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **fused)
    generator = torch.Generator(device=device).manual_seed(1000)
    times = []
    for step in range(a.steps):
        ids = torch.randint(3, config["vocab_size"], (a.micro_batch, a.seq_len), generator=generator, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(ids)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the step
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(json.dumps({"step_s": step_s, "tokens_per_s": a.micro_batch * a.seq_len / step_s,
                      "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0}))


if __name__ == "__main__":
    main()
