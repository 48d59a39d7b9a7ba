"""From sampled completions to the trainer's batch: concatenation, masks, length buckets."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from justrl_jax.train_step import TrainBatch


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


@functools.partial(jax.jit, static_argnames=("prompt_width",))
def logprob_gap(sampler_logps: jax.Array, batch_logps: jax.Array, loss_mask: jax.Array, prompt_width: int):
    """max |sampler log-prob - trainer log-prob| over the response tokens, on device: the first alarm of a
    sampler/trainer mismatch (it should be ~1e-6 at temperature 1 in fp32; 0 when there is no token).

    sampler_logps [N, T] (``Rollout.logprobs``); batch_logps, loss_mask [N, P + T'] laid out as
    :func:`build_train_batch` lays out the batch (P = ``prompt_width``, T' <= T).
    """
    trainer = batch_logps[:, prompt_width:]
    sampler = sampler_logps[:, : trainer.shape[1]]
    gap = jnp.where(loss_mask[:, prompt_width:] > 0, jnp.abs(sampler - trainer), 0.0)
    return jnp.max(gap, initial=0.0)
