"""Decode attention over a paged KV cache: one query token per slot, keys read from the slot's own pages.

One interface, several implementations (``kernel=``):

* ``"jax"``: pure JAX, any backend: flash decoding over blocks of page columns (online softmax in fp32), in
  groups of rows, each group up to its longest row's page only (a dynamic loop bound, so one program serves
  every length).
* ``"pallas_gpu"``: ``jax.experimental.pallas.ops.gpu.paged_attention`` (split-K flash decoding; a Triton
  kernel, deprecated in jax 0.11 with the rest of the Pallas Triton ops; its code there is that of 0.10.2).
* ``"pallas_tpu"``: ``jax.experimental.pallas.ops.tpu.paged_attention``.
* ``"pallas_tpu_ragged"``: ``jax.experimental.pallas.ops.tpu.ragged_paged_attention`` with one query per
  sequence; it wants keys and values interleaved in one page array, built here per call (a serving path
  would store that layout directly). Its interpret mode fails on CPU in jax 0.10.2 and 0.11.2 (the TPU
  interpreter has no ``ReshapeTransform``), so only its argument layout is tested, against the kernel module's
  own ``ref_ragged_paged_attention``.
* ``"auto"``: ``pallas_gpu`` on GPU, ``pallas_tpu`` on TPU, ``jax`` elsewhere.

The kernels take a pre-scaled query (they apply no ``1/sqrt(H)``); the pure-JAX path scales the fp32
scores like :class:`justrl_jax.model.qwen2.Attention`, so decode logits match the dense path closely.
``interpret=True`` runs a Pallas kernel in interpret mode (how they are tested on CPU).

Shapes: q [B, N, H]; k_pages, v_pages [K, P, page_size, H]; lengths [B] int32 (valid tokens of each
slot, the query's own included); page_table [B, nb] int32 page ids. Returns [B, N, H] in q's dtype.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

KERNELS = ("jax", "pallas_gpu", "pallas_tpu", "pallas_tpu_ragged", "auto")
_MASKED = -1e30  # as qwen2: finite, so an empty slot gives a harmless uniform average
_BLOCK_TOKENS = 64  # tokens the pure-JAX path reads per loop step (whole pages)


def resolve_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"paged attention kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    return {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(jax.default_backend(), "jax")


def paged_decode_attention(
    q, k_pages, v_pages, lengths, page_table, *, kernel: str = "jax", interpret: bool = False, row_group: int = 16
):
    """See the module docstring. ``row_group`` (pure JAX only; 0: one group): rows are attended in groups of
    this many, each reading up to its own longest row, so callers that order rows by length read about each
    row's own length."""
    kernel = resolve_kernel(kernel)
    scale = q.shape[-1] ** -0.5
    lengths = lengths.astype(jnp.int32)
    page_table = page_table.astype(jnp.int32)
    if kernel == "jax":
        return _attend_jax(q, k_pages, v_pages, lengths, page_table, scale, row_group)
    scaled = (q.astype(jnp.float32) * scale).astype(q.dtype)
    if kernel == "pallas_gpu":
        return _attend_pallas_gpu(scaled, k_pages, v_pages, lengths, page_table, interpret)
    if kernel == "pallas_tpu":
        return _attend_pallas_tpu(scaled, k_pages, v_pages, lengths, page_table, interpret)
    return _attend_pallas_tpu_ragged(scaled, k_pages, v_pages, lengths, page_table, interpret)


def _attend_jax(q, k_pages, v_pages, lengths, page_table, scale, row_group):
    """Flash-decoding in pure JAX: a loop over blocks of page columns with an online softmax, so no [B, S] copy
    of the keys is ever made. Rows run in groups of ``row_group``, each group's loop only as far as its own
    longest row needs (a dynamic trip count: one compile for any lengths); with rows ordered by length, the
    reads follow each row's own length, not the batch's longest. Each step reads ``block`` pages (about 64
    tokens): on CPU a step of one 16-token page costs more in loop overhead than in arithmetic."""
    b, n, h = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    g = n // kv_heads
    block = max(1, _BLOCK_TOKENS // page_size)
    nb = page_table.shape[1]
    table = jnp.pad(page_table, ((0, 0), (0, -nb % block)))  # NULL_PAGE columns: read, then masked out
    qg = q.reshape(b, kv_heads, g, h)  # [B, K, G, H]
    pages = (lengths + page_size - 1) // page_size  # [B] pages each row reads

    def attend(rows: slice):
        q_rows, table_rows, length = qg[rows], table[rows], lengths[rows]
        r = q_rows.shape[0]

        def gather(pages_, ids):  # [K, P, page_size, H] at ids [R, block] -> [R, K, block * page_size, H]
            # Row-major, as XLA's gather yields it, with the dots batched over (R, K): batched over (K, R), XLA:CPU
            # fused a transpose into every gather (~7% more CPU per layer at page size 128, same outputs).
            x = jnp.moveaxis(pages_[:, ids], 0, 2)  # [R, block, K, page_size, H]
            if block > 1:
                x = jnp.swapaxes(x, 1, 2)
            return x.reshape(r, kv_heads, block * page_size, h)

        def body(j, carry):
            m, norm, acc = carry  # running max [R, K, G], normaliser [R, K, G], output [R, K, G, H]
            ids = jax.lax.dynamic_slice_in_dim(table_rows, j * block, block, axis=1)  # [R, block]
            keys = gather(k_pages, ids).astype(q.dtype)
            values = gather(v_pages, ids).astype(jnp.float32)
            s = jnp.einsum("RKGH,RKTH->RKGT", q_rows, keys, preferred_element_type=jnp.float32) * scale
            valid = (j * block * page_size + jnp.arange(block * page_size))[None, :] < length[:, None]  # [R, T]
            s = jnp.where(valid[:, None, None], s, _MASKED)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            alpha = jnp.exp(m - m_new)
            p = jnp.exp(s - m_new[..., None])
            acc = alpha[..., None] * acc + jnp.einsum("RKGT,RKTH->RKGH", p, values)
            return m_new, alpha * norm + jnp.sum(p, axis=-1), acc

        shape = (r, kv_heads, g)
        carry = (
            jnp.full(shape, _MASKED, jnp.float32),
            jnp.zeros(shape, jnp.float32),
            jnp.zeros((*shape, h), jnp.float32),
        )
        stop = (jnp.max(pages[rows]) + block - 1) // block
        _, norm, acc = jax.lax.fori_loop(0, stop, body, carry)
        return acc / norm[..., None]

    size = min(b, row_group) if row_group > 0 else b
    out = jnp.concatenate([attend(slice(lo, lo + size)) for lo in range(0, b, size)])
    return out.astype(q.dtype).reshape(b, n, h)


def _splits(pages: int, most: int) -> int:
    """The largest divisor of ``pages`` that is at most ``most`` (the kernels split the table evenly)."""
    return max(d for d in range(1, min(pages, most) + 1) if pages % d == 0)


def _gpu_paged_module():
    """jax 0.11 deprecates the Pallas Triton ops under ``jax.experimental.pallas.ops.gpu`` (this module warns on
    import; its kernel is the same code as in 0.10; the changelog points to tokamax "if available"). That one
    warning is silenced so it does not show in every GPU run's log; any other warning still shows."""
    deprecated = r"jax\.experimental\.pallas\.ops\.gpu\.paged_attention is deprecated"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", deprecated, DeprecationWarning)
        from jax.experimental.pallas.ops.gpu import paged_attention as gpu_paged
    return gpu_paged


def _attend_pallas_gpu(q, k_pages, v_pages, lengths, page_table, interpret):
    gpu_paged = _gpu_paged_module()
    nb = page_table.shape[1]
    k_splits = _splits(nb, 16)
    per_split = nb // k_splits
    return gpu_paged.paged_attention(
        q,
        k_pages,
        v_pages,
        page_table,
        lengths,
        k_splits=k_splits,
        pages_per_compute_block=_splits(per_split, 8),
        mask_value=_MASKED,
        interpret=interpret,
    )


def _attend_pallas_tpu(q, k_pages, v_pages, lengths, page_table, interpret):
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as tpu_paged

    def call():
        return tpu_paged(
            q,
            k_pages,
            v_pages,
            lengths,
            page_table,
            pages_per_compute_block=_splits(page_table.shape[1], 8),
            mask_value=_MASKED,
        )

    if not interpret:
        return call()
    with pltpu.force_tpu_interpret_mode():
        return call()


def ragged_arguments(q, k_pages, v_pages, lengths, page_table):
    """The positional arguments of ``ragged_paged_attention`` (and of its ``ref_ragged_paged_attention``) for
    one query token per sequence: keys and values interleaved per KV head in one [P, page_size, 2K, H] array."""
    b = q.shape[0]
    kv_heads, pages, page_size, h = k_pages.shape
    kv = jnp.stack([k_pages, v_pages], axis=1)  # [K, 2, P, page_size, H]
    kv = jnp.transpose(kv, (2, 3, 0, 1, 4)).reshape(pages, page_size, 2 * kv_heads, h)  # head k: 2k keys, 2k+1 values
    return q, kv, lengths, page_table, jnp.arange(b + 1, dtype=jnp.int32), jnp.array([b], jnp.int32)


def _attend_pallas_tpu_ragged(q, k_pages, v_pages, lengths, page_table, interpret):
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    def call():
        return ragged_paged_attention(
            *ragged_arguments(q, k_pages, v_pages, lengths, page_table),
            sm_scale=1.0,
            mask_value=_MASKED,
            num_kv_pages_per_block=_splits(page_table.shape[1], 8),
            num_queries_per_block=8,
        )

    if not interpret:
        return call()
    with pltpu.force_tpu_interpret_mode():
        return call()
