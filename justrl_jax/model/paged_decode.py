"""The Qwen2 forward over a :class:`PagedKVCache`: prompt prefill into pages, and one decode token per slot.

Both reuse the model's own modules (norms, projections, MLP), so weights and numerics are the model's:

* :func:`write_prompts` copies a dense prefill cache (the left-padded prompt pass of
  :class:`justrl_jax.model.qwen2.Qwen2`, exactly as the static sampler runs it) into the rows' pages.
* :func:`decode_step` feeds one token per slot at its own position, writes its keys/values into the
  slot's page for that position and attends over the slot's pages with
  :func:`justrl_jax.model.paged_attention.paged_decode_attention`.

Idle slots carry a page table of :data:`NULL_PAGE` entries, so their writes land in that page and
nothing they compute is read back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp

from justrl_jax.model.kv_cache import KVCache
from justrl_jax.model.paged_attention import paged_decode_attention
from justrl_jax.model.paged_kv_cache import NULL_PAGE, PagedKVCache
from justrl_jax.model.qwen2 import Qwen2
from justrl_jax.model.rope import apply_rope, rope_tables


def write_prompts(cache: PagedKVCache, dense: KVCache, prompt_len, page_table) -> PagedKVCache:
    """dense: the prefill cache [L, B, W, K, H] of left-padded prompts; prompt_len [B]; page_table [B, nb].
    Column ``c`` of row ``b`` holds position ``c - (W - prompt_len[b])``; padding columns go to NULL_PAGE."""
    num_layers, b, w, kv_heads, h = dense.k.shape
    ps = cache.page_size
    position = jnp.arange(w)[None, :] - (w - prompt_len)[:, None]  # [B, W]
    valid = position >= 0
    pos = jnp.maximum(position, 0)
    page = jnp.where(valid, jnp.take_along_axis(page_table, pos // ps, axis=1), NULL_PAGE).reshape(-1)  # [B*W]
    offset = (pos % ps).reshape(-1)

    def put(pages, new):  # new [B, W, K, H] -> pages[:, page, offset] = [K, B*W, H]
        new = jnp.transpose(new.reshape(b * w, kv_heads, h), (1, 0, 2)).astype(pages.dtype)
        return pages.at[:, page, offset].set(new)

    return cache.replace(
        k=tuple(put(cache.k[i], dense.k[i]) for i in range(num_layers)),
        v=tuple(put(cache.v[i], dense.v[i]) for i in range(num_layers)),
    )


def write_and_attend(q, k, v, k_pages, v_pages, page, offset, lengths, page_table, *, kernel: str, row_group: int):
    """One layer's KV write and attention: q [B, N, H], k, v [B, K, H] into ``pages[:, page, offset]`` ([B] each),
    then attention over each row's pages -> (out [B, N, H], k_pages, v_pages). Touches only the pages the table
    names, so it runs unchanged on one data shard's block of the pool with that shard's rows and local ids."""
    k_pages = k_pages.at[:, page, offset].set(jnp.transpose(k, (1, 0, 2)).astype(k_pages.dtype))
    v_pages = v_pages.at[:, page, offset].set(jnp.transpose(v, (1, 0, 2)).astype(v_pages.dtype))
    out = paged_decode_attention(q, k_pages, v_pages, lengths, page_table, kernel=kernel, row_group=row_group)
    return out, k_pages, v_pages


def decode_step(
    model: Qwen2,
    tokens,
    positions,
    cache: PagedKVCache,
    page_table,
    *,
    kernel: str = "jax",
    row_group: int = 16,
    per_shard: Callable[[Callable], Callable] | None = None,
):
    """tokens, positions [B] int32; page_table [B, nb] -> (final-norm hidden [B, 1, D], cache).
    ``row_group``: see :func:`paged_decode_attention`. ``per_shard`` wraps :func:`write_and_attend` to run on
    each data shard's rows and pages (``justrl_jax.page_pool.per_shard``); None: on the whole arrays."""
    attend = functools.partial(write_and_attend, kernel=kernel, row_group=row_group)
    if per_shard is not None:
        attend = per_shard(attend)
    ps = cache.page_size
    page = jnp.take_along_axis(page_table, (positions // ps)[:, None], axis=1)[:, 0]  # [B]
    offset = positions % ps
    x = jnp.take(model.embedding[...], tokens[:, None], axis=0).astype(model.compute_dtype)  # [B, 1, D]
    cos, sin = rope_tables(positions[:, None], model.config.head_dim, model.config.rope_theta)
    for i, layer in enumerate(model.layers):
        attn = layer.attn
        h = layer.input_norm(x)
        q = apply_rope(attn._project(h, attn.q_kernel, attn.q_bias), cos, sin)[:, 0]  # [B, N, H]
        k = apply_rope(attn._project(h, attn.k_kernel, attn.k_bias), cos, sin)[:, 0]  # [B, K, H]
        v = attn._project(h, attn.v_kernel, attn.v_bias)[:, 0]
        out, k_pages, v_pages = attend(q, k, v, cache.k[i], cache.v[i], page, offset, positions + 1, page_table)
        cache = cache.replace(
            k=cache.k[:i] + (k_pages,) + cache.k[i + 1 :], v=cache.v[:i] + (v_pages,) + cache.v[i + 1 :]
        )
        x = x + jnp.einsum("BNH,NHD->BD", out, attn.o_kernel[...].astype(out.dtype))[:, None]
        x = x + layer.mlp(layer.post_attn_norm(x))  # one token per row: MLP's token-major path
    return model.final_norm(x), cache
