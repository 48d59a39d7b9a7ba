"""The sampler against references: transformers' greedy generate, the trainer's recomputed log-probs,
the exact sampling distributions, the jit cache, and a 4x4 mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_reference import make_hf_qwen2

from justrl_jax.model.hf_io import load_hf_model
from justrl_jax.sampler import FinishReason, Sampler, SamplerConfig
from justrl_jax.sampling import Greedy, Temperature, TopK, TopP
from justrl_jax.sharding import make_mesh
from justrl_jax.train_batch import build_train_batch

NEW = 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, ref = make_hf_qwen2(tmp_path_factory.mktemp("hf"), vocab=128, hidden=64, heads=4, kv_heads=2, seed=3)
    return path, ref, load_hf_model(str(path))


def _prompts(lengths, vocab, width, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = rng.integers(1, vocab, n)
        mask[i, width - n :] = True
    return ids, mask


@pytest.mark.slow
def test_greedy_equals_transformers_generate(tiny):
    path, ref, model = tiny
    ids, mask = _prompts([3, 9, 6, 1], 128, 9)
    sampler = Sampler(
        model, SamplerConfig(max_new_tokens=NEW, strategy=Greedy(), prompt_bucket=8), eos_ids=(), pad_id=0
    )
    out = sampler.generate(model, ids, mask, n=1, key=0)
    with torch.no_grad():
        expected = ref.generate(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            pad_token_id=0,
            eos_token_id=None,
        )
    np.testing.assert_array_equal(out.completion_ids, expected[:, ids.shape[1] :].numpy())
    assert (out.lengths == NEW).all() and (out.finish == FinishReason.LENGTH).all()


@pytest.mark.slow
def test_eos_stops_a_row_and_is_kept(tiny):
    _, _, model = tiny
    ids, mask = _prompts([4, 7], 128, 7, seed=1)
    free = Sampler(model, SamplerConfig(max_new_tokens=NEW, strategy=Greedy(), prompt_bucket=8), eos_ids=(), pad_id=0)
    tokens = free.generate(model, ids, mask, n=1, key=0).completion_ids
    eos = int(tokens[0, 3])  # the 4th greedy token of row 0 becomes an EOS
    first = [int(np.argmax(row == eos)) if (row == eos).any() else NEW for row in tokens]
    out = Sampler(
        model, SamplerConfig(max_new_tokens=NEW, strategy=Greedy(), prompt_bucket=8), eos_ids=(5, eos), pad_id=0
    ).generate(model, ids, mask, n=1, key=0)
    for r in range(2):
        n = min(first[r] + 1, NEW)
        assert out.lengths[r] == n
        np.testing.assert_array_equal(out.completion_ids[r, :n], tokens[r, :n])
        assert out.completion_mask[r].sum() == n
        assert out.finish[r] == (FinishReason.EOS if first[r] < NEW else FinishReason.LENGTH)
        assert (out.completion_ids[r, n:] == 0).all()


@pytest.mark.slow
def test_sampler_logprobs_equal_trainer_recomputation(tiny):
    _, _, model = tiny
    ids, mask = _prompts([2, 8, 5], 128, 8, seed=2)
    sampler = Sampler(
        model, SamplerConfig(max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=8), eos_ids=(7,), pad_id=0
    )
    out = sampler.generate(model, ids, mask, n=3, key=11, logprobs=True)
    assert len({tuple(r) for r in out.completion_ids}) > 3  # the n samples of a prompt differ
    batch = build_train_batch(
        out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask, np.zeros(len(out.lengths)), 1, 0
    )
    hidden, _ = model(jnp.asarray(batch.tokens), jnp.asarray(batch.positions), jnp.asarray(batch.attn_mask))
    logp = jax.nn.log_softmax(model.logits(hidden), axis=-1)
    picked = np.asarray(jnp.take_along_axis(logp[:, :-1], jnp.asarray(batch.tokens)[:, 1:, None], axis=-1)[..., 0])
    p = out.prompt_ids.shape[1]
    t = batch.tokens.shape[1] - p
    recomputed = np.where(out.completion_mask[:, :t], picked[:, p - 1 : p - 1 + t], 0.0)
    np.testing.assert_allclose(out.logprobs[:, :t], recomputed, atol=1e-5)
    # and reproducible from the seed
    again = sampler.generate(model, ids, mask, n=3, key=11, logprobs=True)
    np.testing.assert_array_equal(again.completion_ids, out.completion_ids)


LOGITS = np.log(np.array([0.30, 0.22, 0.15, 0.12, 0.08, 0.06, 0.04, 0.02, 0.01], np.float64))


def _frequencies(strategy, rows=40_000, seed=0):
    logits = jnp.asarray(np.tile(LOGITS, (rows, 1)), jnp.float32)
    uniforms = jnp.asarray(np.random.default_rng(seed).random(rows), jnp.float32)
    tokens = np.asarray(jax.jit(strategy.__call__)(logits, uniforms))
    return np.bincount(tokens, minlength=len(LOGITS)) / rows


def _chi2_ok(freq, probs, rows=40_000):
    keep = probs > 0
    expected = probs[keep] * rows
    chi2 = float((((freq[keep] * rows) - expected) ** 2 / expected).sum())
    return chi2 < 30.0  # ~1e-4 tail for <= 9 degrees of freedom: fails on any real distortion


@pytest.mark.parametrize(
    "strategy, truncate",
    [
        (Temperature(1.0), None),
        (Temperature(0.7), None),
        (TopP(p=0.7, temperature=0.7), "p"),
        (TopP(p=0.5), "p"),
        (TopK(k=3, temperature=1.3), "k"),
    ],
)
def test_sampled_frequencies_match_the_distribution(strategy, truncate):
    t = strategy.temperature
    probs = np.exp(LOGITS / t) / np.exp(LOGITS / t).sum()
    if truncate == "p":  # smallest set of most likely tokens whose mass reaches p
        order = np.argsort(-probs)
        cut = int(np.searchsorted(np.cumsum(probs[order]), strategy.p - 1e-9)) + 1
        kept = np.zeros_like(probs)
        kept[order[:cut]] = probs[order[:cut]]
        probs = kept / kept.sum()
    elif truncate == "k":
        kept = np.zeros_like(probs)
        kept[: strategy.k] = probs[: strategy.k]
        probs = kept / kept.sum()
    freq = _frequencies(strategy)
    assert (freq[probs == 0] == 0).all(), freq
    assert _chi2_ok(freq, probs), (freq, probs)
    # a wrong temperature is detected by the same test (the test can fail)
    assert not _chi2_ok(_frequencies(Temperature(t * 1.5)), probs)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["waves", "continuous"])
def test_no_recompilation_within_a_prompt_bucket(tiny, scheduler):
    _, _, model = tiny
    config = SamplerConfig(max_new_tokens=4, strategy=Temperature(1.0), prompt_bucket=16, scheduler=scheduler)
    sampler = Sampler(model, config, eos_ids=(), pad_id=0)
    prefill, decode = (
        (sampler.prefill_fn, sampler.decode_fn)
        if scheduler == "waves"
        else (sampler.batcher.prefill_fn, sampler.batcher.decode_fn)
    )
    sampler.generate(model, *_prompts([3, 10], 128, 10), n=2, key=0)
    sizes = (prefill._cache_size(), decode._cache_size())
    sampler.generate(model, *_prompts([14, 1], 128, 14, seed=5), n=2, key=1)  # other lengths, same bucket
    sampler.generate(model, *_prompts([7, 7], 128, 16, seed=6), n=2, key=2)
    assert (prefill._cache_size(), decode._cache_size()) == sizes
    sampler.generate(model, *_prompts([20, 3], 128, 20, seed=7), n=2, key=3)  # next bucket: one new program
    assert prefill._cache_size() == sizes[0] + 1


@pytest.mark.slow
def test_same_tokens_on_a_4x4_mesh(tiny):
    path, _, model = tiny
    ids, mask = _prompts([3, 6, 2, 5], 128, 6, seed=8)
    config = SamplerConfig(max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=8)
    single = Sampler(model, config, eos_ids=(), pad_id=0).generate(model, ids, mask, n=4, key=21, logprobs=True)
    mesh = make_mesh("4x4")
    sharded_model = load_hf_model(str(path), mesh=mesh)
    with jax.set_mesh(mesh):
        multi = Sampler(sharded_model, config, mesh=mesh, eos_ids=(), pad_id=0).generate(
            sharded_model, ids, mask, n=4, key=21, logprobs=True
        )
    np.testing.assert_array_equal(multi.completion_ids, single.completion_ids)
    np.testing.assert_allclose(multi.logprobs, single.logprobs, atol=1e-5)
