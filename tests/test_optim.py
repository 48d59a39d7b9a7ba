"""AdamW + global-norm clip + warm-up against torch.optim.AdamW, clip_grad_norm_ and LambdaLR (verl 0.4.0)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from justrl_jax.optim import (
    OptimConfig,
    learning_rate_at,
    learning_rate_of,
    make_optimizer,
    set_learning_rate,
)


def test_lr_schedule_matches_torch_lambda_lr():
    cfg = OptimConfig(lr=1e-6, warmup_steps=10)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(k / 10, 1.0))  # verl constant-with-warmup
    for step in range(15):
        np.testing.assert_allclose(float(learning_rate_at(cfg, step)), sched.get_last_lr()[0], rtol=1e-6)
        opt.step()
        sched.step()
    assert float(learning_rate_at(cfg, 0)) == 0.0  # rollout step 0 runs at lr 0
    assert float(learning_rate_at(OptimConfig(lr=3e-4, warmup_steps=0), 0)) == np.float32(3e-4)


@pytest.mark.parametrize("grad_scale", [10.0, 0.01])  # clipping active / inactive
def test_adamw_and_clip_match_torch(grad_scale):
    cfg = OptimConfig(lr=1e-3, warmup_steps=3)  # large lr so the updates are far above rounding
    rng = np.random.default_rng(0)
    shapes = {"a": (4, 3), "b": (5,), "c": (2, 2, 2)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads_per_step = [
        {k: (rng.normal(size=s) * grad_scale).astype(np.float32) for k, s in shapes.items()} for _ in range(5)
    ]

    t_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    t_opt = torch.optim.AdamW(
        list(t_params.values()), lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda k: min(k / 3, 1.0))

    tx = make_optimizer(cfg)
    j_params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(j_params)
    update = jax.jit(tx.update)
    for step, grads in enumerate(grads_per_step):
        for k, p in t_params.items():
            p.grad = torch.tensor(grads[k])
        t_norm = torch.nn.utils.clip_grad_norm_(list(t_params.values()), max_norm=cfg.grad_clip)
        t_opt.step()
        sched.step()

        state = set_learning_rate(state, learning_rate_at(cfg, step))
        j_grads = {k: jnp.asarray(v) for k, v in grads.items()}
        np.testing.assert_allclose(float(optax.tree.norm(j_grads)), float(t_norm), rtol=1e-6)
        updates, state = update(j_grads, state, j_params)
        j_params = optax.apply_updates(j_params, updates)
        for k in shapes:
            want = t_params[k].detach().numpy()
            np.testing.assert_allclose(np.asarray(j_params[k]), want, atol=1e-6, rtol=0)
    moved = max(np.abs(np.asarray(j_params[k]) - params[k]).max() for k in shapes)
    assert moved > 1e-3  # the comparison is not vacuous: parameters really moved
    assert float(learning_rate_of(state)) == np.float32(cfg.lr)


def test_decoupled_weight_decay_is_scaled_by_lr():
    # With zero gradients Adam's step is 0, so only the decay acts: p <- p * (1 - lr * wd), as torch.
    cfg = OptimConfig(lr=0.01, weight_decay=0.1, warmup_steps=0)
    tx = make_optimizer(cfg)
    p = {"w": jnp.ones(3)}
    state = set_learning_rate(tx.init(p), cfg.lr)
    updates, _ = tx.update({"w": jnp.zeros(3)}, state, p)
    np.testing.assert_allclose(np.asarray(optax.apply_updates(p, updates)["w"]), 1 - 0.01 * 0.1, rtol=1e-7)


def test_set_learning_rate_rejects_other_states():
    with pytest.raises(TypeError, match="make_optimizer"):
        set_learning_rate(optax.adamw(1e-3).init({"w": jnp.ones(2)}), 1e-3)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(lr=-1.0), "optim.lr"),
        (dict(lr=float("nan")), "optim.lr"),
        (dict(warmup_steps=-1), "optim.warmup_steps"),
        (dict(b1=1.0), "optim.b1"),
        (dict(b2=-0.1), "optim.b2"),
        (dict(eps=0.0), "optim.eps"),
        (dict(weight_decay=-0.1), "optim.weight_decay"),
        (dict(grad_clip=0.0), "optim.grad_clip"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        OptimConfig(**kwargs)
