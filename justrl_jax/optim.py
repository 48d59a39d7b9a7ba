"""The JustRL optimizer: torch-style global-norm clipping, then AdamW, with the warm-up learning rate.

verl 0.4.0 builds ``torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)``
over *all* parameters (no exclusion of biases or norms), clips with ``clip_grad_norm_(max_norm=1.0)``
and wraps it in ``LambdaLR(min(step / 10, 1))`` stepped once per *rollout* step. So:

* the learning rate is a function of the rollout step, not of the optimizer step: all mini-batch updates
  of rollout step k use ``lr * min(k / warmup_steps, 1)``, and step 0 runs at lr = 0 (Adam moments are
  still updated then, as in torch). :func:`make_optimizer` uses ``optax.inject_hyperparams`` so the
  train step can set the rate with :func:`set_learning_rate` from the rollout step it carries;
* weight decay is decoupled and scaled by the learning rate, ``p -= lr * wd * p``, which is what both
  torch AdamW and ``optax.adamw`` do;
* clipping scales by ``max_norm / (norm + 1e-6)`` when that is below 1, exactly as torch (optax's own
  ``clip_by_global_norm`` has no 1e-6).

Example::

    tx = make_optimizer(OptimConfig())
    opt_state = tx.init(params)
    opt_state = set_learning_rate(opt_state, learning_rate_at(OptimConfig(), rollout_step))
    updates, opt_state = tx.update(grads, opt_state, params)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

_TORCH_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then a constant rate. Defaults are JustRL's.

    lr: peak learning rate. warmup_steps: rollout steps of linear warm-up from 0 (0 = none).
    b1, b2, eps: Adam moments and denominator epsilon (torch defaults). weight_decay: decoupled decay
    (scaled by lr). grad_clip: global-norm clip, or None for no clipping.
    """

    lr: float = 1e-6
    warmup_steps: int = 10
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"optim.lr must be a finite number >= 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 or None, got {self.grad_clip}")


def learning_rate_at(cfg: OptimConfig, rollout_step) -> jnp.ndarray:
    """lr * min(step / warmup_steps, 1) as float32 (torch LambdaLR with verl's constant-with-warmup)."""
    step = jnp.asarray(rollout_step, jnp.float32)
    if cfg.warmup_steps == 0:
        return jnp.full_like(step, cfg.lr)
    return cfg.lr * jnp.minimum(step / cfg.warmup_steps, 1.0)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """Scale all gradients by min(1, max_norm / (global_norm + 1e-6)), as torch clip_grad_norm_."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + _TORCH_CLIP_EPS))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clip then AdamW, with ``learning_rate`` an injected hyperparameter (see :func:`set_learning_rate`)."""

    def build(learning_rate):
        adamw = optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
        if cfg.grad_clip is None:
            return adamw
        return optax.chain(clip_by_global_norm_torch(cfg.grad_clip), adamw)

    # The initial value is overwritten before every update; 0 makes a forgotten set_learning_rate harmless.
    return optax.inject_hyperparams(build)(learning_rate=0.0)


def set_learning_rate(opt_state: optax.InjectStatefulHyperparamsState, lr) -> optax.InjectStatefulHyperparamsState:
    """The optimizer state with its learning rate replaced (traceable; the state stays one pytree)."""
    if "learning_rate" not in getattr(opt_state, "hyperparams", {}):
        raise TypeError(f"expected the state of make_optimizer(...), got {type(opt_state).__name__}")
    old = opt_state.hyperparams["learning_rate"]
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(lr, old.dtype)
    return opt_state._replace(hyperparams=hyperparams)


def learning_rate_of(opt_state: optax.InjectStatefulHyperparamsState) -> jnp.ndarray:
    return opt_state.hyperparams["learning_rate"]
