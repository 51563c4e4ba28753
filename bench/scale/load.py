"""Loading the base model (issue 17, "Load"): what each rank reads from the checkpoint's files and
the most memory it holds by the end of the load, for a LoRA job (frozen base, one step) on the
~1.1B Llama (bf16, several files): at stage 3 on 1, 2 and 4 ranks each rank should read its shard,
checkpoint / N (within 5%), and hold at most its shard + 512 MiB; at stage 0 on 2 ranks (whole
parameters on every rank) the ranks of the host share the reading, each ~checkpoint / 2, the host
reading every byte once. Figures are metrics.jsonl's load record (docs/sharding.md, "Loading");
the peak is the process's high-water mark when the load ends, an upper bound of the load's own.
One thread per rank; sequences of 32 tokens, micro batch 1: the step is not what is measured."""
import json

from .common import metrics, mib

SEQ = 32
RUNS = [(3, 1), (3, 2), (3, 4), (0, 2)]  # (stage, ranks)
QUICK_RUNS = [(3, 2), (0, 2)]


def tokens_data(ctx):
    path = ctx.work / "load-tokens.jsonl"
    with open(path, "w") as f:
        for n in range(8):
            f.write(json.dumps({"input_ids": [1] + [100 + 37 * n + i for i in range(SEQ - 1)]}) + "\n")
    return path


def job(ctx, stage, ranks, data):
    out = ctx.work / f"load-s{stage}-np{ranks}"
    spec = ctx.work / f"load-s{stage}-np{ranks}.yaml"
    spec.write_text(
        f"name: load-s{stage}-np{ranks}\n"
        f"model: {{path: {ctx.model()}, dtype: bf16}}\n"
        "method: {type: lora}\n"
        f"data: {{train: {data}, format: tokens, max_seq_len: {SEQ}}}\n"
        f"output: {{dir: {out}}}\n"
        f"training: {{max_steps: 1, micro_batch_size: 1, global_batch_size: {ranks}}}\n"
        f"sharding: {{zero_stage: {stage}}}\n")
    ctx.shardtune("train", spec, "--np", ranks, "--log-level", "warn", env={"OMP_NUM_THREADS": "1"})
    return next(m["load"] for m in metrics(out) if "load" in m)


def measure(ctx):
    data = tokens_data(ctx)
    checkpoint = ctx.model_bytes()  # the files; their headers are a few KiB of it
    lines = [
        "### load",
        "",
        f"A LoRA job (frozen base, one step) on the ~1.1B Llama, bf16 in "
        f"{len(list(ctx.model().glob('*.safetensors')))} files, {mib(checkpoint)} in all: what each rank read "
        "from them and its peak RSS by the end of the load (metrics.jsonl's load record), against its share.",
        "",
        "| stage | ranks | rank | bytes read | / (checkpoint / N) | peak RSS | shard + 512 MiB | RSS within | load s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, ranks in (QUICK_RUNS if ctx.quick else RUNS):
        load = job(ctx, stage, ranks, data)
        per_rank = load["per_rank"]
        share = checkpoint / ranks
        # At stage 3 a rank keeps its shard of the frozen base (bf16, as in the files); at stage 0 all of it.
        kept = share if stage == 3 else checkpoint
        for r in range(ranks):
            read, rss = per_rank["bytes_read"][r], per_rank["peak_rss_bytes"][r]
            bound = kept + 512 * 2**20
            lines.append(
                f"| {stage} | {ranks} | {r} | {mib(read)} | {read / share:.3f} | {mib(rss)} | {mib(bound)} | "
                f"{'yes' if rss <= bound else 'NO'} | {per_rank['seconds'][r]:.1f} |")
        lines.append(f"| {stage} | {ranks} | all | {mib(load['bytes_read'])} | "
                     f"{load['bytes_read'] / checkpoint:.3f} of the checkpoint | | | | {load['seconds']:.1f} |")
    lines += [
        "",
        "At stage 0 every rank keeps the whole model (its bound is the checkpoint + 512 MiB); the two ranks "
        "of the host each read half and all-gather the pieces.",
        "",
    ]
    return "\n".join(lines)
