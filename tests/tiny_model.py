"""Test helpers: a tiny random model with a real (offline-trained) ChatML tokenizer, and
small utilities the trainer and GRPO tests share.

The tiny model is a Llama-architecture (or Qwen2) decoder with a real ChatML tokenizer.

Used by the trainer tests: a local Hugging Face directory that `esawd.models.load` reads like
any checkpoint, small enough that a whole ES run takes seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not loop.last or m['role'] != 'assistant' %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(texts, *, vocab_size: int = 400, chat_template: str = CHATML):
    """A byte-level BPE trained on `texts`, as a transformers tokenizer with a chat template.

    Real tokenizer code with no download: the tests' stand-in for a hub tokenizer.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        chat_template=chat_template,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def write_tiny_model(directory: Path, *, arch: str = "llama", seed: int = 0) -> Path:
    """Write a random tiny model + tokenizer as a Hugging Face directory; returns it."""
    from esawd import models, tasks

    task = tasks.get_task("countdown")
    texts = [m["content"] for e in task.generate(64, seed=99) for m in task.messages(e)]
    tokenizer = make_tokenizer(texts)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = models.ModelConfig(
        arch=arch,
        vocab_size=409,  # prime, above the tokenizer's 400 + specials
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_ff=48,
        rope_theta=10000.0,
        max_position=2048,
        tie_embeddings=arch == "llama",
        qkv_bias=arch == "qwen2",
        eos_ids=(eos,),
    )
    params = models.init_params(config, jax.random.key(seed))
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)  # peaky logits
    models.export(models.Model(config, params, tokenizer), directory)
    return directory


def tiny_config(workdir, model_dir, *, method: str = "es", **overrides):
    """configs/default.py (or grpo_default.py) sized for the tiny model: runs in seconds.

    Dotted overrides: tiny_config(w, m, **{"es.num_iterations": 4}).
    """
    from configs import default, grpo_default

    c = (grpo_default if method == "grpo" else default).get_config()
    c.workdir = str(workdir)
    c.model.name = str(model_dir)
    # The tests' own task and noise, whatever configs/default.py trains the real model on.
    c.task.name = "countdown"
    c.task.max_new_tokens = 6
    c.eval.kl_task = ""
    if method != "grpo":
        c.es.noise_rank = 0
        c.awd.kind, c.awd.lam = "l2", 10.0
    c.eval.interval = 1
    c.eval.num_examples = 3
    c.checkpoint.interval = 1
    c.log.progress = False
    if method == "grpo":
        c.grpo.num_steps = 2
        c.grpo.learning_rate = 1e-3
    else:
        c.task.num_train = 3
        c.es.population_size = 4
        c.es.sigma = 0.05
        c.es.alpha = 0.02
        c.es.num_iterations = 2
    set_keys(c, overrides)
    return c


def tiny_command(workdir, model_dir, **overrides) -> list[str]:
    """The command line that runs tiny_config(workdir, model_dir, **overrides) in a subprocess
    (tests/trainer_driver.py with the test reward): one flag per key that differs from
    configs/default.py."""
    import sys

    from configs import default

    root = Path(__file__).resolve().parents[1]

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    base = dict(flat(default.get_config().to_dict()))
    wanted = flat(tiny_config(workdir, model_dir, **overrides).to_dict())
    flags = [f"--config.{k}={v}" for k, v in wanted if base.get(k) != v]
    return [sys.executable, str(root / "tests" / "trainer_driver.py"),
            "--config", str(root / "configs" / "default.py"), *flags]  # fmt: skip


def train_two_processes(workdir, model_dir, **overrides) -> None:
    """Run tiny_config(workdir, model_dir, **overrides) as two `jax.distributed` processes on
    loopback, each with 2 CPU devices (4 in all), and assert that both exit 0."""
    import os
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    distributed = {"distributed.enabled": True, "distributed.num_processes": 2,
                   "distributed.coordinator_address": f"127.0.0.1:{port}",
                   "distributed.cpu_devices": 2}  # fmt: skip
    args = tiny_command(workdir, model_dir, **overrides, **distributed)
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    procs = [
        subprocess.Popen(args + [f"--config.distributed.process_id={i}"],
                         cwd=Path(__file__).resolve().parents[1], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(2)
    ]  # fmt: skip
    errors = [p.communicate(timeout=600)[1].decode()[-3000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errors)


def tiny_train(c):
    """Train the config `c` (ES or GRPO) in this process; returns the final parameters."""
    from esawd import settings
    from esawd.train import train

    return train(settings.from_config(c))


def assert_refused_before_loading(c, match: str, monkeypatch) -> None:
    """Training the config `c` raises a ConfigError matching `match` before any model is
    loaded and before the run directory gets a config.json."""
    import pytest

    from esawd import models, settings

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(models, "load", no_load)
    with pytest.raises(settings.ConfigError, match=match):
        tiny_train(c)
    assert not (Path(c.workdir) / "config.json").exists()


def set_keys(config, overrides: dict) -> None:
    """Set dotted keys ("es.sigma") of an ml-collections config."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value


def unoptimized_from_env() -> bool:
    """Whether JAX_DISABLE_MOST_OPTIMIZATIONS asks for most XLA optimizations off (the suite's
    default, tests/conftest.py)."""
    return os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", "1").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


@contextlib.contextmanager
def optimized_xla():
    """Compile with XLA's optimizations on inside the block (the suite turns most of them off,
    tests/conftest.py): for fixtures that compute for long, such as the toy's 2,000 ES
    iterations, which run 2x slower unoptimized. Programs already compiled keep their build."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def leaves(params) -> list:
    """The leaves of a parameter pytree as numpy arrays."""
    import numpy as np

    return [np.asarray(x) for x in jax.tree.leaves(params)]


def assert_bitwise(a, b) -> None:
    """Two parameter pytrees are bitwise equal, leaf by leaf.

    Only for two results of the same computation: the same program on the same inputs (a
    resume, a replay, a copy), or results that depend on other programs only through exact
    values such as decoded tokens and their rewards; say which at the call (numerics.py)."""
    import numpy as np

    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
