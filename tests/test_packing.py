"""Packed rows (segments, token-budget micro-batches) train exactly like the padded layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from justrl_jax.advantages import group_advantages
from justrl_jax.losses import LossAggregation, LossConfig, fused_policy_loss
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.optim import OptimConfig
from justrl_jax.packing import bucket, pack_sequences, pack_train_batch, place_sequences
from justrl_jax.train_batch import build_train_batch
from justrl_jax.train_step import TrainConfig, init_train_state, make_compute_logps, make_train_step
from justrl_jax.verl_dynamic_bsz import sequence_weights

N, P, T, G, W = 8, 5, 9, 4, 16  # responses, prompt slots, completion slots, group size, tokens per row
CFG = Qwen2Config(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
)
# As in test_train_step: Adam's eps raised so that equal parameters after a step mean equal gradients.
PADDED = TrainConfig(
    mini_batch_size=4,
    micro_batch_size=2,
    logp_chunk_size=4,
    remat=False,
    optim=OptimConfig(lr=1e-3, warmup_steps=0, eps=1e-4),
)
PACKED = dataclasses.replace(PADDED, max_tokens_per_row=W, micro_batch_tokens=2 * W)


def _rollout(seed=0):
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(1, P + 1, N)
    completion_len = rng.integers(1, T + 1, N)  # mixed lengths, from a single token to the full width
    prompt_ids = rng.integers(1, CFG.vocab_size, (N, P)).astype(np.int32)
    prompt_mask = np.arange(P)[None] >= (P - prompt_len)[:, None]  # left padded
    completion_ids = rng.integers(1, CFG.vocab_size, (N, T)).astype(np.int32)
    completion_mask = np.arange(T)[None] < completion_len[:, None]
    rewards = np.array([1, -1, -1, 1, 1, 0, 0, 1], np.float32)
    adv = np.asarray(group_advantages(rewards, G))
    return prompt_ids, prompt_mask, completion_ids, completion_mask, adv


def _batches(cfg=PACKED):
    ro = _rollout()
    lengths = ro[1].sum(1) + ro[3].sum(1)
    weights = None
    if cfg.loss.agg is LossAggregation.VERL_DYNAMIC_BSZ:
        weights = sequence_weights(lengths, ro[3].sum(1), cfg.mini_batch_size, 1, cfg.micro_batch_tokens)
    padded = build_train_batch(*ro, length_bucket=1, pad_id=0).replace(token_weights=weights)
    packed = pack_train_batch(
        *ro,
        mini_batch_size=cfg.mini_batch_size,
        max_tokens_per_row=W,
        rows_per_micro=cfg.rows_per_micro(1),
        pad_id=0,
        sequence_weights=weights,
    )
    _, placement = place_sequences(lengths, cfg.mini_batch_size, W, cfg.rows_per_micro(1))
    return ro, padded, packed, placement


def _to_packed(padded_values, ro, placement, packed_shape):
    """Token-aligned [N, P + T] values of the padded layout moved to their packed positions."""
    prompt_mask, completion_mask = ro[1], ro[3]
    out = np.zeros(packed_shape, np.float32)
    for i, (row, at, _) in enumerate(placement):
        valid = np.concatenate([prompt_mask[i], completion_mask[i][: padded_values.shape[1] - P]])
        seq = padded_values[i][valid]
        out[row, at : at + len(seq)] = seq
    return out


def _model():
    return Qwen2(CFG, rngs=nnx.Rngs(0))


def test_bucket_and_first_fit_decreasing():
    assert [bucket(n) for n in (1, 4, 5, 7, 8, 9, 11, 17, 33)] == [1, 4, 5, 7, 8, 10, 12, 20, 40]
    assert all(n <= bucket(n) <= 1.25 * n for n in range(5, 2000))
    assert pack_sequences([5, 9, 3, 7, 2], 10) == [[1], [3, 2], [0, 4]]
    with pytest.raises(ValueError, match="train.max_tokens_per_row=10"):
        pack_sequences([11], 10)


def test_packed_layout():
    ro, _, packed, placement = _batches()
    seg, pos, loss = np.asarray(packed.attn_mask), np.asarray(packed.positions), np.asarray(packed.loss_mask)
    assert packed.mini_batches == 2 and packed.tokens.shape[0] % (2 * PACKED.rows_per_micro(1)) == 0
    for i, (row, at, s) in enumerate(placement):
        p, c = int(ro[1][i].sum()), int(ro[3][i].sum())
        np.testing.assert_array_equal(seg[row, at : at + p + c], s)
        np.testing.assert_array_equal(pos[row, at : at + p + c], np.arange(p + c))  # positions restart
        np.testing.assert_array_equal(packed.tokens[row, at : at + p], ro[0][i][ro[1][i]])
        np.testing.assert_array_equal(loss[row, at : at + p + c], np.r_[np.zeros(p), np.ones(c)])
        assert row // (packed.tokens.shape[0] // 2) == i // PACKED.mini_batch_size  # stays in its mini-batch
    # target_index lists exactly the loss positions, padded with W.
    for row in range(packed.tokens.shape[0]):
        idx = packed.target_index[row]
        np.testing.assert_array_equal(idx[idx < W], np.flatnonzero(loss[row]))
    assert (seg[loss == 0] >= 0).all() and (np.asarray(packed.advantages)[seg == 0] == 0).all()
    with pytest.raises(ValueError, match="max_tokens_per_row=8"):
        pack_train_batch(*ro, mini_batch_size=4, max_tokens_per_row=8, rows_per_micro=1, pad_id=0)


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_packed_forward_equals_padded(impl):
    """Attention never crosses segments: each sequence's hidden states are those of its padded row."""
    ro, padded, packed, placement = _batches()
    model = _model()
    model.attention = impl
    forward = nnx.jit(lambda m, batch: m(batch.tokens, batch.positions, batch.attn_mask)[0])  # compiled, not op by op
    h_pad = np.asarray(forward(model, jax.tree.map(jnp.asarray, padded)))
    h_pack = np.asarray(forward(model, jax.tree.map(jnp.asarray, packed)))
    for i, (row, at, _) in enumerate(placement):
        valid = padded.attn_mask[i]
        np.testing.assert_allclose(h_pack[row, at : at + valid.sum()], h_pad[i][valid], atol=1e-5, rtol=1e-5)


def _with_old(batch, logps, noise):
    return batch.replace(old_logps=(np.asarray(logps) + noise).astype(np.float32))


@pytest.mark.parametrize("agg", list(LossAggregation))
def test_packed_train_step_equals_padded(agg):
    loss = LossConfig(agg=agg)
    pad_cfg, pack_cfg = (dataclasses.replace(c, loss=loss, micro_batch_tokens=2 * W) for c in (PADDED, PACKED))
    ro, padded, packed, placement = _batches(pack_cfg)
    graphdef, state = init_train_state(_model(), pad_cfg.optim)
    pad_logps = make_compute_logps(graphdef, pad_cfg, None)(state, padded)
    pack_logps = make_compute_logps(graphdef, pack_cfg, None)(state, packed)
    moved = _to_packed(np.asarray(pad_logps.logps), ro, placement, packed.tokens.shape)
    np.testing.assert_allclose(pack_logps.logps, moved * packed.loss_mask, atol=1e-5)  # only targets scored
    np.testing.assert_allclose(pack_logps.entropy, pad_logps.entropy, rtol=1e-5)

    # Old log-probs off the current ones, so every clip branch is active; the same per token in both.
    noise = np.random.default_rng(1).normal(0, 0.5, padded.tokens.shape).astype(np.float32)
    padded = _with_old(padded, pad_logps.logps, noise)
    packed = packed.replace(old_logps=_to_packed(np.asarray(padded.old_logps), ro, placement, packed.tokens.shape))

    # Gradients of the first mini-batch's loss sum, through the model and the fused loss.
    def grads(cfg, batch, rows):
        x = jax.tree.map(lambda a: jnp.asarray(a[rows]), batch)

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            hidden, _ = model(x.tokens, x.positions, x.attn_mask)
            seg = None if x.target_index is None else jnp.asarray(x.attn_mask)
            total, stats = fused_policy_loss(
                hidden, model.unembed(), x.tokens, x.old_logps, x.advantages, x.loss_mask, cfg.loss, 4,
                target_index=x.target_index, segments=seg, token_weights=x.token_weights,
            )  # fmt: skip
            return total / stats.count

        # Compiled, as the train step runs it: eager op-by-op autodiff of the model took ~3x longer.
        return jax.jit(jax.grad(loss_fn))(state.params)

    g_pad = grads(pad_cfg, padded, slice(0, 4))
    g_pack = grads(pack_cfg, packed, slice(0, packed.tokens.shape[0] // 2))
    for a, b in zip(jax.tree.leaves(g_pack), jax.tree.leaves(g_pad), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)

    _, s_pad = init_train_state(_model(), pad_cfg.optim)
    _, s_pack = init_train_state(_model(), pack_cfg.optim)
    s_pad, m_pad = make_train_step(graphdef, pad_cfg, None)(s_pad, padded)
    s_pack, m_pack = make_train_step(graphdef, pack_cfg, None)(s_pack, packed)
    for field in ("loss", "pg_loss", "grad_norm", "entropy", "approx_kl", "clipfrac_low", "ratio_max", "total_tokens"):
        np.testing.assert_allclose(getattr(m_pack, field), getattr(m_pad, field), rtol=1e-5, atol=1e-7, err_msg=field)
    for a, b in zip(jax.tree.leaves(s_pack.params), jax.tree.leaves(s_pad.params), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)


def test_packing_config_is_validated():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        TrainConfig(mini_batch_size=4, micro_batch_size=2, max_tokens_per_row=64, micro_batch_tokens=32)
    with pytest.raises(ValueError, match="not packed"):
        PADDED.rows_per_micro(1)
    assert dataclasses.replace(PACKED, micro_batch_tokens=5 * W).rows_per_micro(2) == 10


@pytest.mark.parametrize("cfg", [PADDED, PACKED], ids=["padded", "packed"])
def test_sampler_logps_ride_in_the_batch_layout_for_the_gap(cfg):
    """rollout_train_batch lays the sampler's log-probs out like the batch (packed or padded), so
    logprob_gap compares each response token with the trainer's log-prob of that same token."""
    from justrl_jax.sampler import Rollout
    from justrl_jax.train_batch import logprob_gap, rollout_train_batch

    prompt_ids, prompt_mask, completion_ids, completion_mask, adv = _rollout()
    lengths = completion_mask.sum(1).astype(np.int32)
    model = Qwen2(CFG, rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, cfg.optim)
    compute = make_compute_logps(graphdef, cfg, None)
    # The trainer's own log-probs of the padded batch stand in for a sampler that agrees with it exactly.
    padded = build_train_batch(prompt_ids, prompt_mask, completion_ids, completion_mask, adv, 1, 0)
    exact = np.asarray(compute(state, jax.tree.map(jnp.asarray, padded)).logps)[:, P:]
    exact = np.where(completion_mask[:, : exact.shape[1]], exact, 0.0)
    sampler = np.zeros((N, T), np.float32)
    sampler[:, : exact.shape[1]] = exact
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, jnp.asarray(sampler), lengths, lengths)
    batch = jax.tree.map(jnp.asarray, rollout_train_batch(rollout, adv, cfg, length_bucket=1, dp=1, pad_id=0))
    assert (batch.target_index is not None) == bool(cfg.max_tokens_per_row)
    trainer = compute(state, batch).logps
    assert float(logprob_gap(batch.old_logps, trainer, batch.loss_mask)) < 1e-5
    # A sampler that is off by 0.1 on one token of one response is seen, whatever the layout.
    sampler[3, lengths[3] - 1] += 0.1
    moved = rollout_train_batch(
        dataclasses.replace(rollout, logprobs=jnp.asarray(sampler)), adv, cfg, length_bucket=1, dp=1, pad_id=0
    )
    gap = float(logprob_gap(jnp.asarray(moved.old_logps), trainer, batch.loss_mask))
    assert abs(gap - 0.1) < 1e-4, gap
