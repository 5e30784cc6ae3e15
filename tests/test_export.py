"""experiments.export and models.export: a tiny ES run's theta_T shipped as safetensors and
GGUF, read back by esawd and by transformers.

theta_T comes from the checkpoint or from a replay of the ES log (bitwise the same); each
export loads back with `esawd.models.load` to exactly the parameters rounded to its dtype, and
both esawd and transformers' PyTorch model give the run's logits to that dtype's tolerance
(`assert_logits_close`: one rounding of each weight on the path to a logit). transformers
rebuilds the GGUF's tokenizer from its metadata and undoes llama.cpp's q/k permutation with
its own code, so it checks both independently of ours.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import ml_dtypes
import numpy as np
import pytest
from numerics import logit_tol, unit_roundoff
from tiny_model import assert_bitwise, leaves, tiny_config, tiny_train
from trainer_driver import patch_reward

from esawd import models, tasks
from esawd.models import gguf_io, hf
from experiments import export

torch = pytest.importorskip("torch", reason="torch is a test requirement for parity checks")
transformers = pytest.importorskip("transformers")

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@pytest.fixture(scope="module")
def es_run(tmp_path_factory, tiny_dir):
    """A 2-iteration ES + L2 AWD run with checkpoints at 1 and 2; (workdir, final params)."""
    from esawd.tasks.countdown import Countdown

    original = Countdown.reward
    patch_reward()  # a reward that varies with the text, so that theta moves
    try:
        overrides = {"eval.num_examples": 0, "log.summary": False, "checkpoint.max_to_keep": None}
        c = tiny_config(tmp_path_factory.mktemp("es") / "run", tiny_dir, **overrides)
        final = tiny_train(c)
    finally:
        Countdown.reward = original
    return Path(c.workdir), jax.tree.map(np.asarray, final)


@pytest.fixture(scope="module")
def tuned(es_run):
    """The run's model with theta_2 (from the checkpoint at 2)."""
    model, t = export.run_model(es_run[0], log=lambda _: None)
    assert t == 2
    return model


def prompt(tokenizer, n: int = 0):
    """Ids and mask [1, T] of a countdown chat prompt."""
    task = tasks.get_task("countdown")
    example = task.generate(n + 1, seed=5)[n]
    ids = np.asarray([models.chat_ids(tokenizer, task.messages(example))])
    return ids, np.ones(ids.shape, bool)


def logits(config, params, ids, mask):
    return np.asarray(models.forward(config, params, ids, mask))


def torch_logits(ref, ids, mask):
    with torch.no_grad():
        out = ref(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(np.cumsum(mask, axis=1) - 1),
        )
    return out.logits.numpy()


def rounded(params, dtype, *, only_matrices=False):
    """params rounded to `dtype` and back to float32; with only_matrices, tensors that are
    1-D in a checkpoint (norms, biases: [L, n] under "layers") stay as they are."""

    def cast(path, x):
        x = np.asarray(x)
        per_tensor_ndim = x.ndim - (jax.tree_util.keystr(path[:1]) == "['layers']")
        if only_matrices and per_tensor_ndim <= 1:
            return x.astype(np.float32)
        return x.astype(NP_DTYPES[dtype]).astype(np.float32)

    return jax.tree_util.tree_map_with_path(cast, params)


def assert_tree_equal(got, want):
    """Equal leaf by leaf, values and dtype; the failure names the leaf."""
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
    assert got_def == jax.tree.structure(want)
    for (path, a), b in zip(got_leaves, leaves(want), strict=True):
        assert np.asarray(a).dtype == b.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def assert_logits_close(got, want, config, dtype):
    """Logits `got` of weights rounded to `dtype` are within the rounding's effect of `want`.

    Each weight tensor on the path from the embedding to a logit (9 a layer, the embedding,
    the final norm and the head) is rounded once, an error of at most u per term of the sums
    it enters; to first order, and where a sum's terms are no larger than the scale of the
    logits, each adds at most u * scale. Twice that count (a model, like numerics', not a
    proof: measured 9-12 u * scale for the tiny model against a bound of 42), plus a float32
    evaluation's own rounding (numerics.logit_tol)."""
    scale = float(np.abs(want).max())
    weights = 9 * config.n_layers + 3
    tol = 2 * weights * unit_roundoff(NP_DTYPES[dtype]) * scale
    tol += logit_tol(config, want.shape[1], scale)
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    assert tol < scale / 4  # a wrong, transposed or mis-permuted weight moves logits by ~scale
    if dtype != "float32":  # the rounding shows, so the comparison is not vacuous
        assert np.abs(got - want).max() > 0


# ---------------------------------------------------------------------------------------
# theta_T: checkpoint or replay.
# ---------------------------------------------------------------------------------------


def test_theta_T_is_the_checkpoint_and_the_replay_equals_it(es_run, tuned, tiny_dir, tmp_path):
    workdir, final = es_run
    # restored from the checkpoint of the same computation that returned `final`
    assert_bitwise(tuned.params, final)
    theta0 = models.load(tiny_dir).params
    assert any(np.any(a != b) for a, b in zip(leaves(final), leaves(theta0), strict=True))
    one, t = export.run_model(workdir, iteration=1, log=lambda _: None)
    assert t == 1 and any(
        np.any(a != b) for a, b in zip(leaves(one.params), leaves(final), strict=True)
    )
    # without the checkpoint at 2, theta_2 is replayed from checkpoint 1 with the ES log row:
    # the same es_step on the same inputs as training, so bitwise equal
    copy = Path(shutil.copytree(workdir, tmp_path / "run"))
    shutil.rmtree(copy / "checkpoints" / "2")
    lines = []
    replayed, t = export.run_model(copy, log=lines.append)
    assert t == 2 and "replayed from the ES log" in lines[-1]
    assert_bitwise(replayed.params, final)
    # and without any checkpoint, from theta_0
    shutil.rmtree(copy / "checkpoints" / "1")
    replayed, t = export.run_model(copy, log=lines.append)
    assert t == 2
    assert_bitwise(replayed.params, final)


# ---------------------------------------------------------------------------------------
# safetensors.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_safetensors_export_loads_back_in_esawd_and_transformers(tuned, tmp_path, dtype):
    out = models.export(tuned, tmp_path / "hf", dtype=dtype, max_shard_bytes=20_000)
    # the index names every tensor once, in shards no larger than asked unless alone
    index = json.loads((out / "model.safetensors.index.json").read_text())
    names = [n for n, _ in hf.hf_tensors(tuned.config, tuned.params)]
    assert sorted(index["weight_map"]) == sorted(names)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    itemsize = np.dtype(NP_DTYPES[dtype]).itemsize
    assert index["metadata"]["total_size"] == tuned.config.num_params() * itemsize
    for shard in shards:
        header, _ = hf._read_header(out / shard)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        assert {v["dtype"] for v in tensors.values()} == {hf._ST_DTYPE[dtype]}
        size = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors.values())
        assert size <= 20_000 or len(tensors) == 1, (shard, size)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tuned.config.eos_ids[0] == tuned.tokenizer.eos_token_id

    back = models.load(out)
    assert back.config == tuned.config
    assert_tree_equal(back.params, rounded(tuned.params, dtype))
    ids, mask = prompt(back.tokenizer)
    assert ids.tolist() == prompt(tuned.tokenizer)[0].tolist()
    want = logits(tuned.config, tuned.params, ids, mask)
    ours = logits(back.config, back.params, ids, mask)
    assert_logits_close(ours, want, tuned.config, dtype)
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    theirs = torch_logits(ref, ids, mask)
    np.testing.assert_allclose(
        theirs, ours, atol=logit_tol(tuned.config, ids.shape[1], np.abs(ours).max()), rtol=0
    )


def test_safetensors_reexport_replaces_the_earlier_weights(tuned, tmp_path):
    out = models.export(tuned, tmp_path / "hf", max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").exists()
    models.export(tuned, out, dtype="bfloat16")  # default shard size: one file
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    assert_tree_equal(models.load(out).params, rounded(tuned.params, "bfloat16"))
    models.export(tuned, out, max_shard_bytes=30_000)
    assert not (out / "model.safetensors").exists()
    assert_tree_equal(models.load(out).params, tuned.params)


def test_final_dir_of_the_run_is_theta_T(es_run, tuned):
    assert_tree_equal(models.load(es_run[0] / "final").params, tuned.params)


# ---------------------------------------------------------------------------------------
# GGUF.
# ---------------------------------------------------------------------------------------


def gguf_fields(path):
    reader = gguf_io._open(Path(path))
    fields = {k: gguf_io._field(reader, k) for k in reader.fields if not k.startswith("GGUF.")}
    return fields, {t.name: t.tensor_type.name for t in reader.tensors}


def assert_config_matches(got, want):
    """Equal but for rms_eps, which GGUF stores in float32."""
    assert got.rms_eps == pytest.approx(want.rms_eps, rel=1e-7)
    assert got.replace(rms_eps=want.rms_eps) == want


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gguf_export_loads_back_in_esawd_and_transformers(tuned, tmp_path, dtype):
    path = models.export(tuned, tmp_path / "tuned.gguf", format="gguf", dtype=dtype)
    c, tok = tuned.config, tuned.tokenizer
    fields, types = gguf_fields(path)
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # tiny_model's plain byte-level BPE
    assert fields["tokenizer.chat_template"] == tok.chat_template
    assert len(fields["tokenizer.ggml.tokens"]) == c.vocab_size
    assert fields["tokenizer.ggml.eos_token_id"] == c.eos_ids[0]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    want_type = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    assert types["token_embd.weight"] == types["blk.1.attn_q.weight"] == want_type
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"

    config, params = gguf_io.load_gguf(path)
    assert_config_matches(config, c)
    assert_tree_equal(params, rounded(tuned.params, dtype, only_matrices=True))

    back = models.load(path)  # the tokenizer rebuilt by transformers from the GGUF metadata
    for n in range(3):
        assert prompt(back.tokenizer, n)[0].tolist() == prompt(tok, n)[0].tolist()
    assert back.tokenizer.eos_token_id == tok.eos_token_id
    ids, mask = prompt(tok)
    want = logits(c, tuned.params, ids, mask)
    ours = logits(back.config, back.params, ids, mask)
    assert_logits_close(ours, want, c, dtype)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    theirs = torch_logits(ref, ids, mask)
    np.testing.assert_allclose(
        theirs, ours, atol=logit_tol(c, ids.shape[1], np.abs(ours).max()), rtol=0
    )


LLAMA3_ROPE = (
    ("factor", 8.0),
    ("high_freq_factor", 4.0),
    ("low_freq_factor", 1.0),
    ("original_max_position_embeddings", 16.0),
)


@pytest.mark.parametrize("kind", ["llama", "llama-rope3", "qwen2"])
def test_gguf_write_then_read_is_the_identity(kind, tiny_dir, tiny_qwen2_dir, tmp_path):
    model = models.load(tiny_qwen2_dir if kind == "qwen2" else tiny_dir)
    if kind == "llama-rope3":
        model.config = model.config.replace(rope_scaling=LLAMA3_ROPE)
    path = gguf_io.write_gguf(
        model.config, model.params, tmp_path / "m.gguf", tokenizer=model.tokenizer
    )
    config, params = gguf_io.load_gguf(path)
    assert_tree_equal(params, model.params)
    if kind == "llama-rope3":  # llama.cpp's form of the same scaling: rope_freqs factors
        assert config.rope_freq_factors is not None and config.rope_scaling is None
        np.testing.assert_allclose(
            models.config.rope_inv_freq(config), models.config.rope_inv_freq(model.config),
            rtol=1e-6,
        )  # fmt: skip
        config = config.replace(rope_freq_factors=None, rope_scaling=LLAMA3_ROPE)
    assert_config_matches(config, model.config)
    # the file holds llama.cpp's row order: permuted q/k rows for llama, HF order for qwen2
    reader = gguf_io._open(path)
    q = next(np.asarray(t.data) for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    q_hf = np.asarray(model.params["layers"]["attn"]["q_proj"]["kernel"][0]).T
    permuted = gguf_io.permute_rows(q_hf, model.config.n_heads)
    np.testing.assert_array_equal(q, q_hf if kind == "qwen2" else permuted)
    assert not np.array_equal(permuted, q_hf)
    # transformers reads the file as the same model
    ids, mask = prompt(model.tokenizer)
    ours = logits(config, params, ids, mask)
    if kind == "llama-rope3":  # transformers ignores rope_freqs.weight: compare with ours
        want = logits(model.config, model.params, ids, mask)
        tol = logit_tol(config, ids.shape[1], np.abs(want).max())
        np.testing.assert_allclose(ours, want, atol=tol, rtol=0)
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        theirs = torch_logits(ref, ids, mask)
        tol = logit_tol(config, ids.shape[1], np.abs(ours).max())
        np.testing.assert_allclose(theirs, ours, atol=tol, rtol=0)


# ---------------------------------------------------------------------------------------
# The command line, the hub, bad input.
# ---------------------------------------------------------------------------------------


class FakeHub:
    """huggingface_hub.HfApi stand-in: records what would be created and uploaded."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create", repo_id, kwargs.get("exist_ok")))

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("folder", repo_id, files))
        return SimpleNamespace(commit_url=f"https://hub.test/{repo_id}/commit/1")

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        self.calls.append(("file", repo_id, path_in_repo, Path(path_or_fileobj).stat().st_size))
        return SimpleNamespace(commit_url=f"https://hub.test/{repo_id}/commit/2")


def test_command_exports_and_pushes_to_the_hub(es_run, tuned, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls = []
    workdir = str(es_run[0])
    out = export.main(["--workdir", workdir, "--dtype", "bfloat16", "--out",
                       str(tmp_path / "hf"), "--max_shard_size", "20KB",
                       "--push_to_hub", "me/tiny", "--no_progress"])  # fmt: skip
    uploaded = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in uploaded and "tokenizer.json" in uploaded
    assert FakeHub.calls == [("create", "me/tiny", True), ("folder", "me/tiny", uploaded)]
    assert_tree_equal(models.load(out).params, rounded(tuned.params, "bfloat16"))
    assert "theta_2 (checkpoint" in capsys.readouterr().out

    FakeHub.calls = []
    gguf_out = export.main(["--workdir", workdir, "--iteration", "1", "--format", "gguf",
                            "--dtype", "float16", "--out", str(tmp_path / "t1.gguf"),
                            "--push_to_hub", "me/tiny-gguf", "--no_progress"])  # fmt: skip
    assert FakeHub.calls == [
        ("create", "me/tiny-gguf", True),
        ("file", "me/tiny-gguf", "t1.gguf", gguf_out.stat().st_size),
    ]
    one, _ = export.run_model(workdir, iteration=1, log=lambda _: None)
    fields, _ = gguf_fields(gguf_out)
    assert fields["general.name"] == "run (esawd, iteration 1)"
    assert_tree_equal(
        gguf_io.load_gguf(gguf_out)[1], rounded(one.params, "float16", only_matrices=True)
    )


def test_bad_input_is_refused_with_the_value_and_the_fix(es_run, tuned, tmp_path, capsys):
    workdir = str(es_run[0])
    with pytest.raises(SystemExit, match="no run directory .*absent"):
        export.main(["--workdir", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    with pytest.raises(export.ExportError, match=r"iteration 7 .* 0\.\.2; pass --iteration"):
        export.run_model(workdir, iteration=7, log=lambda _: None)
    for flag, value in (("--format", "onnx"), ("--dtype", "float8"), ("--max_shard_size", "lots")):
        with pytest.raises(SystemExit) as e:
            export.main(["--workdir", workdir, "--out", str(tmp_path / "o"), flag, value])
        assert e.value.code == 2 and repr(value) in capsys.readouterr().err
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(SystemExit, match="is a directory; --format gguf writes one file"):
        export.main(["--workdir", workdir, "--format", "gguf", "--out", str(tmp_path / "dir.gguf")])
    with pytest.raises(ValueError, match=r"dtype 'int8'; choose one of \['float32'"):
        gguf_io.write_gguf(tuned.config, tuned.params, tmp_path / "x.gguf",
                           tokenizer=tuned.tokenizer, dtype="int8")  # fmt: skip
    with pytest.raises(ValueError, match="dtype 'float64'"):
        models.export(tuned, tmp_path / "x", dtype="float64")
    with pytest.raises(ValueError, match="format 'onnx'"):
        models.export(tuned, tmp_path / "x", format="onnx")
    big = jax.tree.map(lambda x: x, tuned.params)
    big["norm"]["scale"] = np.full_like(big["norm"]["scale"], 1e5)
    with pytest.raises(ValueError, match="model.norm.weight.*beyond float16's range"):
        models.export(models.Model(tuned.config, big, None), tmp_path / "y", dtype="float16")
    assert export.parse_size("2GB") == 2 * 10**9 and export.parse_size("1.5MiB") == 3 * 2**19


@pytest.mark.slow
def test_reference_float16_run_exports_its_float16_weights(tiny_dir, tmp_path):
    from esawd.tasks.countdown import Countdown

    keys = {"es.precision": "reference_float16", "es.noise_sharing": "reference",
            "es.reference_engines": 2, "model.compute_dtype": "float16",
            "es.num_iterations": 1, "eval.num_examples": 0, "log.summary": False}  # fmt: skip
    original = Countdown.reward
    patch_reward()
    try:
        final = tiny_train(tiny_config(tmp_path / "run", tiny_dir, **keys))
    finally:
        Countdown.reward = original
    model, t = export.run_model(tmp_path / "run", log=lambda _: None)
    assert t == 1 and all(x.dtype == np.float16 for x in leaves(model.params))
    assert_bitwise(model.params, final)
    out = models.export(model, tmp_path / "hf", dtype="float32")
    assert_tree_equal(models.load(out).params, jax.tree.map(lambda x: x.astype(np.float32), final))
