"""Packed training batches: each response with its prompt, several to a row, as segments.

verl's "remove padding" in fixed shapes. A rollout step's responses are cut into mini-batches of
consecutive responses (whole prompt groups, as the padded batch); each mini-batch's sequences
(prompt tokens + response tokens, no padding between them) are packed first-fit-decreasing into rows of
``train.max_tokens_per_row`` tokens. Inside a row, sequence i has segment id i + 1 (0 is the padding at
the row's end) and positions restart at 0, so attention (:mod:`justrl_jax.model.attention`) never
crosses sequences and the model sees exactly what it sees in the padded layout.

Every mini-batch gets the same number of rows R, rounded up so that (a) micro-batches of
``rows_per_micro`` rows (the token budget, over the data-parallel devices) divide it and (b) few distinct
R ever compile (the count of micro-batches is rounded up to 2 significant bits: 1..4, 5, 6, 7, 8, 10,
12, 14, 16, 20, ...; at most 25% empty rows). ``target_index`` lists, per row, the positions of the
response tokens (the only positions whose log-probs, entropies and losses are ever computed; no prompt
position is unembedded), padded to a bucketed width with the out-of-range index ``max_tokens_per_row``.

Advantages become per-token ([rows, W], the response's advantage at its tokens), since one row holds
responses of different prompts.
"""

from __future__ import annotations

import numpy as np

from justrl_jax.train_step import TrainBatch

_TARGET_GRANULE = 128  # target_index widths are multiples of this (bucketed like the row counts)


def bucket(n: int) -> int:
    """``n`` rounded up to two significant bits (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ...)."""
    if n <= 4:
        return max(n, 1)
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


def pack_sequences(lengths: list[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: the indices of the sequences in each row (longest first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(
                f"a sequence of {n} tokens (prompt + response) does not fit train.max_tokens_per_row={capacity}"
            )
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def place_sequences(
    lengths: list[int] | np.ndarray, mini_batch_size: int, capacity: int, rows_per_micro: int
) -> tuple[int, np.ndarray]:
    """Where each sequence goes: (rows per mini-batch R, placement [N, 3] of (row, first column, segment id)).

    Sequences ``[j * mini_batch_size, (j + 1) * mini_batch_size)`` go to rows ``[j * R, (j + 1) * R)``.
    """
    n = len(lengths)
    k = n // mini_batch_size
    layouts = [pack_sequences(lengths[j * mini_batch_size : (j + 1) * mini_batch_size], capacity) for j in range(k)]
    rows = rows_per_micro * bucket(-(-max(len(rows) for rows in layouts) // rows_per_micro))
    placement = np.zeros((n, 3), np.int64)
    for j, layout in enumerate(layouts):
        for r, members in enumerate(layout):
            at = 0
            for seg, local in enumerate(members, start=1):
                i = j * mini_batch_size + local
                placement[i] = (j * rows + r, at, seg)
                at += int(lengths[i])
    return rows, placement


def pack_train_batch(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    completion_ids: np.ndarray,
    completion_mask: np.ndarray,
    advantages: np.ndarray,
    *,
    mini_batch_size: int,
    max_tokens_per_row: int,
    rows_per_micro: int,
    pad_id: int,
    sequence_weights: np.ndarray | None = None,
    completion_logps: np.ndarray | None = None,
) -> TrainBatch:
    """The packed :class:`TrainBatch` of a rollout step, as numpy: [k * R, W] rows, k mini-batches.

    prompt_ids/prompt_mask [N, P] left-padded; completion_ids/completion_mask [N, T] right-padded;
    advantages [N]. Responses ``[j * mini_batch_size, (j + 1) * mini_batch_size)`` form mini-batch j.
    sequence_weights [N]: verl-dynamic-bsz's loss weights (:mod:`justrl_jax.verl_dynamic_bsz`), put on
    each sequence's tokens. completion_logps [N, T] (the sampler's log-probs of the response tokens) are
    laid out like the rows as ``old_logps`` (0 elsewhere), for a comparison with the trainer's.
    """
    n = prompt_ids.shape[0]
    if n % mini_batch_size:
        raise ValueError(f"{n} responses are not a multiple of train.mini_batch_size ({mini_batch_size})")
    w = max_tokens_per_row
    prompt_mask, completion_mask = prompt_mask.astype(bool), completion_mask.astype(bool)
    if not prompt_mask.any(axis=1).all():
        raise ValueError("a prompt has no token: nothing would predict its response's first token")
    seqs = [
        (prompt_ids[i][prompt_mask[i]], completion_ids[i][completion_mask[i]]) for i in range(n)
    ]  # (prompt tokens, response tokens), padding removed
    rows, placement = place_sequences([len(p) + len(c) for p, c in seqs], mini_batch_size, w, rows_per_micro)
    k = n // mini_batch_size

    tokens = np.full((k * rows, w), pad_id, np.int32)
    positions = np.zeros((k * rows, w), np.int32)
    segments = np.zeros((k * rows, w), np.int32)
    loss_mask = np.zeros((k * rows, w), np.float32)
    token_adv = np.zeros((k * rows, w), np.float32)
    token_weights = None if sequence_weights is None else np.zeros((k * rows, w), np.float32)
    old_logps = None if completion_logps is None else np.zeros((k * rows, w), np.float32)
    for i, ((prompt, response), (row, at, seg)) in enumerate(zip(seqs, placement, strict=True)):
        span = slice(at, at + len(prompt) + len(response))
        tokens[row, span] = np.concatenate([prompt, response])
        positions[row, span] = np.arange(span.stop - span.start)
        segments[row, span] = seg
        loss_mask[row, at + len(prompt) : span.stop] = 1.0
        token_adv[row, span] = advantages[i]
        if token_weights is not None:
            token_weights[row, span] = sequence_weights[i]
        if old_logps is not None:
            old_logps[row, at + len(prompt) : span.stop] = completion_logps[i][completion_mask[i]]
    targets = loss_mask.sum(axis=1).astype(int)
    width = min(w, _TARGET_GRANULE * bucket(-(-int(targets.max(initial=1)) // _TARGET_GRANULE)))
    target_index = np.full((k * rows, width), w, np.int32)  # w: out of range, i.e. no target
    for row in range(k * rows):
        where = np.flatnonzero(loss_mask[row])
        target_index[row, : len(where)] = where
    return TrainBatch(
        tokens=tokens,
        positions=positions,
        attn_mask=segments,
        loss_mask=loss_mask,
        advantages=token_adv,
        target_index=target_index,
        mini_batches=k,
        token_weights=token_weights,
        old_logps=old_logps,
    )
