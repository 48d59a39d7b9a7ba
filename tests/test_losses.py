"""The policy loss and chunked log-probs against NumPy written from the recipe's formulas (recipe §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from justrl_jax.losses import (
    CLASSIC_AGGREGATIONS,
    LossAggregation,
    LossConfig,
    LossStats,
    chunked_logps,
    fused_policy_loss,
    k3_kl,
    policy_loss,
    sequence_logps,
)

LO, HI, C = 0.2, 0.28, 10.0
PAD = None  # marks a padding token in the table below

# Per row: advantage, then the ratio of each token (PAD = not a loss token). Every branch is hit:
# upper clip (A > 0, r > 1.28), lower clip (A < 0, r < 0.8), dual clip (A < 0, r > 10), no clip,
# a zero-advantage row (an all-equal group) that still counts, and a row with no loss token at all.
ROWS = [
    (1.2, [1.5, 1.1, 0.5, 1.0, 1.3, PAD]),
    (-0.8, [0.5, 0.9, 12.0, 1.5, 3.0, PAD]),
    (0.0, [1.0, 1.7, 0.3, PAD, PAD, PAD]),
    (-1.5, [20.0, 0.7, 1.2, 0.79, 11.0, 0.95]),
    (0.7, [PAD, PAD, PAD, PAD, PAD, PAD]),
]


def _hand_batch(seed=0):
    rng = np.random.default_rng(seed)
    adv = np.array([a for a, _ in ROWS], np.float64)
    mask = np.array([[r is not PAD for r in ratios] for _, ratios in ROWS], np.float64)
    old = rng.uniform(-4.0, -0.1, mask.shape)
    log_ratio = np.array([[np.log(r) if r is not PAD else 30.0 for r in ratios] for _, ratios in ROWS])
    logp = old + log_ratio  # padding gets ratio e^30: it must be ignored, not clipped away
    ent = rng.uniform(0.1, 3.0, mask.shape)
    ref = logp + rng.uniform(-0.5, 0.5, mask.shape)
    return logp, old, adv, mask, ent, ref


def _ref_token_loss(r, a):
    """recipe §1: L = max(-A r, -A clip(r, 1-0.2, 1+0.28)); for A < 0, min(L, -A c)."""
    clipped = min(max(r, 1.0 - LO), 1.0 + HI)
    loss = max(-a * r, -a * clipped)
    if a < 0:
        loss = min(loss, -a * C)
    return loss


def _ref_token_grad(r, a):
    """d L / d logp = r dL/dr: -A r, except where a clip or the dual clip makes L constant."""
    if (a > 0 and r > 1.0 + HI) or (a < 0 and r < 1.0 - LO) or (a < 0 and r > C):
        return 0.0
    return -a * r


def _reference(logp, old, adv, mask, ent, ref, agg, ent_coef=0.0, kl_coef=0.0):
    """Loss, gradient w.r.t. logp, and the token-level metrics, token by token in float64."""
    b, s = mask.shape
    tok_loss = np.zeros((b, s))
    tok_grad = np.zeros((b, s))
    for i in range(b):
        for t in range(s):
            r = np.exp(logp[i, t] - old[i, t])
            kl = ref[i, t] - logp[i, t]
            k3 = np.exp(kl) - kl - 1.0
            tok_loss[i, t] = _ref_token_loss(r, adv[i]) - ent_coef * ent[i, t] + kl_coef * k3
            tok_grad[i, t] = _ref_token_grad(r, adv[i]) + kl_coef * (1.0 - np.exp(kl))
    if agg is LossAggregation.TOKEN_MEAN:
        weight = mask / mask.sum()
    else:
        n = mask.sum(1, keepdims=True)
        seqs = (n[:, 0] > 0).sum()
        weight = np.where(n > 0, mask / np.maximum(n, 1) / seqs, 0.0)
    ratio = np.exp(logp - old)
    valid = mask > 0
    a = adv[:, None]
    metrics = dict(
        clip_high=((a > 0) & (ratio > 1 + HI))[valid].mean(),
        clip_low=((a < 0) & (ratio < 1 - LO))[valid].mean(),
        dual=((a < 0) & (ratio > C))[valid].mean(),
        ratio_mean=ratio[valid].mean(),
        ratio_max=ratio[valid].max(),
        approx_kl=(old - logp)[valid].mean(),
        entropy=ent[valid].mean(),
    )
    return (weight * tok_loss).sum(), weight * tok_grad, -ent_coef * weight, metrics


def _jax_loss(logp, old, adv, mask, ent, ref, cfg, with_ref):
    def f(lp, e):
        stats = policy_loss(
            lp,
            jnp.asarray(old, jnp.float32),
            jnp.asarray(adv, jnp.float32),
            jnp.asarray(mask, jnp.float32),
            cfg,
            entropy=e,
            ref_logps=jnp.asarray(ref, jnp.float32) if with_ref else None,
        )
        return stats.loss, stats

    (loss, stats), (g_logp, g_ent) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(logp, jnp.float32), jnp.asarray(ent, jnp.float32)
    )
    return float(loss), np.asarray(g_logp), np.asarray(g_ent), stats


@pytest.mark.parametrize("agg", CLASSIC_AGGREGATIONS)
@pytest.mark.parametrize("ent_coef,kl_coef", [(0.0, 0.0), (0.01, 0.05)])
def test_policy_loss_and_gradient_match_numpy(agg, ent_coef, kl_coef):
    logp, old, adv, mask, ent, ref = _hand_batch()
    cfg = LossConfig(clip_low=LO, clip_high=HI, dual_clip_c=C, agg=agg, entropy_coef=ent_coef, kl_coef=kl_coef)
    want_loss, want_grad, want_ent_grad, want = _reference(logp, old, adv, mask, ent, ref, agg, ent_coef, kl_coef)
    loss, g_logp, g_ent, stats = _jax_loss(logp, old, adv, mask, ent, ref, cfg, with_ref=kl_coef > 0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_logp, want_grad, atol=1e-6)
    np.testing.assert_allclose(g_ent, want_ent_grad, atol=1e-7)
    # Every branch is really exercised by the hand-built batch.
    assert want["clip_high"] > 0 and want["clip_low"] > 0 and want["dual"] > 0
    np.testing.assert_allclose(float(stats.mean("clip_high_sum")), want["clip_high"], rtol=1e-6)
    np.testing.assert_allclose(float(stats.mean("clip_low_sum")), want["clip_low"], rtol=1e-6)
    np.testing.assert_allclose(float(stats.mean("dual_clip_sum")), want["dual"], rtol=1e-6)
    np.testing.assert_allclose(float(stats.mean("ratio_sum")), want["ratio_mean"], rtol=1e-6)
    np.testing.assert_allclose(float(stats.ratio_max), want["ratio_max"], rtol=1e-6)
    np.testing.assert_allclose(float(stats.mean("approx_kl_sum")), want["approx_kl"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(stats.mean("entropy_sum")), want["entropy"], rtol=1e-6)
    assert float(stats.tokens) == mask.sum()


def test_k3_kl_and_its_gradient_match_numpy():
    """verl's low_var_kl: d = clamp(ref - logp, -20, 20), k3 = exp(d) - d - 1 clamped to [-10, 10];
    d k3 / d logp = 1 - exp(d) where neither clamp holds, else 0. Every region is hit; at d = 100 an
    unclamped exp would overflow and make the gradient NaN."""
    d = np.array([-25.0, -20.5, -19.0, -3.0, -0.4, 0.0, 1e-3, 0.7, 2.0, 2.6, 3.5, 19.0, 21.0, 100.0])
    logp = np.linspace(-6.0, -0.1, d.size)
    ref = logp + d

    clamped = np.clip(ref - logp, -20.0, 20.0)
    raw = np.exp(clamped) - clamped - 1.0
    want = np.clip(raw, -10.0, 10.0)
    want_grad = np.where((np.abs(ref - logp) < 20.0) & (raw < 10.0), 1.0 - np.exp(clamped), 0.0)
    assert (raw > 10.0).any() and (np.abs(d) > 20.0).any() and ((raw < 10.0) & (d != 0)).sum() >= 5

    got, grad = jax.value_and_grad(lambda lp: jnp.sum(k3_kl(lp, jnp.asarray(ref, jnp.float32))))(
        jnp.asarray(logp, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(k3_kl(jnp.asarray(logp), jnp.asarray(ref))), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(got), want.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("agg", CLASSIC_AGGREGATIONS)
def test_micro_batches_sum_to_the_full_batch(agg):
    logp, old, adv, mask, ent, ref = _hand_batch(seed=1)
    cfg = LossConfig(agg=agg)

    def grad_of_sum(rows):
        def f(lp):
            s = policy_loss(
                lp,
                jnp.asarray(old[rows], jnp.float32),
                jnp.asarray(adv[rows], jnp.float32),
                jnp.asarray(mask[rows], jnp.float32),
                cfg,
            )
            return s.loss_sum, s

        return jax.grad(f, has_aux=True)(jnp.asarray(logp[rows], jnp.float32))

    full_grad, full = grad_of_sum(slice(0, 5))
    g1, s1 = grad_of_sum(slice(0, 2))
    g2, s2 = grad_of_sum(slice(2, 5))
    total = s1.combine(s2)
    np.testing.assert_allclose(float(total.loss), float(full.loss), rtol=1e-6)
    np.testing.assert_allclose(float(total.ratio_max), float(full.ratio_max), rtol=1e-7)
    # Summed gradients divided by the combined count equal the full-batch gradient of the mean.
    micro = np.concatenate([np.asarray(g1), np.asarray(g2)]) / float(total.count)
    np.testing.assert_allclose(micro, np.asarray(full_grad) / float(full.count), atol=1e-7)
    assert isinstance(LossStats.zeros().combine(total), LossStats)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_logps_entropy_and_gradients_match_numpy(chunk):
    rng = np.random.default_rng(2)
    b, t, d, v = 2, 7, 5, 11
    h = rng.normal(size=(b, t, d))
    w = rng.normal(size=(d, v))
    tg = rng.integers(0, v, (b, t))
    c1, c2 = rng.normal(size=(b, t)), rng.normal(size=(b, t))  # a random linear functional of both outputs

    z = h @ w
    p = _softmax(z)
    want_logp = np.log(p[np.arange(b)[:, None], np.arange(t)[None], tg])
    want_ent = -(p * np.log(p)).sum(-1)
    onehot = np.eye(v)[tg]
    dz = c1[..., None] * (onehot - p) + c2[..., None] * (-p * (z - (p * z).sum(-1, keepdims=True)))
    want_dh, want_dw = dz @ w.T, np.einsum("btd,btv->dv", h, dz)

    def f(h, w):
        logp, ent = chunked_logps(h, w, jnp.asarray(tg), chunk, entropy_grad=True)
        return jnp.sum(c1 * logp + c2 * ent), (logp, ent)

    (_, (logp, ent)), (dh, dw) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(logp), want_logp, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dh), want_dh, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), want_dw, atol=1e-5)

    # With entropy_grad=False the entropy is a metric only: the gradient is that of the logp term.
    def f_metric(h):
        logp, ent = chunked_logps(h, jnp.asarray(w, jnp.float32), jnp.asarray(tg), chunk)
        return jnp.sum(c1 * logp + c2 * ent)

    dz_logp = c1[..., None] * (onehot - p)
    np.testing.assert_allclose(np.asarray(jax.grad(f_metric)(jnp.asarray(h, jnp.float32))), dz_logp @ w.T, atol=1e-5)


def test_sequence_logps_are_aligned_to_the_token():
    rng = np.random.default_rng(3)
    b, s, d, v = 2, 6, 4, 9
    h = rng.normal(size=(b, s, d)).astype(np.float32)
    w = rng.normal(size=(d, v)).astype(np.float32)
    tokens = rng.integers(0, v, (b, s))
    logps, ent = sequence_logps(jnp.asarray(h), jnp.asarray(w), jnp.asarray(tokens), chunk_size=4)
    p = _softmax(h.astype(np.float64) @ w)
    for i in range(b):
        assert logps[i, 0] == 0.0 and ent[i, 0] == 0.0
        for j in range(1, s):  # the logit at position j - 1 predicts token j
            np.testing.assert_allclose(float(logps[i, j]), np.log(p[i, j - 1, tokens[i, j]]), atol=1e-5)
            want_ent = -(p[i, j - 1] * np.log(p[i, j - 1])).sum()
            np.testing.assert_allclose(float(ent[i, j]), want_ent, atol=1e-5)


def test_kl_and_entropy_terms_need_their_inputs():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(x, x, jnp.zeros(1), x + 1, LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(x, x, jnp.zeros(1), x + 1, LossConfig(entropy_coef=0.1))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(clip_low=1.0), "loss.clip_low"),
        (dict(clip_high=-0.1), "loss.clip_high"),
        (dict(dual_clip_c=1.0), "loss.dual_clip_c"),
        (dict(kl_coef=-1.0), "loss.kl_coef"),
        (dict(entropy_coef=-1.0), "loss.entropy_coef"),
        (dict(agg="token-mean"), "loss.agg"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LossConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "agg,ent_coef,kl_coef,chunk,start",
    [
        (LossAggregation.TOKEN_MEAN, 0.0, 0.0, 3, 0),
        (LossAggregation.SEQ_MEAN_TOKEN_MEAN, 0.02, 0.1, 4, 0),
        (LossAggregation.TOKEN_MEAN, 0.02, 0.1, 50, 2),  # one chunk longer than the sequence; prompt skipped
    ],
)
def test_fused_loss_equals_autodiff_of_the_plain_path(agg, ent_coef, kl_coef, chunk, start):
    """The fused unembedding + loss (gradient formed in the forward pass) against plain autodiff through
    sequence_logps + policy_loss, both of which are checked against NumPy above."""
    rng = np.random.default_rng(4)
    b, s, d, v = 3, 9, 6, 13
    h = jnp.asarray(rng.normal(size=(b, s, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
    tokens = jnp.asarray(rng.integers(0, v, (b, s)))
    mask = np.zeros((b, s), np.float32)
    mask[0, 4:] = 1
    mask[1, 2:7] = 1  # row 2 has no loss token
    plain_logps, _ = sequence_logps(h, w, tokens, chunk_size=100)
    old = np.asarray(plain_logps) + rng.normal(0, 0.4, (b, s))
    old[0, 5] -= 3.0  # dual clip on the negative row
    old = jnp.asarray(np.where(mask > 0, old, -np.inf), jnp.float32)  # padding may hold anything
    ref = jnp.asarray(np.asarray(plain_logps) + rng.normal(0, 0.2, (b, s)), jnp.float32)
    adv = jnp.asarray([-1.3, 0.8, 0.5], jnp.float32)
    cfg = LossConfig(agg=agg, entropy_coef=ent_coef, kl_coef=kl_coef)
    mask = jnp.asarray(mask)

    def plain(h, w):
        logps, ent = sequence_logps(h, w, tokens, chunk, entropy_grad=True)
        stats = policy_loss(logps, old, adv, mask, cfg, entropy=ent, ref_logps=ref)
        return stats.loss_sum, stats

    def fused(h, w):
        return fused_policy_loss(h, w, tokens, old, adv, mask, cfg, chunk, ref_logps=ref, start=start)

    (want, want_stats), want_g = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(h, w)
    (got, got_stats), got_g = jax.value_and_grad(fused, argnums=(0, 1), has_aux=True)(h, w)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(got_stats.loss_sum), float(want), rtol=1e-6, atol=1e-7)
    assert float(got_stats.dual_clip_sum) > 0
    for g, wg in zip(got_g, want_g, strict=True):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(wg), atol=2e-6)
    if start:  # the skipped prompt columns are not scored at all
        got_logps, _ = sequence_logps(h, w, tokens, chunk, start=start)
        assert np.all(np.asarray(got_logps[:, :start]) == 0.0)
        want_logps = np.asarray(plain_logps[:, start:])
        np.testing.assert_allclose(np.asarray(got_logps[:, start:]), want_logps, atol=1e-6)
    for field in ("entropy_sum", "ratio_sum", "ref_kl_sum", "clip_low_sum", "tokens", "count"):
        want_value = float(getattr(want_stats, field))
        np.testing.assert_allclose(float(getattr(got_stats, field)), want_value, rtol=1e-5, err_msg=field)


def test_completion_start_out_of_range_is_an_error():
    x = jnp.zeros((1, 4, 2))
    with pytest.raises(ValueError, match="completion_start 4"):
        sequence_logps(x, jnp.zeros((2, 3)), jnp.zeros((1, 4), jnp.int32), 2, start=4)
