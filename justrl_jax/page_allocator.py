"""Host-side bookkeeping of KV-cache pages: a free-page pool and one page table per decode slot.

The device never allocates: before each decode call the scheduler asks for enough pages to cover the
tokens every live slot can reach in that call, and the allocator says which slot to preempt when the
pool is short (the newest admitted one, vLLM's policy). Page :data:`NULL_PAGE` is never handed out.
"""

from __future__ import annotations

import numpy as np

from justrl_jax.model.paged_kv_cache import NULL_PAGE, pages_for


class PageAllocator:
    """``pages`` pages in all (page 0 reserved), ``slots`` page tables of up to ``max_pages`` entries."""

    def __init__(self, pages: int, slots: int, max_pages: int, page_size: int):
        if pages < max_pages + 1:
            raise ValueError(f"a page pool of {pages} pages cannot hold one row of {max_pages} pages (+1 reserved)")
        self.page_size = page_size
        self.free = list(range(pages - 1, NULL_PAGE, -1))  # pop() hands out low ids first
        self.table = np.full((slots, max_pages), NULL_PAGE, np.int32)
        self.held = np.zeros(slots, np.int32)  # pages each slot holds
        self.total = pages - 1

    @property
    def in_use(self) -> int:
        return self.total - len(self.free)

    def ensure(self, slot: int, tokens: int) -> bool:
        """Gives ``slot`` pages for ``tokens`` cached tokens; False (nothing taken) if the pool is short."""
        need = pages_for(tokens, self.page_size) - int(self.held[slot])
        if need <= 0:
            return True
        if need > len(self.free):
            return False
        start = int(self.held[slot])
        for j in range(need):
            self.table[slot, start + j] = self.free.pop()
        self.held[slot] += need
        return True

    def release(self, slot: int) -> None:
        """Returns every page of ``slot`` to the pool."""
        held = int(self.held[slot])
        self.free.extend(int(p) for p in self.table[slot, :held][::-1])
        self.table[slot, :] = NULL_PAGE
        self.held[slot] = 0
