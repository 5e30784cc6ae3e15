"""Which offline task can the embedded model learn? Base accuracy and ES signal per candidate.

    python benchmarks/task_signal.py [--examples 64] [--members 4] [--member-prompts 16] \\
        [--candidates arithmetic,rules,countdown,countdown2] [--out FILE.json]

For each candidate (a procedural task, all offline): the base SmolLM2-135M-Instruct's greedy
accuracy, format rate, mean generated tokens and the share of answers cut off at the token
limit, on `--examples` training problems; then `--members` members theta + sigma * eps_n (the
paper's sigma = 1e-3, full-rank noise) on the first `--member-prompts` of them: their mean
rewards, and whether they differ (if every member scores the same, z = 0 and ES cannot move).
Seconds per candidate are logged with the CPU model. The last line is one JSON object;
docs/results.md ("An offline target that learns") records the table this printed.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from esawd import devices, es, models, sampling, scoring, tasks
from esawd.tasks import countdown

# name: (task, examples(n) -> list, max_new_tokens)
CANDIDATES = {
    "arithmetic": ("arithmetic", lambda n: tasks.get_task("arithmetic").generate(n, seed=0), 96),
    "rules": ("rules", lambda n: tasks.get_task("rules").generate(n, seed=0), 64),
    "countdown": ("countdown", lambda n: countdown.generate(n, seed=0), 64),
    "countdown2": (
        "countdown",
        lambda n: countdown.generate(n, seed=0, min_count=2, max_count=2, max_target=99),
        64,
    ),
}


def greedy_scores(model, params, task, examples, max_new_tokens, batch_size=32):
    parts = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = scoring.encode(task, chunk, model.tokenizer)
        tokens, lengths = sampling.generate(
            model.config, params, batch.ids, batch.mask, max_new_tokens=max_new_tokens
        )
        tokens, lengths = jax.device_get((tokens, lengths))
        parts.append(scoring.score(task, model.tokenizer, tokens, lengths, chunk))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--member-prompts", type=int, default=16)
    p.add_argument("--sigma", type=float, default=1e-3)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: each candidate's own")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default="")
    args = p.parse_args()
    names = args.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {','.join(CANDIDATES)}")

    model = models.load(args.model)
    cpu = devices.machine()
    print(f"CPU: {cpu}; jax {jax.__version__}; {args.examples} examples, {args.members} members")
    rows = []
    for name in names:
        task_name, make, tokens = CANDIDATES[name]
        tokens = args.max_new_tokens or tokens
        task = tasks.get_task(task_name)
        examples = make(args.examples)
        t0 = time.perf_counter()
        base = greedy_scores(model, model.params, task, examples, tokens)
        base_seconds = time.perf_counter() - t0
        member_rewards = []
        for n in range(args.members):
            member = es.perturb(model.params, n, sigma=args.sigma)
            s = greedy_scores(model, member, task, examples[: args.member_prompts], tokens)
            member_rewards.append(float(s["reward"].mean()))
        row = {
            "candidate": name,
            "task": task_name,
            "examples": len(examples),
            "max_new_tokens": tokens,
            "accuracy": float(base["accuracy"].mean()),
            "format_rate": float((base["format_reward"] > 0).mean()),
            "reward": float(base["reward"].mean()),
            "tokens_mean": float(base["tokens"].mean()),
            "cut_off": float((base["tokens"] >= tokens).mean()),
            "member_rewards": member_rewards,
            "member_reward_std": float(np.std(member_rewards)),
            "members_differ": len(set(member_rewards)) > 1,
            "seconds_base": base_seconds,
            "seconds_total": time.perf_counter() - t0,
            "cpu": cpu,
        }
        if task_name == "arithmetic":
            steps = np.array([e["steps"] for e in examples])
            row["accuracy_by_steps"] = {
                int(k): float(base["accuracy"][steps == k].mean()) for k in np.unique(steps)
            }
        if task_name == "rules":
            answers = np.array([e["answer"] for e in examples])
            row["accuracy_by_label"] = {
                str(k): float(base["accuracy"][answers == k].mean()) for k in np.unique(answers)
            }
        rows.append(row)
        print(
            f"{name:12s} acc {row['accuracy']:.3f}  format {row['format_rate']:.3f}  "
            f"tokens {row['tokens_mean']:.0f} (cut off {row['cut_off']:.2f})  members "
            f"{', '.join(f'{r:.3f}' for r in member_rewards)}  {row['seconds_total']:.0f} s",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
