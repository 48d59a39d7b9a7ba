"""The JustRL policy objective: chunked token log-probs, the verl 0.4.0 clipped loss, exact aggregation.

The pieces, each a pure function:

* :func:`sequence_logps` turns final hidden states into per-token log-probs and entropies, one chunk of
  the sequence at a time, so the ``[tokens, vocab]`` fp32 logits never exist whole (151,936 x 16k
  tokens would be ~10 GB per sequence). Each chunk is rematerialised in the backward pass too.
* :func:`policy_loss` is verl 0.4.0 ``core_algos.compute_policy_loss``: PPO clip-higher with dual-clip
  on negative advantages, plus optional entropy bonus and k3 KL to a reference policy (both off in
  JustRL). It returns a :class:`LossStats` of *sums and counts*, never means.
* :class:`LossStats` adds up across micro-batches; ``loss_sum / count`` is then exactly the objective
  of the whole mini-batch, whatever the micro-batching.
* :func:`fused_policy_loss` (what the train step uses) is the composition of the two, chunked the same
  way, with the gradient of each chunk formed in the forward pass (a custom VJP): no logits are kept
  *or* recomputed, which saves one of the four ``[tokens x D x V]`` matmuls of the checkpointed path.

Alignment convention (used by the whole package): ``logps[b, s]`` is log p(tokens[b, s] | tokens[b, :s]),
i.e. aligned to the *token itself*, not to the position that predicts it. ``logps[:, 0]`` is 0 (nothing
predicts the first token), and a ``loss_mask`` is 1 exactly on the completion tokens that are targets.

Example::

    hidden, _ = model(tokens, positions, attn_mask)                          # [B, S, D]
    logps, entropy = sequence_logps(hidden, model.unembed(), tokens, chunk_size=512)
    stats = policy_loss(logps, old_logps, advantages, loss_mask, LossConfig(), entropy=entropy)
    loss = stats.loss_sum / stats.count
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import flax.struct
import jax
import jax.numpy as jnp


class LossAggregation(enum.Enum):
    """How per-token losses become one number (verl ``loss_agg_mode``)."""

    TOKEN_MEAN = "token-mean"  # sum over all valid tokens / number of valid tokens (JustRL)
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"  # mean over sequences of each sequence's token mean
    # verl 0.4.0 under use_dynamic_bsz: token mean inside each micro-batch, scaled by its share of the
    # mini-batch's sequences (see justrl_jax.verl_dynamic_bsz); for comparing curves with the paper.
    VERL_DYNAMIC_BSZ = "verl-dynamic-bsz"


CLASSIC_AGGREGATIONS = (LossAggregation.TOKEN_MEAN, LossAggregation.SEQ_MEAN_TOKEN_MEAN)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The policy objective. Defaults are JustRL's (verl 0.4.0 as configured by ``run_training.sh``).

    clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] ("clip-higher").
    dual_clip_c: for negative advantages the per-token loss is capped at -A * c (dual-clip PPO).
    kl_coef: weight of the k3 ("low_var_kl") KL to a reference policy; needs ``ref_logps``.
    entropy_coef: weight of the entropy bonus (the loss *subtracts* coef * entropy, as verl).
    agg: how token losses are aggregated over a mini-batch.
    """

    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip_c: float = 10.0
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    agg: LossAggregation = LossAggregation.TOKEN_MEAN

    def __post_init__(self):
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"loss.clip_low must be in [0, 1), got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ValueError(f"loss.clip_high must be >= 0, got {self.clip_high}")
        if self.dual_clip_c <= 1.0:  # verl asserts the same: c must exceed the clip region
            raise ValueError(f"loss.dual_clip_c must be > 1, got {self.dual_clip_c}")
        if self.kl_coef < 0.0:
            raise ValueError(f"loss.kl_coef must be >= 0, got {self.kl_coef}")
        if self.entropy_coef < 0.0:
            raise ValueError(f"loss.entropy_coef must be >= 0, got {self.entropy_coef}")
        if not isinstance(self.agg, LossAggregation):
            raise ValueError(f"loss.agg must be a LossAggregation, got {self.agg!r}")


# --- log-probs in chunks -------------------------------------------------------------------------


def _chunks(x: jnp.ndarray, chunk: int, n: int) -> jnp.ndarray:
    """[B, T, ...] -> [n, B, chunk, ...], zero-padded at the end of T."""
    b, t = x.shape[:2]
    pad = n * chunk - t
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)


def _unchunk(x: jnp.ndarray, t: int) -> jnp.ndarray:
    """[n, B, chunk, ...] -> [B, T, ...]."""
    n, b, c = x.shape[:3]
    return x.swapaxes(0, 1).reshape(b, n * c, *x.shape[3:])[:, :t]


def _logit_stats(hidden: jnp.ndarray, targets: jnp.ndarray, unembed: jnp.ndarray):
    """hidden [B,C,D], targets [B,C] int, unembed [D,V] -> (logits [B,C,V], lse, logp, entropy, E_p[z]), fp32.

    One statement of the per-token statistics, shared by the old-log-prob pass and the fused loss, so both
    compute log p the same way. Few passes over the [B, C, V] block: the max, exp for the normaliser, and
    E_p[z] as a contraction over V (XLA:CPU runs the multiply-reduce sum(p * z) ~20x slower than a dot)."""
    logits = jnp.einsum("BCD,DV->BCV", hidden, unembed, preferred_element_type=jnp.float32)
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # a shift only: lse's gradient does not flow through it
    e = jnp.exp(logits - m[..., None])
    sum_e = jnp.sum(e, axis=-1)
    lse = m + jnp.log(sum_e)
    mean_logit = jnp.einsum("BCV,BCV->BC", e, logits, preferred_element_type=jnp.float32) / sum_e
    # The target's logit as its own dot product with a gathered column of the unembedding: no pass over
    # the logits, and with the vocabulary sharded over `tensor` the gather stays local up to a [B, C] sum
    # (a take_along_axis on the logits would all-gather them).
    w_target = jnp.take(unembed, targets, axis=1)  # [D,B,C]
    target_logit = jnp.einsum("BCD,DBC->BC", hidden, w_target, preferred_element_type=jnp.float32)
    return logits, lse, target_logit - lse, lse - mean_logit, mean_logit


def _chunk_logps(hidden: jnp.ndarray, targets: jnp.ndarray, unembed: jnp.ndarray):
    """hidden [B,C,D], targets [B,C] int, unembed [D,V] -> (logp [B,C], entropy [B,C]) in fp32."""
    _, _, logp, entropy, _ = _logit_stats(hidden, targets, unembed)
    return logp, entropy


def chunked_logps(
    hidden: jnp.ndarray, unembed: jnp.ndarray, targets: jnp.ndarray, chunk_size: int, entropy_grad: bool = False
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """log p(targets[b, t]) and the entropy of the distribution at hidden[b, t], chunk by chunk over t.

    hidden [B,T,D] (compute dtype), unembed [D,V], targets [B,T] int -> (logp [B,T], entropy [B,T]) fp32.
    Only one [B, chunk_size, V] block of fp32 logits is alive at a time, forward and backward (the chunk
    function is checkpointed, so the backward recomputes it). ``entropy_grad=False`` stops the gradient
    through the entropy, so its backward is not computed when it is only a metric.
    """
    if chunk_size < 1:
        raise ValueError(f"logp chunk_size must be >= 1, got {chunk_size}")
    t = hidden.shape[1]
    chunk = min(chunk_size, t)
    n = -(-t // chunk)

    def body(_, xs):
        h, tg = xs
        logp, ent = _chunk_logps(h, tg, unembed)
        return None, (logp, ent if entropy_grad else jax.lax.stop_gradient(ent))

    # The scan walks [n, B, C, ...] sequence chunks; the batch stays the leading (data-sharded) axis.
    xs = (_chunks(hidden, chunk, n), _chunks(targets, chunk, n))
    _, (logp, ent) = jax.lax.scan(jax.checkpoint(body, prevent_cse=False), None, xs)
    return _unchunk(logp, t), _unchunk(ent, t)


def _first_target(start: int, seq_len: int) -> int:
    if not 0 <= start < seq_len:
        raise ValueError(f"completion_start {start} must be in [0, {seq_len}) for sequences of {seq_len}")
    return max(start, 1)  # nothing predicts token 0


def sequence_logps(
    hidden: jnp.ndarray,
    unembed: jnp.ndarray,
    tokens: jnp.ndarray,
    chunk_size: int,
    entropy_grad: bool = False,
    start: int = 0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-token log-probs of ``tokens`` under the model whose final hidden states are ``hidden``.

    hidden [B,S,D], unembed [D,V], tokens [B,S] -> (logps [B,S], entropy [B,S]), aligned to the token:
    ``logps[b, s] = log p(tokens[b, s] | tokens[b, :s])`` and ``entropy[b, s]`` is the entropy of that
    same next-token distribution. Only tokens ``s >= start`` are scored (``start`` = the prompt width
    skips the unembedding of the prompt); the columns before, and column 0 always, are 0.
    """
    first = _first_target(start, tokens.shape[1])
    logp, ent = chunked_logps(hidden[:, first - 1 : -1], unembed, tokens[:, first:], chunk_size, entropy_grad)
    pad = ((0, 0), (first, 0))
    return jnp.pad(logp, pad), jnp.pad(ent, pad)


def gather_targets(x: jnp.ndarray, target_index: jnp.ndarray, shift: int = 0) -> jnp.ndarray:
    """x [B,S,...] at the positions ``target_index - shift`` [B,C] -> [B,C,...]. Padding entries of
    ``target_index`` (== S) read a clamped position; their mask is 0 wherever they are used."""
    idx = jnp.clip(target_index - shift, 0, x.shape[1] - 1)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def scatter_targets(values: jnp.ndarray, target_index: jnp.ndarray, seq_len: int) -> jnp.ndarray:
    """Inverse of :func:`gather_targets` for [B,C] values: [B,S] with zeros off the targets."""
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], seq_len), values.dtype).at[rows, target_index].set(values, mode="drop")


def target_logps(
    hidden: jnp.ndarray, unembed: jnp.ndarray, tokens: jnp.ndarray, target_index: jnp.ndarray, chunk_size: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """:func:`sequence_logps` of packed rows, computed only at ``target_index`` [B,C] (the response tokens;
    position s - 1 predicts token s): -> (logps [B,S], entropy [B,S]), 0 off the targets."""
    s = tokens.shape[1]
    h = gather_targets(hidden, target_index, shift=1)
    logp, ent = chunked_logps(h, unembed, gather_targets(tokens, target_index), chunk_size)
    return scatter_targets(logp, target_index, s), scatter_targets(ent, target_index, s)


# --- the loss ------------------------------------------------------------------------------------


@flax.struct.dataclass
class LossStats:
    """Sums and counts over valid tokens of one or more micro-batches; add them with :meth:`combine`.

    loss_sum / count is the objective under the configured aggregation (for TOKEN_MEAN, count is the
    number of valid tokens; for SEQ_MEAN_TOKEN_MEAN, loss_sum is a sum of per-sequence token means and
    count the number of sequences with at least one valid token). Every other ``*_sum`` is a sum over
    valid tokens and is divided by ``tokens`` (token-level metrics, whatever the aggregation, as verl).
    """

    loss_sum: jnp.ndarray
    count: jnp.ndarray
    tokens: jnp.ndarray
    pg_loss_sum: jnp.ndarray  # the clipped policy term alone, token-summed
    clip_high_sum: jnp.ndarray  # A > 0 and ratio > 1 + clip_high: the upper clip is active
    clip_low_sum: jnp.ndarray  # A < 0 and ratio < 1 - clip_low: the lower clip is active
    dual_clip_sum: jnp.ndarray  # A < 0 and the dual-clip cap -A*c is active (verl pg_clipfrac_lower)
    ratio_sum: jnp.ndarray
    ratio_max: jnp.ndarray
    approx_kl_sum: jnp.ndarray  # old_logp - logp (verl "ppo_kl", k1 of old vs new)
    entropy_sum: jnp.ndarray
    ref_kl_sum: jnp.ndarray  # k3 to the reference policy (0 when there is none)

    @classmethod
    def zeros(cls) -> LossStats:
        z = jnp.zeros((), jnp.float32)
        fields = {f.name: z for f in dataclasses.fields(cls)}
        fields["ratio_max"] = jnp.full((), -jnp.inf, jnp.float32)
        return cls(**fields)

    def combine(self, other: LossStats) -> LossStats:
        summed = jax.tree.map(jnp.add, self, other)
        return summed.replace(ratio_max=jnp.maximum(self.ratio_max, other.ratio_max))

    def mean(self, field: str) -> jnp.ndarray:
        """Token mean of a ``*_sum`` field (0 when there are no valid tokens)."""
        return getattr(self, field) / jnp.maximum(self.tokens, 1.0)

    @property
    def loss(self) -> jnp.ndarray:
        return self.loss_sum / jnp.maximum(self.count, 1.0)


def k3_kl(logps: jnp.ndarray, ref_logps: jnp.ndarray) -> jnp.ndarray:
    """verl's ``low_var_kl`` (Schulman's k3) per token: with d = clamp(ref - logp, -20, 20),
    ``exp(d) - d - 1`` clamped to [-10, 10]. Both clamps are verl's (they also zero the gradient)."""
    kl = jnp.clip(ref_logps - logps, -20.0, 20.0)  # exp() stays finite
    return jnp.clip(jnp.exp(kl) - kl - 1.0, -10.0, 10.0)


@flax.struct.dataclass
class _TokenTerms:
    ratio: jnp.ndarray
    unclipped: jnp.ndarray  # -A r
    clipped: jnp.ndarray  # -A clip(r, 1 - clip_low, 1 + clip_high)
    l1: jnp.ndarray  # max of the two
    cap: jnp.ndarray  # -A c
    pg: jnp.ndarray  # the clipped policy loss per token
    ref_kl: jnp.ndarray
    total: jnp.ndarray  # pg - entropy_coef * entropy + kl_coef * ref_kl


def _token_terms(logps, old_logps, adv, cfg: LossConfig, entropy, ref_logps) -> _TokenTerms:
    """Elementwise per-token terms; ``adv`` broadcasts against ``logps`` ([B,1] or [B,T])."""
    ratio = jnp.exp(logps - old_logps)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    l1 = jnp.maximum(unclipped, clipped)
    cap = -adv * cfg.dual_clip_c
    pg = jnp.where(adv < 0, jnp.minimum(l1, cap), l1)
    total = pg
    if cfg.entropy_coef:
        if entropy is None:
            raise ValueError("loss.entropy_coef > 0 needs the per-token entropy")
        total = total - cfg.entropy_coef * entropy
    ref_kl = jnp.zeros_like(pg) if ref_logps is None else k3_kl(logps, ref_logps)
    if cfg.kl_coef:
        if ref_logps is None:
            raise ValueError("loss.kl_coef > 0 needs ref_logps in the batch")
        total = total + cfg.kl_coef * ref_kl
    return _TokenTerms(
        ratio=ratio, unclipped=unclipped, clipped=clipped, l1=l1, cap=cap, pg=pg, ref_kl=ref_kl, total=total
    )


def loss_weights(
    loss_mask: jnp.ndarray,
    agg: LossAggregation,
    segments: jnp.ndarray | None = None,
    token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-token weights [B,S] and the count such that objective = sum(weights * token_loss) / count.

    ``segments`` [B,S] (packed rows: which sequence of its row each token belongs to, each sequence one
    contiguous run) makes the per-sequence terms per segment; without it each row is one sequence.
    ``token_weights`` ([B] per sequence or [B,S]) are verl-dynamic-bsz's weights, which sum to 1 over a
    mini-batch: the count is then their sum, so the mini-batch's denominator is 1."""
    mask = loss_mask.astype(jnp.float32)
    if agg is LossAggregation.TOKEN_MEAN:
        return mask, jnp.sum(mask)
    if agg is LossAggregation.VERL_DYNAMIC_BSZ:
        if token_weights is None:
            raise ValueError("loss.agg=verl-dynamic-bsz needs the batch's token_weights (verl_dynamic_bsz)")
        weights = mask * jnp.broadcast_to(_per_token(token_weights), mask.shape)
        return weights, jnp.sum(weights)
    if agg is LossAggregation.SEQ_MEAN_TOKEN_MEAN:
        # Sequences without a valid token would be 0/0 in verl; here they are left out of both sums.
        if segments is None:
            per_seq = jnp.sum(mask, axis=1, keepdims=True)  # [B,1]
            return mask / jnp.maximum(per_seq, 1.0), jnp.sum((per_seq > 0).astype(jnp.float32))
        # A sequence's tokens are one run of equal segment ids (also after gathering its targets), so
        # runs number the sequences of a row with ids < S.
        b, s = mask.shape
        runs = jnp.cumsum(jnp.concatenate([jnp.zeros((b, 1), bool), segments[:, 1:] != segments[:, :-1]], 1), 1)
        flat = (jnp.arange(b)[:, None] * s + runs).reshape(-1)  # one id per (row, sequence)
        totals = jax.ops.segment_sum(mask.reshape(-1), flat, num_segments=b * s)
        per_seq = totals[flat].reshape(b, s)
        return mask / jnp.maximum(per_seq, 1.0), jnp.sum((totals > 0).astype(jnp.float32))
    raise ValueError(f"unknown loss aggregation {agg}")  # pragma: no cover - the enum is closed


def _per_token(advantages: jnp.ndarray) -> jnp.ndarray:
    """[B] (one per sequence) -> [B,1], broadcasting over the tokens; [B,S] (per token) as it is."""
    adv = advantages.astype(jnp.float32)
    return adv[:, None] if adv.ndim == 1 else adv


def _masked(x: jnp.ndarray | None, mask: jnp.ndarray) -> jnp.ndarray | None:
    # Padding may hold anything (even -inf); a 0 there keeps 0 * (non-finite) out of values and gradients.
    return None if x is None else jnp.where(mask > 0, x, 0.0)


def policy_loss(
    logps: jnp.ndarray,
    old_logps: jnp.ndarray,
    advantages: jnp.ndarray,
    loss_mask: jnp.ndarray,
    cfg: LossConfig,
    *,
    entropy: jnp.ndarray | None = None,
    ref_logps: jnp.ndarray | None = None,
    segments: jnp.ndarray | None = None,
    token_weights: jnp.ndarray | None = None,
) -> LossStats:
    """The verl 0.4.0 clipped policy loss of one (micro-)batch, as sums and counts.

    logps, old_logps, loss_mask [B,S] (token-aligned, see the module docstring); advantages [B] (one per
    sequence, broadcast over its tokens) or [B,S] per token (packed rows, whose ``segments`` [B,S] then
    tell the sequences apart for per-sequence aggregation); entropy [B,S] is needed when ``cfg.entropy_coef > 0`` and is
    otherwise only summed as a metric; ref_logps [B,S] is needed when ``cfg.kl_coef > 0``.

    Per token, with r = exp(logp - old_logp) and A the advantage:

        L1 = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
        L  = min(L1, -A c)  if A < 0  else  L1                      (dual-clip, c = dual_clip_c)
        token loss = L - entropy_coef * entropy + kl_coef * k3(logp, ref_logp)
    """
    mask = loss_mask.astype(jnp.float32)
    adv = _per_token(advantages)
    terms = _token_terms(logps, _masked(old_logps, mask), adv, cfg, entropy, _masked(ref_logps, mask))
    weights, count = loss_weights(mask, cfg.agg, segments, token_weights)

    def tsum(x):
        return jnp.sum(jax.lax.stop_gradient(x) * mask)

    negative = adv < 0
    return LossStats(
        loss_sum=jnp.sum(weights * terms.total),
        count=count,
        tokens=jnp.sum(mask),
        pg_loss_sum=tsum(terms.pg),
        clip_high_sum=tsum((terms.clipped > terms.unclipped) & (terms.ratio > 1.0)),
        clip_low_sum=tsum((terms.clipped > terms.unclipped) & (terms.ratio < 1.0)),
        dual_clip_sum=tsum((terms.l1 > terms.cap) & negative),
        ratio_sum=tsum(terms.ratio),
        ratio_max=jnp.max(jnp.where(mask > 0, jax.lax.stop_gradient(terms.ratio), -jnp.inf)),
        approx_kl_sum=tsum(_masked(old_logps, mask) - logps),
        entropy_sum=tsum(entropy) if entropy is not None else jnp.zeros((), jnp.float32),
        ref_kl_sum=tsum(terms.ref_kl),
    )


# --- the fused path used for training ------------------------------------------------------------


def _fused_forward(token_loss, chunk_size, entropy_grad, hidden, unembed, targets, args):
    """-> ((loss, logp [B,T], entropy [B,T]), (d loss / d hidden, d loss / d unembed)); gradients are
    formed even when none is wanted, so use this for training only (sequence_logps otherwise)."""
    t = hidden.shape[1]
    chunk = min(chunk_size, t)
    n = -(-t // chunk)
    xs = jax.tree.map(lambda a: _chunks(a, chunk, n), (hidden, targets, args))

    def body(dw, x):
        h, tg, a = x
        logits, lse, logp, ent, mean_logit = _logit_stats(h, tg, unembed)
        probs = jnp.exp(logits - lse[..., None])
        hit = jnp.arange(logits.shape[-1], dtype=tg.dtype) == tg[..., None]
        # The loss is a sum of per-token terms, so d(loss)/d(logp, entropy) is known right here, and with
        # it d(loss)/d(logits): the logits never have to be kept or recomputed for the backward pass.
        loss, vjp = jax.vjp(
            lambda lp, e: jnp.sum(token_loss(lp, e, a)), logp, ent if entropy_grad else jax.lax.stop_gradient(ent)
        )
        g_logp, g_ent = vjp(jnp.ones_like(loss))
        dlogits = g_logp[..., None] * (hit.astype(jnp.float32) - probs)  # d logp / d z = onehot - p
        if entropy_grad:
            dlogits = dlogits - g_ent[..., None] * probs * (logits - mean_logit[..., None])  # dH/dz
        dlogits = dlogits.astype(unembed.dtype)
        dh = jnp.einsum("BCV,DV->BCD", dlogits, unembed, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = dw + jnp.einsum("BCD,BCV->DV", h, dlogits, preferred_element_type=jnp.float32)
        return dw, (logp, ent, loss, dh)

    dw, (logp, ent, losses, dh) = jax.lax.scan(body, jnp.zeros(unembed.shape, jnp.float32), xs)
    out = (jnp.sum(losses), _unchunk(logp, t), _unchunk(ent, t))
    return out, (_unchunk(dh, t), dw.astype(unembed.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(token_loss, chunk_size, entropy_grad, hidden, unembed, targets, args):
    return _fused_forward(token_loss, chunk_size, entropy_grad, hidden, unembed, targets, args)[0]


def _fused_bwd(token_loss, chunk_size, entropy_grad, residuals, cotangents):
    dh, dw = residuals
    ct = cotangents[0]  # only the loss is differentiable; logp and entropy leave through stop_gradient
    return (dh * ct.astype(dh.dtype), dw * ct.astype(dw.dtype), None, None)


_fused.defvjp(_fused_forward, _fused_bwd)


def fused_policy_loss(
    hidden: jnp.ndarray,
    unembed: jnp.ndarray,
    tokens: jnp.ndarray,
    old_logps: jnp.ndarray,
    advantages: jnp.ndarray,
    loss_mask: jnp.ndarray,
    cfg: LossConfig,
    chunk_size: int,
    *,
    ref_logps: jnp.ndarray | None = None,
    start: int = 0,
    target_index: jnp.ndarray | None = None,
    segments: jnp.ndarray | None = None,
    token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, LossStats]:
    """:func:`policy_loss` straight from hidden states, with the unembedding fused into the loss.

    Returns ``(loss_sum, stats)``: ``loss_sum`` (equal to ``stats.loss_sum``) is differentiable w.r.t.
    ``hidden`` and ``unembed``; ``stats`` are the metrics, not differentiated. Chunk by chunk over the
    sequence, the forward pass computes the fp32 logits, the log-probs and entropies, the per-token loss
    and, because that loss is a sum of per-token terms, already its gradient w.r.t. the chunk's hidden
    states and unembedding. So only one ``[B, chunk, V]`` block of logits is ever alive and, unlike a
    checkpointed :func:`chunked_logps`, the ``[tokens x D x V]`` logits matmul is not recomputed in
    the backward pass (3 such matmuls per token instead of 4). Tokens before ``start`` (the prompt) are
    not scored and must not be in ``loss_mask`` (they are masked out).

    Packed rows pass ``target_index`` [B,C] (the positions of their response tokens, padded with S) and
    ``segments`` [B,S]: only those C positions per row are unembedded, and ``advantages`` is [B,S].
    """
    if chunk_size < 1:
        raise ValueError(f"logp chunk_size must be >= 1, got {chunk_size}")
    if target_index is not None:
        packed = (old_logps, advantages, loss_mask, ref_logps, target_index, segments, token_weights)
        return _fused_packed(hidden, unembed, tokens, cfg, chunk_size, *packed)
    b, s = tokens.shape
    first = _first_target(start, s)
    mask = loss_mask.astype(jnp.float32).at[:, :first].set(0.0)
    weights, _ = loss_weights(mask, cfg.agg, token_weights=token_weights)
    adv = jnp.broadcast_to(_per_token(advantages), (b, s))
    args = {"old": _masked(old_logps, mask), "adv": adv, "w": weights, "ref": _masked(ref_logps, mask)}

    def token_loss(logp, ent, a):
        return a["w"] * _token_terms(logp, a["old"], a["adv"], cfg, ent, a["ref"]).total

    scored = jax.tree.map(lambda x: x[:, first:], args)  # position s - 1 predicts token s
    loss_sum, logp, ent = _fused(
        token_loss, chunk_size, cfg.entropy_coef != 0, hidden[:, first - 1 : -1], unembed, tokens[:, first:], scored
    )
    pad = ((0, 0), (first, 0))
    logps = jax.lax.stop_gradient(jnp.pad(logp, pad))
    entropy = jax.lax.stop_gradient(jnp.pad(ent, pad))
    stats = policy_loss(
        logps, old_logps, advantages, mask, cfg, entropy=entropy, ref_logps=ref_logps, token_weights=token_weights
    )
    return loss_sum, stats


def _fused_packed(
    hidden, unembed, tokens, cfg, chunk_size, old_logps, advantages, loss_mask, ref_logps, idx, segments, tw
):
    """:func:`fused_policy_loss` on the gathered target positions of packed rows."""
    s = tokens.shape[1]
    at = lambda x: None if x is None else gather_targets(x, idx)  # noqa: E731
    mask = at(loss_mask.astype(jnp.float32)) * (idx < s)
    seg = at(segments)
    tw = None if tw is None else at(jnp.broadcast_to(_per_token(tw), tokens.shape))
    weights, _ = loss_weights(mask, cfg.agg, seg, tw)
    adv = jnp.broadcast_to(_per_token(advantages), tokens.shape)
    args = {"old": _masked(at(old_logps), mask), "adv": at(adv), "w": weights, "ref": _masked(at(ref_logps), mask)}

    def token_loss(logp, ent, a):
        return a["w"] * _token_terms(logp, a["old"], a["adv"], cfg, ent, a["ref"]).total

    h = gather_targets(hidden, idx, shift=1)  # position s - 1 predicts token s
    loss_sum, logp, ent = _fused(token_loss, chunk_size, cfg.entropy_coef != 0, h, unembed, at(tokens), args)
    logp, ent = jax.lax.stop_gradient(logp), jax.lax.stop_gradient(ent)
    stats = policy_loss(
        logp, at(old_logps), at(adv), mask, cfg, entropy=ent, ref_logps=at(ref_logps), segments=seg, token_weights=tw
    )
    return loss_sum, stats
