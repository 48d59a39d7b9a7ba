"""Rotary position embedding in Hugging Face's half-split convention (computed in float32)."""

from __future__ import annotations

import jax.numpy as jnp


def rope_tables(positions: jnp.ndarray, head_dim: int, theta: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin of shape [B, T, H] for integer ``positions`` [B, T].

    HF (``Qwen2RotaryEmbedding``) builds ``emb = cat(freqs, freqs)``: the first and second halves
    of the head share frequencies, which is what ``rotate_half`` expects.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [H/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, H]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates ``x`` [B, T, N, H] by the tables [B, T, H]; the result keeps ``x``'s dtype."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin
