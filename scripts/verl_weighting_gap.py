"""How far verl-dynamic-bsz's weighting moves the gradient from the exact token mean (relative L2).

JustRL-like lengths, scaled down so that it runs on a CPU: responses of up to 15,360 tokens (15% cut at
the limit, the rest log-normal around 4,000), prompts of up to 1,024, ``ppo_max_token_len_per_gpu`` 32,768
and 16 sequences per rank per mini-batch (512 over 32 GPUs), all lengths divided by ``--scale``. On a small
random model, on-policy (old log-probs = current), the gradient of one mini-batch's loss is taken under
both aggregations; the script prints ``|g_verl - g_exact| / |g_exact|`` per seed.

Usage::

    python scripts/verl_weighting_gap.py --seeds 3 --scale 32
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from justrl_jax.advantages import group_advantages
from justrl_jax.losses import LossAggregation, LossConfig, fused_policy_loss
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.train_batch import build_train_batch
from justrl_jax.train_step import TrainConfig, init_train_state, make_compute_logps
from justrl_jax.verl_dynamic_bsz import sequence_weights


def _lengths(rng, n, scale):
    resp = np.minimum(rng.lognormal(np.log(4000), 0.6, n), 15360)
    resp[rng.random(n) < 0.15] = 15360
    prompt = rng.integers(100, 1024, n)
    return np.maximum(1, (prompt / scale).astype(int)), np.maximum(1, (resp / scale).astype(int))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=32)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    per_rank, group = 16, 8
    n = per_rank * args.ranks
    cfg = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    )
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, TrainConfig().optim)
    max_tokens = 32768 // args.scale
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        p_len, r_len = _lengths(rng, n, args.scale)
        p, t = int(p_len.max()), int(r_len.max())
        prompt_ids = rng.integers(1, cfg.vocab_size, (n, p)).astype(np.int32)
        prompt_mask = np.arange(p)[None] >= (p - p_len)[:, None]
        completion_ids = rng.integers(1, cfg.vocab_size, (n, t)).astype(np.int32)
        completion_mask = np.arange(t)[None] < r_len[:, None]
        adv = np.asarray(group_advantages(jnp.asarray(rng.integers(0, 2, n), jnp.float32), group))
        w = sequence_weights(p_len + r_len, r_len, n, args.ranks, max_tokens)
        batch = build_train_batch(prompt_ids, prompt_mask, completion_ids, completion_mask, adv, 1, 0)
        batch = jax.tree.map(jnp.asarray, batch.replace(token_weights=w))
        logps = make_compute_logps(graphdef, TrainConfig(mini_batch_size=n, micro_batch_size=n), None)(state, batch)
        batch = batch.replace(old_logps=logps.logps)

        def grad(agg, batch=batch):
            def loss_fn(params):
                m = nnx.merge(graphdef, params)
                hidden, _ = m(batch.tokens, batch.positions, batch.attn_mask)
                total, stats = fused_policy_loss(
                    hidden, m.unembed(), batch.tokens, batch.old_logps, batch.advantages, batch.loss_mask,
                    LossConfig(agg=agg), 64, token_weights=batch.token_weights,
                )  # fmt: skip
                return total / stats.count

            return jax.grad(loss_fn)(state.params)

        exact, verl = grad(LossAggregation.TOKEN_MEAN), grad(LossAggregation.VERL_DYNAMIC_BSZ)
        diff = optax.tree.norm(jax.tree.map(jnp.subtract, verl, exact)) / optax.tree.norm(exact)
        print(
            f"seed {seed}: {n} responses over {args.ranks} ranks, response tokens mean {r_len.mean():.0f} "
            f"max {r_len.max()} (x{args.scale}), micro-batch budget {max_tokens}: relative L2 {float(diff):.3f}"
        )


if __name__ == "__main__":
    main()
