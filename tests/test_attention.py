"""Every attention implementation equals the einsum reference, values and gradients, on packed rows
with left padding; blockwise attention skips the blocks the masks rule out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from justrl_jax.model import attention as A


def _segments():
    seg = np.zeros((3, 80), np.int32)
    seg[0, 5:30], seg[0, 30:61], seg[0, 61:70] = 1, 2, 3  # left padding, three packed sequences, tail padding
    seg[1, 12:] = 1  # a plain left-padded row
    seg[2, :] = 1
    seg[2, 33:] = 2  # packed, no padding
    return jnp.asarray(seg)


def _inputs(dtype=jnp.float32, heads=4, kv_heads=2, head_dim=16):
    rng = np.random.default_rng(0)
    seg = _segments()
    b, t = seg.shape
    q = jnp.asarray(rng.normal(size=(b, t, heads, head_dim)), dtype)
    k = jnp.asarray(rng.normal(size=(b, t, kv_heads, head_dim)), dtype)
    v = jnp.asarray(rng.normal(size=(b, t, kv_heads, head_dim)), dtype)
    w = jnp.asarray(rng.normal(size=(b, t, heads, head_dim)), jnp.float32)
    return q, k, v, seg, w


def _value_and_grads(fn, q, k, v, seg, w):
    def f(q, k, v):
        out = fn(q, k, v, seg)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


IMPLS = {
    "blockwise-16": lambda q, k, v, s: A.blockwise_attention(q, k, v, s, block=16),
    "blockwise-default": A.blockwise_attention,
    "splash-interpret": A.splash_attention,
    "auto": lambda q, k, v, s: A.self_attention(q, k, v, s, "auto"),
}


@pytest.mark.parametrize("name", list(IMPLS))
def test_implementation_equals_xla_values_and_gradients(name):
    q, k, v, seg, w = _inputs()
    ref_out, ref_grads = _value_and_grads(A.xla_attention, q, k, v, seg, w)
    out, grads = _value_and_grads(IMPLS[name], q, k, v, seg, w)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(out)[np.asarray(seg) == 0] == 0)  # padding queries are defined as 0


def test_xla_reference_is_plain_masked_softmax():
    """The reference itself, against a NumPy loop over queries: causal, same segment, no padding."""
    q, k, v, seg, _ = _inputs(heads=2, kv_heads=1)
    out = np.asarray(A.xla_attention(q, k, v, seg))
    qn, kn, vn, sn = (np.asarray(x, np.float64) for x in (q, k, v, seg))
    for b in range(sn.shape[0]):
        for t in range(sn.shape[1]):
            for n in range(2):
                keys = [s for s in range(t + 1) if sn[b, s] == sn[b, t] and sn[b, t] > 0]
                if not keys:
                    assert np.all(out[b, t, n] == 0)
                    continue
                z = kn[b, keys, 0] @ qn[b, t, n] / np.sqrt(qn.shape[-1])
                p = np.exp(z - z.max())
                np.testing.assert_allclose(out[b, t, n], (p / p.sum()) @ vn[b, keys, 0], atol=1e-5)


@pytest.mark.skipif(jax.devices()[0].platform != "gpu", reason="cudnn attention needs a GPU")
def test_cudnn_equals_xla_in_bf16():
    q, k, v, seg, w = _inputs(jnp.bfloat16, head_dim=64)
    ref_out, ref_grads = _value_and_grads(A.xla_attention, q, k, v, seg, w)
    out, grads = _value_and_grads(A.cudnn_attention, q, k, v, seg, w)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref_out, np.float32), atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), atol=5e-2, rtol=5e-2)


def test_blockwise_visits_only_the_blocks_the_masks_allow():
    # One row packed with sequences of 32 tokens in blocks of 16: each query block needs only the key
    # blocks of its own sequence (a band of width 2), not every earlier block.
    seg = jnp.asarray(np.repeat(np.arange(1, 5), 32)[None], jnp.int32)  # [1, 128]
    (q_lo, q_hi), (k_lo, k_hi) = A._block_ranges(seg, 16)
    np.testing.assert_array_equal(q_lo, [0, 0, 2, 2, 4, 4, 6, 6])
    np.testing.assert_array_equal(q_hi, [1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(k_lo, [0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(k_hi, [2, 2, 4, 4, 6, 6, 8, 8])
    # Left padding: the leading all-padding block is needed by nobody.
    pad = jnp.asarray(np.r_[np.zeros(16), np.ones(32)][None], jnp.int32)
    (q_lo, q_hi), _ = A._block_ranges(pad, 16)
    np.testing.assert_array_equal(q_hi - q_lo, [0, 1, 2])


def test_blockwise_skips_the_mask_only_on_fully_allowed_blocks():
    # Sequences of 32 tokens in blocks of 16: the one pair per sequence with the key block strictly
    # before the query block is full; every other needed pair (the diagonal) keeps its mask.
    seg = jnp.asarray(np.repeat(np.arange(1, 5), 32)[None], jnp.int32)
    needed = A._block_ranges(seg, 16)
    (qf_lo, qf_hi), (kf_lo, kf_hi) = A._full_runs(seg, 16, needed)
    np.testing.assert_array_equal(qf_hi - qf_lo, [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(qf_lo[1::2], [0, 2, 4, 6])
    np.testing.assert_array_equal(kf_hi - kf_lo, [1, 0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(kf_lo[0::2], [1, 3, 5, 7])
    # An empty sub-run sits at the end of the needed run, so the masked loops cover all of it.
    np.testing.assert_array_equal(qf_lo[0::2], needed[0][1][0::2])
    # A block that mixes padding and a sequence, or two sequences, is never full.
    pad = jnp.asarray(np.r_[np.zeros(8), np.ones(40)][None], jnp.int32)
    (qf_lo, qf_hi), _ = A._full_runs(pad, 16, A._block_ranges(pad, 16))
    np.testing.assert_array_equal(qf_hi - qf_lo, [0, 0, 1])  # only (block 2, block 1)


def _assert_blockwise_equals_xla(q, k, v, seg, w):
    """Values and gradients of blockwise attention (block 16) within 1e-5 of the xla reference."""
    ref_out, ref_grads = _value_and_grads(A.xla_attention, q, k, v, seg, w)
    out, grads = _value_and_grads(lambda *a: A.blockwise_attention(*a, block=16), q, k, v, seg, w)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("row", [0, 1, 2])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_blockwise_equals_xla_row_by_row(row, kv_heads):
    """One row at a time, so long single-segment stretches give full (unmasked) block pairs; one KV head
    on one row runs as a single lane, two KV heads as two."""
    q, k, v, seg, w = _inputs(heads=4, kv_heads=kv_heads)
    one = (x[row : row + 1] for x in (q, k, v, seg, w))
    q, k, v, seg, w = one
    _assert_blockwise_equals_xla(q, k, v, seg, w)


def test_blockwise_splits_rows_into_lanes_when_kv_heads_are_odd():
    q, k, v, seg, w = (x[:2] for x in _inputs(heads=3, kv_heads=1))
    _assert_blockwise_equals_xla(q, k, v, seg, w)


def test_auto_is_blockwise_on_cpu_and_bad_names_are_refused():
    q = jnp.zeros((1, 8, 2, 8))
    if jax.devices()[0].platform == "cpu":
        assert A.resolve("auto", q) == "blockwise"
    with pytest.raises(ValueError, match="model.attention"):
        A.check_implementation("flash")


def test_remat_keeps_the_blockwise_output_instead_of_running_it_again():
    """A rematerialised layer saves the attention's output and log-sum-exp (REMAT_POLICY): its compiled
    gradient holds the same block loops as without remat (forward and backward once per layer), not a
    second forward pass of the attention."""
    from flax import nnx

    from justrl_jax.model.qwen2 import Qwen2, Qwen2Config

    cfg = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
    t = 3 * A.DEFAULT_BLOCK  # several blocks: the block loops are real loops
    tokens, positions = jnp.zeros((1, t), jnp.int32), jnp.arange(t)[None]

    def loops(remat: bool) -> int:
        graphdef, params = nnx.split(Qwen2(cfg, rngs=nnx.Rngs(0), remat=remat, attention="blockwise"))

        def f(p):
            return jnp.sum(nnx.merge(graphdef, p)(tokens, positions, jnp.ones((1, t), jnp.int32))[0])

        return jax.jit(jax.grad(f)).lower(params).compile().as_text().count(" while(")

    plain = loops(remat=False)
    assert plain >= 2 * cfg.num_layers  # the forward and the backward block loops of each layer
    assert loops(remat=True) == plain
