"""verl-dynamic-bsz: verl 0.4.0's micro-batches (largest differencing) and its loss weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from justrl_jax.losses import LossAggregation, LossConfig, policy_loss
from justrl_jax.train_step import TrainConfig
from justrl_jax.verl_dynamic_bsz import largest_differencing, micro_batches, sequence_weights


def test_largest_differencing_balances_and_covers():
    parts = largest_differencing([8, 7, 6, 5, 4], 2)
    sums = sorted(sum([8, 7, 6, 5, 4][i] for i in p) for p in parts)
    assert sums == [14, 16]  # differencing: 8-7, 6-5, then 4 - 1 - 1 = 2
    assert sorted(i for p in parts for i in p) == list(range(5))
    # A heuristic, not the optimum (6, 6, 6): 4|4 -> (4,4,0), +4 -> (4,4,4); 4|1 -> (4,1,0), +1 -> (4,1,1);
    # then (4,4,4) with (4,1,1) reversed -> (5,5,8).
    parts = largest_differencing([4, 4, 4, 4, 1, 1], 3)
    assert sorted(sum([4, 4, 4, 4, 1, 1][i] for i in p) for p in parts) == [5, 5, 8]
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 15000, 64)
    parts = largest_differencing(lengths, 5)
    assert len(parts) == 5 and all(parts) and sorted(i for p in parts for i in p) == list(range(64))
    totals = [lengths[p].sum() for p in parts]
    assert max(totals) - min(totals) <= lengths.max()  # balanced to within one sequence
    assert len(micro_batches(lengths, 32768)) == -(-lengths.sum() // 32768)
    with pytest.raises(ValueError, match="micro_batch_tokens=1000"):
        micro_batches([1001], 1000)


def _verl_objective(token_loss, mask, seq_lengths, mini, ranks, max_tokens):
    """verl's statement, per mini-batch: mean over ranks of sum over micro-batches b of
    (|b| / M) * (sum of b's token losses / b's token count), M the rank's share of the mini-batch."""
    per_rank = mini // ranks
    out = []
    for start in range(0, len(seq_lengths), mini):
        ranks_terms = []
        chunks = [np.arange(start + r * per_rank, start + (r + 1) * per_rank) for r in range(ranks)]
        k = max(-(-seq_lengths[c].sum() // max_tokens) for c in chunks)
        for c in chunks:
            term = 0.0
            for part in micro_batches(seq_lengths[c], max_tokens, k):
                b = c[part]
                term += len(b) / per_rank * (token_loss[b] * mask[b]).sum() / mask[b].sum()
            ranks_terms.append(term)
        out.append(np.mean(ranks_terms))
    return np.array(out)


@pytest.mark.parametrize("ranks", [1, 2])
def test_weights_reproduce_verls_formula(ranks):
    rng = np.random.default_rng(ranks)
    n, s, mini, max_tokens = 16, 40, 8, 64
    resp = rng.integers(1, 30, n)
    prompt = rng.integers(1, 10, n)
    mask = (np.arange(s)[None] < resp[:, None]).astype(np.float64)
    token_loss = rng.normal(size=(n, s))
    w = sequence_weights(prompt + resp, resp, mini, ranks, max_tokens)
    for start in range(0, n, mini):  # the weights of a mini-batch's tokens sum to 1
        np.testing.assert_allclose((w[start : start + mini] * resp[start : start + mini]).sum(), 1.0, rtol=1e-6)
    want = _verl_objective(token_loss, mask, prompt + resp, mini, ranks, max_tokens)
    got = [(w[i : i + mini, None] * token_loss[i : i + mini] * mask[i : i + mini]).sum() for i in range(0, n, mini)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The weighting really differs from the exact token mean on mixed lengths.
    exact = [(token_loss[i : i + mini] * mask[i : i + mini]).sum() / mask[i : i + mini].sum() for i in range(0, n, 8)]
    assert not np.allclose(got, exact, rtol=1e-3)


def test_policy_loss_in_verl_mode_is_the_micro_batch_formula_with_its_gradient():
    rng = np.random.default_rng(3)
    n, s, max_tokens = 8, 24, 48
    resp = rng.integers(1, s, n)
    prompt = rng.integers(1, 6, n)
    mask = jnp.asarray(np.arange(s)[None] < resp[:, None], jnp.float32)
    logp = jnp.asarray(rng.normal(-2, 0.3, (n, s)), jnp.float32)
    old = logp + jnp.asarray(rng.normal(0, 0.3, (n, s)), jnp.float32)
    adv = jnp.asarray(rng.choice([-1.0, 0.5, 1.0], n), jnp.float32)
    w = jnp.asarray(sequence_weights(prompt + resp, resp, n, 1, max_tokens))
    verl = LossConfig(agg=LossAggregation.VERL_DYNAMIC_BSZ)

    def weighted(lp):
        st = policy_loss(lp, old, adv, mask, verl, token_weights=w)
        return st.loss_sum / st.count

    def per_micro(lp):  # sum over verl's micro-batches of (|b| / M) * token-mean loss of b
        total = 0.0
        for part in micro_batches(prompt + resp, max_tokens):
            b = np.asarray(part)
            st = policy_loss(lp[b], old[b], adv[b], mask[b], LossConfig())
            total = total + len(b) / n * st.loss_sum / st.count
        return total

    np.testing.assert_allclose(weighted(logp), per_micro(logp), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(weighted)(logp), jax.grad(per_micro)(logp), atol=1e-7, rtol=1e-5)
    with pytest.raises(ValueError, match="token_weights"):
        policy_loss(logp, old, adv, mask, verl)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        TrainConfig(mini_batch_size=8, micro_batch_size=8, loss=verl)
