"""esawd.sampling: KV-cache decoding == full forward, batching invariance, sampling, scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_greedy_picks, assert_same_greedy, logit_tol

from esawd import models, sampling
from esawd.models import ModelConfig

# prime-sized: vocab 197, d_model 46 = 2 x 23, d_ff 53, 5 layers; GQA 4 heads over 2 kv heads
CONFIG = ModelConfig(
    arch="qwen2", vocab_size=197, d_model=46, n_layers=5, n_heads=4, n_kv_heads=2, head_dim=12,
    d_ff=53, rope_theta=1000.0, max_position=96, tie_embeddings=False, qkv_bias=True,
    eos_ids=(3,),
)  # fmt: skip


@pytest.fixture(scope="module")
def params():
    """Random params scaled so logits are O(1) apart (greedy picks are unambiguous)."""
    p = models.init_params(CONFIG, jax.random.key(0))
    leaves, tree = jax.tree_util.tree_flatten_with_path(p)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    out = []
    for k, (path, x) in zip(keys, leaves, strict=True):
        noise = jax.random.normal(k, x.shape)
        if "norm" in jax.tree_util.keystr(path):
            out.append(1.0 + 0.1 * noise)
        else:  # 1/sqrt(fan_in) kernels; biases and embeddings of scale ~0.5
            out.append(noise / np.sqrt(x.shape[-2] if x.ndim == 3 else 4))
    return jax.tree.unflatten(tree, out)


def _prompts():
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, CONFIG.vocab_size, size=n).tolist() for n in (11, 5, 17)]
    return rows


def test_left_pad_and_mask_checks():
    ids, mask = sampling.left_pad([[5, 6], [7]], pad_id=0, length=4)
    np.testing.assert_array_equal(ids, [[0, 0, 5, 6], [0, 0, 0, 7]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="row 1 is not left-padded"):
        sampling.generate(CONFIG, {}, ids, np.array([[0, 0, 1, 1], [0, 1, 0, 1]], bool),
                          max_new_tokens=2)  # fmt: skip
    with pytest.raises(ValueError, match="row 0 has no real token"):
        sampling.generate(CONFIG, {}, ids, np.zeros_like(mask), max_new_tokens=2)


def test_prompt_longer_than_context_is_reported(params):
    ids, mask = sampling.left_pad([[5] * 90])
    with pytest.raises(ValueError, match="prompt of 90 tokens.*max_new_tokens=7.*context of 96"):
        sampling.generate(CONFIG, params, ids, mask, max_new_tokens=7)
    with pytest.raises(ValueError, match="97 tokens exceeds the context of 96"):
        sampling.sequence_log_probs(CONFIG, params, ids, mask, np.ones((1, 7)), np.ones((1, 7)))


def test_kv_cache_decoding_matches_full_forward(params):
    ids, mask = sampling.left_pad(_prompts())  # [3, 17]
    B, P = ids.shape
    cont = np.random.default_rng(1).integers(4, CONFIG.vocab_size, size=(B, 9))
    full_ids = np.concatenate([ids, cont], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(cont, bool)], axis=1)
    want = np.asarray(models.forward(CONFIG, params, full_ids, full_mask))  # [B, P+9, V]

    cache = models.init_cache(CONFIG, batch=B, length=P + 9)
    logits, cache, cache_mask = sampling.prefill(CONFIG, params, ids, mask, cache)
    got = [np.asarray(logits)]
    positions = mask.sum(axis=1)
    for t in range(8):
        logits, cache, cache_mask = sampling.decode_step(
            CONFIG, params, jnp.asarray(cont[:, t]), jnp.asarray(positions + t), cache_mask,
            cache, jnp.int32(P + t),
        )  # fmt: skip
        got.append(np.asarray(logits))
    got = np.stack(got, axis=1)  # [B, 9, V]
    # Prefill + cached decode and the full forward are different programs (other shapes,
    # other fusions): they agree to a float32 forward pass's rounding (numerics.logit_tol).
    tol = logit_tol(CONFIG, P + 9, np.abs(want).max())
    np.testing.assert_allclose(got, want[:, P - 1 : P + 8], atol=tol, rtol=0)
    assert np.abs(got).max() > 1.0


def test_greedy_generate_follows_full_forward_argmax(params):
    ids, mask = sampling.left_pad(_prompts())
    tokens, lengths = sampling.generate(CONFIG, params, ids, mask, max_new_tokens=12,
                                        ignore_eos=True)  # fmt: skip
    tokens = np.asarray(tokens)
    assert tokens.shape == (3, 12) and np.all(np.asarray(lengths) == 12)
    full_ids = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(tokens, bool)], axis=1)
    logits = np.asarray(models.forward(CONFIG, params, full_ids, full_mask))
    logits = logits[:, ids.shape[1] - 1 : -1]
    # Each pick is the full forward's argmax, up to a near-tie that the two programs' rounding
    # may break either way.
    tol = logit_tol(CONFIG, full_ids.shape[1], np.abs(logits).max())
    assert_greedy_picks(tokens, logits, tol=tol)
    assert len(np.unique(tokens)) > 3  # not a degenerate constant output
    scanned, _ = sampling.generate(CONFIG, params, ids, mask, max_new_tokens=12,
                                   ignore_eos=True, unroll_layers=False)  # fmt: skip
    assert_same_greedy(tokens, np.asarray(scanned), logits, tol=tol)  # both decode paths agree


def test_left_padded_batch_equals_rows_one_by_one(params):
    rows = _prompts()
    ids, mask = sampling.left_pad(rows, pad_id=3)  # pad with the EOS id: the mask decides
    batch, batch_len = sampling.generate(CONFIG, params, ids, mask, max_new_tokens=10)
    batch = np.asarray(batch)
    # The batch and a row alone are different programs: they agree up to a near-tie
    # (numerics.assert_same_greedy), judged on the batch's teacher-forced logits.
    full_ids = np.concatenate([ids, np.maximum(batch, 0)], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(batch, bool)], axis=1)
    logits = np.asarray(models.forward(CONFIG, params, full_ids, full_mask))[
        :, ids.shape[1] - 1 : -1
    ]
    tol = logit_tol(CONFIG, full_ids.shape[1], np.abs(logits).max())
    for i, row in enumerate(rows):
        one_ids, one_mask = sampling.left_pad([row])
        one, one_len = sampling.generate(CONFIG, params, one_ids, one_mask, max_new_tokens=10)
        assert_same_greedy(batch[i : i + 1], np.asarray(one), logits[i : i + 1], tol=tol)
        if np.array_equal(batch[i], np.asarray(one)[0]):
            assert int(batch_len[i]) == int(one_len[0])


def test_eos_stops_rows_and_pads(params):
    ids, mask = sampling.left_pad(_prompts())
    free, _ = sampling.generate(CONFIG, params, ids, mask, max_new_tokens=8, ignore_eos=True)
    free = np.asarray(free)
    stop = int(free[0, 2])  # make row 0's third token an EOS
    tokens, lengths = sampling.generate(CONFIG, params, ids, mask, max_new_tokens=8,
                                        eos_ids=[stop], pad_id=0)  # fmt: skip
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    first = [int(np.flatnonzero(r == stop)[0]) + 1 if np.any(r == stop) else 8 for r in free]
    # ignore_eos / eos_ids change only the stopping logic around the same forward; exact
    # tokens, since this fixture's logits are O(1) apart (no near-tie to break differently;
    # test_greedy_generate_follows_full_forward_argmax checks picks against the margin).
    np.testing.assert_array_equal(lengths, first)
    for r in range(3):
        np.testing.assert_array_equal(tokens[r, : first[r]], free[r, : first[r]])
        assert np.all(tokens[r, first[r] :] == 0)
    every, every_len = sampling.generate(
        CONFIG,
        params,
        ids,
        mask,
        max_new_tokens=8,
        eos_ids=list(range(CONFIG.vocab_size)),
        pad_id=-1,
    )
    assert np.all(np.asarray(every_len) == 1) and np.all(np.asarray(every)[:, 1:] == -1)


def test_temperature_sampling_is_deterministic_given_key(params):
    ids, mask = sampling.left_pad(_prompts())
    kw = dict(max_new_tokens=16, temperature=1.5, ignore_eos=True)
    a, _ = sampling.generate(CONFIG, params, ids, mask, key=jax.random.key(7), **kw)
    b, _ = sampling.generate(CONFIG, params, ids, mask, key=jax.random.key(7), **kw)
    c, _ = sampling.generate(CONFIG, params, ids, mask, key=jax.random.key(8), **kw)
    greedy, _ = sampling.generate(CONFIG, params, ids, mask, max_new_tokens=16, ignore_eos=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same program, same key
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.3
    assert np.mean(np.asarray(a) != np.asarray(greedy)) > 0.3
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sampling.generate(CONFIG, params, ids, mask, max_new_tokens=2, temperature=1.0)


def test_prompt_widths_in_one_bucket_share_a_compile(params):
    ids, mask = sampling.left_pad(_prompts())  # longest 17 -> bucket 32
    sampling.generate(CONFIG, params, ids, mask, max_new_tokens=4, bucket=32)
    before = sampling._generate._cache_size()
    ids2, mask2 = sampling.left_pad([[5] * 30, [6] * 21, [7] * 2])  # longest 30 -> bucket 32
    sampling.generate(CONFIG, params, ids2, mask2, max_new_tokens=4, bucket=32)
    assert sampling._generate._cache_size() == before
    ids3, mask3 = sampling.left_pad([[5] * 33, [6], [7]])  # longest 33 -> bucket 64
    sampling.generate(CONFIG, params, ids3, mask3, max_new_tokens=4, bucket=32)
    assert sampling._generate._cache_size() == before + 1


def test_sequence_log_probs_match_forward(params):
    ids, mask = sampling.left_pad(_prompts())
    cont = np.random.default_rng(2).integers(4, CONFIG.vocab_size, size=(3, 7))
    cont_mask = np.arange(7)[None, :] < np.array([7, 3, 5])[:, None]
    lp = np.asarray(sampling.sequence_log_probs(CONFIG, params, ids, mask, cont, cont_mask,
                                                chunk=3))  # fmt: skip
    full = np.asarray(models.forward(CONFIG, params, np.concatenate([ids, cont], 1),
                                     np.concatenate([mask, cont_mask], 1)))  # fmt: skip
    logp = jax.nn.log_softmax(full[:, ids.shape[1] - 1 : -1], axis=-1)
    want = np.take_along_axis(np.asarray(logp), cont[..., None], axis=-1)[..., 0]
    # Chunked scoring and one full forward are different programs (numerics.logit_tol).
    tol = logit_tol(CONFIG, full.shape[1], np.abs(want).max(), log_softmax=True)
    np.testing.assert_allclose(lp, np.where(cont_mask, want, 0.0), atol=tol, rtol=0)
    assert np.all(lp[cont_mask] < 0) and np.all(lp[~cont_mask] == 0)
