"""What the scale-path measurements share: the ~1.1B-parameter Llama they run on (bf16,
written by `shardtune init-model` in several safetensors files), runs of shardtune with the
environment every benchmark uses, and peak-memory figures."""
import json
import os
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
CONFIG = BENCH / "models" / "llama-1b.json"


def run(argv, env=None, check=True, **kw):
    full_env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    full_env.update(env or {})
    return subprocess.run([str(a) for a in argv], env=full_env, check=check, capture_output=True, text=True, **kw)


class Context:
    """One scale-path run: the build's binaries, a scratch directory, --quick."""

    def __init__(self, build, work, quick):
        self.bin = Path(build).resolve() / "bin"
        self.work = Path(work)
        self.quick = quick
        self._model = None

    def shardtune(self, *args, env=None, check=True):
        return run([self.bin / "shardtune", *args], env=env, check=check)

    def model(self):
        """The bf16 ~1.1B Llama (bench/models/llama-1b.json), written once per scratch directory, in
        files of at most 500 MB (with model.safetensors.index.json), as large checkpoints come."""
        if self._model is None:
            d = self.work / "model-1b"
            if not d.exists():
                self.shardtune("init-model", "--config", CONFIG, "--out", d, "--dtype", "bf16", "--max-shard-mb", 500,
                               "--log-level", "warn")
            self._model = d
        return self._model

    def model_bytes(self):
        return sum(f.stat().st_size for f in self.model().glob("*.safetensors"))


def mib(n):
    return f"{n / 2**20:.0f} MiB"


def metrics(out_dir):
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]
