"""verl 0.4.0's loss weighting under ``use_dynamic_bsz``, for comparing curves with the JustRL paper.

With ``use_dynamic_bsz`` (JustRL: on, ``ppo_max_token_len_per_gpu`` = 32,768) verl's actor, on each
data-parallel rank and for each of its mini-batches of M sequences:

1. forms ``k = ceil(tokens / max_token_len)`` micro-batches (tokens = prompt + response tokens of the
   rank's mini-batch; k is the maximum over the ranks) by balancing the sequences' token counts over k
   parts with the largest-differencing (Karmarkar-Karp) heuristic (``rearrange_micro_batches``);
2. takes the token mean of the loss inside each micro-batch b and scales it by ``|b| / M``
   (``loss = policy_loss * len(data) / ppo_mini_batch_size``), summing the gradients of the micro-batches;
3. averages the ranks' gradients (FSDP's all-reduce).

So the objective is ``mean_rank sum_b (|b| / M) * tokenmean_b(loss)``, which is not the token mean of
the mini-batch (the exact mode, ``token-mean``): a token of a micro-batch full of short responses weighs
more than one among long responses. Here that weighting is expressed as one weight per sequence,
``w_i = |b| / (M * n_b * ranks)`` for a sequence i of micro-batch b with n_b response tokens, so that
the loss is ``sum_i w_i * sum_t loss_it`` and the weights of a mini-batch's tokens sum to 1.

Ranks: the mini-batch's sequences go to the ranks in contiguous, equal chunks (verl with
``balance_batch`` off; with it on, verl first reorders the whole batch, which only changes which
sequences share a rank).
"""

from __future__ import annotations

import heapq

import numpy as np


def largest_differencing(lengths: list[int] | np.ndarray, k: int) -> list[list[int]]:
    """Partition item indices into ``k`` non-empty parts of balanced total length (Karmarkar-Karp).

    Every item starts as a k-way partial partition (itself in one part, the rest empty); the two partial
    partitions of largest spread (largest minus smallest part sum) are merged, pairing the largest part
    of one with the smallest of the other, until one remains. Ties are broken as verl breaks them (parts
    compare by sum, then size, then their (index, length) items; partitions by spread, then largest part),
    so the micro-batches are verl's own. Parts come back sorted by index.
    """
    n = len(lengths)
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} sequences into {k} micro-batches")

    def part_key(items):  # items: [(index, length), ...] in insertion order
        return (sum(v for _, v in items), len(items), items)

    class Partial:
        def __init__(self, parts):
            self.parts = sorted(parts, key=part_key, reverse=True)
            self.spread = part_key(self.parts[0])[0] - part_key(self.parts[-1])[0]

        def __lt__(self, other):  # the heap pops the largest spread first, then the largest top part
            if self.spread != other.spread:
                return self.spread > other.spread
            return part_key(self.parts[0]) > part_key(other.parts[0])

    heap = []
    for length, i in sorted((int(v), i) for i, v in enumerate(lengths)):
        heapq.heappush(heap, Partial([[(i, length)]] + [[] for _ in range(k - 1)]))
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        heapq.heappush(heap, Partial([pa + pb for pa, pb in zip(a.parts, reversed(b.parts), strict=True)]))
    parts = [sorted(i for i, _ in items) for items in heap[0].parts]
    if any(not p for p in parts):
        raise ValueError(f"cannot split {n} sequences into {k} non-empty micro-batches")
    return parts


def micro_batches(lengths: list[int] | np.ndarray, max_token_len: int, num: int | None = None) -> list[list[int]]:
    """verl's ``rearrange_micro_batches``: ``num`` (default ceil(total / max_token_len)) balanced parts."""
    if max(lengths) > max_token_len:
        raise ValueError(f"a sequence of {max(lengths)} tokens exceeds train.micro_batch_tokens={max_token_len}")
    num = num or -(-int(np.sum(lengths)) // max_token_len)
    return largest_differencing(lengths, min(num, len(lengths)))


def sequence_weights(
    seq_lengths: np.ndarray, response_lengths: np.ndarray, mini_batch_size: int, ranks: int, max_token_len: int
) -> np.ndarray:
    """Per-sequence loss weights [N] of verl's dynamic-batch-size objective (see the module docstring).

    seq_lengths: prompt + response tokens (what verl balances); response_lengths: the loss tokens.
    Consecutive ``mini_batch_size`` sequences form a mini-batch, split over ``ranks`` in equal chunks.
    """
    n = len(seq_lengths)
    if n % mini_batch_size or mini_batch_size % ranks:
        raise ValueError(f"{n} sequences do not split into mini-batches of {mini_batch_size} over {ranks} ranks")
    per_rank = mini_batch_size // ranks
    weights = np.zeros(n, np.float64)
    for start in range(0, n, mini_batch_size):
        chunks = [np.arange(start + r * per_rank, start + (r + 1) * per_rank) for r in range(ranks)]
        num = max(-(-int(seq_lengths[c].sum()) // max_token_len) for c in chunks)  # all-reduce MAX
        for c in chunks:
            for part in micro_batches(seq_lengths[c], max_token_len, num):
                members = c[part]
                tokens = response_lengths[members].sum()
                if tokens:  # verl's masked mean of an empty micro-batch is 0
                    weights[members] = len(members) / (per_rank * tokens * ranks)
    return weights.astype(np.float32)
