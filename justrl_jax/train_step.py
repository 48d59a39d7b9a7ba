"""One JustRL update: a pure ``(TrainState, TrainBatch) -> (TrainState, TrainMetrics)``, jitted once.

A rollout step of N responses (JustRL: 2048) is one call of the jitted train step:

1. the caller first recomputes the old log-probs with the pre-update parameters over the whole batch
   (:func:`make_compute_logps`, verl's ``compute_log_prob``) and puts them in ``batch.old_logps``;
2. the batch is cut into ``N / mini_batch_size`` mini-batches of consecutive responses (JustRL: 4 x 512,
   so a mini-batch holds whole prompt groups, as in verl), applied one after another (``lax.scan``),
   one optimizer step each, all at the learning rate of this rollout step;
3. each mini-batch is cut into micro-batches; their gradients of the loss *sums* are accumulated and
   divided once by the mini-batch's count, so the update is the exact token-mean over the mini-batch
   whatever the micro-batch size (verl's per-micro-batch means are only approximately that);
4. an update whose gradient norm is not finite is skipped (parameters and optimizer state unchanged,
   as verl's ``_optimizer_step``) and counted in ``TrainState.skipped_updates``.

The loss goes through :func:`justrl_jax.losses.fused_policy_loss`: the unembedding, log-softmax and
clipped loss run chunk by chunk over the sequence with their gradient formed in the forward pass, so
no ``[tokens, vocab]`` logits are kept and none are recomputed. With ``batch.completion_start`` set to
the prompt width, the prompt positions are not unembedded at all.

Sharding: the batch is split over the ``fsdp`` mesh axis; parameters and optimizer moments keep their
logical layout (see :mod:`justrl_jax.model.construct`); the state is donated.

Example::

    graphdef, state = init_train_state(model, cfg.optim, mesh)
    compute_logps = make_compute_logps(graphdef, cfg, mesh, state_sharding(state))
    train_step = make_train_step(graphdef, cfg, mesh, state_sharding(state))
    batch = TrainBatch(tokens, positions, attn_mask, loss_mask, advantages)
    batch = batch.replace(old_logps=compute_logps(state, batch).logps)
    state, metrics = train_step(state, batch)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from justrl_jax.losses import LossAggregation, LossConfig, LossStats, fused_policy_loss, sequence_logps, target_logps
from justrl_jax.model.construct import state_shardings
from justrl_jax.optim import OptimConfig, learning_rate_at, make_optimizer, set_learning_rate
from justrl_jax.sharding import activation_mesh, data_parallel_size, mesh_axis_of, replicated

_BATCH_AXIS = mesh_axis_of("batch")  # the mesh axis the rules split rows over


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one rollout step's batch becomes parameter updates.

    mini_batch_size: responses per optimizer step (JustRL: 512, i.e. 64 prompts x 8).
    micro_batch_size: responses per forward/backward pass inside a mini-batch (global, over all devices;
        a multiple of the fsdp mesh size). Only memory depends on it, not the result. Unused when packing.
    micro_batch_tokens: optional cap on padded tokens per device per micro-batch (verl:
        ppo_max_token_len_per_gpu = 32768); the micro-batch is then the largest divisor of the mini-batch
        within both limits that splits evenly over the data-parallel devices. With packing, the token
        budget alone forms the micro-batches: micro_batch_tokens // max_tokens_per_row rows per device.
    max_tokens_per_row: pack responses with their prompts into rows of this many tokens
        (:mod:`justrl_jax.packing`); None trains on the padded layout (one response per row).
    logp_chunk_size: sequence positions per chunk of fp32 logits: one [micro-batch / device, chunk, V]
        fp32 block is alive at a time (memory vs. per-chunk overhead).
    remat: rematerialise each decoder layer in the backward pass (JustRL: gradient checkpointing on).
    """

    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mini_batch_size: int = 512
    micro_batch_size: int = 32
    micro_batch_tokens: int | None = None
    max_tokens_per_row: int | None = None
    logp_chunk_size: int = 512
    remat: bool = True

    def __post_init__(self):
        if not isinstance(self.loss, LossConfig):
            raise ValueError(f"train.loss must be a LossConfig, got {type(self.loss).__name__}")
        if not isinstance(self.optim, OptimConfig):
            raise ValueError(f"train.optim must be an OptimConfig, got {type(self.optim).__name__}")
        if self.mini_batch_size < 1:
            raise ValueError(f"train.mini_batch_size must be >= 1, got {self.mini_batch_size}")
        if self.micro_batch_size < 1:
            raise ValueError(f"train.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.micro_batch_size ({self.micro_batch_size}) must divide "
                f"train.mini_batch_size ({self.mini_batch_size})"
            )
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ValueError(f"train.micro_batch_tokens must be >= 1 or None, got {self.micro_batch_tokens}")
        if self.logp_chunk_size < 1:
            raise ValueError(f"train.logp_chunk_size must be >= 1, got {self.logp_chunk_size}")
        if self.loss.agg is LossAggregation.VERL_DYNAMIC_BSZ and self.micro_batch_tokens is None:
            raise ValueError("train.loss.agg=verl-dynamic-bsz forms verl's micro-batches: set train.micro_batch_tokens")
        if self.max_tokens_per_row is not None:
            if self.max_tokens_per_row < 1:
                raise ValueError(f"train.max_tokens_per_row must be >= 1 or None, got {self.max_tokens_per_row}")
            if self.micro_batch_tokens is not None and self.micro_batch_tokens < self.max_tokens_per_row:
                raise ValueError(
                    f"train.micro_batch_tokens ({self.micro_batch_tokens}) must hold at least one packed row "
                    f"of train.max_tokens_per_row ({self.max_tokens_per_row})"
                )

    def rows_per_micro(self, dp: int) -> int:
        """Packed rows per micro-batch over ``dp`` data-parallel devices: the token budget per device."""
        if self.max_tokens_per_row is None:
            raise ValueError("train.max_tokens_per_row is not set: the batch is not packed")
        return dp * ((self.micro_batch_tokens or self.max_tokens_per_row) // self.max_tokens_per_row)

    def micro_rows(self, rows: int, seq_len: int, dp: int, packed: bool) -> int:
        """Rows per micro-batch: packed rows by the token budget alone, padded rows by :meth:`micro_batch_for`."""
        if not (packed and self.max_tokens_per_row):
            return self.micro_batch_for(rows, seq_len, dp)
        m = self.rows_per_micro(dp)
        if rows % m:
            raise ValueError(f"{rows} packed rows do not split into micro-batches of {m} rows (pack with this config)")
        return m

    def micro_batch_for(self, batch_size: int, seq_len: int, dp: int) -> int:
        """The micro-batch size for splitting ``batch_size`` sequences of ``seq_len`` over ``dp`` shards:
        the largest divisor of ``batch_size`` that is a multiple of ``dp`` and within both limits."""
        limit = self.micro_batch_size
        if self.micro_batch_tokens is not None:
            limit = min(limit, max(1, self.micro_batch_tokens // seq_len) * dp)
        for m in range(min(limit, batch_size), 0, -1):
            if batch_size % m == 0 and m % dp == 0:
                return m
        raise ValueError(
            f"no micro-batch size <= {limit} divides {batch_size} sequences and is a multiple of the "
            f"{dp} data-parallel shards; raise train.micro_batch_size / train.micro_batch_tokens"
        )


@flax.struct.dataclass
class TrainBatch:
    """One rollout step's responses, N rows of S tokens (prompt left-padded, then the completion).

    tokens, positions [N,S] int32; attn_mask [N,S] (valid tokens, prompt and completion);
    loss_mask [N,S]: 1 on the completion tokens that are targets, aligned to *the token itself* (the
    logit that predicts tokens[n, s] sits at position s - 1; see :mod:`justrl_jax.losses`);
    advantages [N] float32; old_logps [N,S] float32, token-aligned like loss_mask (from
    :func:`make_compute_logps`; None until then); ref_logps [N,S], only for a KL term.
    completion_start (static): the first column that can hold a target, i.e. the prompt width P. The
    prompt's log-probs are then neither computed nor trained on (they are 0); 0 scores every token.

    Packed rows (:mod:`justrl_jax.packing`): attn_mask holds segment ids (0 = padding, one id per
    sequence of the row), positions restart per sequence, advantages are per token [N,S],
    target_index [N,C] lists each row's target positions (padded with S; only they are unembedded),
    and mini_batches (static) says how many mini-batches the rows form (0: N / train.mini_batch_size).
    token_weights [N] or [N,S]: the per-sequence weights of ``loss.agg=verl-dynamic-bsz`` (from
    :func:`justrl_jax.verl_dynamic_bsz.sequence_weights`); None otherwise.
    """

    tokens: jax.Array
    positions: jax.Array
    attn_mask: jax.Array
    loss_mask: jax.Array
    advantages: jax.Array
    old_logps: jax.Array | None = None
    ref_logps: jax.Array | None = None
    completion_start: int = flax.struct.field(pytree_node=False, default=0)
    target_index: jax.Array | None = None
    mini_batches: int = flax.struct.field(pytree_node=False, default=0)
    token_weights: jax.Array | None = None


@flax.struct.dataclass
class TrainState:
    """Everything an update changes; a plain pytree (Orbax saves and restores it as it is).

    params: nnx.State of the model's nnx.Param (fp32 master weights); opt_state: the optax state of
    :func:`justrl_jax.optim.make_optimizer`; step: rollout steps done (int32, drives the lr warm-up);
    skipped_updates: optimizer updates skipped for a non-finite gradient norm, cumulative (int32).
    """

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    skipped_updates: jax.Array


@flax.struct.dataclass
class TrainMetrics:
    """Scalars of one rollout step. Token-level quantities are means over all valid response tokens of
    the step (measured during the update, i.e. for the current policy of each mini-batch)."""

    loss: jax.Array  # mean over mini-batches of the optimised objective
    pg_loss: jax.Array  # token mean of the clipped policy term alone
    clipfrac_high: jax.Array  # fraction of tokens with A > 0 and ratio > 1 + clip_high
    clipfrac_low: jax.Array  # fraction of tokens with A < 0 and ratio < 1 - clip_low
    clipfrac_dual: jax.Array  # fraction of tokens with A < 0 capped by the dual clip
    ratio_mean: jax.Array
    ratio_max: jax.Array
    approx_kl: jax.Array  # mean of old_logp - logp (verl actor/ppo_kl)
    entropy: jax.Array
    ref_kl: jax.Array  # k3 KL to the reference policy (0 without ref_logps)
    grad_norm: jax.Array  # mean over mini-batches of the pre-clip global norm
    grad_norm_max: jax.Array
    learning_rate: jax.Array
    response_tokens: jax.Array  # valid loss tokens in the step
    total_tokens: jax.Array  # valid tokens (prompt + completion) in the step
    updates: jax.Array  # optimizer updates applied in this step
    skipped_updates: jax.Array  # optimizer updates skipped in this step (non-finite gradient norm)


@flax.struct.dataclass
class LogpResult:
    """logps [N,S]: token-aligned log-probs (0 at position 0); entropy: token mean over loss_mask tokens;
    ref_logps [N,S]: the same under the reference policy (None without a KL term)."""

    logps: jax.Array
    entropy: jax.Array
    tokens: jax.Array
    ref_logps: jax.Array | None = None


# --- state ---------------------------------------------------------------------------------------


def init_train_state(
    model: nnx.Module, optim_cfg: OptimConfig, mesh: Mesh | None = None
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graphdef and a fresh :class:`TrainState` (step 0).

    On a mesh, parameters are placed by their logical axes and the optimizer moments are created
    directly with the same layout.
    """
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(optim_cfg)

    def init(params):
        # A real copy: the train step donates the state, and must not consume the model's own arrays.
        params = jax.tree.map(jnp.copy, params)
        return TrainState(
            params=params,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            skipped_updates=jnp.zeros((), jnp.int32),
        )

    if mesh is None:
        return graphdef, jax.jit(init)(params)
    param_sharding = state_shardings(params, mesh)
    params = jax.device_put(params, param_sharding)
    sharding = train_state_sharding(jax.eval_shape(init, params), param_sharding, optim_cfg, mesh)
    return graphdef, jax.jit(init, out_shardings=sharding)(params)


def train_state_sharding(
    abstract: TrainState, param_sharding: nnx.State, optim_cfg: OptimConfig, mesh: Mesh
) -> TrainState:
    """NamedShardings for a TrainState: moments like their parameters, scalars replicated."""
    rep = replicated(mesh)
    opt = optax.tree_map_params(
        make_optimizer(optim_cfg),
        lambda _, s: s,
        abstract.opt_state,
        param_sharding,
        transform_non_params=lambda _: rep,
    )
    return TrainState(params=param_sharding, opt_state=opt, step=rep, skipped_updates=rep)


def state_sharding(state: TrainState) -> TrainState:
    """The shardings a placed TrainState already has (what the jitted steps are compiled for)."""
    return jax.tree.map(lambda x: x.sharding, state)


# --- helpers -------------------------------------------------------------------------------------


def _constrain(x, mesh: Mesh | None, spec: PartitionSpec):
    return x if mesh is None else jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _split_micro(tree, m: int, mesh: Mesh | None):
    """[B, ...] -> [B // m, m, ...] with micro-batch j = rows {i * (B // m) + j}. Strided, so each
    device's contiguous shard of rows splits into its own share of every micro-batch (no data moves);
    the order of micro-batches does not change the summed gradient."""

    def one(x):
        b = x.shape[0]
        x = x.reshape(m, b // m, *x.shape[1:]).swapaxes(0, 1)
        return _constrain(x, mesh, PartitionSpec(None, _BATCH_AXIS))

    return jax.tree.map(one, tree)


def _merge_micro(x, mesh: Mesh | None):
    """Inverse of :func:`_split_micro` for one array [J, m, ...] -> [J * m, ...]."""
    j, m = x.shape[:2]
    x = x.swapaxes(0, 1).reshape(j * m, *x.shape[2:])
    return _constrain(x, mesh, PartitionSpec(_BATCH_AXIS))


def _forward(graphdef, params, cfg: TrainConfig, mesh: Mesh | None, x: TrainBatch):
    """The policy's final hidden states of ``x`` and its [D, V] unembedding, as every scoring pass needs them."""
    model = nnx.merge(graphdef, params, copy=True)  # fresh Variables owned by this trace (scan, remat)
    model.remat = cfg.remat  # per-layer rematerialisation is a flag of the model; the config decides
    with activation_mesh(mesh):  # anchors the hidden states to the batch layout (see constrain_rows)
        hidden, _ = model(x.tokens, x.positions, x.attn_mask)
    return hidden, model.unembed()


def _check_batch(batch: TrainBatch, cfg: TrainConfig, need_old: bool) -> tuple[int, int]:
    if batch.tokens.ndim != 2:
        raise ValueError(f"batch.tokens must be [N, S], got shape {batch.tokens.shape}")
    n, s = batch.tokens.shape
    for name in ("positions", "attn_mask", "loss_mask", "old_logps", "ref_logps"):
        x = getattr(batch, name)
        if x is not None and x.shape != (n, s):
            raise ValueError(f"batch.{name} has shape {x.shape}, expected {(n, s)} like batch.tokens")
    if batch.advantages.shape not in ((n,), (n, s)):
        raise ValueError(f"batch.advantages has shape {batch.advantages.shape}, expected {(n,)} or {(n, s)}")
    if batch.token_weights is not None and batch.token_weights.shape not in ((n,), (n, s)):
        raise ValueError(f"batch.token_weights has shape {batch.token_weights.shape}, expected {(n,)} or {(n, s)}")
    if batch.target_index is not None and (batch.target_index.ndim != 2 or batch.target_index.shape[0] != n):
        raise ValueError(f"batch.target_index has shape {batch.target_index.shape}, expected ({n}, C)")
    if need_old and batch.old_logps is None:
        raise ValueError("batch.old_logps is None: recompute them with make_compute_logps first")
    if need_old and cfg.loss.kl_coef and batch.ref_logps is None:
        raise ValueError("loss.kl_coef > 0 but batch.ref_logps is None")
    return n, s


# --- the jitted functions ------------------------------------------------------------------------


def make_compute_logps(
    graphdef: nnx.GraphDef, cfg: TrainConfig, mesh: Mesh | None, sharding: TrainState | None = None
) -> Callable[..., LogpResult]:
    """Jitted ``(state, batch, ref_params=None) -> LogpResult``: token log-probs of ``batch.tokens`` under
    ``state.params`` (no gradient), micro-batched like the update. ``batch.old_logps`` is ignored.

    With a KL term (``cfg.loss.kl_coef > 0``) it needs ``ref_params``, the frozen reference policy's
    parameters (laid out like ``state.params``), and scores the batch under them in the same pass.
    """
    dp = data_parallel_size(mesh) if mesh is not None else 1
    with_ref = cfg.loss.kl_coef > 0

    def scored(params, x: TrainBatch):
        hidden, unembed = _forward(graphdef, params, cfg, mesh, x)
        if x.target_index is not None:  # packed rows: only the response positions are unembedded
            return target_logps(hidden, unembed, x.tokens, x.target_index, cfg.logp_chunk_size)
        return sequence_logps(hidden, unembed, x.tokens, cfg.logp_chunk_size, start=x.completion_start)

    def compute(state: TrainState, batch: TrainBatch, ref_params=None) -> LogpResult:
        n, s = _check_batch(batch, cfg, need_old=False)
        if with_ref and ref_params is None:
            raise ValueError("loss.kl_coef > 0: compute_logps needs the reference policy's ref_params")
        m = cfg.micro_rows(n, s, dp, packed=batch.target_index is not None)
        micro = _split_micro(batch.replace(old_logps=None, ref_logps=None), m, mesh)

        def body(acc, x: TrainBatch):
            logps, ent = scored(state.params, x)
            ref = scored(ref_params, x)[0] if with_ref else None
            mask = x.loss_mask.astype(jnp.float32)
            return (acc[0] + jnp.sum(ent * mask), acc[1] + jnp.sum(mask)), (logps, ref)

        zero = jnp.zeros((), jnp.float32)
        (ent_sum, tokens), (logps, ref) = jax.lax.scan(body, (zero, zero), micro)
        return LogpResult(
            logps=_merge_micro(logps, mesh),
            entropy=ent_sum / jnp.maximum(tokens, 1.0),
            tokens=tokens,
            ref_logps=None if ref is None else _merge_micro(ref, mesh),
        )

    if mesh is None:
        jitted = jax.jit(compute)
    else:
        if sharding is None:
            raise ValueError("make_compute_logps on a mesh needs the state's sharding (state_sharding(state))")
        data = NamedSharding(mesh, PartitionSpec(_BATCH_AXIS))
        rep = replicated(mesh)
        out = LogpResult(logps=data, entropy=rep, tokens=rep, ref_logps=data if with_ref else None)
        ref = sharding.params if with_ref else None
        jitted = jax.jit(compute, in_shardings=(sharding, data, ref), out_shardings=out)
    return lambda state, batch, ref_params=None: jitted(state, batch, ref_params)


def make_train_step(
    graphdef: nnx.GraphDef, cfg: TrainConfig, mesh: Mesh | None, sharding: TrainState | None = None
) -> Callable[[TrainState, TrainBatch], tuple[TrainState, TrainMetrics]]:
    """The jitted, state-donating ``train_step(state, batch) -> (state, metrics)`` of one rollout step.

    ``sharding`` is the TrainState of NamedShardings the state lives in (``state_sharding(state)``);
    it is required on a mesh and fixes the input and output layout, so the step compiles once.
    """
    tx = make_optimizer(cfg.optim)
    dp = data_parallel_size(mesh) if mesh is not None else 1

    def loss_fn(params, x: TrainBatch):
        hidden, unembed = _forward(graphdef, params, cfg, mesh, x)
        return fused_policy_loss(
            hidden,
            unembed,
            x.tokens,
            x.old_logps,
            x.advantages,
            x.loss_mask,
            cfg.loss,
            cfg.logp_chunk_size,
            ref_logps=x.ref_logps,
            start=x.completion_start,
            target_index=x.target_index,
            segments=None if x.target_index is None else x.attn_mask.astype(jnp.int32),
            token_weights=x.token_weights,
        )

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def constrain_like_params(tree):
        return tree if mesh is None else jax.lax.with_sharding_constraint(tree, sharding.params)

    def mini_batch_update(carry, mb: TrainBatch):
        params, opt_state = carry
        m = cfg.micro_rows(mb.tokens.shape[0], mb.tokens.shape[1], dp, packed=mb.target_index is not None)

        def micro_step(acc, x: TrainBatch):
            grad_sum, stats = acc
            grads, micro_stats = grad_fn(params, x)
            grad_sum = constrain_like_params(jax.tree.map(jnp.add, grad_sum, grads))
            return (grad_sum, stats.combine(micro_stats)), None

        zeros = constrain_like_params(jax.tree.map(jnp.zeros_like, params))
        (grad_sum, stats), _ = jax.lax.scan(micro_step, (zeros, LossStats.zeros()), _split_micro(mb, m, mesh))
        # Gradient of the exact mini-batch objective: (sum of micro-batch loss sums) / (total count).
        denom = jnp.maximum(stats.count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # A non-finite norm leaves parameters and moments (and Adam's step count) untouched.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        return (keep(new_params, params), keep(new_opt_state, opt_state)), (stats, grad_norm, finite)

    def train_step(state: TrainState, batch: TrainBatch) -> tuple[TrainState, TrainMetrics]:
        n, s = _check_batch(batch, cfg, need_old=True)
        if batch.mini_batches:
            k = batch.mini_batches
            if n % k:
                raise ValueError(f"batch of {n} packed rows does not split into its {k} mini-batches")
        elif n % cfg.mini_batch_size:
            raise ValueError(
                f"batch of {n} responses is not a multiple of train.mini_batch_size ({cfg.mini_batch_size})"
            )
        else:
            k = n // cfg.mini_batch_size
        lr = learning_rate_at(cfg.optim, state.step)
        opt_state = set_learning_rate(state.opt_state, lr)
        # Consecutive responses form a mini-batch (whole prompt groups), sharded over fsdp inside it.
        minis = jax.tree.map(
            lambda x: _constrain(x.reshape(k, n // k, *x.shape[1:]), mesh, PartitionSpec(None, _BATCH_AXIS)),
            batch,
        )
        (params, opt_state), (stats, norms, finite) = jax.lax.scan(mini_batch_update, (state.params, opt_state), minis)

        skipped = jnp.sum(~finite).astype(jnp.int32)
        total = jax.tree.map(jnp.sum, stats).replace(ratio_max=jnp.max(stats.ratio_max))
        metrics = TrainMetrics(
            loss=jnp.mean(stats.loss_sum / jnp.maximum(stats.count, 1.0)),
            pg_loss=total.mean("pg_loss_sum"),
            clipfrac_high=total.mean("clip_high_sum"),
            clipfrac_low=total.mean("clip_low_sum"),
            clipfrac_dual=total.mean("dual_clip_sum"),
            ratio_mean=total.mean("ratio_sum"),
            ratio_max=total.ratio_max,
            approx_kl=total.mean("approx_kl_sum"),
            entropy=total.mean("entropy_sum"),
            ref_kl=total.mean("ref_kl_sum"),
            grad_norm=jnp.mean(norms),
            grad_norm_max=jnp.max(norms),
            learning_rate=lr,
            response_tokens=total.tokens,
            total_tokens=jnp.sum((batch.attn_mask > 0).astype(jnp.float32)),
            updates=(k - skipped).astype(jnp.int32),
            skipped_updates=skipped,
        )
        new_state = TrainState(
            params=params, opt_state=opt_state, step=state.step + 1, skipped_updates=state.skipped_updates + skipped
        )
        return new_state, metrics

    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    if sharding is None:
        raise ValueError("make_train_step on a mesh needs the state's sharding (state_sharding(state))")
    data = NamedSharding(mesh, PartitionSpec(_BATCH_AXIS))
    return jax.jit(
        train_step, in_shardings=(sharding, data), out_shardings=(sharding, replicated(mesh)), donate_argnums=0
    )
