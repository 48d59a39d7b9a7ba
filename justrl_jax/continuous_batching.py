"""Continuous batching: a fixed set of decode slots over a paged KV cache, refilled as rows end.

:meth:`ContinuousBatcher.run` takes every row of a generate call (prompts x n, each with its own row key)
and streams them through ``slots`` decode slots. On a mesh the slots and the page pool are split over the
data-parallel axis: each data shard owns ``slots / dp`` slots and its own pool of ``pages`` pages, which only
its devices hold (:mod:`justrl_jax.page_pool`); everything below is per shard.

1. **Admit.** Free slots take the next pending rows (lowest row id first), each in the shard with the fewest
   rows among those whose pool holds its prompt plus one call's worth of tokens. Their prompts are prefilled
   together: left-padded to a multiple of ``prompt_bucket`` and the admitted count per shard rounded up to a
   power of two, so there is one compile per (rows, width) bucket. Prefill samples each row's first token.
2. **Reserve.** Every live slot gets the pages it can fill in the next call (``steps_per_call`` tokens).
   When its shard's pool is short, that shard's newest live row is preempted: its pages go back, it is
   re-queued and later recomputed from its prompt (vLLM's recompute policy). Each shard's pool always holds
   one full row, so its oldest row can always finish: no deadlock.
3. **Decode** ``steps_per_call`` steps in one device call (a ``while_loop`` that also stops when every slot
   is done). Each shard's rows go longest first, so the pure-JAX attention reads each row's pages up to (about)
   its own length; one compile whatever the lengths. When few slots are live (the last rows of a run) only they
   go in, padded to the smallest of ``slots``, ``slots/2``, ... ``slots/8`` that holds the fullest shard's (at
   most four compiles). Rows that end return their pages and slot on the host, then back to 1.

Randomness is the static sampler's: row ``r``'s step-``t`` uniform is ``fold_in(row_key[r], t)``, so a row's
tokens do not depend on its slot, on its neighbours, or on being preempted and recomputed.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from justrl_jax.global_arrays import to_global, to_host
from justrl_jax.model.paged_decode import decode_step
from justrl_jax.model.paged_kv_cache import NULL_PAGE, PagedKVCache, pages_for
from justrl_jax.model.qwen2 import Qwen2, positions_from_mask
from justrl_jax.page_allocator import PageAllocator
from justrl_jax.page_pool import POOL_AXES, new_pool, per_shard, write_prompts_per_shard
from justrl_jax.sharding import logical_spec


@dataclasses.dataclass
class BatchingStats:
    """What one :meth:`ContinuousBatcher.run` did (host-side figures)."""

    slots: int = 0
    pages: int = 0  # pages of one data shard's pool (what one device holds), its reserved page included
    page_size: int = 0
    shards: int = 1  # data shards, each with its own slots and pool
    preemptions: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    prefill_tokens: int = 0  # real prompt tokens prefilled (recomputations included)
    decode_tokens: int = 0  # tokens sampled by decode calls (the first token of a row comes from prefill)
    decode_slot_steps: int = 0  # rows x steps the decode calls ran (a call runs on the bucket holding its live slots)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_pages_in_use: int = 0  # of the fullest shard

    @property
    def slot_occupancy(self) -> float:
        """Fraction of decode slot-steps that sampled a live row's token."""
        return self.decode_tokens / self.decode_slot_steps if self.decode_slot_steps else 0.0

    def as_metrics(self) -> dict[str, float]:
        # Throughputs are timings, so they sit under perf/ with the others: what a resumed run must
        # repeat exactly (rollout/*) stays apart from what depends on the machine.
        return {
            "rollout/slot_occupancy": self.slot_occupancy,
            "rollout/preemptions": float(self.preemptions),
            "perf/prefill_tokens_per_s": self.prefill_tokens / max(self.prefill_seconds, 1e-9),
            "perf/decode_tokens_per_s": self.decode_tokens / max(self.decode_seconds, 1e-9),
            "rollout/peak_kv_pages": float(self.peak_pages_in_use),
        }


def _pow2_at_least(x: int) -> int:  # prefill row buckets
    return 1 << max(0, (x - 1).bit_length())


def _decode_rows(live: int, slots: int, dp: int) -> int:
    """Rows of a decode call with ``live`` live slots: ``slots`` halved while half still holds them, down to
    ``slots / 8`` (at most four compiled sizes), a multiple of the data-parallel size."""
    rows, floor = slots, max(slots // 8, dp, 1)
    while rows // 2 >= max(live, floor) and (rows // 2) % dp == 0:
        rows //= 2
    return rows


class ContinuousBatcher:
    """Owns the compiled prefill/decode programs for one graphdef; :meth:`run` is one generate call."""

    def __init__(self, graphdef: nnx.GraphDef, config, mesh: Mesh | None, eos_ids: tuple[int, ...], pad_id: int):
        self.graphdef = graphdef
        self.config = config
        self.mesh = mesh
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.prefill_fn = jax.jit(self._prefill, donate_argnames=("cache",))
        self.decode_fn = jax.jit(self._decode, donate_argnames=("cache",), static_argnames=("steps",))
        self.stats = BatchingStats()

    # --- the compiled programs -------------------------------------------------------------------

    def _shard(self, x, *axes):
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, logical_spec(axes, self.mesh, x.shape)))

    def _shard_cache(self, cache: PagedKVCache) -> PagedKVCache:
        # Each data shard holds its own slots' pages (split over the data axis); KV heads split over tensor.
        return cache.replace(
            k=tuple(self._shard(x, *POOL_AXES) for x in cache.k), v=tuple(self._shard(x, *POOL_AXES) for x in cache.v)
        )

    def _sample(self, logits, keys, step):
        uniforms = jax.vmap(lambda k, t: jax.random.uniform(jax.random.fold_in(k, t)))(
            jax.random.wrap_key_data(keys), step
        )
        return self.config.strategy.sample(self._shard(logits, "batch", None), uniforms)

    def _prefill(self, params, cache: PagedKVCache, ids, mask, keys, table):
        """ids/mask [B, W] left-padded, keys [B, 2], table [B, nb] -> (cache, first tokens [B], logprobs [B])."""
        model: Qwen2 = nnx.merge(self.graphdef, params)
        b, w = ids.shape
        mask = mask.astype(bool)
        dense = model.init_cache(b, w, self.config.cache_dtype)
        hidden, dense = model(ids, positions_from_mask(mask), mask, dense)
        logits = model.logits(hidden[:, -1:])[:, 0]  # left padding: the last column is every row's last token
        tokens, logprobs = self._sample(logits, keys, jnp.zeros((b,), jnp.int32))
        cache = write_prompts_per_shard(self.mesh, cache, dense, jnp.sum(mask, axis=1, dtype=jnp.int32), table)
        return self._shard_cache(cache), tokens, logprobs

    def _decode(self, params, cache: PagedKVCache, last, step, prompt_len, keys, live, table, *, steps: int):
        """Up to ``steps`` tokens per live slot. [S] arrays in, -> (cache, step, live, tokens [S, steps],
        logprobs [S, steps]); a slot stops at an EOS id or ``max_new_tokens``."""
        model: Qwen2 = nnx.merge(self.graphdef, params)
        s_count = last.shape[0]
        eos = jnp.asarray(self.eos_ids, jnp.int32)
        cap = self.config.max_new_tokens

        def cond(carry):
            j, *_, live, _, _ = carry
            return (j < steps) & jnp.any(live)

        def body(carry):
            j, cache, last, step, live, out_tok, out_lp = carry
            positions = jnp.where(live, prompt_len + step - 1, 0)
            hidden, cache = decode_step(
                model,
                last,
                positions,
                cache,
                table,
                kernel=self.config.attention_kernel,
                per_shard=per_shard(self.mesh),
            )
            tok, lp = self._sample(model.logits(hidden)[:, 0], keys, step)
            hit = live & jnp.isin(tok, eos) if self.eos_ids else jnp.zeros_like(live)
            out_tok = out_tok.at[:, j].set(jnp.where(live, tok, self.pad_id))
            out_lp = out_lp.at[:, j].set(jnp.where(live, lp, 0.0))
            step = step + live.astype(jnp.int32)
            last = jnp.where(live, tok, last)
            live = live & ~hit & (step < cap)
            return j + 1, self._shard_cache(cache), last, step, live, out_tok, out_lp

        init = (
            jnp.zeros((), jnp.int32),
            cache,
            last,
            step,
            live,
            jnp.full((s_count, steps), self.pad_id, jnp.int32),
            jnp.zeros((s_count, steps), jnp.float32),
        )
        _, cache, _, step, live, out_tok, out_lp = jax.lax.while_loop(cond, body, init)
        return cache, step, live, out_tok, out_lp

    # --- the host side ---------------------------------------------------------------------------

    def _put(self, x: np.ndarray) -> jax.Array:
        return to_global(x, self.mesh)

    def run(
        self,
        params,
        ids,
        mask,
        row_keys,
        *,
        slots: int,
        pages: int,
        page_size: int,
        dp: int,
        cache_dtype,
        on_row_done: Callable[[int, np.ndarray, bool, int], None] | None = None,
    ):
        """ids/mask [R, P] left-padded rows (already repeated n times), row_keys [R, 2] ->
        (tokens [R, T], logprobs [R, T], lengths [R], eos [R]) as numpy.

        ``on_row_done(row, tokens, eos, decoding)`` is called on the host once per row, when it ends (never for
        a preempted partial): its sampled tokens (EOS included), whether it hit an EOS, and how many other rows
        are still in decode slots. It runs between device calls, so the host work it starts (verification)
        overlaps the decoding of the rows still live."""
        cfg = self.config
        t_cap = cfg.max_new_tokens
        rows = ids.shape[0]
        plen = mask.sum(axis=1).astype(np.int32)
        max_pages = pages_for(ids.shape[1] + t_cap - 1, page_size)  # the planner's row_pages
        alloc = PageAllocator(pages, slots, max_pages, page_size, shards=dp)
        cache = self._new_cache(params, pages, page_size, cache_dtype, dp)
        stats = self.stats = BatchingStats(slots=slots, pages=pages, page_size=page_size, shards=dp)
        chunk = cfg.steps_per_call

        out_tok = np.full((rows, t_cap), self.pad_id, np.int32)
        out_lp = np.zeros((rows, t_cap), np.float32)
        length = np.zeros(rows, np.int32)
        eos_hit = np.zeros(rows, bool)
        eos_set = np.asarray(self.eos_ids, np.int32)

        row_of = np.full(slots, -1, np.int64)  # the row each slot decodes (-1: free)
        admitted_at = np.zeros(slots, np.int64)  # admission counter, to find the newest row
        last = np.zeros(slots, np.int32)
        step = np.zeros(slots, np.int32)
        slot_plen = np.zeros(slots, np.int32)
        slot_keys = np.zeros((slots, 2), np.uint32)
        live = np.zeros(slots, bool)
        pending = list(range(rows))
        heapq.heapify(pending)
        counter = 0

        def finish(slot: int) -> None:
            row = row_of[slot]
            n = int(step[slot])
            length[row] = n
            eos_hit[row] = n > 0 and bool(np.isin(out_tok[row, n - 1], eos_set))
            alloc.release(slot)
            row_of[slot] = -1
            live[slot] = False
            if on_row_done is not None:
                on_row_done(int(row), out_tok[row, :n].copy(), bool(eos_hit[row]), int(live.sum()))

        def preempt(slot: int) -> None:
            row = row_of[slot]
            out_tok[row] = self.pad_id
            out_lp[row] = 0.0
            alloc.release(slot)
            row_of[slot] = -1
            live[slot] = False
            heapq.heappush(pending, int(row))
            stats.preemptions += 1

        shard_slots = np.arange(slots).reshape(dp, slots // dp)  # shard d's slots
        while pending or live.any():
            # 1. Admit pending rows (lowest id first) into free slots, each to the shard with the fewest rows among
            # those whose pool holds its prompt and one call. A shard with no row holds a full one: no deadlock.
            admit: list[tuple[int, int]] = []
            while pending:
                row = pending[0]
                need = pages_for(int(plen[row]) + min(chunk, t_cap - 1), page_size)
                room = [
                    (int((row_of[own] >= 0).sum()), -alloc.free_pages(d), d)
                    for d, own in enumerate(shard_slots)
                    if (row_of[own] < 0).any() and alloc.free_pages(d) >= need
                ]
                if not room:
                    break
                shard = min(room)[2]
                slot = int(shard_slots[shard][np.argmax(row_of[shard_slots[shard]] < 0)])  # its lowest free slot
                heapq.heappop(pending)
                alloc.ensure(slot, int(plen[row]))
                row_of[slot], admitted_at[slot] = row, counter
                counter += 1
                admit.append((int(slot), row))
            if admit:
                cache, first_tok, first_lp = self._prefill_rows(params, cache, admit, ids, plen, row_keys, alloc, dp)
                for (slot, row), tok, lp in zip(admit, first_tok, first_lp, strict=False):
                    out_tok[row, 0], out_lp[row, 0] = tok, lp
                    last[slot], step[slot], slot_plen[slot] = tok, 1, plen[row]
                    slot_keys[slot] = row_keys[row]
                    live[slot] = not (bool(np.isin(tok, eos_set)) or t_cap == 1)
                for slot, _ in admit:  # after every admitted row is marked, so on_row_done's count is right
                    if not live[slot]:
                        finish(slot)
                stats.prefill_tokens += int(sum(plen[row] for _, row in admit))
            if not live.any():
                continue

            # 2. Pages for the next call, oldest row first; a shard short of pages preempts its own newest row.
            for slot in sorted(np.flatnonzero(live), key=lambda s: admitted_at[s]):
                if not live[slot]:
                    continue
                need = min(int(slot_plen[slot] + step[slot]) - 1 + chunk, int(slot_plen[slot]) + t_cap - 1)
                own = shard_slots[alloc.shard_of(slot)]
                while not alloc.ensure(int(slot), need):
                    victim = max(own[live[own]], key=lambda s: admitted_at[s])
                    preempt(int(victim))
                    if victim == slot:
                        break
            if not live.any():
                continue
            stats.peak_pages_in_use = max(stats.peak_pages_in_use, *(alloc.in_use_of(d) for d in range(dp)))

            # 3. One decode call. Slots are only host bookkeeping (the KV lives in the pool, the rest is uploaded
            # per call), so each shard's rows go in longest first (the attention's row groups then read about each
            # row's own length), in that shard's block of the call's rows, and only the first ``rows / dp`` of them:
            # when few slots are live (the tail of a call) the call runs on the smallest bucket that holds the
            # fullest shard's live slots, not on every slot.
            rows_in = _decode_rows(dp * max(int(live[own].sum()) for own in shard_slots), slots, dp)
            longest_first = (
                own[np.argsort(-np.where(live[own], alloc.held[own], -1), kind="stable")] for own in shard_slots
            )
            order = np.concatenate([own[: rows_in // dp] for own in longest_first])
            start = time.perf_counter()
            cache, new_step, new_live, tok, lp = self.decode_fn(
                params,
                cache,
                self._put(last[order]),
                self._put(step[order]),
                self._put(slot_plen[order]),
                self._put(slot_keys[order]),
                self._put(live[order]),
                self._put(alloc.table[order]),
                steps=chunk,
            )
            got = to_host((new_step, new_live, tok, lp))
            new_step, new_live = step.copy(), np.zeros(slots, bool)
            tok, lp = np.zeros((slots, chunk), np.int32), np.zeros((slots, chunk), np.float32)
            new_step[order], new_live[order], tok[order], lp[order] = got
            stats.decode_seconds += time.perf_counter() - start
            emitted = new_step - step
            stats.decode_calls += 1
            stats.decode_tokens += int(emitted.sum())
            stats.decode_slot_steps += rows_in * int(emitted.max())
            for slot in np.flatnonzero(live):
                row, k, e = row_of[slot], int(step[slot]), int(emitted[slot])
                out_tok[row, k : k + e] = tok[slot, :e]
                out_lp[row, k : k + e] = lp[slot, :e]
                if e:
                    last[slot] = tok[slot, e - 1]
            step[:] = np.where(live, new_step, step)
            ended = np.flatnonzero(live & ~new_live)
            live[ended] = False  # before any on_row_done: it counts only the rows still decoding
            for slot in ended:
                finish(int(slot))
        return out_tok, out_lp, length, eos_hit

    def _new_cache(self, params, pages: int, page_size: int, cache_dtype, dp: int) -> PagedKVCache:
        """``pages`` per data shard: ``dp * pages`` in all, each shard's block on its own devices."""
        c = nnx.merge(self.graphdef, params).config
        return new_pool(self.mesh, c.num_layers, c.num_kv_heads, dp * pages, page_size, c.head_dim, cache_dtype)

    def warm_up(self, params, width: int, *, slots: int, pages: int, page_size: int, dp: int, cache_dtype) -> int:
        """Compiles every program a :meth:`run` of this plan (prompts left-padded to ``width``) can call: each
        prefill bucket (rows x prompt width) and each decode bucket, on idle rows that touch only the null page,
        so that a timed run compiles nothing. Returns the number of programs called."""
        cfg = self.config
        max_pages = pages_for(width + cfg.max_new_tokens - 1, page_size)
        cache = self._new_cache(params, pages, page_size, cache_dtype, dp)
        calls = 0
        per_shard = slots // dp
        for b in sorted({dp * min(_pow2_at_least(n), per_shard) for n in range(1, per_shard + 1)}):
            for w in range(cfg.prompt_bucket, width + 1, cfg.prompt_bucket):
                mask = np.zeros((b, w), bool)
                mask[:, -1] = True
                table = np.full((b, pages_for(w, page_size)), NULL_PAGE, np.int32)
                put = (np.full((b, w), self.pad_id, np.int32), mask, np.zeros((b, 2), np.uint32), table)
                cache, *_ = self.prefill_fn(params, cache, *map(self._put, put))
                calls += 1
        for rows in sorted({_decode_rows(dp * live, slots, dp) for live in range(1, per_shard + 1)}):
            zeros = np.zeros(rows, np.int32)
            put = (zeros, zeros, zeros + 1, np.zeros((rows, 2), np.uint32), np.zeros(rows, bool))
            table = np.full((rows, max_pages), NULL_PAGE, np.int32)
            cache, *_ = self.decode_fn(params, cache, *map(self._put, put), self._put(table), steps=cfg.steps_per_call)
            calls += 1
        jax.block_until_ready(cache)
        return calls

    def _prefill_rows(self, params, cache, admit, ids, plen, row_keys, alloc, dp):
        """Prefills the admitted (slot, row) pairs -> (cache, first tokens [n], first logprobs [n]). Each shard's
        rows go in its own block of the call's rows (its pages are its own), padded to the fullest shard's count."""
        cfg = self.config
        page_size = alloc.page_size
        shard = [alloc.shard_of(slot) for slot, _ in admit]
        b_shard = min(_pow2_at_least(int(np.bincount(shard, minlength=dp).max())), alloc.slots_per_shard)
        b = dp * b_shard
        at = np.zeros(len(admit), np.int64)  # each admitted row's index in the call
        for j, d in enumerate(shard):
            at[j] = d * b_shard + shard[:j].count(d)
        width = -(-int(max(plen[row] for _, row in admit)) // cfg.prompt_bucket) * cfg.prompt_bucket
        g_ids = np.full((b, width), self.pad_id, np.int32)
        g_mask = np.zeros((b, width), bool)
        g_mask[:, -1] = True  # filler rows: one token, written to the null page
        g_keys = np.zeros((b, 2), np.uint32)
        nb = pages_for(width, page_size)
        g_table = np.full((b, nb), NULL_PAGE, np.int32)
        for j, (slot, row) in zip(at, admit, strict=True):
            p = int(plen[row])
            g_ids[j, width - p :] = ids[row, ids.shape[1] - p :]
            g_mask[j, width - p :] = True
            g_keys[j] = row_keys[row]
            g_table[j, : min(nb, alloc.table.shape[1])] = alloc.table[slot, :nb]
        start = time.perf_counter()
        cache, tok, lp = self.prefill_fn(
            params, cache, self._put(g_ids), self._put(g_mask), self._put(g_keys), self._put(g_table)
        )
        tok, lp = (x[at] for x in to_host((tok, lp)))  # every process holds every row
        self.stats.prefill_seconds += time.perf_counter() - start
        self.stats.prefill_calls += 1
        return cache, tok, lp


@dataclasses.dataclass(frozen=True)
class PagePlan:
    """The slots and page pool of one generate call, decided before anything is allocated."""

    slots: int  # decode slots over every data shard, a multiple of the data-parallel size
    pages: int  # pool size of one data shard (what each device holds), its reserved null page included
    page_size: int
    row_pages: int  # pages one row needs at its longest (prompt + max_new_tokens - 1 cached tokens)
    bytes_per_device: int


def plan_pages(
    model,
    config,
    rows: int,
    max_prompt_len: int,
    *,
    data_parallel: int = 1,
    tensor: int = 1,
    itemsize: int = 4,
) -> PagePlan:
    """Slots and pages for ``rows`` rows of prompts up to ``max_prompt_len`` tokens. Each of the
    ``data_parallel`` shards has its own pool and its own slots (``slots / data_parallel``), and a device holds
    only its shard's pool. With a budget (bytes per device), a shard's pool is what fits it and the slots default
    to the rows the pools hold at full length (more slots, via ``max_concurrent_rows``, may preempt); without
    one, every slot can hold a full row. Raises ValueError when the budget cannot hold one row."""
    kv_heads = model.num_kv_heads // tensor if model.num_kv_heads % tensor == 0 else model.num_kv_heads
    ps = config.page_size
    page_bytes = PagedKVCache.page_bytes(model.num_layers, kv_heads, ps, model.head_dim, itemsize)
    row_pages = pages_for(max_prompt_len + config.max_new_tokens - 1, ps)
    wanted = config.max_concurrent_rows
    budget = config.kv_cache_budget_bytes
    if budget is not None:
        pages = budget // page_bytes
        if pages < row_pages + 1:
            raise ValueError(
                f"sampler.kv_cache_budget_bytes={budget} cannot hold one sequence per device: "
                f"{max_prompt_len} prompt + {config.max_new_tokens} new tokens need {row_pages + 1} pages of "
                f"{page_bytes} bytes. Lower max_new_tokens or the prompt length, use a smaller cache_dtype, shard "
                f"KV heads over more tensor devices, or raise the budget"
            )
        slots = wanted or data_parallel * max(1, (pages - 1) // row_pages)
    else:
        slots = wanted or rows
    slots = min(slots, -(-rows // data_parallel) * data_parallel)
    slots = -(-slots // data_parallel) * data_parallel
    if budget is None:
        pages = slots // data_parallel * row_pages + 1
    return PagePlan(slots=slots, pages=pages, page_size=ps, row_pages=row_pages, bytes_per_device=pages * page_bytes)
