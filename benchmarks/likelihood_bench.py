"""Option log-likelihood scoring: each (context, option) pair as its own sequence (the way
`esawd.analysis.likelihood` scored before) against each context run once with its KV cache
shared by its options (`sampling.option_log_probs`, what it does now), side by side.

    python -m benchmarks.likelihood_bench --data_dir ../shared/data \
        [--tasks mmlu_pro=100,piqa=200,arc_challenge=100] [--batch_size 64]

On the embedded SmolLM2-135M-Instruct: per task, seconds for each way (the first, compiling
pass and a second, compiled one), the speed-up of the second passes, the largest difference
in an option's summed log-likelihood, and how many examples' answers (acc_norm's argmax)
differ. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

from esawd import devices, es, models, sampling, tasks
from esawd.analysis import likelihood
from esawd.analysis.forgetting import task_examples
from experiments.evaluate import parse_likelihood


def per_pair_scores(config, params, tokenizer, items, *, batch_size: int) -> list[np.ndarray]:
    """The baseline: every (context, option) pair one row of `sequence_log_probs`, pairs
    sorted by length, fixed batches, the same width buckets as the shared way."""
    pairs = []
    for i, item in enumerate(items):
        context = likelihood._encode(tokenizer, item.context)
        for j, option in enumerate(item.options):
            pairs.append((i, j, context, likelihood._encode(tokenizer, " " + option)))
    pairs.sort(key=lambda p: (len(p[2]), len(p[3])))
    scores = [np.zeros(len(item.options)) for item in items]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        width = likelihood._ceil(max(len(p[2]) for p in chunk), likelihood._PROMPT_BUCKET)
        cwidth = likelihood._ceil(max(len(p[3]) for p in chunk), likelihood._OPTION_BUCKET)
        ids = np.zeros((batch_size, width), np.int32)
        mask = np.zeros((batch_size, width), bool)
        cont = np.zeros((batch_size, cwidth), np.int32)
        cmask = np.zeros((batch_size, cwidth), bool)
        for r in range(batch_size):
            _, _, ctx, c = chunk[min(r, len(chunk) - 1)]
            ids[r, width - len(ctx) :], mask[r, width - len(ctx) :] = ctx, True
            cont[r, : len(c)], cmask[r, : len(c)] = c, True
        lp = np.asarray(
            es.host_value(sampling.sequence_log_probs(config, params, ids, mask, cont, cmask))
        )
        for r, (i, j, _, _) in enumerate(chunk):
            scores[i][j] = float(lp[r].sum())
    return scores


def answers(items, scores) -> np.ndarray:
    """acc_norm's choice per item (`likelihood.best_option`)."""
    return np.array([likelihood.best_option(i, s) for i, s in zip(items, scores, strict=True)])


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="folder with the tasks' data")
    p.add_argument(
        "--tasks", type=parse_likelihood, default="mmlu_pro=100,piqa=200,arc_challenge=100"
    )
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--model", default="smollm2-135m-instruct")
    a = p.parse_args()
    model = models.load(a.model)
    config, params, tok = model.config, model.params, model.tokenizer
    print(f"{a.model} on {devices.machine()}, batch {a.batch_size}", flush=True)
    out = {"machine": devices.machine(), "batch_size": a.batch_size, "tasks": {}}
    for name, n in a.tasks.items():
        task = tasks.get_task(name)
        run_config = {"task": {"name": "rules"}}
        items = [task.choices(e) for e in
                 task_examples(name, run_config, data_dir=a.data_dir, num_examples=n)]  # fmt: skip
        row = {"examples": len(items), "options": sum(len(i.options) for i in items)}
        ways = {"per_pair": per_pair_scores, "shared": likelihood.option_scores}
        for way, score in ways.items():
            fn = functools.partial(score, config, params, tok, items, batch_size=a.batch_size)
            first, _ = timed(fn)
            second, scores = timed(fn)
            row[way] = {"first_s": round(first, 2), "second_s": round(second, 2)}
            row[f"{way}_scores"] = scores
        diff = max(float(np.abs(x - y).max()) for x, y in
                   zip(row["per_pair_scores"], row["shared_scores"], strict=True))  # fmt: skip
        flips = int((answers(items, row.pop("per_pair_scores"))
                     != answers(items, row.pop("shared_scores"))).sum())  # fmt: skip
        row.update(
            speedup=round(row["per_pair"]["second_s"] / row["shared"]["second_s"], 2),
            max_abs_diff=diff, answers_differ=flips,
        )  # fmt: skip
        out["tasks"][name] = row
        print(
            f"{name}: {row['examples']} examples, {row['options']} options; per pair "
            f"{row['per_pair']['first_s']:.1f} s first / {row['per_pair']['second_s']:.1f} s "
            f"compiled, shared context {row['shared']['first_s']:.1f} / "
            f"{row['shared']['second_s']:.1f} s: {row['speedup']:.2f}x; largest option "
            f"difference {diff:.2e} nats, {flips} answers differ",
            flush=True,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
