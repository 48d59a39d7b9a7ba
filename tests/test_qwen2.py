"""Qwen2 parity with transformers, KV-cache decoding, HF round trip, mesh invariance, 1.5B shapes."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import hf_logits, make_hf_qwen2

from justrl_jax.model.construct import abstract_model, count_params
from justrl_jax.model.hf_io import export_hf_model, load_hf_model, read_hf_config
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config, positions_from_mask
from justrl_jax.sharding import MeshConfig, make_mesh


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (3, 11))
    mask = np.ones((3, 11), bool)
    mask[0, :5] = False  # left padding, mixed lengths
    mask[1, :2] = False
    return tokens, mask


def _jax_logits(model, tokens, mask):
    mask = jnp.asarray(mask)
    hidden, _ = model(jnp.asarray(tokens), positions_from_mask(mask), mask)
    return np.asarray(model.logits(hidden))


CASES = [
    dict(heads=4, kv_heads=4, tie=False, rope_theta=10000.0, config_style="hub"),  # MHA
    dict(heads=4, kv_heads=2, tie=True, rope_theta=500000.0, config_style="v5"),  # GQA, tied
    dict(heads=4, kv_heads=1, tie=False, rope_theta=500000.0, config_style="hub"),
    dict(heads=4, kv_heads=2, tie=False, rope_theta=10000.0, config_style="v5"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"kv{c['kv_heads']}-tie{c['tie']}-{c['config_style']}")
def test_logits_match_transformers(tmp_path, case):
    path, ref_model = make_hf_qwen2(tmp_path / "hf", **case)
    model = load_hf_model(str(path))
    assert model.config.tie_word_embeddings == case["tie"]
    assert model.config.rope_theta == case["rope_theta"]
    tokens, mask = _batch(model.config.vocab_size)
    ref = hf_logits(ref_model, tokens, mask)
    np.testing.assert_allclose(_jax_logits(model, tokens, mask)[mask], ref[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_cached_decoding_equals_full_forward(tmp_path):
    path, _ = make_hf_qwen2(tmp_path / "hf", heads=4, kv_heads=2)
    model = load_hf_model(str(path))
    tokens, mask = _batch(model.config.vocab_size, seed=1)
    full = _jax_logits(model, tokens, mask)

    prompt = 6  # prefill the first 6 columns (row 0 is still all padding there but one token)
    cache = model.init_cache(batch=3, slots=16)
    m = jnp.asarray(mask)
    pos = positions_from_mask(m)
    hidden, cache = model(jnp.asarray(tokens[:, :prompt]), pos[:, :prompt], m[:, :prompt], cache)
    steps = [np.asarray(model.logits(hidden))]
    for t in range(prompt, tokens.shape[1]):
        hidden, cache = model(jnp.asarray(tokens[:, t : t + 1]), pos[:, t : t + 1], m[:, t : t + 1], cache)
        steps.append(np.asarray(model.logits(hidden)))
    cached = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached[mask], full[mask], atol=1e-5, rtol=1e-5)
    assert int(cache.index) == tokens.shape[1]


def test_mlp_one_token_layout_equals_the_sequence_layout():
    # Decode (one token per row) runs the MLP token-major, sequences feature-major: same products and sums.
    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=48, num_layers=1, num_heads=2, num_kv_heads=1)
    mlp = Qwen2(cfg, rngs=nnx.Rngs(0)).layers[0].mlp
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 16)), jnp.float32)
    per_token = jnp.concatenate([mlp(x[:, t : t + 1]) for t in range(4)], axis=1)
    np.testing.assert_allclose(np.asarray(per_token), np.asarray(mlp(x)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_export_reloads_in_transformers(tmp_path, tie):
    path, _ = make_hf_qwen2(tmp_path / "hf", tie=tie, config_style="hub")
    model = load_hf_model(str(path))
    out = export_hf_model(
        model, tmp_path / "export", dtype="float32", source_dir=path, max_shard_bytes=20_000
    )  # force a sharded export with an index
    assert (out / "model.safetensors.index.json").exists()
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens, mask = _batch(model.config.vocab_size, seed=2)
    np.testing.assert_allclose(
        hf_logits(reloaded, tokens, mask)[mask], _jax_logits(model, tokens, mask)[mask], atol=1e-5, rtol=1e-5
    )
    assert read_hf_config(out) == model.config
    # bf16 export: transformers loads it and agrees within bf16 tolerance.
    out16 = export_hf_model(model, tmp_path / "export16", dtype="bfloat16")
    assert json.loads((out16 / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded16 = transformers.Qwen2ForCausalLM.from_pretrained(out16, dtype=torch.float32).eval()
    np.testing.assert_allclose(
        hf_logits(reloaded16, tokens, mask)[mask], _jax_logits(model, tokens, mask)[mask], atol=0.05, rtol=0.05
    )


@pytest.mark.slow
def test_forward_on_4x4_mesh_equals_one_device(tmp_path):
    path, ref_model = make_hf_qwen2(tmp_path / "hf", vocab=128, hidden=64, heads=4, kv_heads=2)
    single = load_hf_model(str(path))
    mesh = make_mesh(MeshConfig.parse("4x4"))
    sharded = load_hf_model(str(path), mesh=mesh)
    emb = sharded.embedding[...]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert len(emb.addressable_shards) == 16
    tokens, mask = _batch(128, seed=3)
    tokens = np.concatenate([tokens, tokens[:1]], 0)  # batch 4 divides fsdp=4
    mask = np.concatenate([mask, mask[:1]], 0)

    graphdef, state = nnx.split(sharded)

    @jax.jit
    def forward(state, tokens, mask):
        model = nnx.merge(graphdef, state)
        hidden, _ = model(tokens, positions_from_mask(mask), mask)
        return model.logits(hidden)

    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    with jax.set_mesh(mesh):
        out = forward(
            state,
            jax.device_put(jnp.asarray(tokens), batch_sharding),
            jax.device_put(jnp.asarray(mask), batch_sharding),
        )
    np.testing.assert_allclose(np.asarray(out)[mask], _jax_logits(single, tokens, mask)[mask], atol=1e-5, rtol=1e-5)


def test_mesh_that_does_not_match_devices_is_an_error():
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(MeshConfig.parse("3x4"))
    with pytest.raises(ValueError, match="unknown mesh axis 'data'"):
        MeshConfig.parse("data=4")


def test_1p5b_shapes_and_parameter_count():
    config = Qwen2Config()  # DeepSeek-R1-Distill-Qwen-1.5B
    abstract = abstract_model(config)
    n = count_params(abstract)
    assert n == config.num_params() == 1_777_088_000  # HF num_parameters() of the real model
    tokens = jnp.zeros((2, 8), jnp.int32)
    hidden = jax.eval_shape(lambda: Qwen2(config, rngs=nnx.Rngs(0))(tokens, tokens, tokens >= 0)[0])
    assert hidden.shape == (2, 8, 1536)
    tied = Qwen2Config(tie_word_embeddings=True, rope_theta=500000.0)
    assert tied.num_params() == n - 151936 * 1536


def test_unsupported_configs_are_rejected(tmp_path):
    path, _ = make_hf_qwen2(tmp_path / "hf")
    cfg = json.loads((path / "config.json").read_text())
    for key, value, match in [
        ("use_sliding_window", True, "use_sliding_window"),
        ("rope_scaling", {"type": "yarn", "factor": 4}, "rope_scaling"),
        ("model_type", "llama", "model_type"),
    ]:
        bad = dict(cfg, **{key: value})
        (path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            read_hf_config(path)


def test_import_has_no_side_effects():
    code = (
        "import os, sys; before = dict(os.environ); import justrl_jax, justrl_jax.model.qwen2, "
        "justrl_jax.model.hf_io, "
        "justrl_jax.sharding; assert dict(os.environ) == before; "
        "from jax._src import xla_bridge; assert not xla_bridge._backends, 'a backend was initialised'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
