"""The memory plan (esawd.memplan) against what XLA compiles, and the refusal it drives."""

import json
import shutil

import jax
import numpy as np
import pytest
import tiny_model
from tiny_model import tiny_config

from esawd import memplan, models, settings
from esawd import mesh as mesh_lib
from esawd.es.method import make_generate_fn
from esawd.es.population import compile_population

# The plan may miss XLA's own accounting by this much either way (docs/gpu.md).
MARGIN = 0.30


def _compiled_bytes(config, *, model_axis, prompts, width, max_new_tokens):
    """Per-device bytes of one member's compiled generation: arguments + temporaries +
    outputs, less what is aliased (`compiled.memory_analysis()`); nothing is run."""
    shapes = jax.eval_shape(lambda k: models.init_params(config, k), jax.random.key(0))
    mesh = mesh_lib.run_mesh(jax.devices()[:model_axis], model_axis=model_axis)
    shardings = mesh_lib.param_shardings(shapes, mesh, config=config)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    ids = np.ones((prompts, width), np.int32)
    fitness = make_generate_fn(config, ids, ids > 0, max_new_tokens=max_new_tokens,
                               ignore_eos=True, fuse_layers=model_axis == 1)  # fmt: skip
    compiled = compile_population(
        fitness, params, np.zeros(1, np.uint32), sigma=1e-3, mesh=mesh, members_per_batch=1
    )
    m = compiled.memory_analysis()
    return (
        m.argument_size_in_bytes
        + m.temp_size_in_bytes
        + m.output_size_in_bytes
        - (m.alias_size_in_bytes)
    )


TINY = models.ModelConfig(
    arch="qwen2", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
    d_ff=96, rope_theta=1e4, max_position=512, tie_embeddings=True, qkv_bias=True, eos_ids=(1,),
)  # fmt: skip


@pytest.mark.parametrize(
    "name,model_axis",
    [("tiny", 1), ("tiny", 2), ("smollm2", 1), ("smollm2", 2)],
)
def test_plan_is_within_the_margin_of_the_compiled_generation(name, model_axis, four_devices):
    config = TINY if name == "tiny" else models.PRESETS["smollm2-135m-instruct"][1]
    kw = dict(prompts=4, width=48, max_new_tokens=32)
    measured = _compiled_bytes(config, model_axis=model_axis, **kw)
    plan = memplan.es_plan(config, **kw, population_size=2, devices=model_axis,
                           model_axis=model_axis, limit=(64 * 2**30, "test"))  # fmt: skip
    ratio = plan.total / measured
    assert 1 - MARGIN < ratio < 1 + MARGIN, (plan.format(), measured)


def test_plan_scales_with_the_model_axis():
    config = models.PRESETS["qwen2.5-7b-instruct"][1]
    kw = dict(prompts=200, width=150, max_new_tokens=1024, population_size=30,
              limit=(80 * 2**30, "an 80 GB GPU"))  # fmt: skip
    one = memplan.es_plan(config, devices=8, model_axis=1, **kw)
    four = memplan.es_plan(config, devices=8, model_axis=4, **kw)
    masters = dict(one.device)["masters theta_t"]
    assert masters == pytest.approx(4 * config.num_params(), rel=1e-9)  # float32 theta_t
    assert dict(four.device)["masters theta_t"] == pytest.approx(masters / 4, rel=0.01)
    assert not one.fits and four.fits  # 7B on an 80 GB device: split over 4
    assert dict(one.host)["anchor theta_0 (pinned)"] == masters  # one copy per process
    text = one.refusal()
    assert "es.model_axis (now 1" in text and "task.max_new_tokens (now 1024)" in text
    assert "80 GB GPU" in text and "Nothing was loaded" in text


def _huge_model_dir(tmp_path, tiny_dir):
    """A Llama-3.1-70B-shaped config.json (no weights) with the tiny model's tokenizer."""
    out = tmp_path / "llama70b"
    shutil.copytree(tiny_dir, out)
    for f in out.glob("*.safetensors*"):
        f.unlink()
    hf = json.loads((out / "config.json").read_text())
    hf.update(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
              num_key_value_heads=8, intermediate_size=28672, head_dim=128)  # fmt: skip
    (out / "config.json").write_text(json.dumps(hf))
    return out


def test_a_config_that_cannot_fit_is_refused_before_loading(tmp_path, tiny_dir, monkeypatch):
    huge = _huge_model_dir(tmp_path, tiny_dir)
    load = models.load

    def no_weights(*a, weights=True, **k):
        assert not weights, "the weights were loaded before the memory plan was checked"
        return load(*a, weights=weights, **k)

    monkeypatch.setattr(models, "load", no_weights)
    c = tiny_config(tmp_path / "run", huge)
    with pytest.raises(settings.ConfigError, match=r"needs .* GiB per device .*es.model_axis"):
        tiny_model.tiny_train(c)
    assert not (tmp_path / "run").exists()  # nothing written, not even the directory
