"""From sampled completions to the trainer's batch: concatenation, masks, length buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from justrl_jax.global_arrays import to_host
from justrl_jax.losses import LossAggregation
from justrl_jax.packing import pack_train_batch
from justrl_jax.train_step import TrainBatch
from justrl_jax.verl_dynamic_bsz import sequence_weights


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_train_batch(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    completion_ids: np.ndarray,
    completion_mask: np.ndarray,
    advantages: np.ndarray,
    length_bucket: int,
    pad_id: int,
) -> TrainBatch:
    """Rows ``[left-padded prompt | completion | pad]`` [N, P + T'] as numpy, where T' is the longest
    completion rounded up to ``length_bucket`` (so few distinct shapes ever compile).

    The loss mask covers completion tokens only, the EOS token included (verl's response mask).
    """
    n, p = prompt_ids.shape
    longest = int(completion_mask.sum(axis=1).max(initial=1))
    t = min(completion_ids.shape[1], round_up(max(longest, 1), length_bucket))
    completion_ids = completion_ids[:, :t]
    completion_mask = completion_mask[:, :t].astype(bool)
    tokens = np.concatenate([prompt_ids, np.where(completion_mask, completion_ids, pad_id)], axis=1)
    attn_mask = np.concatenate([prompt_mask.astype(bool), completion_mask], axis=1)
    positions = np.maximum(np.cumsum(attn_mask, axis=1) - 1, 0).astype(np.int32)
    loss_mask = np.concatenate([np.zeros((n, p), bool), completion_mask], axis=1)
    return TrainBatch(
        tokens=tokens.astype(np.int32),
        positions=positions,
        attn_mask=attn_mask,
        loss_mask=loss_mask.astype(np.float32),
        advantages=advantages.astype(np.float32),
    )


@jax.jit
def logprob_gap(sampler_logps: jax.Array, batch_logps: jax.Array, loss_mask: jax.Array):
    """max |sampler log-prob - trainer log-prob| over the response tokens, on device: the first alarm of a
    sampler/trainer mismatch (it should be ~1e-6 at temperature 1 in fp32; 0 when there is no token).

    All three are laid out like the batch ([N, P + T'] padded or [rows, W] packed): the sampler's are
    the ``old_logps`` that :func:`rollout_train_batch` put there.
    """
    gap = jnp.where(loss_mask > 0, jnp.abs(sampler_logps - batch_logps), 0.0)
    return jnp.max(gap, initial=0.0)


def rollout_train_batch(
    rollout, advantages: np.ndarray, cfg, *, length_bucket: int, dp: int, pad_id: int
) -> TrainBatch:
    """The trainer's host batch of a rollout step (``cfg`` is the run's ``train`` section).

    Packed rows (:mod:`justrl_jax.packing`) when ``train.max_tokens_per_row`` is set, else padded rows
    (:func:`build_train_batch`); with ``loss.agg: verl-dynamic-bsz`` the per-sequence weights of verl's
    micro-batches. When the rollout carries the sampler's log-probs they ride in ``old_logps``, laid
    out like the batch, until the trainer recomputes them (compare with :func:`logprob_gap`).
    """
    lengths = rollout.lengths
    prompt_lengths = rollout.prompt_mask.sum(axis=1)
    weights = None
    if cfg.loss.agg is LossAggregation.VERL_DYNAMIC_BSZ:
        weights = sequence_weights(prompt_lengths + lengths, lengths, cfg.mini_batch_size, dp, cfg.micro_batch_tokens)
    sampler = None if rollout.logprobs is None else np.asarray(to_host(rollout.logprobs), np.float32)
    if cfg.max_tokens_per_row:  # packed rows, micro-batches by token budget
        return pack_train_batch(
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.completion_ids,
            rollout.completion_mask,
            advantages,
            mini_batch_size=cfg.mini_batch_size,
            max_tokens_per_row=cfg.max_tokens_per_row,
            rows_per_micro=cfg.rows_per_micro(dp),
            pad_id=pad_id,
            sequence_weights=weights,
            completion_logps=sampler,
        )
    batch = build_train_batch(
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
        advantages,
        length_bucket,
        pad_id,
    ).replace(token_weights=weights)
    if sampler is not None:
        n, p = rollout.prompt_ids.shape
        t = batch.tokens.shape[1] - p
        laid = np.zeros(batch.tokens.shape, np.float32)
        laid[:, p:] = sampler[:, :t]
        batch = batch.replace(old_logps=laid)
    return batch
