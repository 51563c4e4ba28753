#!/usr/bin/python3
"""`make bench`'s "Sweeps" section (issue 21): how good a sweep's search is on a small real task,
each strategy against a dense grid measured in the same run.

The task is the counting task of `make demo` on the tiny built-in Llama (examples/tiny-llama), a
trial a couple of seconds: `shardtune sweep` of the learning rate (log scale) and the warmup
steps, objective val_loss.
  - budget 16: grid (4 x 4), random and bayesian (seeds 1-5), each strategy's best val_loss,
    against the best of a dense grid of 64 (8 x 8) over the same ranges;
  - ASHA: total training steps and the best val_loss of the dense grid and of the random sweeps
    with ASHA against the same sweeps without early termination, on trials three times as long
    (90 steps: rungs at 18 and 54 with min_steps 18 and reduction_factor 3).
Targets: bayesian's mean within 2% of the dense grid's best and below random's mean; ASHA at most
50% of the steps with the same best or one within 1%.

Usage: sweep_bench.py BUILD_DIR WORK_DIR [--quick] [--asha-only] [--asha-min-steps N]
  --quick: seeds 1-2, no ASHA on random; --asha-only: only the ASHA comparison; --asha-min-steps:
  ASHA's first rung (default 18, past the warmups). Sweeps already finished in WORK_DIR are read
  back, not rerun (shardtune sweep resumes them).
"""
import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LR_LOW, LR_HIGH = 1.0e-4, 3.0e-2
WARMUP_HIGH = 14
MAX_STEPS, EVAL_EVERY = 30, 3
ASHA_MAX_STEPS = 90  # ASHA saves in proportion to a trial's length past its first rung
BUDGET = 16


def log_grid(n):
    return [float(f"{LR_LOW * (LR_HIGH / LR_LOW) ** (i / (n - 1)):.4g}") for i in range(n)]


def int_grid(n):
    return [round(WARMUP_HIGH * i / (n - 1)) for i in range(n)]


def write_task(work, bin_dir):
    """The demo's counting task, small: 128 runs of 17 ids, a fifth held out for validation."""
    if not (work / "base-model").exists():  # else a sweep already run there is read back, not rerun
        subprocess.run([f"{bin_dir}/shardtune", "init-model", "--config", str(ROOT / "examples/tiny-llama/config.json"),
                        "--out", str(work / "base-model"), "--seed", "1", "--log-level", "warn"], check=True)
        rng = random.Random(3)
        with open(work / "train.jsonl", "w") as f:
            for _ in range(128):
                start = rng.randrange(61)
                f.write(json.dumps({"input_ids": [1] + [3 + (start + i) % 61 for i in range(16)]}) + "\n")
    for name, steps in (("job.yaml", MAX_STEPS), ("job-long.yaml", ASHA_MAX_STEPS)):
        write_job(work / name, steps)


def write_job(path, max_steps):
    path.write_text(f"""name: counting
model: {{path: base-model}}
data: {{train: train.jsonl, validation_split: 0.2, format: tokens}}
training:
  max_steps: {max_steps}
  micro_batch_size: 8
  global_batch_size: 32
  eval_every: {EVAL_EVERY}
  optimizer: {{lr: 1.0e-3}}
  scheduler: {{type: cosine, warmup_steps: 0}}
output: {{dir: runs/counting}}
""")


def sweep_spec(name, strategy, lr, warmup, seed=0, max_trials=None, asha=None, base="job.yaml"):
    lines = [f"name: {name}", f"base: {base}", "parameters:",
             f"  training.optimizer.lr: {lr}", f"  training.scheduler.warmup_steps: {warmup}",
             f"strategy: {strategy}", "objective: {metric: val_loss}", "parallel_trials: 2", f"seed: {seed}"]
    if max_trials:
        lines.append(f"max_trials: {max_trials}")
    if asha:
        lines.append(f"early_termination: {{type: asha, min_steps: {asha}, reduction_factor: 3}}")
    return "\n".join(lines) + "\n"


def run_sweep(work, bin_dir, name, text):
    """Runs one sweep (2 trials at once on 2 slots); returns its trials' (objective, steps)."""
    (work / f"{name}.yaml").write_text(text)
    log = open(work / f"{name}.log", "w")
    subprocess.run([f"{bin_dir}/shardtune", "sweep", str(work / f"{name}.yaml"), "--slots", "2", "--log-level", "warn"],
                   check=True, stdout=log, stderr=subprocess.STDOUT)
    ends = [json.loads(line) for line in open(work / "sweeps" / name / "trials.jsonl")]
    ends = [e for e in ends if e["event"] == "finished"]
    failed = [e for e in ends if e["objective"] is None]
    if failed:
        sys.exit(f"sweep {name}: {len(failed)} trial(s) failed, e.g. {failed[0]}")
    return [(e["objective"], e["steps"]) for e in ends]


def pct(value, reference):
    return f"{100 * (value / reference - 1):+.2f}%"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("work")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--asha-only", action="store_true", help="only the ASHA comparison")
    parser.add_argument("--asha-min-steps", type=int, default=18, help="ASHA's first rung")
    args = parser.parse_args()
    bin_dir = Path(args.build).resolve() / "bin"
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seeds = [1, 2] if args.quick else [1, 2, 3, 4, 5]
    started = time.time()
    write_task(work, bin_dir)

    lr_range, warmup_range = f"{{log_uniform: [{LR_LOW}, {LR_HIGH}]}}", f"{{int_uniform: [0, {WARMUP_HIGH}]}}"
    dense_lr, dense_warmup = f"{{grid: {log_grid(8)}}}", f"{{grid: {int_grid(8)}}}"
    best = {"grid": [], "random": [], "bayesian": []}
    dense_best = None
    if not args.asha_only:
        dense = run_sweep(work, bin_dir, "dense", sweep_spec("dense", "grid", dense_lr, dense_warmup))
        grid16 = run_sweep(work, bin_dir, "grid16", sweep_spec("grid16", "grid", f"{{grid: {log_grid(4)}}}",
                                                               f"{{grid: {int_grid(4)}}}"))
        best["grid"] = [min(o for o, _ in grid16)] * len(seeds)
        for strategy in ("random", "bayesian"):
            for seed in seeds:
                name = f"{strategy}-{seed}"
                trials = run_sweep(work, bin_dir, name,
                                   sweep_spec(name, strategy, lr_range, warmup_range, seed=seed, max_trials=BUDGET))
                best[strategy].append(min(o for o, _ in trials))
        dense_best = min(o for o, _ in dense)

    # ASHA on the long trials: each sweep without early termination, then with it.
    asha_rows = []
    m = args.asha_min_steps
    long_sweeps = [("dense grid, 64 trials", "dense-long", dict(strategy="grid", lr=dense_lr, warmup=dense_warmup))]
    for seed in ([] if args.quick else seeds):
        long_sweeps.append((f"random seed {seed}, 16 trials", f"random-long-{seed}",
                            dict(strategy="random", lr=lr_range, warmup=warmup_range, seed=seed, max_trials=BUDGET)))
    for label, name, spec in long_sweeps:
        plain = run_sweep(work, bin_dir, name, sweep_spec(name, base="job-long.yaml", **spec))
        asha = run_sweep(work, bin_dir, f"{name}-asha{m}",
                         sweep_spec(f"{name}-asha{m}", base="job-long.yaml", asha=m, **spec))
        asha_rows.append((label, plain, asha))
    elapsed = time.time() - started

    print("## Sweeps\n")
    print(f"Task: the counting task of `make demo` on examples/tiny-llama (128 sequences of 17 tokens, a fifth held "
          f"out), {MAX_STEPS} steps of 32 sequences, val_loss every {EVAL_EVERY} steps; `shardtune sweep --slots 2` "
          f"(2 trials at once, one thread each) over training.optimizer.lr in [{LR_LOW}, {LR_HIGH}] (log) and "
          f"training.scheduler.warmup_steps in [0, {WARMUP_HIGH}]. Objective: the best val_loss (lower is better). "
          f"Whole section: {elapsed / 60:.1f} min.\n")
    if dense_best is not None:
        print(f"Dense grid (8 x 8 = 64 trials): best val_loss **{dense_best:.4f}**.\n")
        print("| strategy (16 trials) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | mean vs dense grid |")
        print("|---|" + "---:|" * (len(seeds) + 2))
        for strategy in ("grid", "random", "bayesian"):
            mean = statistics.mean(best[strategy])
            label = "grid (4 x 4; no seed)" if strategy == "grid" else strategy
            print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in best[strategy]) +
                  f" | {mean:.4f} | {pct(mean, dense_best)} |")
        print()
    print(f"ASHA (min_steps {m}, reduction_factor 3) on the same sweeps with trials of {ASHA_MAX_STEPS} steps, "
          f"against them without early termination:\n")
    print("| sweep | steps without / with ASHA | ratio | best without | best with ASHA | difference |")
    print("|---|---:|---:|---:|---:|---:|")
    total_plain = total_asha = 0
    worst_diff = 0.0
    for label, plain, asha in asha_rows:
        steps_plain, steps_asha = sum(s for _, s in plain), sum(s for _, s in asha)
        b_plain, b_asha = min(o for o, _ in plain), min(o for o, _ in asha)
        total_plain += steps_plain
        total_asha += steps_asha
        worst_diff = max(worst_diff, b_asha / b_plain - 1)
        print(f"| {label} | {steps_plain} / {steps_asha} | {steps_asha / steps_plain:.2f} | {b_plain:.4f} | "
              f"{b_asha:.4f} | {pct(b_asha, b_plain)} |")
    print()
    print("| target | measured | met |")
    print("|---|---|---|")
    if dense_best is not None:
        bayes, rand = statistics.mean(best["bayesian"]), statistics.mean(best["random"])
        print(f"| bayesian's mean within 2% of the dense grid's best | {pct(bayes, dense_best)} | "
              f"{'yes' if bayes <= dense_best * 1.02 else 'no'} |")
        print(f"| bayesian better than random on average | {bayes:.4f} vs {rand:.4f} | "
              f"{'yes' if bayes < rand else 'no'} |")
    print(f"| ASHA at most 50% of the steps | {total_asha / total_plain:.2f} of all sweeps' steps | "
          f"{'yes' if total_asha <= 0.5 * total_plain else 'no'} |")
    print(f"| ASHA's best within 1% | worst {100 * worst_diff:+.2f}% | {'yes' if worst_diff <= 0.01 else 'no'} |")


if __name__ == "__main__":
    main()
