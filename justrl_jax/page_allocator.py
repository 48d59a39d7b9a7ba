"""Host-side bookkeeping of KV-cache pages: one free-page pool per data shard and one page table per decode slot.

The device never allocates: before each decode call the scheduler asks for enough pages to cover the
tokens every live slot can reach in that call, and the allocator says which slot to preempt when the
pool is short (the newest admitted one, vLLM's policy). Page :data:`NULL_PAGE` is never handed out.

The pool is split over the data-parallel axis: shard ``d`` owns pages ``[d * pages, (d + 1) * pages)`` of the
global pool, and slots ``[d * slots / shards, (d + 1) * slots / shards)`` draw only from them. Page tables hold
*shard-local* ids (``0 .. pages - 1``, local page 0 being that shard's null page), so the attention of a slot,
run on its own shard's block of the pool, reads only pages that shard holds.
"""

from __future__ import annotations

import numpy as np

from justrl_jax.model.paged_kv_cache import NULL_PAGE, pages_for


class PageAllocator:
    """``shards`` pools of ``pages`` pages each (local page 0 reserved in each), ``slots`` page tables of up to
    ``max_pages`` entries; slot ``s`` belongs to shard ``s // (slots // shards)``."""

    def __init__(self, pages: int, slots: int, max_pages: int, page_size: int, shards: int = 1):
        if pages < max_pages + 1:
            raise ValueError(f"a page pool of {pages} pages cannot hold one row of {max_pages} pages (+1 reserved)")
        if shards < 1 or slots % shards:
            raise ValueError(f"{slots} decode slots do not split evenly over {shards} data shards")
        self.page_size = page_size
        self.shards = shards
        self.slots_per_shard = slots // shards
        self._free = [list(range(pages - 1, NULL_PAGE, -1)) for _ in range(shards)]  # pop() hands out low ids first
        self.table = np.full((slots, max_pages), NULL_PAGE, np.int32)
        self.held = np.zeros(slots, np.int32)  # pages each slot holds
        self.total = pages - 1  # pages a shard can hand out

    def shard_of(self, slot: int) -> int:
        return int(slot) // self.slots_per_shard

    def free_pages(self, shard: int) -> int:
        return len(self._free[shard])

    def in_use_of(self, shard: int) -> int:
        return self.total - len(self._free[shard])

    @property
    def in_use(self) -> int:
        """Pages held over every shard."""
        return sum(self.in_use_of(d) for d in range(self.shards))

    def ensure(self, slot: int, tokens: int) -> bool:
        """Gives ``slot`` pages of its own shard for ``tokens`` cached tokens; False (nothing taken) if that
        shard's pool is short."""
        need = pages_for(tokens, self.page_size) - int(self.held[slot])
        if need <= 0:
            return True
        free = self._free[self.shard_of(slot)]
        if need > len(free):
            return False
        start = int(self.held[slot])
        for j in range(need):
            self.table[slot, start + j] = free.pop()
        self.held[slot] += need
        return True

    def release(self, slot: int) -> None:
        """Returns every page of ``slot`` to its shard's pool."""
        held = int(self.held[slot])
        self._free[self.shard_of(slot)].extend(int(p) for p in self.table[slot, :held][::-1])
        self.table[slot, :] = NULL_PAGE
        self.held[slot] = 0
