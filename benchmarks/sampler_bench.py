"""Sampler throughput: esawd.sampling.generate vs transformers' generate, side by side.

SmolLM2-135M-Instruct (the embedded default), float32, greedy, 64 new tokens in fixed-length
mode (EOS ignored), at batch 32 and 256, on the same left-padded chat prompts. Also measures
this CPU's float32 matmul peak (a large jitted matmul) in the same run and reports the FLOP
rate our sampler achieves as a fraction of it.

    python benchmarks/sampler_bench.py                      # batch 32 and 256, 3 repeats
    python benchmarks/sampler_bench.py --batches 32 --repeats 5

The machine may be shared: runs are interleaved (ours, theirs, ours, ...) and the best and
median of the repeats are printed together with /proc/loadavg before and after.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from esawd import models, sampling
from esawd.models import embedded

NEW_TOKENS = 64


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def matmul_peak(*, n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a jitted n x n matmul on this CPU."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def useful_flops(config: models.ModelConfig, prompt_lens: np.ndarray, new: int) -> float:
    """Matmul + attention FLOPs of prefill and decoding over real (unpadded) tokens."""
    c = config
    per_token = 2 * (c.num_params() - c.vocab_size * c.d_model)  # layer matmuls (+ norms)
    per_token += 2 * c.vocab_size * c.d_model  # lm_head
    total = 0.0
    for n in prompt_lens:
        tokens = n + new - 1  # every token except the last generated one is fed through
        ctx = np.arange(1, tokens + 1)  # keys each token attends to
        attn = 4 * c.n_layers * c.n_heads * c.head_dim * ctx.sum()  # q.k and p.v
        total += tokens * per_token + attn
    return float(total)


def prompts(tokenizer, batch: int) -> list[list[int]]:
    """`batch` chat prompts of varied length."""
    topics = ["the sea", "a lighthouse keeper", "prime numbers", "a lost key", "autumn rain"]
    rows = []
    for i in range(batch):
        text = f"Write a short story about {topics[i % len(topics)]}, part {i}." + " Go on." * (
            i % 7
        )
        rows.append(models.chat_ids(tokenizer, [{"role": "user", "content": text}]))
    return rows


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="32,256")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers

    print(f"date {time.strftime('%Y-%m-%d %H:%M')}  loadavg {loadavg()}")
    print(f"jax {jax.__version__}  torch {torch.__version__} ({torch.get_num_threads()} threads)"
          f"  transformers {transformers.__version__}")  # fmt: skip
    model = models.load("smollm2-135m-instruct")
    config, params = model.config, jax.device_put(model.params)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(embedded.converted_dir()), dtype=torch.float32
    ).eval()
    peak = matmul_peak()
    print(f"float32 matmul peak (2048^3, best of 10): {peak / 1e9:.1f} GFLOP/s")

    for batch in [int(b) for b in args.batches.split(",")]:
        rows = prompts(model.tokenizer, batch)
        ids, mask = sampling.left_pad(rows, pad_id=config.eos_ids[0])
        lens = mask.sum(axis=1)

        def ours(ids=ids, mask=mask, new=NEW_TOKENS):
            tokens, _ = sampling.generate(
                config, params, ids, mask, max_new_tokens=new, ignore_eos=True
            )
            return np.asarray(tokens)

        def theirs(ids=ids, mask=mask, new=NEW_TOKENS):
            with torch.inference_mode():
                out = ref.generate(
                    torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    max_new_tokens=new, min_new_tokens=new, do_sample=False,
                    pad_token_id=config.eos_ids[0],
                )  # fmt: skip
            return out[:, ids.shape[1] :].numpy()

        t = time.perf_counter()
        ours_tokens = ours()  # compile
        compile_s = time.perf_counter() - t
        theirs_tokens = theirs()  # warm up
        ours(new=1)  # compile the prefill-only variant
        times = {"esawd": [], "transformers": []}
        prefill = {"esawd": [], "transformers": []}
        for _ in range(args.repeats):
            for name, fn in (("esawd", ours), ("transformers", theirs)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                t = time.perf_counter()
                fn(new=1)  # prompt processing + one token
                prefill[name].append(time.perf_counter() - t)
        # min_new_tokens suppresses EOS for transformers, so only rows without EOS compare
        same = np.mean(np.all(ours_tokens == theirs_tokens, axis=1))
        flops = useful_flops(config, lens, NEW_TOKENS)
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        tps = {k: batch * NEW_TOKENS / v for k, v in best.items()}
        print(
            f"\nbatch {batch}: prompts {lens.min()}-{lens.max()} tokens (padded width "
            f"{ids.shape[1]}), {NEW_TOKENS} new tokens, first call incl. compile {compile_s:.1f}s"
        )
        pre = {k: min(v) for k, v in prefill.items()}
        # decode-only rate: the other NEW_TOKENS - 1 tokens over the time after the prefill
        dec = {k: batch * (NEW_TOKENS - 1) / (best[k] - pre[k]) for k in best}
        for name in times:
            print(
                f"  {name:13s} best {best[name]:7.2f}s  median {med[name]:7.2f}s  "
                f"{tps[name]:8.1f} tokens/s (best) | prefill {pre[name]:5.2f}s, "
                f"decode-only {dec[name]:7.1f} tokens/s"
            )
        print(f"  speed-up (best/best)   {tps['esawd'] / tps['transformers']:.2f}x")
        print(f"  speed-up (median)      {med['transformers'] / med['esawd']:.2f}x")
        print(f"  speed-up decode-only   {dec['esawd'] / dec['transformers']:.2f}x")
        achieved = flops / best["esawd"]
        print(
            f"  esawd achieved {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of the "
            f"measured matmul peak ({flops / 1e9:.0f} GFLOP useful work)"
        )
        print(f"  rows with identical greedy tokens: {same:.0%}")
        print(f"  loadavg {loadavg()}")


if __name__ == "__main__":
    main()
