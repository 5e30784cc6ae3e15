"""The `model` mesh axis (esawd.mesh): where parameters live, and that a member split over
several devices computes what one device does (ES and GRPO, one process and two)."""

from pathlib import Path

import jax
import numpy as np
import pytest
import tiny_model
from jax.sharding import PartitionSpec as P
from tiny_model import tiny_config

from esawd import mesh, models
from esawd.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
train = tiny_model.tiny_train


@pytest.fixture(autouse=True)
def _varied_reward(varied_reward):
    """Members of the tiny model score differently (conftest.varied_reward)."""


def _config(**changes):
    return models.ModelConfig(
        arch="qwen2", vocab_size=101, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
        head_dim=8, d_ff=48, rope_theta=1e4, max_position=256, tie_embeddings=False,
        qkv_bias=True, eos_ids=(1,),
    ).replace(**changes)  # fmt: skip


def test_tensor_layout_splits_heads_mlp_and_vocabulary():
    shapes = models.param_shapes(_config(vocab_size=128))
    specs = mesh.param_specs(shapes, model_axis=2)
    layer = specs["layers"]
    for name in ("q_proj", "k_proj", "v_proj"):  # by output columns: whole heads
        assert layer["attn"][name]["kernel"] == P(None, None, "model")
        assert layer["attn"][name]["bias"] == P(None, "model")
    assert layer["attn"]["o_proj"]["kernel"] == P(None, "model", None)  # by input rows
    assert layer["mlp"]["gate_proj"]["kernel"] == P(None, None, "model")
    assert layer["mlp"]["down_proj"]["kernel"] == P(None, "model", None)
    assert specs["embed"]["embedding"] == P("model", None)  # by vocabulary
    assert specs["lm_head"]["kernel"] == P(None, "model")
    assert layer["attn_norm"]["scale"] == P() and specs["norm"]["scale"] == P()
    # a vocabulary of 101 (prime) cannot split: embedding and head stay whole
    odd = mesh.param_specs(models.param_shapes(_config()), model_axis=2)
    assert odd["embed"]["embedding"] == P() and odd["lm_head"]["kernel"] == P()
    # FSDP: every matrix along its larger dimension
    fsdp = mesh.param_specs(shapes, model_axis=2, layout="fsdp")
    assert fsdp["layers"]["mlp"]["down_proj"]["kernel"] == P(None, "model", None)  # [L, 48, 32]
    assert fsdp["layers"]["mlp"]["up_proj"]["kernel"] == P(None, None, "model")  # [L, 32, 48]
    assert mesh.param_specs(shapes, model_axis=1) == jax.tree.map(
        lambda _: P(), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    # the share one device holds: only the norms (2 x 32 x 2 + 32) stay whole
    c = _config(vocab_size=128)
    whole = 2 * 2 * 32 + 32
    expected = (whole + (c.num_params() - whole) / 2) / c.num_params()
    assert mesh.split_fraction(shapes, model_axis=2) == pytest.approx(expected)


def test_attention_splits_along_whole_heads_only():
    # SmolLM2-135M's 9 query and 3 KV heads: a cut head would be gathered at every decode step
    # (benchmarks/model_axis.py), so attention stays whole and the MLP and vocabulary split
    c = _config(vocab_size=128, n_heads=6, n_kv_heads=3, head_dim=8)
    specs = mesh.param_specs(models.param_shapes(c), model_axis=2, config=c)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert specs["layers"]["attn"][name]["kernel"] == P()
    assert specs["layers"]["attn"]["q_proj"]["bias"] == P()
    assert specs["layers"]["mlp"]["up_proj"]["kernel"] == P(None, None, "model")
    assert specs["embed"]["embedding"] == P("model", None)
    # 4 heads and 2 KV heads divide by 2: attention splits too
    even = _config(vocab_size=128)
    specs = mesh.param_specs(models.param_shapes(even), model_axis=2, config=even)
    assert specs["layers"]["attn"]["k_proj"]["kernel"] == P(None, None, "model")


def test_run_mesh_shapes_and_refusals(four_devices):
    m = mesh.run_mesh(four_devices, model_axis=2)
    assert dict(m.shape) == {"pop": 2, "model": 2}
    assert list(m.devices[0]) == four_devices[:2]  # a member's devices are consecutive
    with pytest.raises(ValueError, match=r"model_axis=3 .* divide the 4 devices.*\[1, 2, 4\]"):
        mesh.run_mesh(four_devices, model_axis=3)


def test_shard_params_places_each_device_its_slice(four_devices):
    params = models.init_params(_config(vocab_size=128), jax.random.key(0))
    m = mesh.run_mesh(four_devices, model_axis=4)
    placed = mesh.shard_params(jax.tree.map(np.asarray, params), m)
    down = placed["layers"]["mlp"]["down_proj"]["kernel"]  # [2, 48, 32] by rows: 12 each
    assert {s.data.shape for s in down.addressable_shards} == {(2, 12, 32)}
    np.testing.assert_array_equal(np.asarray(down), params["layers"]["mlp"]["down_proj"]["kernel"])


# ---------------------------------------------------------------------------------------
# Split members compute what one device does.
# ---------------------------------------------------------------------------------------


def _rewards(workdir):
    return [
        (r["reward_mean"], r["accuracy"]) for r in RunDir(workdir).metrics.rows() if r["iteration"]
    ]


def _largest_change(a, b) -> float:
    pairs = zip(tiny_model.leaves(a), tiny_model.leaves(b), strict=True)
    return max(float(np.abs(x - y).max()) for x, y in pairs)


def _assert_close(a, b):
    """Equal to float32 rounding: the split matmuls sum in another order."""
    for x, y in zip(tiny_model.leaves(a), tiny_model.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=2e-6)


BASE = {"es.population_size": 4, "eval.num_examples": 2}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, tiny_dir):
    """(workdir, final params) of ES on one device, trained once for the module."""
    from trainer_driver import patch_reward

    from esawd.tasks.countdown import Countdown

    original = Countdown.reward
    patch_reward()  # as the autouse fixture does for each test (module scope runs before it)
    try:
        workdir = tmp_path_factory.mktemp("one") / "run"
        return workdir, train(tiny_config(workdir, tiny_dir, **BASE, **{"es.num_devices": 1}))
    finally:
        Countdown.reward = original


# Low rank split over the model axis, across two processes: test_trainer.py's
# test_two_processes_equal_one.
@pytest.mark.parametrize("model_axis", [2, 4])
def test_es_run_split_over_the_model_axis_equals_one_device(
    tmp_path, tiny_dir, four_devices, one_device, model_axis
):
    one_dir, one = one_device
    split = {"es.num_devices": 4, "es.model_axis": model_axis}
    out = train(tiny_config(tmp_path / "split", tiny_dir, **BASE, **split))
    assert _rewards(tmp_path / "split") == _rewards(one_dir)  # the same tokens
    assert len({r for r, _ in _rewards(one_dir)}) > 1  # and they vary
    _assert_close(out, one)
    assert _largest_change(out, models.load(tiny_dir).params) > 0  # the run moved the weights
    final = models.load(tmp_path / "split" / "final").params  # exported whole
    _assert_close(final, one)


def test_grpo_step_split_over_the_model_axis_equals_one_device(tmp_path, tiny_dir, four_devices):
    base = {"grpo.num_steps": 1, "eval.num_examples": 0}
    c1 = tiny_config(tmp_path / "one", tiny_dir, method="grpo", **base)
    one = train(c1)
    c2 = tiny_config(tmp_path / "two", tiny_dir, method="grpo", **base, **{"grpo.model_axis": 2})
    two = train(c2)
    rows = [RunDir(tmp_path / w).metrics.rows()[-1] for w in ("one", "two")]
    assert rows[0]["reward_mean"] == rows[1]["reward_mean"]  # the same samples
    assert rows[0]["grad_norm"] == pytest.approx(rows[1]["grad_norm"], rel=1e-4)
    step = _largest_change(one, models.load(tiny_dir).params)
    assert step > 1e-7  # one AdamW step moved the weights ...
    # ... alike: gradients agree to float32 rounding, which AdamW's g / (|g| + eps) enlarges
    # only where |g| is near eps; within 1 % of the step
    assert _largest_change(one, two) < 1e-2 * step
