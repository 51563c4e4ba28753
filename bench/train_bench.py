#!/usr/bin/python3
"""Training benchmarks of `make bench`: shardtune's ZeRO stages against PyTorch DDP (gloo) run
side by side on the same Llama shape, batch and threads per rank; the same at several shapes
(30M, 125M, a deep narrow GQA shape; tied and untied heads; np 1, 2, 4), for full fine-tuning and
for LoRA, as the median and range of alternating pairs; MFU against this machine's measured
GEMM peak; memory per rank against the planner; communication and data-loading shares of the
step. Prints markdown tables (ratios against the baseline) and writes gnuplot PNGs.

Usage: train_bench.py BUILD_DIR OUTPUT_DIR [--quick] [--only qlora|shapes|lora-shapes
                      [--shapes 30m,125m-untied,...] [--ranks 1,2,4] [--pairs 3]]
Every run uses one thread per rank (OMP_NUM_THREADS=1), fp32, sequences of 256 tokens and a
micro batch of 4 per rank; the first step of each run is a warm-up and is not counted.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SEQ, MICRO = 256, 4
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-torch
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")  # Debian's libtcmalloc-minimal4


def run(argv, env=None, **kw):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    full_env.update(env or {})
    return subprocess.run(argv, env=full_env, check=True, capture_output=True, text=True, **kw)


def config_of(name):
    return BENCH / "models" / f"llama-{name}.json"


# The shapes the DDP comparison runs: each model of bench/models with its head tied and untied
# (a name's "-tied"/"-untied" suffix flips its config's tie_word_embeddings).
SHAPES = ("30m", "30m-untied", "deep-gqa", "deep-gqa-tied", "125m", "125m-untied")


def layer_linear_parameters(c):
    """The parameters of the decoder layers' linear weights (q, k, v, o and the MLP's three)."""
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i)


def training_flops_per_token(c, seq=SEQ):
    """6 x the parameters of every matrix product (layers and head), plus attention scores and
    their weighted sum (forward 4 x seq x hidden per layer, x3 with backward): the count of
    Kaplan et al. and of the PaLM paper's MFU, with the full (not causal-halved) score matrix."""
    matmul = layer_linear_parameters(c) + c["hidden_size"] * c["vocab_size"]
    return 6 * matmul + 12 * c["num_hidden_layers"] * seq * c["hidden_size"]


def counted_steps(out):
    """A run's step records from rank 0's metrics in `out`, less the first (the warm-up)."""
    return [json.loads(l) for l in open(out / "metrics.jsonl") if '"step_s"' in l][1:]


class Bench:
    def __init__(self, build, work, quick):
        self.bin = Path(build).resolve() / "bin"
        self.work = Path(work)
        self.quick = quick
        self.models = {}

    def config(self, name):
        """The config.json of shape `name`: bench/models' own, or one with its head tied or untied."""
        for suffix, tied in (("-untied", False), ("-tied", True)):
            if name.endswith(suffix):
                c = json.load(open(config_of(name[: -len(suffix)])))
                c["tie_word_embeddings"] = tied
                path = self.work / f"config-{name}.json"
                path.write_text(json.dumps(c, indent=2))
                return path
        return config_of(name)

    def model(self, name):
        if name not in self.models:
            d = self.work / f"model-{name}"
            if not d.exists():
                run([self.bin / "shardtune", "init-model", "--config", self.config(name), "--out", d, "--log-level",
                     "warn"])
            self.models[name] = d
        return self.models[name]

    def data(self, name):
        """Random token sequences within shape `name`'s vocabulary."""
        vocab = json.load(open(self.config(name)))["vocab_size"]
        path = self.work / f"train-{vocab}.jsonl"
        if not path.exists():
            r = random.Random(0)
            with open(path, "w") as f:
                for _ in range(256):
                    f.write(json.dumps({"input_ids": [r.randrange(3, vocab) for _ in range(SEQ)]}) + "\n")
        return path

    def job(self, name, ranks, stage, steps, micro=MICRO, tag="", method=None, quantization=None):
        """A job spec for shape `name` (written afresh) and its output directory (emptied)."""
        out = self.work / f"run-{name}-np{ranks}-z{stage}{tag}"
        shutil.rmtree(out, ignore_errors=True)
        job = self.work / f"job-{name}-np{ranks}-z{stage}{tag}.yaml"
        quant = f", quantization: {{type: {quantization}}}" if quantization else ""
        job.write_text(
            f"name: bench\nmodel: {{path: {self.model(name)}{quant}}}\n"
            + (f"method: {method}\n" if method else "") +
            f"data: {{train: {self.data(name)}, format: tokens, max_seq_len: {SEQ}}}\n"
            f"training: {{max_steps: {steps}, micro_batch_size: {micro}, global_batch_size: {micro * ranks},"
            f" optimizer: {{lr: 1.0e-4}}}}\n"
            f"sharding: {{zero_stage: {stage}}}\noutput: {{dir: {out}}}\n"
            f"resources: {{ranks_per_node: {ranks}}}\n")
        return job, out

    def independent_pair(self, name, steps):
        """Two np-1 runs of `name` at once, each on a CPU of its own where there are two: how fast a
        core trains while another is as busy, with nothing to communicate or wait for. The mean of
        the two runs' median tokens/s."""
        cpus = sorted(os.sched_getaffinity(0))
        runs = [self.job(name, 1, 0, steps, tag=f"-pair{i}") for i in range(2)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = [subprocess.Popen((["taskset", "-c", str(cpus[i])] if len(cpus) >= 2 else [])
                                  + [str(self.bin / "shardtune"), "train", str(job), "--log-level", "warn"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i, (job, _) in enumerate(runs)]
        for p in procs:
            if p.wait() != 0:
                sys.exit(f"an independent np-1 run failed (exit {p.returncode})")
        return statistics.mean(statistics.median(m["tokens_per_s"] for m in counted_steps(out)) for _, out in runs)

    def shardtune(self, name, ranks, stage, steps, micro=MICRO, tag="", method=None, quantization=None,
                  profile_step=None):
        """One shardtune run; the medians of its counted steps, from rank 0's metrics. `method`: the
        job's method (YAML flow; full fine-tuning without it); `quantization`: a 4-bit base type;
        `profile_step`: the step whose trace `dequantize_s` is read from (rank 0's)."""
        job, out = self.job(name, ranks, stage, steps, micro, tag, method, quantization)
        env = {"SHARDTUNE_PROFILE_STEP": str(profile_step)} if profile_step else None
        log = run([self.bin / "shardtune", "train", job, "--np", str(ranks)], env=env).stderr
        blas = next((l.split("BLAS: ", 1)[1] for l in log.splitlines() if "BLAS: " in l), "unknown")
        lines = counted_steps(out)
        med = lambda key: statistics.median(m[key] for m in lines)
        plan = json.loads(run([self.bin / "shardtune", "plan", job, "--cpu", "--output", "json"]).stdout)
        predicted = plan["per_rank"]["host"]
        return {
            "step_s": med("step_s"), "tokens_per_s": med("tokens_per_s"), "data_s": med("data_s"),
            "comm_bytes": med("comm_bytes"), "comm_s": med("comm_s"), "comm_exposed_s": med("comm_exposed_s"),
            "model_state": lines[-1]["param_bytes"] + lines[-1]["grad_bytes"] + lines[-1]["optimizer_bytes"],
            "planned_state": predicted["parameters"] + predicted["gradients"] + predicted["optimizer"],
            "peak_rss": max(m["peak_rss_bytes"] for m in lines), "blas": blas.split(", ")[-1],
            "param_bytes": lines[-1]["param_bytes"], "planned_parameters": predicted["parameters"],
            "dequantize_s": dequantize_seconds(out, profile_step) if profile_step else None,
            "profiled_step_s": next((m["step_s"] for m in lines if m["step"] == profile_step), None),
        }

    def ddp(self, name, ranks, steps, coretype=None, tcmalloc=False, lora_r=None):
        """The baseline on `ranks` processes; `coretype` None runs OpenBLAS's own kernel choice;
        `tcmalloc`: under tcmalloc (LD_PRELOAD), as PyTorch's CPU performance guide recommends:
        glibc's malloc returns large blocks to the kernel, and every step faults them in again;
        `lora_r`: LoRA of that rank on the decoder's linear layers, the rest frozen."""
        out = self.work / (f"ddp-{name}-np{ranks}-{coretype or 'default'}{'-tcmalloc' if tcmalloc else ''}"
                           f"{f'-lora{lora_r}' if lora_r else ''}.json")
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        env["OMP_NUM_THREADS"] = "1"
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        if tcmalloc:
            if not TCMALLOC.exists():
                sys.exit(f"{TCMALLOC} is missing: bash scripts/install-deps.sh bench")
            env["LD_PRELOAD"] = str(TCMALLOC)
        port = str(29500 + random.randrange(1000))
        procs = [subprocess.Popen(
            [PYTHON, BENCH / "ddp_baseline.py", self.config(name), "--rank", str(rank), "--world", str(ranks),
             "--port", port, "--seq-len", str(SEQ), "--micro-batch", str(MICRO), "--steps", str(steps),
             "--warmup", "1", "--out", out] + (["--lora-r", str(lora_r)] if lora_r else []), env=env)
            for rank in range(ranks)]
        for p in procs:
            if p.wait() != 0:
                sys.exit(f"the DDP baseline failed (exit {p.returncode})")
        return json.load(open(out))

    def gemm_peak(self, coretype=None, seconds=None):
        env = {"OPENBLAS_CORETYPE": coretype} if coretype else {}
        seconds = seconds or (1 if self.quick else 3)
        out = run([self.bin / "gemm_peak", "2048", str(seconds)], env=env).stdout
        return gflops_of(out), out.split('blas="')[1].rstrip().rstrip('"')

    def gemm_peak_together(self, processes, seconds=1):
        """The mean one-thread peak of `processes` gemm_peak processes run at once: what a core
        does with every core of the run busy (they share caches, memory and power)."""
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = [subprocess.Popen([self.bin / "gemm_peak", "2048", str(seconds)], env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(processes)]
        outs = [p.communicate()[0] for p in procs]
        return statistics.mean(gflops_of(out) for out in outs)


def gflops_of(gemm_peak_output):
    return float(gemm_peak_output.split("gemm_gflops=")[1].split()[0])


def dequantize_seconds(run_dir, step):
    """Seconds rank 0 spent in QLoRA's dequantization (the engine's `shardtune::dequantize_4bit`
    scopes) during profiled step `step`, from its Chrome trace."""
    trace = json.load(open(Path(run_dir) / "logs" / f"profile-step-{step}-rank-00000.json"))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return sum(e.get("dur", 0) for e in events if e.get("name") == "shardtune::dequantize_4bit") / 1e6


def qlora(b, steps):
    """QLoRA (NF4, double quantization) against LoRA on the same fp32 base, r 16 on every linear
    layer: step time, the base's bytes per rank against the planner, peak RSS; the
    dequantization's share of a step from the profiler."""
    linear = layer_linear_parameters(json.load(open(config_of("125m"))))  # the weights QLoRA holds 4-bit
    print("\n## QLoRA against LoRA (Llama 125M, r 16 on all linear layers, fp32 compute)\n")
    print(f"The same job twice, the base in fp32 and in NF4 with double quantization ({linear / 1e6:.1f}M "
          "linear weights in 4 bits: 8,456 bytes per 16,384); parameters = what a rank holds of the "
          "base and the adapter (metrics.jsonl's param_bytes), planned = the planner's figure.\n")
    print("| ranks | stage | base | step s | QLoRA / LoRA step | parameters per rank | planned | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    profiled = None
    for ranks, stage in ((1, 0), (2, 3), (4, 3)):
        plain = b.shardtune("125m", ranks, stage, steps, method=LORA, tag="-lora")
        profile_step = steps if ranks == 1 else None
        quant = b.shardtune("125m", ranks, stage, steps, method=LORA, quantization="nf4", tag="-qlora",
                            profile_step=profile_step)
        if profile_step:
            profiled = quant
        for label, r in (("fp32", plain), ("NF4", quant)):
            ratio = f"{quant['step_s'] / plain['step_s']:.2f}" if r is quant else ""
            print(f"| {ranks} | {stage} | {label} | {r['step_s']:.2f} | {ratio} | {fmt_bytes(r['param_bytes'])} "
                  f"| {fmt_bytes(r['planned_parameters'])} | {fmt_bytes(r['peak_rss'])} |")
    if profiled and profiled["profiled_step_s"]:
        share = profiled["dequantize_s"] / profiled["profiled_step_s"]
        print(f"\nThe dequantization (forward, and again for backward's input gradients) took "
              f"{profiled['dequantize_s']:.2f} s of the profiled {profiled['profiled_step_s']:.2f} s step at np 1 "
              f"({share:.1%}; profiling slows a step a little).")


LORA_R = 16
LORA = f"{{type: lora, lora: {{r: {LORA_R}, target_modules: all-linear}}}}"  # alpha 8, no dropout: PEFT's defaults


def shapes(b, names, rank_counts, pairs, steps, core, lora=False):
    """ZeRO-2 and ZeRO-3 (ZeRO-0 at one rank) against DDP with the same kernels and tcmalloc (the
    baseline at its best here), shape by shape: `pairs` rounds of DDP then shardtune, alternating,
    each ratio's median and range over them, and each side's peak RSS per rank (rank 0's, the
    median over the pairs). `lora`: both sides train LoRA r 16 on every linear layer of the
    decoder, the base frozen (bench/ddp_baseline.py --lora-r). Returns {(name, ranks, stage):
    the ratios}."""
    what = f"LoRA r {LORA_R} on all linear layers, base frozen" if lora else "full fine-tuning"
    print(f"\n## Throughput against PyTorch DDP at several shapes: {what} (same kernels, tcmalloc; "
          f"tokens/s ratio, median and range of {pairs} alternating pairs)\n")
    print("| shape | hidden, layers, heads/kv, vocab, head | ranks | stage | ratio median | min – max | DDP tokens/s "
          "| peak RSS per rank | DDP's |")
    print("|---|---|---|---|---|---|---|---|---|")
    measured = {}
    for name in names:
        c = json.load(open(b.config(name)))
        shape = (f"{c['hidden_size']}, {c['num_hidden_layers']}, {c['num_attention_heads']}/"
                 f"{c['num_key_value_heads']}, {c['vocab_size']}, {'tied' if c.get('tie_word_embeddings') else 'untied'}")
        for ranks in rank_counts:
            stages = (0,) if ranks == 1 else (2, 3)
            runs, ddp = {stage: [] for stage in stages}, []
            for pair in range(pairs):
                base = b.ddp(name, ranks, steps, core, tcmalloc=True, lora_r=LORA_R if lora else None)
                ddp.append(base)
                for stage in stages:
                    r = b.shardtune(name, ranks, stage, steps, method=LORA if lora else None,
                                    tag=f"{'-lora' if lora else ''}-pair{pair}")
                    runs[stage].append((r["tokens_per_s"] / base["tokens_per_s"], r["peak_rss"]))
            ddp_tokens = statistics.median(d["tokens_per_s"] for d in ddp)
            ddp_rss = statistics.median(d["peak_rss_bytes"] for d in ddp)
            for stage in stages:
                v = [ratio for ratio, _ in runs[stage]]
                measured[(name, ranks, stage)] = v
                rss = statistics.median(rss for _, rss in runs[stage])
                print(f"| {name} | {shape} | {ranks} | ZeRO-{stage} | {statistics.median(v):.2f} | {min(v):.2f} – "
                      f"{max(v):.2f} | {ddp_tokens:.0f} | {fmt_bytes(rss)} "
                      f"| {fmt_bytes(ddp_rss)} |")
            sys.stdout.flush()
    medians = [statistics.median(v) for v in measured.values()]
    print(f"\nMedian ratios from {min(medians):.2f} to {max(medians):.2f} over {len(medians)} shape, rank count "
          f"and stage combinations; the lowest single pair {min(min(v) for v in measured.values()):.2f}.")
    return measured


def measure_mfu(b, steps_small, steps_mfu, names=("30m", "125m")):
    """Each model's training FLOP/s per core at np 1, and at np 2 under ZeRO-1 and ZeRO-0, against
    the GEMM peak. Returns {(name, ranks, stage): MFU}."""
    print("\n## MFU: training FLOP/s per core against the measured GEMM peak\n")
    # A shared host's speed drifts by tens of percent within minutes, so each run gets its own
    # peak: measured just before and just after it (1 s each), their mean.
    # With several ranks the cores compute at once, and a core's peak with its neighbours busy
    # (shared caches, memory bandwidth, power) is lower than alone: shown beside, as a second
    # yardstick, the mean of as many one-thread peaks run together as there are ranks.
    # np 2 runs twice: ZeRO-1 partitions the optimizer (each rank updates half the parameters,
    # then the ranks exchange the new ones) and ZeRO-0 replicates it (each rank updates all, as
    # DDP does): the same computation and result, but ZeRO-1's pass over memory, on a bus the
    # ranks share, is half as long. ZeRO-1, the stage the target is checked on, runs first: the
    # second of two np-2 runs has tended to be the faster here (docs/PERFORMANCE.md).
    # The host's own ceiling for two busy cores: two np-1 jobs run at once right after the np-2
    # runs, each on its own CPU. np 2's tokens/s per core against theirs is what data parallelism
    # costs (the reduction, waiting for the slower rank) with the host's drift mostly taken out.
    print("Each run between two GEMM peak measurements; MFU against their mean (and, with several ranks, "
          "against the peak of as many one-thread GEMMs run at once, and np 2's tokens/s per core against "
          "two independent np-1 jobs run at once just after).\n")
    print("| model | ranks | stage | tokens/s | GFLOP/s per core | GEMM peak before / after | of GEMM peak "
          "| peak with every core busy | of it | two np-1 jobs at once, tokens/s each | np 2 per core / them |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mfu = {}
    for name in names:
        steps = steps_mfu if name == "125m" else steps_small
        flops = training_flops_per_token(json.load(open(config_of(name))))
        rows = []
        for ranks, stage in ((1, 0), (2, 1), (2, 0)):
            before, _ = b.gemm_peak(seconds=1)
            together_before = b.gemm_peak_together(ranks) if ranks > 1 else None
            r = b.shardtune(name, ranks, stage, steps, tag="-mfu")
            together = (together_before + b.gemm_peak_together(ranks)) / 2 if ranks > 1 else None
            after, _ = b.gemm_peak(seconds=1)
            per_core = r["tokens_per_s"] * flops / ranks / 1e9
            mfu[(name, ranks, stage)] = per_core / ((before + after) / 2)
            rows.append((ranks, stage, r["tokens_per_s"], per_core, before, after, together))
        pair = b.independent_pair(name, steps)
        for ranks, stage, tokens_per_s, per_core, before, after, together in rows:
            busy = f"{together:.1f} | {per_core / together:.0%}" if together else "– | –"
            apart = f"{pair:.0f} | {tokens_per_s / ranks / pair:.2f}" if ranks > 1 else "– | –"
            print(f"| {name} | {ranks} | {stage} | {tokens_per_s:.0f} | {per_core:.1f} | {before:.1f} / {after:.1f} "
                  f"| {mfu[(name, ranks, stage)]:.0%} | {busy} | {apart} |")
        sys.stdout.flush()
    return mfu


def fmt_bytes(b):
    return f"{b / 2**20:.1f} MiB"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("build")
    p.add_argument("out")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke test of the benchmark itself)")
    p.add_argument("--only", choices=["qlora", "shapes", "lora-shapes", "mfu"], help="run one section alone")
    p.add_argument("--shapes", default=",".join(SHAPES), help="with --only (lora-)shapes: which (comma-separated)")
    p.add_argument("--ranks", default="1,2,4", help="with --only (lora-)shapes: the rank counts")
    p.add_argument("--pairs", type=int, default=3, help="with --only (lora-)shapes: alternating pairs per figure")
    a = p.parse_args()
    # The benchmark measures the kernels shardtune picks from the CPU's flags (and gives DDP the
    # same): an OPENBLAS_CORETYPE inherited from the environment (some hosts set one for every
    # process) would pick them for both, unseen (a Haswell one halves the GEMM peak on a CPU with
    # AVX-512). Dropped, and said.
    if "OPENBLAS_CORETYPE" in os.environ:
        print(f"(OPENBLAS_CORETYPE={os.environ.pop('OPENBLAS_CORETYPE')} was set in the environment: unset, so that "
              "every run takes the kernels shardtune picks)", file=sys.stderr)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shardtune-bench-") as work:
        b = Bench(a.build, work, a.quick)
        if a.only == "qlora":
            qlora(b, 3 if a.quick else 5)
            return
        if a.only == "mfu":
            measure_mfu(b, 3 if a.quick else 6, 2 if a.quick else 6, names=("125m",))
            return
        if a.only in ("shapes", "lora-shapes"):
            _, blas = b.gemm_peak(seconds=1)
            shapes(b, a.shapes.split(","), [int(r) for r in a.ranks.split(",")], a.pairs, 3 if a.quick else 5,
                   blas.split(", ")[-1].split()[0], lora=a.only == "lora-shapes")
            return
        steps_small, steps_large = (3, 2) if a.quick else (6, 3)
        steps_mfu = 2 if a.quick else 6  # the 125M model's MFU: the median of 5 counted steps
        print("## GEMM peak (one thread, fp32 2048 x 2048 products through LibTorch)\n")
        peak, our_blas = b.gemm_peak()
        ours = our_blas.split(", ")[-1]
        core = ours.split()[0]
        print(f"- shardtune's choice: **{peak:.1f} GFLOP/s**, {our_blas}")
        for kernel in ("Prescott", "Haswell"):
            if kernel != core:
                g, _ = b.gemm_peak(kernel)
                print(f"- {kernel} kernels: {g:.1f} GFLOP/s ({g / peak:.2f}x)")
        ddp_default = b.ddp("30m", 1, 3)
        print(f"- PyTorch (python3-torch) as users get it runs: {ddp_default['blas']}\n")

        print("## Throughput against PyTorch DDP (gloo), Llama 30M, seq 256, micro batch 4 per rank\n")
        rows, series = [], {}
        for ranks in (1, 2):
            base_user = b.ddp("30m", ranks, steps_small)
            base_same = b.ddp("30m", ranks, steps_small, core, tcmalloc=True)
            rows.append((f"DDP np{ranks}, as users get it ({base_user['blas']}, glibc malloc)", base_user, base_same))
            rows.append((f"DDP np{ranks}, same kernels ({base_same['blas']}, tcmalloc)", base_same, base_same))
            series[("DDP", ranks)] = base_same["tokens_per_s"]
            for stage in ((0,) if ranks == 1 else (0, 1, 2, 3)):
                r = b.shardtune("30m", ranks, stage, steps_small)
                rows.append((f"shardtune np{ranks} ZeRO-{stage} ({r['blas']})", r, base_same))
                series[(f"ZeRO-{stage}", ranks)] = r["tokens_per_s"]
                series[("run", ranks, stage)] = r
        print("| run | step s | tokens/s | ratio to DDP, same kernels |")
        print("|---|---|---|---|")
        for label, r, base in rows:
            print(f"| {label} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} |")

        print("\n## Communication and data at np 2 (per step, rank 0)\n")
        print("| stage | bytes sent | in flight s | exposed s | overlap | waiting for data |")
        print("|---|---|---|---|---|---|")
        for stage in (0, 1, 2, 3):
            r = series[("run", 2, stage)]
            overlap = 1 - r["comm_exposed_s"] / r["comm_s"] if r["comm_s"] > 0 else 0
            print(f"| ZeRO-{stage} | {fmt_bytes(r['comm_bytes'])} | {r['comm_s']:.3f} | {r['comm_exposed_s']:.3f} "
                  f"| {overlap:.0%} | {r['data_s'] / r['step_s']:.2%} |")

        mfu = measure_mfu(b, steps_small, steps_mfu)

        print("\n## Memory per rank: measured model state against the planner, and peak RSS (Llama 30M)\n")
        print("| ranks | stage | model state | planned | planned / measured | peak RSS |")
        print("|---|---|---|---|---|---|")
        memory = {}
        for ranks in (1, 2, 4):
            for stage in ((0,) if ranks == 1 else (0, 1, 2, 3)):
                r = series.get(("run", ranks, stage)) or b.shardtune("30m", ranks, stage, 2, micro=1, tag="-mem")
                memory[(ranks, stage)] = r
                print(f"| {ranks} | {stage} | {fmt_bytes(r['model_state'])} | {fmt_bytes(r['planned_state'])} "
                      f"| {r['planned_state'] / r['model_state']:.3f} | {fmt_bytes(r['peak_rss'])} |")

        qlora(b, 3 if a.quick else 5)

        # Every shape at np 1, 2 and 4 (two of them in --quick, one pair): about 2 hours here
        # for each of full fine-tuning and LoRA.
        names, rank_counts, pairs = (("30m", "deep-gqa"), (1, 2), 1) if a.quick else (SHAPES, (1, 2, 4), 3)
        full = shapes(b, names, rank_counts, pairs, steps_small - 1, core)
        lora = shapes(b, names, rank_counts, pairs, steps_small - 1, core, lora=True)
        lowest = lambda measured: min(statistics.median(v) for v in measured.values())

        print("\n## Targets\n")
        z = lambda s: series[("run", 2, s)]
        checks = [
            ("ZeRO-2 at np 2 >= 1.1x DDP throughput (30M, same kernels)",
             series[("ZeRO-2", 2)] / series[("DDP", 2)], 1.1, True),
            ("every shape, rank count and stage >= 1.0x DDP (lowest median)", lowest(full), 1.0, True),
            ("the same under LoRA >= 1.0x PyTorch LoRA (lowest median)", lowest(lora), 1.0, True),
            ("ZeRO-3 step time <= 1.25x ZeRO-0 (np 2)", z(3)["step_s"] / z(0)["step_s"], 1.25, False),
            ("125M at np 1 >= 85% of the GEMM peak", mfu[("125m", 1, 0)], 0.85, True),
            ("125M at np 2 >= 80% of the GEMM peak (ZeRO-1)", mfu[("125m", 2, 1)], 0.80, True),
        ]
        print("| target | measured | met |")
        print("|---|---|---|")
        for label, value, bound, higher in checks:
            met = value >= bound if higher else value <= bound
            print(f"| {label} | {value:.2f} | {'yes' if met else 'no'} |")

        plot(out, series, memory)


def plot(out, series, memory):
    if shutil.which("gnuplot") is None:
        print("\n(no gnuplot: plots skipped)")
        return
    columns = ("DDP", "ZeRO-0", "ZeRO-1", "ZeRO-2", "ZeRO-3")
    with open(out / "throughput.dat", "w") as f:
        f.write("ranks " + " ".join(columns) + "\n")
        for ranks in (1, 2):
            # At one rank every stage is the same computation: ZeRO-0's figure stands for all.
            f.write(f"{ranks} " + " ".join(f"{series.get((c, ranks), series[('ZeRO-0', 1)]):.1f}" for c in columns)
                    + "\n")
    with open(out / "memory.dat", "w") as f:
        f.write("ranks ZeRO-0 ZeRO-1 ZeRO-2 ZeRO-3\n")
        for ranks in (1, 2, 4):
            f.write(f"{ranks} " + " ".join(f"{memory.get((ranks, s), memory[(1, 0)])['model_state'] / 2**20:.1f}"
                                            for s in range(4)) + "\n")
    script = f"""
set terminal pngcairo size 800,500
set key left top autotitle columnhead
set grid
set output '{out}/throughput.png'
set title 'Llama 30M, fp32, one thread per rank: throughput'
set xlabel 'ranks'; set ylabel 'tokens/s'; set xtics (1, 2)
plot for [c=2:6] '{out}/throughput.dat' using 1:c with linespoints lw 2
set output '{out}/memory.png'
set title 'Llama 30M: model state per rank (parameters, gradients, optimizer state)'
set ylabel 'MiB per rank'; set xtics (1, 2, 4); set logscale x 2
plot for [c=2:5] '{out}/memory.dat' using 1:c with linespoints lw 2
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print(f"\nplots: {out}/throughput.png, {out}/memory.png")


if __name__ == "__main__":
    main()
