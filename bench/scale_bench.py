#!/usr/bin/python3
"""`make bench`'s "Scale path" section: what enters and leaves a job measured against the rank's
share (issue 17), each part against its own baseline run side by side:
  load        bytes read and peak memory per rank while loading, stage 3, np 1/2/4
  checkpoint  the training thread's stall with asynchronous checkpoints vs the synchronous write
  export      `shardtune export` peak memory under a limit below the model's fp32 size
  data        tokenizing once per job: np 4 against np 1, memory per rank
Each part is a module of bench/scale/ with `measure(ctx) -> str` (markdown).

Usage: scale_bench.py BUILD_DIR WORK_DIR [--quick]
"""
import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale.common import Context  # noqa: E402

PARTS = ["load", "checkpoint", "export", "data"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("work")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=PARTS, help="parts to run")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ctx = Context(args.build, args.work, args.quick)
    print("## Scale path\n")
    for name in args.only:
        try:
            part = importlib.import_module(f"scale.{name}")
        except ModuleNotFoundError:
            print(f"### {name}\n\nSKIPPED: bench/scale/{name}.py is not written yet\n")
            continue
        print(part.measure(ctx))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
