"""The KV page pool split over the data axis: each device holds only its data shard's pages, the compiled decode
step moves no pool over the mesh, and every row is the one-device row whatever the mesh, the per-shard page
budget or the preemptions."""

import contextlib
import re

import jax
import numpy as np
import pytest
from flax import nnx
from paged_setup import CFG, EOS, NEW, PAGE_BYTES, ragged_prompts, tiny_model

import justrl_jax.continuous_batching as continuous_batching
from justrl_jax.model.paged_kv_cache import NULL_PAGE
from justrl_jax.page_allocator import PageAllocator
from justrl_jax.sampler import Sampler, SamplerConfig, reshard_params
from justrl_jax.sampling import Temperature
from justrl_jax.sharding import make_mesh

PAGE = 4
ROW_PAGES = -(-(12 + NEW - 1) // PAGE)  # prompt bucket 12 + 23 cached new tokens
_COLLECTIVE = re.compile(r"\b(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)(-start)?\(")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _mesh(spec: str):
    fsdp, tensor = (int(x) for x in spec.split("x"))
    return make_mesh(spec, devices=jax.devices()[: fsdp * tensor])


def _config(**kwargs) -> SamplerConfig:
    return SamplerConfig(
        max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=4, page_size=PAGE, steps_per_call=3, **kwargs
    )


def _generate(model, mesh, *, warm_up: bool = False, **kwargs):
    sampler = Sampler(model, _config(max_concurrent_rows=8, **kwargs), mesh=mesh, eos_ids=EOS, pad_id=0)
    programs = lambda: (sampler.batcher.prefill_fn._cache_size(), sampler.batcher.decode_fn._cache_size())  # noqa: E731
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        if warm_up:
            sampler.warm_up(model, *ragged_prompts(), n=2)
            compiled = programs()
        # n=2: 12 rows, a multiple of every data axis here (the rollout's log-probs are split over it)
        rollout = sampler.generate(model, *ragged_prompts(), n=2, key=11, logprobs=True)
    if warm_up:
        assert programs() == compiled  # the per-shard prefill and decode buckets were all compiled ahead
    return sampler, rollout


@pytest.fixture(scope="module")
def single(model):
    # The static waves on one device: the same rows as continuous batching (test_continuous_batching checks
    # that), from a few compiled programs instead of every prefill and decode bucket (measured: 5 vs 13 CPU-s).
    return _generate(model, None, scheduler="waves")[1]


@pytest.mark.slow
@pytest.mark.parametrize("mesh_spec", ["2x2", "4x1"])
def test_a_mesh_under_a_tiny_per_shard_budget_preempts_and_still_equals_one_device(model, single, mesh_spec):
    mesh = _mesh(mesh_spec)
    dp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    page_bytes = PAGE_BYTES // tensor  # 2 KV heads split over the tensor axis
    budget = (ROW_PAGES + 1 + 3) * page_bytes  # per device: one full row and a little, for 8 / dp slots
    # (the 2x2 run also checks that warm_up compiled every per-shard bucket it then uses)
    sampler, sharded = _generate(model, mesh, warm_up=mesh_spec == "2x2", kv_cache_budget_bytes=budget)
    np.testing.assert_array_equal(sharded.completion_ids, single.completion_ids)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)
    np.testing.assert_array_equal(sharded.finish, single.finish)
    np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(single.logprobs), atol=1e-5)
    stats = sampler.stats
    assert stats.shards == dp and stats.slots == 8
    assert stats.pages == ROW_PAGES + 4  # the budget buys each shard its own pages, not a share of one pool
    assert stats.preemptions > 0 and stats.peak_pages_in_use <= stats.pages - 1


def _pool_collectives(hlo: str, pages: tuple[int, ...], page_size: int, head_dim: int) -> list[str]:
    """Collectives of compiled HLO whose operands or result are pool blocks: [..., pages, page_size, head_dim]
    with one of the given page counts (the global pool's or a shard's)."""
    block = re.compile(rf"\[(\d+,)*({'|'.join(map(str, pages))}),{page_size},{head_dim}\]")
    return [line.strip() for line in hlo.splitlines() if _COLLECTIVE.search(line) and block.search(line)]


def _decode_hlo_and_pools(model, mesh, pages: int):
    """The compiled decode step of a 2-data-shard batcher (8 slots), and its pool before and after one call."""
    sampler = Sampler(model, _config(), mesh=mesh, eos_ids=EOS, pad_id=0)
    batcher = sampler.batcher
    with jax.set_mesh(mesh):
        params = reshard_params(nnx.state(model, nnx.Param), mesh)
        cache = batcher._new_cache(params, pages, PAGE, np.float32, dp=2)
        before = cache.k[0].shape, {shard.data.shape for shard in cache.k[0].addressable_shards}
        zeros = np.zeros(8, np.int32)
        host = (zeros, zeros, zeros + 1, np.zeros((8, 2), np.uint32), np.zeros(8, bool))
        args = (params, cache, *map(batcher._put, host), batcher._put(np.full((8, ROW_PAGES), NULL_PAGE, np.int32)))
        compiled = batcher.decode_fn.lower(*args, steps=3).compile()
        pool = compiled(*args)[0].v[-1]  # the cache is donated: read the one the call returns
    return compiled.as_text(), [before, (pool.shape, {shard.data.shape for shard in pool.addressable_shards})]


def test_each_device_holds_its_shards_pages_and_decode_moves_no_pool(model, monkeypatch):
    mesh, pages = _mesh("2x2"), 19
    hlo, pools = _decode_hlo_and_pools(model, mesh, pages)
    for shape, held in pools:
        assert shape == (CFG.num_kv_heads, 2 * pages, PAGE, CFG.head_dim)
        assert held == {(CFG.num_kv_heads // 2, pages, PAGE, CFG.head_dim)}  # pages / data shards, heads / tensor
    assert _pool_collectives(hlo, (pages, 2 * pages), PAGE, CFG.head_dim) == []

    # The check can fail: the same pool layout with the KV writes and attention left to GSPMD (no shard_map)
    # all-gathers the whole pool, f32[1,38,4,16], after each scatter (measured: 4 in the step, 2 layers x keys
    # and values). The replicated pool this replaced moved no pool either, but each device held all 19 pages of a
    # 19-page pool.
    monkeypatch.setattr(continuous_batching, "per_shard", lambda mesh: None)
    hlo, _ = _decode_hlo_and_pools(model, mesh, pages)
    assert len(_pool_collectives(hlo, (pages, 2 * pages), PAGE, CFG.head_dim)) >= CFG.num_layers


def test_each_shards_slots_draw_local_pages_from_their_own_shard_only():
    alloc = PageAllocator(pages=5, slots=4, max_pages=4, page_size=4, shards=2)  # slots 0, 1: shard 0; 2, 3: shard 1
    assert [alloc.shard_of(s) for s in range(4)] == [0, 0, 1, 1]
    assert alloc.ensure(0, 16) and alloc.free_pages(0) == 0  # shard 0's 4 pages
    assert not alloc.ensure(1, 1)  # shard 0 is out of pages; shard 1's are not lent to it
    assert alloc.ensure(2, 16) and alloc.ensure(3, 0)
    assert sorted(alloc.table[0]) == sorted(alloc.table[2]) == [1, 2, 3, 4]  # local ids; local 0 is the null page
    assert alloc.in_use == 8 and alloc.in_use_of(1) == 4
    alloc.release(0)
    assert alloc.free_pages(0) == 4 and alloc.free_pages(1) == 0 and alloc.ensure(1, 5)
    with pytest.raises(ValueError, match="4 decode slots do not split evenly over 3 data shards"):
        PageAllocator(pages=5, slots=4, max_pages=4, page_size=4, shards=3)
