"""The decoding KV cache: one pytree, stacked over layers, with a single shared write index."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for B sequences of up to S slots.

    k, v:   [L, B, S, K, H]  (K = KV heads: GQA heads are never repeated in memory)
    mask:   [B, S] bool      slot s of sequence b holds a real token (left padding stays False)
    index:  [] int32         next slot to write; every sequence advances together
    """

    k: jnp.ndarray
    v: jnp.ndarray
    mask: jnp.ndarray
    index: jnp.ndarray

    @classmethod
    def zeros(cls, num_layers: int, batch: int, slots: int, kv_heads: int, head_dim: int, dtype) -> KVCache:
        shape = (num_layers, batch, slots, kv_heads, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            mask=jnp.zeros((batch, slots), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    @staticmethod
    def bytes_for(num_layers: int, batch: int, slots: int, kv_heads: int, head_dim: int, itemsize: int) -> int:
        """Bytes the cache will take, for planning before anything is allocated."""
        return 2 * num_layers * batch * slots * kv_heads * head_dim * itemsize + batch * slots
