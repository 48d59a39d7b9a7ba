"""Continuous batching over the paged KV cache: same rollouts as the static waves whatever the slots, the
page budget or the preemptions; the page allocator; the slot/page plan; the device-planned budget."""

import numpy as np
import pytest
from paged_setup import CFG, EOS, NEW, PAGE_BYTES, ragged_prompts, tiny_model

from justrl_jax.continuous_batching import _decode_rows, plan_pages
from justrl_jax.kv_budget import kv_cache_budget_bytes
from justrl_jax.model.paged_kv_cache import NULL_PAGE
from justrl_jax.page_allocator import PageAllocator
from justrl_jax.sampler import Sampler, SamplerConfig
from justrl_jax.sampling import Temperature, TopP


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def prompts():
    return ragged_prompts()


def _run(model, prompts, strategy=None, **kwargs):
    config = SamplerConfig(max_new_tokens=NEW, strategy=strategy or Temperature(1.0), prompt_bucket=4, **kwargs)
    sampler = Sampler(model, config, eos_ids=EOS, pad_id=0)
    return sampler, sampler.generate(model, *prompts, n=3, key=11, logprobs=True)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.completion_ids, b.completion_ids)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finish, b.finish)
    np.testing.assert_array_equal(a.completion_mask, b.completion_mask)
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)


@pytest.mark.parametrize("strategy", [Temperature(1.0), TopP(p=0.8, temperature=0.7)])
def test_seeded_run_equals_the_static_waves_with_slots_reused(model, prompts, strategy):
    _, static = _run(model, prompts, strategy, scheduler="waves")
    assert len(set(static.lengths.tolist())) >= 4  # rows end at very different lengths
    sampler, cont = _run(model, prompts, strategy, max_concurrent_rows=4, page_size=4, steps_per_call=5)
    _assert_same(cont, static)
    stats = sampler.stats
    assert stats.slots == 4 and stats.preemptions == 0
    assert stats.prefill_calls > 1  # slots were refilled as rows ended (18 rows through 4 slots)
    assert stats.decode_tokens == int(static.lengths.sum()) - 18  # each row's first token comes from prefill
    assert 0 < stats.slot_occupancy <= 1
    assert stats.prefill_tokens == int(np.repeat(prompts[1].sum(axis=1), 3).sum())


def test_preemption_under_a_tiny_page_budget_still_produces_every_row_unchanged(model, prompts):
    # The reference is the static waves (the same rows as any slot count when nothing is preempted: the test
    # above), the very programs that test compiles, found in the run's compilation cache.
    _, free = _run(model, prompts, scheduler="waves")
    row_pages = -(-(12 + NEW - 1) // 4)  # prompt bucket 12 + 23 cached new tokens
    budget = (row_pages + 1 + 3) * PAGE_BYTES  # one full row and a little: 8 slots must take turns
    sampler, tight = _run(
        model, prompts, max_concurrent_rows=8, page_size=4, steps_per_call=3, kv_cache_budget_bytes=budget
    )
    _assert_same(tight, free)
    stats = sampler.stats
    assert stats.preemptions > 0
    assert stats.pages == row_pages + 4 and stats.peak_pages_in_use <= stats.pages - 1
    assert stats.decode_tokens > int(free.lengths.sum()) - 18  # preempted rows were recomputed


def test_page_allocator_hands_out_each_page_once_and_takes_them_back():
    alloc = PageAllocator(pages=9, slots=3, max_pages=4, page_size=4)
    assert alloc.ensure(0, 9) and alloc.held[0] == 3  # 9 tokens: 3 pages
    assert alloc.ensure(1, 16) and alloc.held[1] == 4
    assert not alloc.ensure(2, 8)  # 2 pages wanted, 1 left: nothing taken
    assert alloc.held[2] == 0 and alloc.free_pages(0) == 1
    held = np.concatenate([alloc.table[0, :3], alloc.table[1, :4]])
    assert len(set(held.tolist())) == 7 and NULL_PAGE not in held
    assert (alloc.table[2] == NULL_PAGE).all() and alloc.in_use == 7
    alloc.release(1)
    assert (alloc.table[1] == NULL_PAGE).all() and alloc.in_use == 3
    assert alloc.ensure(2, 16) and alloc.ensure(0, 13)  # growth by one page
    assert alloc.in_use == 8
    with pytest.raises(ValueError, match="cannot hold one row"):
        PageAllocator(pages=4, slots=1, max_pages=4, page_size=4)


def test_plan_pages_follows_the_budget_and_names_what_to_lower():
    config = SamplerConfig(max_new_tokens=NEW, page_size=4, kv_cache_budget_bytes=20 * PAGE_BYTES)
    plan = plan_pages(CFG, config, rows=64, max_prompt_len=12)
    assert plan.row_pages == 9 and plan.pages == 20 and plan.slots == 2  # (20 - 1) // 9 full rows
    plan = plan_pages(CFG, SamplerConfig(max_new_tokens=NEW, page_size=4), rows=6, max_prompt_len=12, data_parallel=4)
    assert plan.slots == 8 and plan.pages == 2 * 9 + 1  # no budget: every row at once; a shard's pool, its 2 slots
    wide = SamplerConfig(max_new_tokens=NEW, page_size=4, max_concurrent_rows=32, kv_cache_budget_bytes=20 * PAGE_BYTES)
    assert plan_pages(CFG, wide, rows=64, max_prompt_len=12).slots == 32  # oversubscribed: may preempt
    small = SamplerConfig(max_new_tokens=NEW, page_size=4, kv_cache_budget_bytes=9 * PAGE_BYTES)
    with pytest.raises(ValueError, match="cannot hold one sequence per device.*max_new_tokens"):
        plan_pages(CFG, small, rows=4, max_prompt_len=12)


class _Device:
    """What a TPU/GPU reports through ``memory_stats()`` (the CPU backend reports nothing)."""

    def memory_stats(self):
        return {"bytes_limit": 100 * 2**30, "bytes_in_use": 20 * 2**30}


def test_a_zero_budget_plans_from_the_devices_free_memory():
    assert kv_cache_budget_bytes(1.5) == int(1.5 * 2**30)
    assert kv_cache_budget_bytes(0) is None  # CPU: no limit reported, none imposed
    assert kv_cache_budget_bytes(0, _Device()) == int(80 * 2**30 * 0.8)
    with pytest.raises(ValueError, match="kv_cache_budget_gb"):
        kv_cache_budget_bytes(-1)


def test_decode_calls_shrink_to_the_smallest_bucket_holding_the_live_slots():
    assert [_decode_rows(live, 128, 1) for live in (128, 65, 64, 33, 3)] == [128, 128, 64, 64, 16]
    assert [_decode_rows(live, 8, 2) for live in (8, 5, 3, 1)] == [8, 8, 4, 2]  # a multiple of the data axis
    assert _decode_rows(1, 12, 4) == 12  # 6 rows would not split over 4 data shards


def test_warm_up_compiles_every_program_a_generate_call_then_uses(model, prompts):
    config = SamplerConfig(max_new_tokens=NEW, prompt_bucket=4, max_concurrent_rows=4, page_size=4, steps_per_call=5)
    sampler = Sampler(model, config, eos_ids=EOS, pad_id=0)
    assert sampler.warm_up(model, *prompts, n=3) == 3 * 3 + 3  # prefill rows 1, 2, 4 x widths 4, 8, 12; decode 4, 2, 1
    programs = [sampler.batcher.prefill_fn._cache_size(), sampler.batcher.decode_fn._cache_size()]
    rollout = sampler.generate(model, *prompts, n=3, key=11)
    assert sampler.stats.prefill_calls > 1 and rollout.lengths.min() < rollout.lengths.max()
    assert [sampler.batcher.prefill_fn._cache_size(), sampler.batcher.decode_fn._cache_size()] == programs
