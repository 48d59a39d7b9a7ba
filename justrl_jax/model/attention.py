"""Causal self-attention over whole sequences (training and prefill), behind one switch.

``model.attention`` chooses the implementation; all take the same arguments and return the same values:

* ``xla``: the einsum reference; builds the fp32 scores ``[B, heads, T, T]`` (memory grows with T^2);
* ``blockwise``: flash-style online softmax over key blocks in pure JAX, with a custom VJP that
  recomputes each block's probabilities in the backward pass; blocks that the causal and segment masks
  rule out are never computed; memory O(T x block) per head. The CPU default;
* ``splash``: the Pallas TPU splash-attention kernel with segment ids (Pallas interpret mode off TPU);
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, bf16/fp16);
* ``auto``: splash on TPU, cudnn on GPU when it can take the dtype and head size, blockwise otherwise
  (a kernel that cannot take the shape falls back to blockwise with a log line).

Masking: a query at slot t of row b sees the keys at slots s <= t with ``segment_ids[b, s] ==
segment_ids[b, t]``; segment 0 is padding (left padding, or the tail of a packed row) and sees nothing.
Rows of packed sequences carry segment ids 1, 2, ... (see :mod:`justrl_jax.packing`); a plain
left-padded batch is the special case ``segment_ids = mask``. The output at a padding query is 0.

Shapes: B batch, T length, N query heads, K KV heads, G = N // K, H head dim.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "splash", "cudnn")
DEFAULT_BLOCK = 512

_log = logging.getLogger(__name__)
_fallbacks_logged: set[str] = set()


def check_implementation(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention must be one of {IMPLEMENTATIONS}, got {name!r}")
    return name


def self_attention(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray, impl: str = "auto"
) -> jnp.ndarray:
    """q [B,T,N,H], k, v [B,T,K,H], segment_ids [B,T] int (0 = padding) -> [B,T,N,H] in q's dtype."""
    impl = resolve(check_implementation(impl), q)
    if impl == "xla":
        return xla_attention(q, k, v, segment_ids)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, segment_ids)
    if impl == "splash":
        return splash_attention(q, k, v, segment_ids)
    return cudnn_attention(q, k, v, segment_ids)


def resolve(impl: str, q: jnp.ndarray) -> str:
    """The implementation ``auto`` stands for on this platform and shape."""
    if impl != "auto":
        return impl
    platform = jax.devices()[0].platform
    if platform == "tpu":
        return "splash"
    if platform == "gpu":
        reason = _cudnn_refusal(q)
        if reason is None:
            return "cudnn"
        if reason not in _fallbacks_logged:
            _fallbacks_logged.add(reason)
            _log.warning("attention: cudnn cannot take this call (%s); using blockwise", reason)
    return "blockwise"


def _cudnn_refusal(q: jnp.ndarray) -> str | None:
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype}, cudnn needs bfloat16 or float16"
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return f"head_dim {q.shape[-1]}, cudnn needs a multiple of 8 up to 128"
    return None


def _allowed(seg_q, seg_k, slot_q, slot_k):
    """[B,Tq,Sk] bool: causal by slot, same segment, not padding."""
    causal = slot_k[None, None, :] <= slot_q[None, :, None]
    same = seg_q[:, :, None] == seg_k[:, None, :]
    return causal & same & (seg_k[:, None, :] > 0)


def _grouped(q, num_kv_heads):
    b, t, n, h = q.shape
    return q.reshape(b, t, num_kv_heads, n // num_kv_heads, h)  # [B,T,K,G,H]


# --- xla: the reference ---------------------------------------------------------------------------


def xla_attention(q, k, v, segment_ids):
    b, t, n, h = q.shape
    slots = jnp.arange(t)
    allowed = _allowed(segment_ids, segment_ids, slots, slots)  # [B,T,S]
    qg = _grouped(q, k.shape[2])
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * (h**-0.5)
    scores = jnp.where(allowed[:, None, None], scores, -jnp.inf)
    # A padding query has no allowed key: its row would be NaN; it is defined as 0.
    any_key = jnp.any(allowed, axis=-1)[:, None, None, :, None]
    probs = jnp.where(any_key, jax.nn.softmax(jnp.where(any_key, scores, 0.0), axis=-1), 0.0)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v)
    return out.reshape(b, t, n, h).astype(q.dtype)


# --- blockwise: flash-style online softmax in pure JAX --------------------------------------------


def _block_size(t: int, block: int) -> int:
    return min(block, -(-t // 16) * 16)


def _block_ranges(segment_ids, block: int):
    """Which (query block, key block) pairs can hold an allowed pair, as [lo, hi) ranges both ways.

    A pair is needed when causality allows it (the key block starts before the query block ends) and,
    in some row, the two blocks' ranges of non-padding segment ids overlap. Segment ids of packed and
    left-padded rows never decrease along a row, so the needed key blocks of a query block are one run.
    """
    b, t = segment_ids.shape
    nb = t // block
    seg = segment_ids.reshape(b, nb, block)
    big = jnp.iinfo(jnp.int32).max
    lo_seg = jnp.min(jnp.where(seg > 0, seg, big), axis=-1)  # [B, nb]
    hi_seg = jnp.max(seg, axis=-1)
    overlap = (lo_seg[:, :, None] <= hi_seg[:, None, :]) & (lo_seg[:, None, :] <= hi_seg[:, :, None])
    idx = jnp.arange(nb)
    need = jnp.any(overlap, axis=0) & (idx[None, :] <= idx[:, None])  # [q block, k block]

    def run(mask):  # [rows, cols] -> first and one-past-last True column of each row (0, 0 if none)
        cols = jnp.arange(mask.shape[1])
        lo = jnp.min(jnp.where(mask, cols, nb), axis=1)
        hi = jnp.max(jnp.where(mask, cols + 1, 0), axis=1)
        return jnp.minimum(lo, hi), hi

    return run(need), run(need.T)


def _pad_to(x, t_pad, axis=1):
    pad = t_pad - x.shape[axis]
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def blockwise_attention(q, k, v, segment_ids, block: int = DEFAULT_BLOCK):
    b, t, n, h = q.shape
    bs = _block_size(t, block)
    t_pad = -(-t // bs) * bs
    kv_heads = k.shape[2]
    # [B,K,G,T,H] and [B,K,S,H]: the block loops slice the sequence axis.
    qg = jnp.moveaxis(_grouped(_pad_to(q, t_pad), kv_heads), 1, 3)
    kk = jnp.moveaxis(_pad_to(k, t_pad), 1, 2)
    vv = jnp.moveaxis(_pad_to(v, t_pad), 1, 2)
    seg = _pad_to(segment_ids.astype(jnp.int32), t_pad)
    out = _flash(qg, kk, vv, seg, bs)  # [B,K,G,T,H]
    return jnp.moveaxis(out, 3, 1).reshape(b, t_pad, n, h)[:, :t]


def _block_scores(qi, kj, sq, sk, i, j, bs, scale):
    """Scaled fp32 scores of query block i against key block j, masked to -inf; and the mask."""
    slots = jnp.arange(bs)
    s = jnp.einsum("BKGQH,BKSH->BKGQS", qi, kj, preferred_element_type=jnp.float32) * scale
    allowed = _allowed(sq, sk, i * bs + slots, j * bs + slots)[:, None, None]  # [B,1,1,Q,S]
    return jnp.where(allowed, s, -jnp.inf), allowed


def _sl(x, i, bs, axis):
    return jax.lax.dynamic_slice_in_dim(x, i * bs, bs, axis)


def _flash_forward(q, k, v, seg, bs):
    b, kh, g, t, h = q.shape
    scale = h**-0.5
    (q_lo, q_hi), _ = _block_ranges(seg, bs)

    def query_block(i):
        qi, sq = _sl(q, i, bs, 3), _sl(seg, i, bs, 1)

        def key_block(j, carry):
            m, denom, acc = carry
            kj, vj, sk = _sl(k, j, bs, 2), _sl(v, j, bs, 2), _sl(seg, j, bs, 1)
            s, _ = _block_scores(qi, kj, sq, sk, i, j, bs, scale)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with nothing allowed yet
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            pv = jnp.einsum("BKGQS,BKSH->BKGQH", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
            return m_new, denom * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv

        init = (
            jnp.full((b, kh, g, bs), -jnp.inf, jnp.float32),
            jnp.zeros((b, kh, g, bs), jnp.float32),
            jnp.zeros((b, kh, g, bs, h), jnp.float32),
        )
        m, denom, acc = jax.lax.fori_loop(q_lo[i], q_hi[i], key_block, init)
        seen = denom > 0  # padding queries see nothing: output 0, and their lse is never used
        safe = jnp.where(seen, denom, 1.0)
        out = jnp.where(seen[..., None], acc / safe[..., None], 0.0)
        lse = jnp.where(seen, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(safe), 0.0)
        return out.astype(q.dtype), lse

    out, lse = jax.lax.map(query_block, jnp.arange(t // bs))  # [nb, B,K,G,bs,(H)]
    out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, t, h)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, t)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, bs):
    return _flash_forward(q, k, v, seg, bs)[0]


def _flash_fwd(q, k, v, seg, bs):
    out, lse = _flash_forward(q, k, v, seg, bs)
    return out, (q, k, v, seg, out, lse)


def _flash_bwd(bs, residuals, dout):
    q, k, v, seg, out, lse = residuals
    b, kh, g, t, h = q.shape
    scale = h**-0.5
    (q_lo, q_hi), (k_lo, k_hi) = _block_ranges(seg, bs)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B,K,G,T]

    def probs(i, j):
        """Recomputed probabilities of block (i, j) and d(loss)/d(scores)."""
        qi, sq, li, di, doi = (
            _sl(q, i, bs, 3),
            _sl(seg, i, bs, 1),
            _sl(lse, i, bs, 3),
            _sl(delta, i, bs, 3),
            _sl(dout, i, bs, 3),
        )
        kj, vj, sk = _sl(k, j, bs, 2), _sl(v, j, bs, 2), _sl(seg, j, bs, 1)
        s, allowed = _block_scores(qi, kj, sq, sk, i, j, bs, scale)
        p = jnp.where(allowed, jnp.exp(s - li[..., None]), 0.0)
        dp = jnp.einsum("BKGQH,BKSH->BKGQS", doi, vj, preferred_element_type=jnp.float32)
        ds = p * (dp - di[..., None])
        return qi, kj, doi, p, ds

    def dq_block(i):
        def body(j, dq):
            _, kj, _, _, ds = probs(i, j)
            return dq + jnp.einsum("BKGQS,BKSH->BKGQH", ds.astype(k.dtype), kj, preferred_element_type=jnp.float32)

        return jax.lax.fori_loop(q_lo[i], q_hi[i], body, jnp.zeros((b, kh, g, bs, h), jnp.float32)) * scale

    def dkv_block(j):
        def body(i, acc):
            dk, dv = acc
            qi, _, doi, p, ds = probs(i, j)
            dv = dv + jnp.einsum("BKGQS,BKGQH->BKSH", p.astype(v.dtype), doi, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("BKGQS,BKGQH->BKSH", ds.astype(q.dtype), qi, preferred_element_type=jnp.float32)
            return dk, dv

        zero = jnp.zeros((b, kh, bs, h), jnp.float32)
        dk, dv = jax.lax.fori_loop(k_lo[j], k_hi[j], body, (zero, zero))
        return dk * scale, dv

    nb = t // bs
    dq = jnp.moveaxis(jax.lax.map(dq_block, jnp.arange(nb)), 0, 3).reshape(b, kh, g, t, h)
    dk, dv = jax.lax.map(dkv_block, jnp.arange(nb))
    dk = jnp.moveaxis(dk, 0, 2).reshape(b, kh, t, h)
    dv = jnp.moveaxis(dv, 0, 2).reshape(b, kh, t, h)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- splash (TPU Pallas kernel) ---------------------------------------------------------------------

_SPLASH_BLOCK = 128


def splash_attention(q, k, v, segment_ids):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    g = n // kv_heads
    t_pad = -(-t // _SPLASH_BLOCK) * _SPLASH_BLOCK
    seg = _pad_to(segment_ids.astype(jnp.int32), t_pad)
    # The kernel does not scale the scores; scaling q first is the same product.
    qg = jnp.moveaxis(_grouped(_pad_to(q, t_pad) * jnp.asarray(h**-0.5, q.dtype), kv_heads), 1, 2)  # [B,K,T,G,H]
    qg = jnp.swapaxes(qg, 2, 3)  # [B,K,G,T,H]
    kk = jnp.moveaxis(_pad_to(k, t_pad), 1, 2)  # [B,K,S,H]
    vv = jnp.moveaxis(_pad_to(v, t_pad), 1, 2)
    mask = sm.MultiHeadMask([sm.CausalMask((t_pad, t_pad)) for _ in range(g)])
    sizes = sk.BlockSizes(
        block_q=_SPLASH_BLOCK,
        block_kv=_SPLASH_BLOCK,
        block_kv_compute=_SPLASH_BLOCK,
        block_q_dkv=_SPLASH_BLOCK,
        block_kv_dkv=_SPLASH_BLOCK,
        block_kv_dkv_compute=_SPLASH_BLOCK,
        block_q_dq=_SPLASH_BLOCK,
        block_kv_dq=_SPLASH_BLOCK,
    )
    kernel = sk.make_splash_mqa(
        mask,
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=jax.devices()[0].platform != "tpu",
    )

    def one(qh, kh, vh, s):  # qh [G,T,H], kh, vh [S,H], s [T]
        return kernel(qh, kh, vh, segment_ids=sk.SegmentIds(q=s, kv=s))

    per_kv = jax.vmap(one, in_axes=(0, 0, 0, None))  # over KV heads
    out = jax.vmap(per_kv)(qg, kk, vv, seg)  # [B,K,G,T,H]
    out = jnp.moveaxis(out, 3, 1).reshape(b, t_pad, n, h)[:, :t]
    # Padding shares segment 0 inside the kernel; its rows are defined as 0 here, as everywhere.
    return jnp.where((segment_ids > 0)[:, :, None, None], out, 0).astype(q.dtype)


# --- cudnn (GPU) --------------------------------------------------------------------------------------


def cudnn_attention(q, k, v, segment_ids):
    reason = _cudnn_refusal(q)
    if reason is not None:
        raise ValueError(f"model.attention=cudnn cannot take this call: {reason}")
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)  # [B,T,S]
    out = jax.nn.dot_product_attention(q, k, v, mask=same[:, None], is_causal=True, implementation="cudnn")
    return jnp.where((segment_ids > 0)[:, :, None, None], out, 0).astype(q.dtype)
