#!/usr/bin/python3
"""The baseline of bench/: PyTorch DistributedDataParallel over gloo, training a Llama of the same
shape (a Hugging Face config.json), on the same batch and threads per rank as the shardtune run
beside it, in fp32 with AdamW. Debian's python3-torch 1.13; its torch.distributed.fsdp does not
import on Debian's Python 3.11, so DDP is the peer here. With --lora-r, LoRA as PEFT computes it
(base(x) + lora_B(lora_A(x)) * alpha / r) on every linear layer of the decoder, everything else
frozen: the few lines of PyTorch a LoRA job is.

Usage: ddp_baseline.py CONFIG.json --rank R --world N --port P --seq-len S --micro-batch B
                       --steps K --warmup W --out RESULT.json [--lora-r R [--lora-alpha A]]
Rank 0 writes RESULT.json: median step seconds after the warm-up steps, global tokens per
second, the BLAS kernels that ran and its peak RSS.
"""
import argparse
import ctypes
import json
import math
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, self.heads, self.kv_heads = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = h // self.heads
        self.input_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)
        self.gate_proj = nn.Linear(h, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(h, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, s, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(y).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(y).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if x.is_cuda:  # PyTorch's fused (flash) attention, as a GPU user's model has it
            attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            attention = ((q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask).softmax(-1) @ v
        attention = attention.transpose(1, 2).reshape(b, s, -1)
        x = x + self.o_proj(attention)
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        if c.get("tie_word_embeddings", False):
            self.lm_head.weight = self.embed_tokens.weight
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        s = ids.shape[1]
        head_dim = self.c["hidden_size"] // self.c["num_attention_heads"]
        arange = lambda *a: torch.arange(*a, device=ids.device).float()  # noqa: E731
        inv = 1.0 / (self.c.get("rope_theta", 10000.0) ** (arange(0, head_dim, 2) / head_dim))
        angles = torch.outer(arange(s), inv)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        mask = torch.full((s, s), float("-inf"), device=ids.device).triu(1)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


class LoraLinear(nn.Module):
    """A frozen nn.Linear plus B A scaled by alpha / r; A as nn.Linear initializes it, B zero
    (PEFT's defaults)."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def add_lora(model, r, alpha):
    """Freezes `model` and puts LoRA on the decoder's q, k, v, o, gate, up and down projections
    (PEFT's "all-linear": every linear layer but the head)."""
    model.requires_grad_(False)
    for layer in model.layers:
        for name, child in list(layer.named_children()):
            if isinstance(child, nn.Linear):
                setattr(layer, name, LoraLinear(child, r, alpha))


def blas_kernels():
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if "openblas" in path and path.endswith(".so") or "libopenblas" in path:
            try:
                lib = ctypes.CDLL(path)
                lib.openblas_get_corename.restype = ctypes.c_char_p
                return lib.openblas_get_corename().decode() + " kernels"
            except (OSError, AttributeError):
                continue
    return "not OpenBLAS"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    for name in ("--rank", "--world", "--port", "--seq-len", "--micro-batch", "--steps", "--warmup"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lora-r", type=int, help="LoRA of this rank on every linear layer, the rest frozen")
    p.add_argument("--lora-alpha", type=float, default=8.0)
    a = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=a.world)
    config = json.load(open(a.config))
    torch.manual_seed(0)
    llama = Llama(config)
    if a.lora_r:
        add_lora(llama, a.lora_r, a.lora_alpha)
    model = nn.parallel.DistributedDataParallel(llama)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1000 + a.rank)
    times = []
    for step in range(a.steps):
        ids = torch.randint(3, config["vocab_size"], (a.micro_batch, a.seq_len), generator=generator)
        start = time.perf_counter()
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dist.barrier()
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    if a.rank == 0:
        step_s = statistics.median(times)
        json.dump({"step_s": step_s, "tokens_per_s": a.world * a.micro_batch * a.seq_len / step_s,
                   "blas": blas_kernels(), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "trained_parameters": sum(p.numel() for p in trained)},
                  open(a.out, "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
