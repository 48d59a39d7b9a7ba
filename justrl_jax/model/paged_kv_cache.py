"""The paged decoding KV cache: keys and values in fixed-size pages shared by every decode slot.

A slot (one row being decoded) owns a list of pages, its *page table*; token position ``p`` of the row
lives in page ``table[p // page_size]`` at offset ``p % page_size``. A row holds only the pages its length
needs and returns them when it ends, so KV memory follows the live tokens, not rows x cap. Page 0 is
never handed out: unused table entries and idle slots point at it, so their (ignored) writes land there.

The per-layer layout ``[K, pages, page_size, H]`` is the one the Pallas paged-attention kernels read
(``jax.experimental.pallas.ops.{tpu,gpu}.paged_attention``), so a layer's slice goes to them as it is.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

NULL_PAGE = 0  # the page that idle slots and unused table entries point at; never allocated


@flax.struct.dataclass
class PagedKVCache:
    """k, v: [L, K, pages, page_size, H] (K = KV heads, never repeated for GQA)."""

    k: jnp.ndarray
    v: jnp.ndarray

    @classmethod
    def zeros(cls, num_layers: int, kv_heads: int, pages: int, page_size: int, head_dim: int, dtype) -> PagedKVCache:
        shape = (num_layers, kv_heads, pages, page_size, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    @property
    def pages(self) -> int:
        return self.k.shape[2]

    @property
    def page_size(self) -> int:
        return self.k.shape[3]

    @staticmethod
    def page_bytes(num_layers: int, kv_heads: int, page_size: int, head_dim: int, itemsize: int) -> int:
        """Bytes of one page over every layer, keys and values: the unit the memory planner counts."""
        return 2 * num_layers * kv_heads * page_size * head_dim * itemsize


def pages_for(tokens: int, page_size: int) -> int:
    """Pages a row of ``tokens`` cached tokens needs."""
    return -(-tokens // page_size)
