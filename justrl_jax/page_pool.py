"""The paged KV pool split over the data-parallel axis: its layout, and pool work run per data shard.

Each data shard's decode slots draw pages only from that shard's block of the pool (see
:class:`justrl_jax.page_allocator.PageAllocator`: page tables hold shard-local ids), so the pool is split over
the data axis on its page dimension, and KV heads over the tensor axis where they divide: a device holds
``pages / data shards`` pages, not every slot's pages. GSPMD cannot know that a page table names only local
pages, so for the scatter and gather by page id it would all-gather the pool; :func:`per_shard` and
:func:`write_prompts_per_shard` run the KV writes and the attention inside ``jax.shard_map`` instead, each shard
on its own rows, its own block of pages and its local ids, so no collective touches the pool. Without a mesh
they are the plain functions.

The rows of a call are split over the data axis in blocks (``to_global``), so block ``d`` of the rows must be
slots of shard ``d``: the scheduler orders them so.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from justrl_jax.model.kv_cache import KVCache
from justrl_jax.model.paged_decode import write_prompts
from justrl_jax.model.paged_kv_cache import PagedKVCache
from justrl_jax.sharding import logical_spec

POOL_AXES = ("kv_heads", "kv_pages", None, "head_dim")  # of each layer's [K, pages, page_size, H] array


def pool_spec(mesh: Mesh, shape) -> PartitionSpec:
    # In the form compiled programs give their outputs (mesh axes of size 1 and trailing Nones dropped), so a new
    # pool and a pool a program returned have equal shardings: the first call of a run does not compile again.
    spec = [None if axis is None or mesh.shape[axis] == 1 else axis for axis in logical_spec(POOL_AXES, mesh, shape)]
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def pool_sharding(mesh: Mesh, shape) -> NamedSharding:
    return NamedSharding(mesh, pool_spec(mesh, shape))


def new_pool(
    mesh: Mesh | None, num_layers: int, kv_heads: int, pages: int, page_size: int, head_dim: int, dtype
) -> PagedKVCache:
    """A zero pool of ``pages`` pages in all, created in place on each device (never whole on one device)."""

    def zeros():
        return PagedKVCache.zeros(num_layers, kv_heads, pages, page_size, head_dim, dtype)

    if mesh is None:
        return zeros()
    return jax.jit(zeros, out_shardings=pool_sharding(mesh, (kv_heads, pages, page_size, head_dim)))()


def _specs(mesh: Mesh, pool_shape) -> tuple[PartitionSpec, object, object]:
    """(the pool's spec, the mesh axis rows split over, the mesh axis KV heads split over or None)."""
    pool = pool_spec(mesh, pool_shape)
    return pool, logical_spec(("batch",))[0], pool[0] if len(pool) else None


def per_shard(mesh: Mesh | None) -> Callable[[Callable], Callable] | None:
    """A wrapper that runs ``fn(q, k, v, k_pages, v_pages, page, offset, lengths, table) -> (out, k_pages,
    v_pages)`` (:func:`justrl_jax.model.paged_decode.write_and_attend`) on each shard's rows and pages. q, k, v,
    out: [B, heads, H], heads split like the pool's KV heads (query heads follow their KV head); page, offset,
    lengths [B]; table [B, nb] of local ids. None without a mesh."""
    if mesh is None:
        return None

    def wrap(fn: Callable) -> Callable:
        def run(q, k, v, k_pages, v_pages, page, offset, lengths, table):
            pool, rows, heads = _specs(mesh, k_pages.shape)
            by_head = PartitionSpec(rows, heads, None)
            row = PartitionSpec(rows)
            local = jax.shard_map(
                fn,
                mesh=mesh,
                in_specs=(by_head, by_head, by_head, pool, pool, row, row, row, PartitionSpec(rows, None)),
                out_specs=(by_head, pool, pool),
                check_vma=False,  # the attention's loops start from constants; nothing inside communicates
            )
            return local(q, k, v, k_pages, v_pages, page, offset, lengths, table)

        return run

    return wrap


def write_prompts_per_shard(mesh: Mesh | None, cache: PagedKVCache, dense: KVCache, prompt_len, table) -> PagedKVCache:
    """:func:`justrl_jax.model.paged_decode.write_prompts` on each shard's rows (dense [L, B, W, K, H], prompt_len
    [B], table [B, nb] of local ids) into that shard's pages."""
    if mesh is None:
        return write_prompts(cache, dense, prompt_len, table)
    pool, rows, heads = _specs(mesh, cache.k[0].shape)
    by_row = PartitionSpec(None, rows, None, heads, None)
    dense_spec = KVCache(k=by_row, v=by_row, mask=PartitionSpec(rows, None), index=PartitionSpec())
    local = jax.shard_map(
        write_prompts,
        mesh=mesh,
        in_specs=(pool, dense_spec, PartitionSpec(rows), PartitionSpec(rows, None)),
        out_specs=pool,
        check_vma=False,
    )
    return local(cache, dense, prompt_len, table)
