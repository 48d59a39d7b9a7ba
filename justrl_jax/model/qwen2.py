"""The Qwen2 decoder (DeepSeek-R1-Distill-Qwen-1.5B, OpenMath-Nemotron-1.5B) in Flax NNX.

One forward serves training and decoding:

* training: ``model(tokens, positions, mask)`` over whole left-padded sequences, or over packed rows
  where ``mask`` holds segment ids (0 = padding, 1, 2, ... one per packed sequence; positions restart
  per segment); the attention is :mod:`justrl_jax.model.attention`, chosen by ``model.attention``;
* decoding: ``model(tokens, positions, mask, cache)`` writes the new keys/values at ``cache.index``
  and attends over every valid cache slot up to the query's own slot.

Shapes use: B batch, T query length, S key length, D hidden, N query heads, K KV heads,
G = N // K query heads per KV head, H head dim, F MLP hidden, V vocabulary, L layers.

Parameters are stored in ``param_dtype`` (fp32 master weights) and cast to ``compute_dtype`` where
they are used. Every parameter carries ``logical_axes`` metadata, turned into mesh shardings by
:mod:`justrl_jax.sharding`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from justrl_jax.model.attention import REMAT_POLICY, check_implementation, self_attention
from justrl_jax.model.kv_cache import KVCache
from justrl_jax.model.rope import apply_rope, rope_tables
from justrl_jax.sharding import constrain_logical, constrain_rows

_MASKED = -1e30  # finite, so a fully masked (padding) query row gives a harmless uniform average


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture of a Qwen2 decoder. The defaults are DeepSeek-R1-Distill-Qwen-1.5B."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0:
            raise ValueError(f"model.rope_theta must be > 0, got {self.rope_theta}")

    def num_params(self) -> int:
        """Exact parameter count (what HF's ``num_parameters()`` reports)."""
        d, f, n, k, h, v = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.vocab_size,
        )
        attn = d * n * h + n * h + 2 * (d * k * h + k * h) + n * h * d
        layer = attn + 3 * d * f + 2 * d
        embed = v * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + d


def _param(rngs: nnx.Rngs, shape, axes, dtype, scale: float = 0.02) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype) * scale, logical_axes=axes)


def _ones(shape, axes, dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), logical_axes=axes)


def _zeros(shape, axes, dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = _ones((dim,), ("norm",), param_dtype)
        self.eps = eps

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        # As HF: normalise in fp32, cast back, then scale in the input dtype. Written as einsums (the same
        # products) so that the backward's sums over D and over tokens are contractions: XLA:CPU runs a
        # reduce of a two-operand product ~10x slower (RMSNorm fwd+bwd at 1 x 8,448: 53 -> 22 CPU-ms).
        x32 = x.astype(jnp.float32)
        mean_sq = jnp.einsum("...D,...D->...", x32, x32) / x.shape[-1]
        y = jnp.einsum("...D,...->...D", x32, jax.lax.rsqrt(mean_sq + self.eps))
        return jnp.einsum("D,...D->...D", self.scale[...].astype(x.dtype), y.astype(x.dtype))


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_kernel = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), param_dtype)
        self.q_bias = _zeros((n, h), ("heads", "head_dim"), param_dtype)
        self.k_kernel = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.k_bias = _zeros((k, h), ("kv_heads", "head_dim"), param_dtype)
        self.v_kernel = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v_bias = _zeros((k, h), ("kv_heads", "head_dim"), param_dtype)
        self.o_kernel = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), param_dtype)
        self.num_kv_heads = k
        self.head_dim = h
        self.rope_theta = cfg.rope_theta
        self.compute_dtype = compute_dtype

    def _project(self, x, kernel, bias):
        dt = self.compute_dtype
        return jnp.einsum("BTD,DNH->BTNH", x, kernel[...].astype(dt)) + bias[...].astype(dt)

    def __call__(self, x, positions, segments, cache: KVCache | None, layer: int, impl: str = "auto"):
        """x [B,T,D]; positions [B,T]; segments [B,T] int (0 = padding) -> ([B,T,D], cache)."""
        b, t, _ = x.shape
        q = self._project(x, self.q_kernel, self.q_bias)  # [B,T,N,H]
        k = self._project(x, self.k_kernel, self.k_bias)  # [B,T,K,H]
        v = self._project(x, self.v_kernel, self.v_bias)  # [B,T,K,H]
        cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is None or t == cache.slots:
            # Whole sequences: training, or a prefill over a cache of exactly the prompt width (which
            # can only start at slot 0), written whole.
            if cache is not None:
                cache = cache.replace(
                    k=cache.k.at[layer].set(k.astype(cache.k.dtype)), v=cache.v.at[layer].set(v.astype(cache.v.dtype))
                )
            out = self_attention(q, k, v, segments, impl)
            return jnp.einsum("BTNH,NHD->BTD", out, self.o_kernel[...].astype(out.dtype)), cache
        # Decoding: the new tokens attend over every valid cache slot up to their own.
        mask = segments > 0
        start = cache.index
        cache = cache.replace(
            k=jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), (layer, 0, start, 0, 0)),
            v=jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), (layer, 0, start, 0, 0)),
        )
        keys, values = cache.k[layer].astype(q.dtype), cache.v[layer].astype(q.dtype)
        key_valid = jax.lax.dynamic_update_slice(cache.mask, mask, (0, start))
        query_slot = start + jnp.arange(t)
        key_slot = jnp.arange(keys.shape[1])
        allowed = (key_slot[None, :] <= query_slot[:, None])[None] & key_valid[:, None, :]  # [B,T,S]

        g = q.shape[2] // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, g, self.head_dim)  # [B,T,K,G,H]
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, keys, preferred_element_type=jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        scores = jnp.where(allowed[:, None, None], scores, _MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, values).reshape(b, t, -1, self.head_dim)
        return jnp.einsum("BTNH,NHD->BTD", out, self.o_kernel[...].astype(out.dtype)), cache


class MLP(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_kernel = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.up_kernel = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.down_kernel = _param(rngs, (f, d), ("mlp", "embed"), param_dtype)
        self.compute_dtype = compute_dtype

    def __call__(self, x):
        dt = self.compute_dtype
        if x.shape[1] == 1:  # decode: reads of the weights dominate; a stacked copy would double them
            gate = jnp.einsum("BTD,DF->BTF", x, self.gate_kernel[...].astype(dt))
            up = jnp.einsum("BTD,DF->BTF", x, self.up_kernel[...].astype(dt))
            return jnp.einsum("BTF,FD->BTD", jax.nn.silu(gate) * up, self.down_kernel[...].astype(dt))
        # Gate and up as one matmul against their weights stacked on a new axis C (2): one [T, D] x [D, 2F]
        # product forward, and in the backward one for dx and one for both weight gradients, fed by one
        # elementwise pass that writes d(gate) and d(up) side by side. Separate gate/up matmuls cost XLA:CPU
        # two of each plus transposed [F, T] copies (MLP fwd+bwd, remat, at 1 x 8,448 tokens: 0.93 -> 0.71
        # CPU-s). Stacking on a new axis keeps F (the sharded "mlp" axis) whole per shard: no resharding.
        w = jnp.stack([self.gate_kernel[...], self.up_kernel[...]], axis=1).astype(dt)  # [D, C=2, F]
        gate_up = jnp.einsum("BTD,DCF->BTCF", x, w)
        act = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
        return jnp.einsum("BTF,FD->BTD", act, self.down_kernel[...].astype(dt))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
        self.attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)

    def __call__(self, x, positions, segments, cache, layer: int, impl: str = "auto"):
        # The residual stream keeps the batch layout (rows split, D whole) at each add: a no-op without a
        # sharded step, see sharding.constrain_rows.
        x = constrain_rows(x)
        h, cache = self.attn(self.input_norm(x), positions, segments, cache, layer, impl)
        x = constrain_rows(x + h)
        return constrain_rows(x + self.mlp(self.post_attn_norm(x))), cache


def _layer_forward(impl: str):
    def forward(layer: DecoderLayer, x, positions, segments):
        return layer(x, positions, segments, None, 0, impl)[0]

    return forward


class Qwen2(nnx.Module):
    """Qwen2 decoder returning final-norm hidden states; :meth:`unembed` gives the output matrix.

    Example::

        model = Qwen2(Qwen2Config(...), rngs=nnx.Rngs(0))
        hidden, _ = model(tokens, positions, mask)           # [B, T, D]
        logits = model.logits(hidden)                        # [B, T, V] float32
    """

    def __init__(
        self,
        config: Qwen2Config,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        compute_dtype=jnp.float32,
        remat: bool = False,
        attention: str = "auto",
    ):
        self.config = config
        self.compute_dtype = compute_dtype
        self.remat = remat
        self.attention = check_implementation(attention)  # static: part of the graphdef
        self.embedding = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype)
        self.layers = nnx.List(
            [
                DecoderLayer(config, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
                for _ in range(config.num_layers)
            ]
        )
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype)
        if not config.tie_word_embeddings:
            self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), param_dtype)

    def __call__(self, tokens, positions, mask, cache: KVCache | None = None):
        """tokens, positions [B,T] int; mask [B,T] bool (valid tokens) or int segment ids (0 = padding)
        -> (hidden [B,T,D], updated cache or None)."""
        # In a sharded step the table is gathered whole along D first (as ZeRO-3 does for any weight): its
        # gradient, a scatter-add of row-split [B,T,D] updates, then needs no D-split copy of the updates
        # (which jax 0.11's partitioner only makes by replicating them).
        table = constrain_logical(self.embedding[...], ("vocab", None))
        x = constrain_rows(jnp.take(table, tokens, axis=0).astype(self.compute_dtype))  # [B,T,D]
        segments = mask.astype(jnp.int32)
        mask = segments > 0
        impl = check_implementation(self.attention)
        if cache is None and self.remat:
            # Rematerialise each layer: keep only layer inputs (and the attention's output) for the backward.
            forward = nnx.remat(_layer_forward(impl), policy=REMAT_POLICY)
            for layer in self.layers:
                x = forward(layer, x, positions, segments)
        else:
            for i, layer in enumerate(self.layers):
                x, cache = layer(x, positions, segments, cache, i, impl)
        if cache is not None:
            t = tokens.shape[1]
            cache = cache.replace(
                mask=jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index)),
                index=cache.index + t,
            )
        return constrain_rows(self.final_norm(constrain_rows(x))), cache

    def unembed(self) -> jnp.ndarray:
        """The [D, V] output matrix in the compute dtype (the embedding, transposed, when tied)."""
        w = self.embedding[...].T if self.config.tie_word_embeddings else self.lm_head[...]
        return w.astype(self.compute_dtype)

    def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
        return jnp.einsum("BTD,DV->BTV", hidden, self.unembed(), preferred_element_type=jnp.float32)

    def init_cache(self, batch: int, slots: int, dtype=None) -> KVCache:
        c = self.config
        return KVCache.zeros(c.num_layers, batch, slots, c.num_kv_heads, c.head_dim, dtype or self.compute_dtype)


def positions_from_mask(mask: jnp.ndarray) -> jnp.ndarray:
    """Positions for a left-padded batch: 0 at the first real token, counting up; pads get 0."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
