"""Group-normalised (GRPO) advantages, as verl 0.4.0 ``compute_grpo_outcome_advantage`` computes them.

For each prompt group of G sampled responses with scalar rewards r_1..r_G:

    A_i = (r_i - mean(r)) / (std(r) + eps),   std unbiased (divides by G - 1), eps = 1e-6.

A group whose rewards are all equal gets exactly 0 (it stays in the batch: its tokens still count in
the token-mean denominator, which is what JustRL does; there is no dynamic sampling). A group of one
response gets mean 0 and std 1, as verl does, i.e. A = r / (1 + eps).

The rewards arrive group-contiguous: prompt i's G samples sit at rows i*G .. i*G + G - 1, which is
how the sampler repeats each prompt.

Example::

    adv = group_advantages(jnp.array([1., -1., -1., -1.,  1., 1., 1., 1.]), group_size=4)
    # -> [1.5, -0.5, -0.5, -0.5,  0., 0., 0., 0.]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GRPO_EPS = 1e-6


def group_advantages(rewards, group_size: int, eps: float = GRPO_EPS):
    """rewards [N] (group-contiguous, N = prompts * group_size) -> float32 advantages [N].

    Host rewards (numpy, lists) give host numpy advantages, with no trip to a device and back; JAX
    arrays stay JAX (on device, or traced under jit).
    """
    xp = jnp if isinstance(rewards, jax.Array) else np
    if group_size < 1:
        raise ValueError(f"advantages.group_size must be >= 1, got {group_size}")
    if eps < 0:
        raise ValueError(f"advantages.eps must be >= 0, got {eps}")
    rewards = xp.asarray(rewards, xp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be a 1-D array [N], got shape {rewards.shape}")
    n = rewards.shape[0]
    if n % group_size:
        raise ValueError(f"rewards has {n} entries, not a multiple of group_size={group_size}")
    r = rewards.reshape(n // group_size, group_size)  # [P, G]
    if group_size == 1:
        return (r / (1.0 + eps)).reshape(n)  # verl: mean 0, std 1 for a singleton group
    mean = xp.mean(r, axis=1, keepdims=True)
    std = xp.std(r, axis=1, keepdims=True, ddof=1)
    # Exactly zero for constant groups, even when the float mean is off by an ulp from the rewards
    # (division by eps = 1e-6 would otherwise blow that rounding error up).
    constant = xp.all(r == r[:, :1], axis=1, keepdims=True)
    adv = xp.where(constant, 0.0, (r - mean) / (std + eps)).astype(xp.float32)
    return adv.reshape(n)
