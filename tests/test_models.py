"""esawd.models: logit parity with transformers' PyTorch models, loading, export, bad input.

Tiny random configs with prime-sized dimensions are written by transformers to safetensors,
loaded by esawd, and compared in float32. Weights are drawn with a large scale (not HF's 0.02
init) so every term of the forward pass moves the logits.
"""

import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import logit_tol

from esawd import es, models
from esawd.models import config as mconfig
from esawd.models import gguf_io, hf

torch = pytest.importorskip("torch", reason="torch is a test requirement for parity checks")
transformers = pytest.importorskip("transformers")

# head_dim (14) differs from hidden / heads (7), so a derived head_dim would fail loudly.
VOCAB, HIDDEN, FF, HEADS, KV, HEAD_DIM, LAYERS = 211, 42, 53, 6, 2, 14, 3


def _llama_config():
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
        rms_norm_eps=1e-5, rope_theta=500.0, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        # small original context so every branch of the llama3 scaling (scaled, smoothed,
        # untouched frequencies) is hit at the positions tested
        rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
        },
    )  # fmt: skip


def _qwen2_config(tied: bool):
    return transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
        rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=64,
        tie_word_embeddings=tied, use_sliding_window=False,
    )  # fmt: skip


def _random_hf_model(hf_config, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return model.eval()


_CONFIGS = {
    "llama3": _llama_config,
    "qwen2-tied": lambda: _qwen2_config(True),
    "qwen2-untied": lambda: _qwen2_config(False),
}


@pytest.fixture(scope="module")
def make_pair(tmp_path_factory):
    """kind -> (transformers model, esawd Model) loaded from the same safetensors directory."""
    cache = {}

    def make(kind):
        if kind not in cache:
            ref = _random_hf_model(_CONFIGS[kind]())
            directory = tmp_path_factory.mktemp(kind)
            ref.save_pretrained(directory, safe_serialization=True)
            cache[kind] = ref, models.load(directory, tokenizer=False)
        return cache[kind]

    return make


@pytest.fixture(params=list(_CONFIGS))
def hf_pair(request, make_pair):
    return make_pair(request.param)


@pytest.fixture
def llama_pair(make_pair):
    return make_pair("llama3")


def _ref_logits(ref, ids, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = ref(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.numpy()


def test_config_read_from_checkpoint(hf_pair):
    ref, ours = hf_pair
    c = ours.config
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (
        VOCAB, HIDDEN, LAYERS, HEADS, KV, HEAD_DIM, FF,
    )  # fmt: skip
    assert c.tie_embeddings == bool(ref.config.tie_word_embeddings)
    assert c.qkv_bias == (c.arch == "qwen2")
    assert ("lm_head" in ours.params) == (not c.tie_embeddings)
    assert ours.params["layers"]["attn"]["q_proj"]["kernel"].shape == (
        LAYERS, HIDDEN, HEADS * HEAD_DIM,
    )  # fmt: skip


def test_logits_match_transformers(hf_pair):
    ref, ours = hf_pair
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(3, 29))
    mask = np.ones(ids.shape, bool)
    mask[1, :7] = False  # left padding; positions come from the mask
    mask[2, :19] = False
    want = _ref_logits(ref, ids, mask)
    got = np.asarray(models.forward(ours.config, ours.params, jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == want.shape == (3, 29, VOCAB)
    diff = np.abs(got - want)[mask]
    assert diff.max() <= 1e-4, diff.max()
    assert np.abs(want[mask]).max() > 1.0  # the comparison is not between near-zero logits


def test_llama3_rope_scaling_matters(llama_pair):
    """Without the llama3 scaling the logits differ: the parity test would catch a missing one."""
    _, ours = llama_pair
    ids = np.arange(40).reshape(1, 40) % VOCAB
    mask = np.ones(ids.shape, bool)
    plain = ours.config.replace(rope_scaling=None)
    a = models.forward(ours.config, ours.params, jnp.asarray(ids), jnp.asarray(mask))
    b = models.forward(plain, ours.params, jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-2
    inv = mconfig.rope_inv_freq(ours.config)
    base = mconfig.rope_inv_freq(plain)
    assert np.any(inv == base) and np.any(np.isclose(inv, base / 8.0))
    assert np.any(~np.isclose(inv, base) & ~np.isclose(inv, base / 8.0))  # smoothed band


def test_bfloat16_compute_close_to_float32(hf_pair):
    _, ours = hf_pair
    ids = jnp.asarray(np.arange(17).reshape(1, 17) % VOCAB)
    mask = jnp.ones(ids.shape, bool)
    f32 = models.forward(ours.config, ours.params, ids, mask)
    bf16 = models.forward(ours.config.replace(dtype="bfloat16"), ours.params, ids, mask)
    assert bf16.dtype == jnp.float32
    err = float(jnp.abs(f32 - bf16).max())
    assert 0 < err < 0.1 * float(jnp.abs(f32).max())  # really computed in bf16, and close
    assert ours.params["embed"]["embedding"].dtype == jnp.float32  # masters untouched


def test_float16_compute_close_to_float32_and_keeps_a_members_perturbation(hf_pair):
    # The paper configs compute in float16, as the reference's vLLM engines.
    _, ours = hf_pair
    ids = jnp.asarray(np.arange(17).reshape(1, 17) % VOCAB)
    mask = jnp.ones(ids.shape, bool)
    f16_config = ours.config.replace(dtype="float16")
    f32 = models.forward(ours.config, ours.params, ids, mask)
    f16 = models.forward(f16_config, ours.params, ids, mask)
    bf16 = models.forward(ours.config.replace(dtype="bfloat16"), ours.params, ids, mask)
    assert f16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(f16)))
    err16, err_bf16 = float(jnp.abs(f32 - f16).max()), float(jnp.abs(f32 - bf16).max())
    assert 0 < err16 < err_bf16 / 3  # computed in float16: 3 more mantissa bits than bf16
    # A member theta + sigma eps at the paper's sigma: the logit change float16 computes
    # follows float32's; in bfloat16 much of the perturbation rounds away.
    member = es.perturb(ours.params, 7, sigma=1e-3)
    d32 = models.forward(ours.config, member, ids, mask) - f32
    d16 = models.forward(f16_config, member, ids, mask) - f16
    dbf = models.forward(ours.config.replace(dtype="bfloat16"), member, ids, mask) - bf16
    rel16, rel_bf16 = (float(jnp.linalg.norm(d - d32) / jnp.linalg.norm(d32)) for d in (d16, dbf))
    assert rel16 < 0.5 and rel16 < rel_bf16 / 2, (rel16, rel_bf16)


def test_export_round_trip_exact(hf_pair, tmp_path):
    ref, ours = hf_pair
    out = models.export(ours, tmp_path / "exported")
    back = models.load(out, tokenizer=False)
    assert back.config == ours.config
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ours.params, back.params)
    assert all(jax.tree.leaves(same))
    # transformers reads the export too, with the same weights
    reread = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    for (n1, p1), (n2, p2) in zip(
        ref.state_dict().items(), reread.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_gguf_llama_permutation_undone(llama_pair, tmp_path):
    """A GGUF written with llama.cpp's q/k row permutation loads back to the HF weights."""
    import gguf

    _, ours = llama_pair
    c = ours.config
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.n_layers)
    writer.add_context_length(c.max_position)
    writer.add_embedding_length(c.d_model)
    writer.add_feed_forward_length(c.d_ff)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_vocab_size(c.vocab_size)
    inv = {v: k for k, v in gguf_io._TOP.items()}
    inv_layer = {v: k for k, v in gguf_io._LAYER.items()}
    base = mconfig.rope_inv_freq(c.replace(rope_scaling=None))
    writer.add_tensor("rope_freqs.weight", base / mconfig.rope_inv_freq(c))
    for name, arr in hf.hf_tensors(c, ours.params):
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers.") :].split(".", 1)
            gname = f"blk.{i}.{inv_layer[rest]}"
            if rest.startswith("self_attn.q_proj"):
                arr = gguf_io.permute_rows(arr, c.n_heads)
            elif rest.startswith("self_attn.k_proj"):
                arr = gguf_io.permute_rows(arr, c.n_kv_heads)
        else:
            gname = inv[name]
        writer.add_tensor(gname, np.ascontiguousarray(arr, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    config, params = gguf_io.load_gguf(path)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ours.params, params)
    assert all(jax.tree.leaves(same))
    ids = jnp.asarray(np.arange(30).reshape(1, 30) % VOCAB)
    mask = jnp.ones(ids.shape, bool)
    a = models.forward(c, ours.params, ids, mask)
    b = models.forward(config, params, ids, mask)  # rope via rope_freqs factors
    # The same weights, but the rope frequencies come from another formula (rope_freqs
    # factors): equal to a float32 forward's rounding (numerics.logit_tol), not bitwise.
    tol = logit_tol(c, ids.shape[1], np.abs(np.asarray(a)).max())
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=0)


# ---------------------------------------------------------------------------- bad input


def _tiny_dir(tmp_path, tied=True):
    ref = _random_hf_model(_qwen2_config(tied))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_missing_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load(tmp_path, tokenizer=False)
    d = _tiny_dir(tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        models.load(d, tokenizer=False)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        models.load("no-such-model", tokenizer=False)


def test_truncated_safetensors_names_file(tmp_path):
    d = _tiny_dir(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated: tensor"):
        models.load(d, tokenizer=False)
    f.write_bytes(b"\x05")
    with pytest.raises(ValueError, match="model.safetensors is truncated"):
        models.load(d, tokenizer=False)


def test_shape_mismatch_names_tensor(tmp_path):
    d = _tiny_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = FF + 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight.*shape"):
        models.load(d, tokenizer=False)


def test_missing_tensor_and_extra_layers_named(tmp_path):
    d = _tiny_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = LAYERS + 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyError, match=rf"model\.layers\.{LAYERS}\.input_layernorm\.weight"):
        models.load(d, tokenizer=False)
    cfg["num_hidden_layers"] = LAYERS - 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="more layers"):
        models.load(d, tokenizer=False)


def test_unsupported_architecture(tmp_path):
    d = _tiny_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture.*gpt2"):
        models.load(d, tokenizer=False)
    with pytest.raises(ValueError, match="unsupported rope scaling"):
        mconfig.from_hf_config({**cfg, "model_type": "llama", "rope_scaling": {"type": "yarn"}})


def test_preset_mismatch_is_reported():
    _, preset = mconfig.PRESETS["qwen2.5-0.5b-instruct"]
    with pytest.raises(ValueError, match="n_layers: preset 24 vs checkpoint 3"):
        mconfig.check_matches(preset, preset.replace(n_layers=3), source="x")
    assert mconfig.PRESETS["qwen2.5-7b-instruct"][1].tie_embeddings is False
    assert mconfig.PRESETS["llama-3.2-1b-instruct"][1].rope_scaling is not None


def test_bad_gguf_names_file(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 5)
    with pytest.raises(ValueError, match="broken.gguf"):
        models.load(f, tokenizer=False)
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        gguf_io.load_gguf(tmp_path / "absent.gguf")


def test_generation_config_stop_tokens_are_merged(tmp_path):
    d = _tiny_dir(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 5}))
    (d / "generation_config.json").unlink(missing_ok=True)
    assert hf.read_config(d).eos_ids == (5,)
    # a list (Qwen2.5-Instruct's [<|im_end|>, <|endoftext|>]): config.json's id first, once
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 5]}))
    assert models.load(d, tokenizer=False).config.eos_ids == (5, 7)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert hf.read_config(d).eos_ids == (5, 9)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json.*eos_token_id"):
        hf.read_config(d)


def test_qwen_presets_stop_at_both_end_tokens():
    qwen = [name for name in mconfig.PRESETS if name.startswith("qwen2.5")]
    assert len(qwen) == 4
    for name in qwen:
        assert mconfig.PRESETS[name][1].eos_ids == (151645, 151643), name
