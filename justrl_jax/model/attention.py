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

import logging

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "splash", "cudnn")
DEFAULT_BLOCK = 256

# What a rematerialised decoder layer saves for its backward pass: blockwise attention's output and
# log-sum-exp (O(T) per head), so recomputing the layer skips the attention, its costliest part; the
# projections and the MLP are recomputed from the layer's input as before.
REMAT_POLICY = jax.checkpoint_policies.save_only_these_names("attention_out", "attention_lse")

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


def _full_runs(segment_ids, block: int, needed):
    """Within the needed runs of :func:`_block_ranges`, the sub-run of pairs whose every (query, key) pair
    is allowed, both ways: ``((f_lo, f_hi) per query block, (f_lo, f_hi) per key block)``.

    A pair is full when the key block lies strictly before the query block and, in every row, both
    blocks hold one and the same non-padding segment: its scores need no mask. Where a block has no
    full partner, or its full partners are not one run, its sub-run is empty at the end of its needed
    run (``f_lo = f_hi = hi``), so the masked loops cover the whole needed run.
    """
    b, t = segment_ids.shape
    nb = t // block
    seg = segment_ids.reshape(b, nb, block)
    lo, hi = jnp.min(seg, axis=-1), jnp.max(seg, axis=-1)  # [B, nb]
    uniform = (lo == hi) & (lo > 0)
    same = uniform[:, :, None] & uniform[:, None, :] & (lo[:, :, None] == lo[:, None, :])
    idx = jnp.arange(nb)
    full = jnp.all(same, axis=0) & (idx[None, :] < idx[:, None])  # [q block, k block]

    def run(mask, need_hi):
        cols = jnp.arange(mask.shape[1])
        f_lo = jnp.min(jnp.where(mask, cols, nb), axis=1)
        f_hi = jnp.max(jnp.where(mask, cols + 1, 0), axis=1)
        one_run = (f_hi > f_lo) & (jnp.sum(mask, axis=1) == f_hi - f_lo)
        return jnp.where(one_run, f_lo, need_hi), jnp.where(one_run, f_hi, need_hi)

    (_, q_hi), (_, k_hi) = needed
    return run(full, q_hi), run(full.T, k_hi)


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
    nb, kv_heads = t_pad // bs, k.shape[2]
    # Blocked layouts, built once outside the loops: q [nb,B,K,G,bs,H], k, v [nb,B,K,bs,H], segment ids
    # [nb,B,bs]. A loop step then takes one whole block by its leading index (no strided slicing).
    qb = _grouped(_pad_to(q, t_pad), kv_heads).reshape(b, nb, bs, kv_heads, n // kv_heads, h)
    qb = jnp.transpose(qb, (1, 0, 3, 4, 2, 5))
    kb, vb = (jnp.transpose(_pad_to(x, t_pad).reshape(b, nb, bs, kv_heads, h), (1, 0, 3, 2, 4)) for x in (k, v))
    seg = _pad_to(jnp.asarray(segment_ids, jnp.int32), t_pad).reshape(b, nb, bs).swapaxes(0, 1)
    out = _in_lanes(qb, kb, vb, seg)  # [nb,B,K,G,bs,H]
    return jnp.transpose(out, (1, 0, 4, 2, 3, 5)).reshape(b, t_pad, n, h)[:, :t]


def _in_lanes(q, k, v, seg):
    """:func:`_flash` over two halves of the KV heads (or else of the rows) as independent computations.

    Each loop step is a chain of small ops (a [G*bs, H] x [H, bs] matmul, the softmax, another matmul)
    that XLA:CPU runs on one thread; two independent loops are two chains, which its runtime executes
    concurrently (one per core on a 2-core machine). Halves of the heads also halve each step's work, so
    the split costs no extra arithmetic.
    """
    _, b, kh = q.shape[:3]
    if kh % 2 == 0:
        h = kh // 2
        halves = [_flash(q[:, :, s], k[:, :, s], v[:, :, s], seg) for s in (slice(0, h), slice(h, kh))]
        return jnp.concatenate(halves, axis=2)
    if b % 2 == 0:
        h = b // 2
        halves = [_flash(q[:, s], k[:, s], v[:, s], seg[:, s]) for s in (slice(0, h), slice(h, b))]
        return jnp.concatenate(halves, axis=1)
    return _flash(q, k, v, seg)


def _allowed_t(seg_k, seg_q, slot_k, slot_q):
    """[B,1,S,1,Q] bool, key-major (the backward pass works on transposed blocks): causal, same segment,
    not padding."""
    causal = slot_k[:, None] <= slot_q[None, :]
    same = (seg_k[:, :, None] == seg_q[:, None, :]) & (seg_k[:, :, None] > 0)
    return (causal[None] & same)[:, None, :, None, :]


def _ranges(seg):
    """:func:`_block_ranges` and :func:`_full_runs` of blocked segment ids [nb,B,bs]."""
    nb, b, bs = seg.shape
    rows = seg.swapaxes(0, 1).reshape(b, nb * bs)
    needed = _block_ranges(rows, bs)
    return needed, _full_runs(rows, bs, needed)


def _three_runs(lo, f_lo, f_hi, hi, body, carry):
    """``body(j, carry, masked)`` over j in [lo, hi): masked outside the full sub-run [f_lo, f_hi), unmasked
    inside it (the mask's compare-and-select passes over each score block are skipped there)."""
    carry = jax.lax.fori_loop(lo, f_lo, lambda j, c: body(j, c, True), carry)
    carry = jax.lax.fori_loop(f_lo, f_hi, lambda j, c: body(j, c, False), carry)
    return jax.lax.fori_loop(f_hi, hi, lambda j, c: body(j, c, True), carry)


def _flash_forward(q, k, v, seg, ranges):
    """Online softmax over the key blocks each query block needs: -> out [nb,B,K,G,bs,H] in q's dtype and
    the log-sum-exp of the scaled scores, lse [nb,B,K,G,bs] (0 at padding queries)."""
    nb, b, kh, g, bs, h = q.shape
    ((q_lo, q_hi), _), ((qf_lo, qf_hi), _) = ranges
    qs = q * jnp.asarray(h**-0.5, q.dtype)  # scale once, not every block of scores
    k_t = jnp.swapaxes(k, -1, -2)  # [nb,B,K,H,bs]: the scores' matmul takes [H, S] as it is laid out
    slots = jnp.arange(bs)

    def query_block(i):
        qi, sq = qs[i], seg[i]

        def key_block(j, carry, masked):
            m, denom, acc = carry
            s = jnp.einsum("BKGQH,BKHS->BKGQS", qi, k_t[j], preferred_element_type=jnp.float32)
            if masked:
                allowed = _allowed(sq, seg[j], i * bs + slots, j * bs + slots)[:, None, None]  # [B,1,1,Q,S]
                s = jnp.where(allowed, s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with nothing allowed yet
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            pv = jnp.einsum("BKGQS,BKSH->BKGQH", p.astype(v.dtype), v[j], preferred_element_type=jnp.float32)
            return m_new, denom * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv

        init = (
            jnp.full((b, kh, g, bs), -jnp.inf, jnp.float32),
            jnp.zeros((b, kh, g, bs), jnp.float32),
            jnp.zeros((b, kh, g, bs, h), jnp.float32),
        )
        m, denom, acc = _three_runs(q_lo[i], qf_lo[i], qf_hi[i], q_hi[i], key_block, init)
        seen = denom > 0  # padding queries see nothing: output 0, and their lse is never used
        safe = jnp.where(seen, denom, 1.0)
        out = jnp.where(seen[..., None], acc / safe[..., None], 0.0)
        lse = jnp.where(seen, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(safe), 0.0)
        return out.astype(q.dtype), lse

    return jax.lax.map(query_block, jnp.arange(nb))


@jax.custom_vjp
def _flash(q, k, v, seg):
    return _flash_forward(q, k, v, seg, _ranges(seg))[0]


def _flash_fwd(q, k, v, seg):
    ranges = _ranges(seg)
    out, lse = _flash_forward(q, k, v, seg, ranges)
    # Named, so a rematerialised layer keeps them (REMAT_POLICY) instead of running this forward again.
    out, lse = checkpoint_name(out, "attention_out"), checkpoint_name(lse, "attention_lse")
    return out, (q, k, v, seg, out, lse, ranges)


def _flash_bwd(residuals, dout):
    """One pass over the needed (key block, query block) pairs, key blocks outermost (FlashAttention-2's
    order): each pair recomputes its probabilities once and feeds dk, dv and dq from them. The blocks are
    key-major ([S, G*Q]), so every one of the five matmuls takes its operands as they are laid out, with
    no transposed copy inside the loop; dq is accumulated transposed ([H, G*Q]) for the same reason."""
    q, k, v, seg, out, lse, ((_, (k_lo, k_hi)), (_, (kf_lo, kf_hi))) = residuals
    nb, b, kh, g, bs, h = q.shape
    scale = h**-0.5
    qs = q * jnp.asarray(scale, q.dtype)
    qs_t = jnp.moveaxis(qs, -1, 3)  # [nb,B,K,H,G,bs]
    dout_t = jnp.moveaxis(dout, -1, 3)
    k_t = jnp.swapaxes(k, -1, -2)  # [nb,B,K,H,bs]
    # A contraction, not sum(dout * out): XLA:CPU runs a reduce of a two-operand product far slower.
    delta = jnp.einsum("...H,...H->...", dout.astype(jnp.float32), out.astype(jnp.float32))  # [nb,B,K,G,bs]
    slots = jnp.arange(bs)

    def key_block(dq_t, j):
        kj, vj, kj_t, sk = k[j], v[j], k_t[j], seg[j]

        def query_block(i, carry, masked):
            dk, dv, dq_t = carry
            s_t = jnp.einsum("BKSH,BKHGQ->BKSGQ", kj, qs_t[i], preferred_element_type=jnp.float32)
            p_t = jnp.exp(s_t - lse[i][:, :, None])  # [B,K,S,G,Q]
            if masked:
                p_t = jnp.where(_allowed_t(sk, seg[i], j * bs + slots, i * bs + slots), p_t, 0.0)
            dp_t = jnp.einsum("BKSH,BKHGQ->BKSGQ", vj, dout_t[i], preferred_element_type=jnp.float32)
            ds_t = p_t * (dp_t - delta[i][:, :, None])
            dv = dv + jnp.einsum("BKSGQ,BKGQH->BKSH", p_t.astype(v.dtype), dout[i], preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("BKSGQ,BKGQH->BKSH", ds_t.astype(q.dtype), qs[i], preferred_element_type=jnp.float32)
            dq_i = jnp.einsum("BKHS,BKSGQ->BKHGQ", kj_t, ds_t.astype(k.dtype), preferred_element_type=jnp.float32)
            return dk, dv, dq_t.at[i].add(dq_i)

        zero = jnp.zeros((b, kh, bs, h), jnp.float32)
        dk, dv, dq_t = _three_runs(k_lo[j], kf_lo[j], kf_hi[j], k_hi[j], query_block, (zero, zero, dq_t))
        return dq_t, (dk, dv)

    dq_t = jnp.zeros((nb, b, kh, h, g, bs), jnp.float32)
    dq_t, (dk, dv) = jax.lax.scan(key_block, dq_t, jnp.arange(nb))
    dq = jnp.moveaxis(dq_t, 3, -1) * scale
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
