"""The paged decoding KV cache: keys and values in fixed-size pages shared by every decode slot.

A slot (one row being decoded) owns a list of pages, its *page table*; token position ``p`` of the row
lives in page ``table[p // page_size]`` at offset ``p % page_size``. A row holds only the pages its length
needs and returns them when it ends, so KV memory follows the live tokens, not rows x cap. Page 0 is
never handed out: unused table entries and idle slots point at it, so their (ignored) writes land there.

The per-layer layout ``[K, pages, page_size, H]`` is the one the Pallas paged-attention kernels read
(``jax.experimental.pallas.ops.{tpu,gpu}.paged_attention``). Layers are separate arrays, not one stacked
[L, ...] array: reading a layer out of a stacked pool made XLA:CPU copy that layer's whole pool every
decode step (a step cost that grew with the pool, not with the tokens read).
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

NULL_PAGE = 0  # the page that idle slots and unused table entries point at; never allocated


@flax.struct.dataclass
class PagedKVCache:
    """k, v: one [K, pages, page_size, H] array per layer (K = KV heads, never repeated for GQA)."""

    k: tuple[jnp.ndarray, ...]
    v: tuple[jnp.ndarray, ...]

    @classmethod
    def zeros(cls, num_layers: int, kv_heads: int, pages: int, page_size: int, head_dim: int, dtype) -> PagedKVCache:
        shape = (kv_heads, pages, page_size, head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
        )

    @property
    def pages(self) -> int:
        return self.k[0].shape[1]

    @property
    def page_size(self) -> int:
        return self.k[0].shape[2]

    @staticmethod
    def page_bytes(num_layers: int, kv_heads: int, page_size: int, head_dim: int, itemsize: int) -> int:
        """Bytes of one page over every layer, keys and values: the unit the memory planner counts."""
        return 2 * num_layers * kv_heads * page_size * head_dim * itemsize


def pages_for(tokens: int, page_size: int) -> int:
    """Pages a row of ``tokens`` cached tokens needs."""
    return -(-tokens // page_size)
