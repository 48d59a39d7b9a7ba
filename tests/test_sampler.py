"""The sampler's own machinery: waves under a KV-cache budget, a growing cache, the early stop, the
parameter layout, and input checks. (Parity with transformers and the trainer: test_sampler_parity.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from justrl_jax.model.construct import state_shardings
from justrl_jax.model.kv_cache import KVCache
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.sampler import FinishReason, Sampler, SamplerConfig, decode_weights, plan_waves, reshard_params
from justrl_jax.sampling import Greedy, Temperature
from justrl_jax.sharding import make_mesh

CFG = Qwen2Config(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)
NEW = 8


@pytest.fixture(scope="module")
def model():
    return Qwen2(CFG, rngs=nnx.Rngs(4))


def _prompts(lengths, width, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = rng.integers(1, CFG.vocab_size, n)
        mask[i, width - n :] = True
    return ids, mask


def _row_bytes(slots: int) -> int:
    return KVCache.bytes_for(CFG.num_layers, 1, slots, CFG.num_kv_heads, CFG.head_dim, 4)


@pytest.mark.slow
def test_waves_give_the_same_rollout_as_one_pass(model):
    ids, mask = _prompts([3, 8, 5], 8)
    config = SamplerConfig(max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=8)
    sampler = Sampler(model, config, eos_ids=(7, 9), pad_id=0)
    one = sampler.generate(model, ids, mask, n=2, key=5, logprobs=True)
    plain = sampler.generate(model, ids, mask, n=2, key=5)  # log-probs stay on device unless asked for
    assert plain.logprobs is None and isinstance(one.logprobs, jax.Array)
    np.testing.assert_array_equal(plain.completion_ids, one.completion_ids)
    budget = 2 * (_row_bytes(8) + _row_bytes(8 + NEW))  # two rows at the peak (prefill cache + decode cache)
    waved = SamplerConfig(
        max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=8, kv_cache_budget_bytes=budget, scheduler="waves"
    )
    plan = plan_waves(CFG, waved, rows=6, prompt_width=8)
    assert (plan.wave_rows, plan.waves) == (2, 3) and plan.peak_bytes_per_device <= budget
    out = Sampler(model, waved, eos_ids=(7, 9), pad_id=0).generate(model, ids, mask, n=2, key=5, logprobs=True)
    np.testing.assert_array_equal(out.completion_ids, one.completion_ids)
    np.testing.assert_allclose(out.logprobs, one.logprobs, atol=1e-6)
    np.testing.assert_array_equal(out.finish, one.finish)
    # group-contiguous rows, and masks that agree with lengths and finish reasons
    np.testing.assert_array_equal(out.prompt_ids, np.repeat(ids, 2, axis=0))
    np.testing.assert_array_equal(out.completion_mask.sum(axis=1), out.lengths)
    assert (np.asarray(out.logprobs)[~out.completion_mask] == 0).all()
    assert (out.completion_ids[~out.completion_mask] == 0).all()
    for r in range(6):
        last = out.completion_ids[r, out.lengths[r] - 1]
        assert (out.finish[r] == FinishReason.EOS) == (last in (7, 9))
        assert out.finish[r] == FinishReason.EOS or out.lengths[r] == NEW


def test_an_impossible_budget_says_what_to_lower(model):
    for scheduler in ("waves", "continuous"):
        config = SamplerConfig(
            max_new_tokens=NEW, prompt_bucket=8, kv_cache_budget_bytes=_row_bytes(8 + NEW) // 2, scheduler=scheduler
        )
        with pytest.raises(ValueError, match="cannot hold one sequence per device.*max_new_tokens"):
            Sampler(model, config, eos_ids=(), pad_id=0).generate(model, *_prompts([3], 8), n=1, key=0)


@pytest.mark.parametrize("dp, tensor", [(1, 1), (4, 4), (4, 2)])
def test_plan_waves_takes_the_largest_wave_that_fits(dp, tensor):
    kv_heads = CFG.num_kv_heads // tensor if CFG.num_kv_heads % tensor == 0 else CFG.num_kv_heads
    for chunk in (0, 3):
        for budget in (40_000, 150_000, 1_000_000):
            config = SamplerConfig(max_new_tokens=20, prompt_bucket=8, kv_cache_budget_bytes=budget, decode_chunk=chunk)
            sizes = [16] + config.segments(16)
            plan = plan_waves(CFG, config, rows=64, prompt_width=16, data_parallel=dp, tensor=tensor)

            def peak(per_device, sizes=sizes):
                b = [KVCache.bytes_for(2, per_device, s, kv_heads, 16, 4) for s in sizes]
                return max(x + y for x, y in zip(b, b[1:], strict=False))

            per_device = plan.wave_rows // dp
            assert plan.wave_rows % dp == 0 and peak(per_device) <= budget
            assert per_device == -(-64 // dp) or peak(per_device + 1) > budget
            assert plan.waves == -(-64 // plan.wave_rows)


@pytest.mark.slow
def test_a_growing_cache_gives_the_same_rollout(model):
    ids, mask = _prompts([2, 6, 4, 5], 6, seed=1)
    plain = SamplerConfig(max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=8)
    chunked = SamplerConfig(
        max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=8, decode_chunk=3, scheduler="waves"
    )
    assert chunked.segments(8) == [11, 14, 16]
    a = Sampler(model, plain, eos_ids=(3,), pad_id=0).generate(model, ids, mask, n=2, key=9, logprobs=True)
    grown = Sampler(model, chunked, eos_ids=(3,), pad_id=0)
    b = grown.generate(model, ids, mask, n=2, key=9, logprobs=True)
    np.testing.assert_array_equal(b.completion_ids, a.completion_ids)
    np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-6)
    assert grown.decode_fn._cache_size() == 3  # one program per cache size


@pytest.mark.slow
def test_the_loop_stops_when_every_row_has_finished(model):
    ids, mask = _prompts([4, 7], 8, seed=2)
    free = Sampler(model, SamplerConfig(max_new_tokens=NEW, strategy=Greedy(), prompt_bucket=8), eos_ids=(), pad_id=0)
    tokens = free.generate(model, ids, mask, n=1, key=0).completion_ids
    eos = (int(tokens[0, 1]), int(tokens[1, 3]))  # row 0 stops by token 2, row 1 by token 4 at the latest
    stop = max(int(np.argmax(np.isin(row, eos))) + 1 for row in tokens)
    assert stop <= 4
    sampler = Sampler(
        model,
        SamplerConfig(max_new_tokens=NEW, strategy=Greedy(), prompt_bucket=8, scheduler="waves"),
        eos_ids=eos,
        pad_id=0,
    )
    params = nnx.state(model, nnx.Param)
    state = sampler.prefill_fn(params, ids, mask, np.zeros((2, 2), np.uint32), np.ones(2, bool), slots=8 + NEW)
    state = sampler.decode_fn(params, state, jnp.asarray(NEW, jnp.int32))
    assert int(state.step) == stop
    out = sampler.generate(model, ids, mask, n=1, key=0)
    assert (out.finish == FinishReason.EOS).all() and out.lengths.max() == stop


def test_reshard_params_is_the_identity_on_the_training_layout(model):
    mesh = make_mesh("4x4")
    local = nnx.state(model, nnx.Param)
    placed = jax.device_put(local, state_shardings(local, mesh))  # as the train state lays them out
    assert reshard_params(placed, mesh) is placed
    moved = reshard_params(local, mesh)
    target = jax.tree.leaves(state_shardings(local, mesh))
    for x, s in zip(jax.tree.leaves(moved), target, strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    assert reshard_params(local, None) is local


def test_decode_weights_are_the_master_weights_in_the_compute_dtype_in_place(model):
    mesh = make_mesh("2x2", jax.devices()[:4])
    local = nnx.state(model, nnx.Param)
    placed = jax.device_put(local, state_shardings(local, mesh))
    assert decode_weights(placed, jnp.float32) is placed  # nothing narrower to read: no copy
    cast = decode_weights(placed, jnp.bfloat16)
    for x, y in zip(jax.tree.leaves(cast), jax.tree.leaves(placed), strict=True):
        assert x.dtype == jnp.bfloat16 and x.sharding.is_equivalent_to(y.sharding, y.ndim)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16)))


def test_bf16_rollouts_from_fp32_master_weights_equal_those_from_bf16_weights():
    # The model casts each weight to the compute dtype where it uses it, so sampling from the fp32 master
    # weights (what the RL loop hands over) and from the same weights stored in bf16 must agree exactly.
    def build(param_dtype):
        return Qwen2(CFG, rngs=nnx.Rngs(4), param_dtype=param_dtype, compute_dtype=jnp.bfloat16)

    master, stored = build(jnp.float32), build(jnp.bfloat16)
    nnx.update(stored, decode_weights(nnx.state(master, nnx.Param), jnp.bfloat16))
    ids, mask = _prompts([3, 7, 5], 8)
    sampler = Sampler(master, SamplerConfig(max_new_tokens=NEW, strategy=Temperature(1.0)), eos_ids=(), pad_id=0)
    a = sampler.generate(master, ids, mask, n=2, key=3, logprobs=True)
    b = sampler.generate(stored, ids, mask, n=2, key=3, logprobs=True)
    np.testing.assert_array_equal(a.completion_ids, b.completion_ids)
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))


@pytest.mark.parametrize(
    "ids, mask, n, match",
    [
        ([[0, 5, 6], [4, 5, 0]], [[0, 1, 1], [1, 1, 0]], 1, "row 1 is not left-padded"),
        ([[0, 5, 6], [0, 0, 0]], [[0, 1, 1], [0, 0, 0]], 1, "row 1 has no tokens"),
        ([[0, 5, 600]], [[0, 1, 1]], 1, "token id 600 outside the vocabulary"),
        ([[1, 2]], [[1, 1, 1]], 1, r"must both be \[B, P\]"),
        ([[1, 2]], [[1, 1]], 0, "n must be"),
    ],
)
def test_bad_prompts_are_named(model, ids, mask, n, match):
    sampler = Sampler(model, SamplerConfig(max_new_tokens=2), eos_ids=(), pad_id=0)
    with pytest.raises(ValueError, match=match):
        sampler.generate(model, np.asarray(ids), np.asarray(mask), n=n, key=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=4, prompt_bucket=0), "prompt_bucket"),
        (dict(max_new_tokens=4, strategy="greedy"), "strategy"),
        (dict(max_new_tokens=4, kv_cache_budget_bytes=0), "kv_cache_budget_bytes"),
        (dict(max_new_tokens=4, decode_chunk=-1), "decode_chunk"),
        (dict(max_new_tokens=4, cache_dtype="f33"), "cache_dtype"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"sampler.{field}"):
        SamplerConfig(**kwargs)
