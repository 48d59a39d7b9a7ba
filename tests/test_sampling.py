"""Sampling strategies against NumPy formulas and transformers' logits warpers, over vocabularies of
several 128-token blocks (the two-level inverse CDF), including a partial last block."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from justrl_jax.sampling import Greedy, Temperature, TopK, TopP, inverse_cdf, strategy_for

V = 300  # three blocks of 128, the last one partial


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _chi2_critical(df: int, z: float = 3.72) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at the normal quantile z (3.72: p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Chi-square statistic over the tokens with expected count >= 5 plus one bin for the rest."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum() - 1)


# A fixed distribution whose mass sits at block edges (0, 127, 128, 255, 256) and in the partial last block.
PEAKS = {0: 2.0, 1: 0.5, 127: 1.5, 128: 2.2, 129: -0.5, 200: 1.0, 255: 0.8, 256: 1.7, 280: 0.3, 299: 1.2}


def _fixed_logits() -> np.ndarray:
    logits = np.full(V, -4.0)
    logits[np.arange(V) % 7 == 3] = -30.0  # effectively impossible tokens among the tail
    for i, v in PEAKS.items():
        logits[i] = v
    return logits


def _reference_probs(logits: np.ndarray, temperature: float, top_p: float = 1.0, top_k: int = -1) -> np.ndarray:
    """softmax(logits / T), then top-k, then top-p (smallest most-likely set reaching p), renormalised."""
    probs = np.exp(_log_softmax(logits / temperature))
    if top_k > 0:
        kth = np.sort(probs)[-top_k]
        probs = np.where(probs >= kth, probs, 0.0)
        probs /= probs.sum()
    if top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely tokens
        keep = np.zeros(V, bool)
        keep[order[before < top_p]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


ROWS = 30_000


@pytest.fixture(scope="module")
def draws():
    """Each strategy's tokens for ROWS copies of the fixed logits, one uniform per row."""
    logits = jnp.asarray(np.tile(_fixed_logits(), (ROWS, 1)), jnp.float32)
    uniforms = jax.random.uniform(jax.random.key(0), (ROWS,))
    cache = {}

    def get(strategy):
        if strategy not in cache:
            cache[strategy] = np.asarray(jax.jit(strategy.__call__)(logits, uniforms))
        return cache[strategy]

    return get


CASES = [
    (Temperature(1.0), dict(temperature=1.0)),
    (Temperature(0.7), dict(temperature=0.7)),
    (TopP(p=0.9, temperature=0.7), dict(temperature=0.7, top_p=0.9)),
    (TopP(p=0.6, temperature=1.3), dict(temperature=1.3, top_p=0.6)),
    (TopK(k=4, temperature=0.8), dict(temperature=0.8, top_k=4)),
    (TopP(p=0.8, temperature=1.0, top_k=6), dict(temperature=1.0, top_p=0.8, top_k=6)),
]


@pytest.mark.parametrize("strategy, ref", CASES, ids=lambda x: repr(x) if not isinstance(x, dict) else "")
def test_frequencies_match_the_distribution(draws, strategy, ref):
    probs = _reference_probs(_fixed_logits(), **ref)
    counts = np.bincount(draws(strategy), minlength=V)
    assert counts[probs == 0].sum() == 0, np.flatnonzero(counts * (probs == 0))
    stat, df = _chi2(counts, probs)
    assert stat < _chi2_critical(df), (stat, df)


def test_the_frequency_test_can_fail(draws):
    """Draws at T = 1.0 judged against T = 0.85 are rejected; top-p 0.9 draws fall outside the 0.8 nucleus."""
    stat, df = _chi2(np.bincount(draws(Temperature(1.0)), minlength=V), _reference_probs(_fixed_logits(), 0.85))
    assert stat > _chi2_critical(df)
    counts = np.bincount(draws(TopP(p=0.9, temperature=0.7)), minlength=V)
    assert counts[_reference_probs(_fixed_logits(), 0.7, top_p=0.8) == 0].sum() > 0


@pytest.mark.parametrize(
    "top_p, top_k, temperature",
    [(0.5, -1, 1.0), (0.9, -1, 0.7), (0.95, -1, 1.5), (1.0, 7, 1.0), (1.0, 1, 0.7), (0.9, 20, 0.7)],
)
def test_support_equals_transformers_warpers(top_p, top_k, temperature):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((48, V)) * 2.5).astype(np.float32)
    strategy = strategy_for(temperature, top_p, top_k)
    ours = np.asarray(jax.jit(strategy.support)(jnp.asarray(logits)))
    scores = torch.as_tensor(logits, dtype=torch.float64) / temperature
    if top_k > 0:
        scores = TopKLogitsWarper(top_k=top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p=top_p)(None, scores)
    np.testing.assert_array_equal(ours, torch.isfinite(scores).numpy())


@pytest.mark.parametrize(
    "strategy",
    [Greedy(), Temperature(1.0), Temperature(0.6), TopP(p=0.7, temperature=0.7), TopK(k=3, temperature=1.2)],
    ids=repr,
)
def test_logprobs_are_the_tempered_policy(strategy):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((64, V)) * 3).astype(np.float32)
    uniforms = rng.random(64).astype(np.float32)
    tokens, logprobs = jax.jit(strategy.sample)(jnp.asarray(logits), jnp.asarray(uniforms))
    tokens = np.asarray(tokens)
    expected = _log_softmax(logits / strategy.temperature)[np.arange(64), tokens]
    np.testing.assert_allclose(np.asarray(logprobs), expected, atol=2e-6)
    assert np.asarray(jax.jit(strategy.support)(jnp.asarray(logits)))[np.arange(64), tokens].all()


def test_greedy_is_argmax_with_ties_to_the_lowest_id():
    logits = np.random.default_rng(3).standard_normal((5, V)).astype(np.float32)
    logits[1, [40, 200]] = 9.0  # a tie across blocks
    tokens = np.asarray(Greedy()(jnp.asarray(logits), jnp.zeros(5)))
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
    assert tokens[1] == 40


def test_inverse_cdf_edges_never_draw_a_zero_weight():
    weights = np.zeros((4, V), np.float32)
    weights[0, [5, 130, 290]] = [1.0, 2.0, 1.0]
    weights[1, 299] = 1e-30  # all the mass in the very last token, tiny
    weights[2, :] = 1.0
    weights[3, [0, 255]] = [1.0, 3.0]
    for u, expected in [(0.0, [5, 299, 0, 0]), (1.0 - 2.0**-24, [290, 299, V - 1, 255]), (0.5, [130, 299, 150, 255])]:
        got = np.asarray(inverse_cdf(jnp.asarray(weights), jnp.full((4,), u, jnp.float32)))
        np.testing.assert_array_equal(got, expected, err_msg=f"u={u}")


def test_no_truncation_is_skipped_statically():
    logits = jnp.zeros((2, V))
    u = jnp.zeros(2)

    def has_loop(strategy):
        text = str(jax.make_jaxpr(strategy.sample)(logits, u))
        return "while" in text or "scan" in text

    assert not has_loop(TopP(p=1.0)) and not has_loop(TopK(k=0)) and not has_loop(TopK(k=-1))
    assert has_loop(TopP(p=0.9)) and has_loop(TopK(k=5))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: TopP(p=0.0), "TopP.p"),
        (lambda: TopP(p=1.5), "TopP.p"),
        (lambda: TopP(p=0.9, top_k=2.0), "TopP.top_k"),
        (lambda: Temperature(0.0), "Temperature.temperature"),
        (lambda: Temperature(float("nan")), "Temperature.temperature"),
        (lambda: TopK(k=2.5), "TopK.k"),
        (lambda: TopK(k=3, temperature=-1.0), "TopK.temperature"),
    ],
)
def test_bad_settings_name_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_strategy_for_picks_the_simplest():
    assert strategy_for(1.0) == Temperature(1.0)
    assert strategy_for(0.7, 0.9) == TopP(p=0.9, temperature=0.7)
    assert strategy_for(0.7, 1.0, 20) == TopK(k=20, temperature=0.7)
    assert strategy_for(0.7, 0.9, 20) == TopP(p=0.9, temperature=0.7, top_k=20)
    assert strategy_for(0.0) == Greedy() and strategy_for(1.0, 0.9, greedy=True) == Greedy()
    with pytest.raises(ValueError, match="top_p"):
        strategy_for(1.0, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        strategy_for(-0.5)
