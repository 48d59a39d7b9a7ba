"""The tiny model and ragged prompts shared by the continuous-batching and verification-overlap tests."""

import numpy as np
from flax import nnx

from justrl_jax.model.paged_kv_cache import PagedKVCache
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config

CFG = Qwen2Config(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)
NEW = 24
EOS = (3, 5, 9)  # ~1 in 40 per step: rows end anywhere from the first token to the cap
PAGE_BYTES = PagedKVCache.page_bytes(CFG.num_layers, CFG.num_kv_heads, 4, CFG.head_dim, 4)


def tiny_model() -> Qwen2:
    return Qwen2(CFG, rngs=nnx.Rngs(4))


def ragged_prompts() -> tuple[np.ndarray, np.ndarray]:
    """Six left-padded prompts of 1 to 11 tokens in a width of 12."""
    lengths = [3, 11, 7, 1, 9, 5]
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), 12), np.int32)
    mask = np.zeros((len(lengths), 12), bool)
    for i, n in enumerate(lengths):
        ids[i, 12 - n :] = rng.integers(1, CFG.vocab_size, n)
        mask[i, 12 - n :] = True
    return ids, mask
