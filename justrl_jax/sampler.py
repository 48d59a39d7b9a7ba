"""Rollouts: prefill the prompts, then one compiled ``lax.while_loop`` that decodes until every row stops.

Stages of :meth:`Sampler.generate` (host numpy in, host numpy :class:`Rollout` out):

1. Prompts are checked (left-padded, at least one token, ids in the vocabulary), trimmed to their
   longest row and left-padded to a multiple of ``prompt_bucket``: every length in one bucket reuses
   one compiled program. Each prompt is repeated ``n`` times, group-contiguously.
2. The KV cache is planned before anything is allocated (:func:`plan_waves`): rows run in *waves* of a
   fixed size that fits ``kv_cache_budget_bytes`` per device; the last wave is filled with inactive rows
   (done from the start), so every wave has one shape.
3. Prefill runs over a cache of exactly the prompt width (attention over a full-length cache would cost
   ``P x S`` scores per row), then the cache is grown to its decode size and the first token sampled.
4. Decode: a jitted ``while_loop`` with the parameters as an *argument* (the graphdef is static; the
   weights are never baked into the program) and the sampling state donated. It stops when every row
   has produced an EOS id or ``max_new_tokens``. With ``decode_chunk = C`` the cache holds only
   ``prompt + C`` new slots at first and grows by ``C`` whenever it is full, so attention reads only the
   slots in use (rounded up to ``C``) and short rollouts never allocate the full cache; each size
   compiles once.

Randomness: row ``r`` (after repetition) draws its step-``t`` uniform from
``fold_in(fold_in(key, r), t)``, so the ``n`` samples of a prompt differ, a run is reproducible from its
seed, and the tokens do not depend on the wave size or the mesh.

Example::

    sampler = Sampler(model, SamplerConfig(max_new_tokens=256, strategy=Temperature(1.0)),
                      eos_ids=(151643,), pad_id=151643)
    rollout = sampler.generate(nnx.state(model, nnx.Param), prompt_ids, prompt_mask, n=8, key=0)
    rollout.completion_ids[rollout.completion_mask]        # the sampled tokens, EOS included
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from justrl_jax.continuous_batching import BatchingStats, ContinuousBatcher, plan_pages
from justrl_jax.global_arrays import rows_to_global, to_global, to_host
from justrl_jax.model.construct import state_shardings
from justrl_jax.model.kv_cache import KVCache
from justrl_jax.model.paged_attention import KERNELS
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config, positions_from_mask
from justrl_jax.sampling import Greedy, Strategy, Temperature, TopK, TopP
from justrl_jax.sharding import axis_size, data_parallel_size, logical_spec

_STRATEGIES = (Greedy, Temperature, TopP, TopK)


class FinishReason(enum.IntEnum):
    """Why a row stopped: it produced an EOS id, or it reached ``max_new_tokens``."""

    EOS = 0
    LENGTH = 1


@dataclasses.dataclass(frozen=True)
class FinishedRow:
    """One row as it ends, handed to ``generate(on_row_done=...)`` before generate returns."""

    row: int  # the rollout row (prompt i's samples are rows i*n .. i*n+n-1)
    tokens: np.ndarray  # [length] int32 the sampled tokens, EOS included: the rollout's row up to its length
    finish: FinishReason
    decoding: int  # other rows still decoding when this one ended (the waves scheduler: 0, its wave is over)


@flax.struct.dataclass
class Rollout:
    """Sampled completions, rows ``i*n .. i*n+n-1`` from prompt ``i``. Host numpy arrays, except logprobs.

    prompt_ids:      [R, P] int32  the prompts as given (left-padded), repeated
    prompt_mask:     [R, P] bool
    completion_ids:  [R, T] int32  T = max_new_tokens; the EOS is kept, pad_id after it
    completion_mask: [R, T] bool   True for the sampled tokens (EOS included)
    logprobs:        [R, T] f32    log softmax(logits / T) of each sampled token (0 where masked); only
                                   when asked (``generate(logprobs=True)``), else None; a device array
                                   (global, rows over the batch axis): its readers compare it on device
    lengths:         [R] int32     completion tokens, EOS included
    finish:          [R] int8      FinishReason values
    """

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    completion_ids: np.ndarray
    completion_mask: np.ndarray
    logprobs: jax.Array | None
    lengths: np.ndarray
    finish: np.ndarray


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How rollouts are generated.

    max_new_tokens: completion budget per row (JustRL: 15,360 for training, 31,744 for evaluation).
    strategy: Greedy / Temperature / TopP / TopK (see :mod:`justrl_jax.sampling`).
    prompt_bucket: prompts are left-padded to a multiple of this, so lengths in one bucket share a compile.
    kv_cache_budget_bytes: KV-cache bytes allowed per device (None: no limit); above it the rows run in
        waves. The planner counts the peak: the decode cache plus the smaller one it grows from.
    decode_chunk: (waves only) 0 = one cache of prompt + max_new_tokens slots; C > 0 = start with C new slots
        and grow by C when full (attention cost follows the length reached; one compile per size).
    cache_dtype: dtype of the KV cache (None: the model's compute dtype).
    scheduler: "continuous" (decode slots over a paged KV cache, refilled as rows end; see
        :mod:`justrl_jax.continuous_batching`) or "waves" (static waves over a dense cache).
    max_concurrent_rows: (continuous) decode slots over every data shard; None: what the KV budget holds at
        full length (each data shard's devices hold only its own pages, so the budget per device buys pages per
        shard; no budget: every row at once). More slots than the pools hold at full length may preempt rows.
    page_size: (continuous) tokens per KV page. 128: the pure-JAX attention gathers a row's keys page by page,
        and on XLA:CPU a 128-token page gathers ~1.5x faster than a 16-token one (scripts/profile_decode_step.py;
        the long-tail bench 1.2x end to end); a row wastes under one page, small next to recipe-length rows.
    steps_per_call: (continuous) decode steps per device call; finished slots are refilled between calls.
    attention_kernel: (continuous) paged decode attention: "auto", "jax", "pallas_gpu", "pallas_tpu".
    """

    max_new_tokens: int
    strategy: Strategy = Temperature(1.0)
    prompt_bucket: int = 64
    kv_cache_budget_bytes: int | None = None
    decode_chunk: int = 0
    cache_dtype: Any = None
    scheduler: str = "continuous"
    max_concurrent_rows: int | None = None
    page_size: int = 128
    steps_per_call: int = 16
    attention_kernel: str = "auto"

    def __post_init__(self):
        for name in ("max_new_tokens", "prompt_bucket", "page_size", "steps_per_call"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sampler.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.strategy, _STRATEGIES):
            raise ValueError(
                f"sampler.strategy must be one of {[s.__name__ for s in _STRATEGIES]}, got {self.strategy!r}"
            )
        budget = self.kv_cache_budget_bytes
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise ValueError(
                f"sampler.kv_cache_budget_bytes must be None (no limit) or an integer >= 1, got {budget!r}"
            )
        if not isinstance(self.decode_chunk, int) or self.decode_chunk < 0:
            raise ValueError(f"sampler.decode_chunk must be an integer >= 0 (0: off), got {self.decode_chunk!r}")
        if self.scheduler not in ("continuous", "waves"):
            raise ValueError(f"sampler.scheduler must be 'continuous' or 'waves', got {self.scheduler!r}")
        rows = self.max_concurrent_rows
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
            raise ValueError(f"sampler.max_concurrent_rows must be None or an integer >= 1, got {rows!r}")
        if self.attention_kernel not in KERNELS:
            raise ValueError(f"sampler.attention_kernel must be one of {KERNELS}, got {self.attention_kernel!r}")
        if self.cache_dtype is not None:
            try:
                jnp.dtype(self.cache_dtype)
            except TypeError:
                raise ValueError(f"sampler.cache_dtype is not a dtype: {self.cache_dtype!r}") from None

    def segments(self, prompt_width: int) -> list[int]:
        """Cache slots of each decode segment (the last one holds prompt + max_new_tokens)."""
        full = prompt_width + self.max_new_tokens
        if self.decode_chunk == 0 or self.decode_chunk >= self.max_new_tokens:
            return [full]
        return [
            min(prompt_width + k * self.decode_chunk, full)
            for k in range(1, -(-self.max_new_tokens // self.decode_chunk) + 1)
        ]


@dataclasses.dataclass(frozen=True)
class WavePlan:
    """How the rows of one generate call are laid out: ``waves`` waves of ``wave_rows`` rows."""

    rows: int  # real rows (prompts x n)
    wave_rows: int  # rows per wave, a multiple of the data-parallel size
    waves: int
    peak_bytes_per_device: int  # KV cache at its peak (the last growth: old and new cache both alive)


def plan_waves(
    model: Qwen2Config,
    config: SamplerConfig,
    rows: int,
    prompt_width: int,
    *,
    data_parallel: int = 1,
    tensor: int = 1,
    itemsize: int = 4,
) -> WavePlan:
    """Plans the KV cache of ``rows`` sequences before anything is allocated; raises ValueError when even
    one row per device does not fit ``config.kv_cache_budget_bytes``."""
    kv_heads = model.num_kv_heads // tensor if model.num_kv_heads % tensor == 0 else model.num_kv_heads
    sizes = [prompt_width] + config.segments(prompt_width)

    def peak(rows_per_device: int) -> int:
        one = [
            KVCache.bytes_for(model.num_layers, rows_per_device, s, kv_heads, model.head_dim, itemsize) for s in sizes
        ]
        return max(a + b for a, b in zip(one, one[1:], strict=False))

    per_device = -(-rows // data_parallel)
    budget = config.kv_cache_budget_bytes
    if budget is not None and peak(per_device) > budget:
        if peak(1) > budget:
            raise ValueError(
                f"sampler.kv_cache_budget_bytes={budget} cannot hold one sequence per device: a cache of "
                f"{prompt_width} prompt + {config.max_new_tokens} new tokens needs {peak(1)} bytes at its peak. "
                f"Lower max_new_tokens or the prompt length, use a smaller cache_dtype, shard KV heads over "
                f"more tensor devices, or raise the budget"
            )
        lo, hi = 1, per_device  # peak(lo) fits, peak(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid)
        per_device = lo
    wave_rows = per_device * data_parallel
    return WavePlan(rows=rows, wave_rows=wave_rows, waves=-(-rows // wave_rows), peak_bytes_per_device=peak(per_device))


def reshard_params(params: nnx.State, mesh: Mesh | None) -> nnx.State:
    """Parameters in the sampling layout (the logical rules on ``mesh``). Called once per generate: the
    identity (no copy) when the training layout already matches, e.g. the same mesh."""
    if mesh is None:
        return params
    target = state_shardings(params, mesh)
    leaves = jax.tree.leaves(params)
    wanted = jax.tree.leaves(target)
    if all(
        isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(leaves, wanted, strict=True)
    ):
        return params
    return jax.device_put(params, target)


def decode_weights(params: nnx.State, compute_dtype) -> nnx.State:
    """The weights decoding reads: floating parameters wider than the compute dtype cast to it, once per
    generate. The model casts every weight to the compute dtype where it uses it, so the values are the
    same (log-probs bit-identical); but a decode step is bound by reading the weights, and reading fp32
    master weights to cast them in every step costs twice the bytes (1.5B on an H200 at batch 256: 8.0 ->
    5.6 ms per step, scripts/bench_sampler.py --param-dtype). The copy lives for the rollout only."""
    dtype = jnp.dtype(compute_dtype)
    if not any(_wider(x, dtype) for x in jax.tree.leaves(params)):
        return params
    return _cast_floats(params, dtype)


def _wider(x, dtype: jnp.dtype) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize > dtype.itemsize


@functools.partial(jax.jit, static_argnums=1)
def _cast_floats(params: nnx.State, dtype: jnp.dtype) -> nnx.State:
    return jax.tree.map(lambda x: x.astype(dtype) if _wider(x, dtype) else x, params)


@flax.struct.dataclass
class _DecodeState:
    """The donated loop carry; W rows of one wave."""

    cache: KVCache
    tokens: jax.Array  # [W, T] int32 sampled tokens, pad_id where nothing was sampled
    logprobs: jax.Array  # [W, T] f32
    prompt_len: jax.Array  # [W] int32 real prompt tokens (the position of the first new token)
    keys: jax.Array  # [W, 2] uint32 raw row keys
    step: jax.Array  # [] int32 tokens sampled so far
    done: jax.Array  # [W] bool: hit an EOS, or an inactive filler row
    eos: jax.Array  # [W] bool: hit an EOS
    length: jax.Array  # [W] int32 tokens sampled before stopping (EOS included)


class Sampler:
    """Generates rollouts from a Qwen2 graphdef (or model) and a parameter state passed per call.

    ``Sampler(graphdef_or_model, config, mesh=None, eos_ids=(...), pad_id=...)``; then
    ``generate(params, prompt_ids, prompt_mask, n=8, key=seed_or_key) -> Rollout``. The compiled
    programs are cached on the instance: keep one Sampler for a run.
    """

    def __init__(
        self,
        graphdef_or_model: nnx.GraphDef | Qwen2,
        config: SamplerConfig,
        mesh: Mesh | None = None,
        *,
        eos_ids: int | tuple[int, ...] | list[int],
        pad_id: int,
    ):
        if isinstance(graphdef_or_model, nnx.Module):
            graphdef_or_model = nnx.split(graphdef_or_model, nnx.Param)[0]
        if not isinstance(graphdef_or_model, nnx.GraphDef):
            raise TypeError(f"Sampler needs an nnx GraphDef or a Qwen2 model, got {type(graphdef_or_model).__name__}")
        if not isinstance(config, SamplerConfig):
            raise TypeError(f"Sampler config must be a SamplerConfig, got {type(config).__name__}")
        eos = (eos_ids,) if isinstance(eos_ids, (int, np.integer)) else tuple(eos_ids)
        if not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= 0 for e in eos):
            raise ValueError(f"eos_ids must be token ids >= 0 (empty: never stop early), got {eos_ids!r}")
        if not isinstance(pad_id, (int, np.integer)) or pad_id < 0:
            raise ValueError(f"pad_id must be a token id >= 0, got {pad_id!r}")
        self.graphdef = graphdef_or_model
        self.config = config
        self.mesh = mesh
        self.eos_ids = tuple(int(e) for e in eos)
        self.pad_id = int(pad_id)
        self.prefill_fn = jax.jit(self._prefill, static_argnames=("slots",))
        self.decode_fn = jax.jit(self._decode, donate_argnames=("state",))
        # Not donated: the grown cache has a new shape, so XLA could not reuse the old buffers anyway.
        self.grow_fn = jax.jit(self._grow_state, static_argnames=("slots",))
        self.batcher = ContinuousBatcher(self.graphdef, config, mesh, self.eos_ids, self.pad_id)

    @property
    def stats(self) -> BatchingStats:
        """Slot occupancy, preemptions, prefill/decode throughput of the last continuous generate call."""
        return self.batcher.stats

    # --- the compiled programs -------------------------------------------------------------------

    def _shard(self, x, *axes):
        if self.mesh is None:
            return x
        spec = logical_spec(axes, self.mesh, x.shape)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def _shard_state(self, s: _DecodeState) -> _DecodeState:
        kv = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
        cache = s.cache.replace(
            k=self._shard(s.cache.k, *kv),
            v=self._shard(s.cache.v, *kv),
            mask=self._shard(s.cache.mask, "batch", "cache_seq"),
        )
        return s.replace(
            cache=cache, tokens=self._shard(s.tokens, "batch", None), logprobs=self._shard(s.logprobs, "batch", None)
        )

    def _advance(self, s: _DecodeState, logits: jax.Array) -> _DecodeState:
        """Samples token ``s.step`` of every row from its logits [W, V] and records it."""
        logits = self._shard(logits, "batch", None)  # whole rows: the sampling reductions run over V locally
        keys = jax.random.wrap_key_data(s.keys)
        uniforms = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, s.step)))(keys)  # [W]
        tokens, logprobs = self.config.strategy.sample(logits, uniforms)
        live = ~s.done
        tokens = jnp.where(live, tokens, self.pad_id)
        logprobs = jnp.where(live, logprobs, 0.0)
        hit = live & jnp.isin(tokens, jnp.asarray(self.eos_ids, jnp.int32)) if self.eos_ids else jnp.zeros_like(live)
        return s.replace(
            tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, tokens[:, None], s.step, axis=1),
            logprobs=jax.lax.dynamic_update_slice_in_dim(s.logprobs, logprobs[:, None], s.step, axis=1),
            step=s.step + 1,
            done=s.done | hit,
            eos=s.eos | hit,
            length=s.length + live.astype(jnp.int32),
        )

    def _grow(self, cache: KVCache, slots: int) -> KVCache:
        extra = slots - cache.slots
        if extra == 0:
            return cache
        pad = [(0, 0), (0, 0), (0, extra), (0, 0), (0, 0)]
        return cache.replace(
            k=jnp.pad(cache.k, pad), v=jnp.pad(cache.v, pad), mask=jnp.pad(cache.mask, [(0, 0), (0, extra)])
        )

    def _grow_state(self, state: _DecodeState, *, slots: int) -> _DecodeState:
        return self._shard_state(state.replace(cache=self._grow(state.cache, slots)))

    def _prefill(self, params, prompt_ids, prompt_mask, keys, active, *, slots: int) -> _DecodeState:
        """prompt_ids/mask [W, P] (left-padded), keys [W, 2], active [W] -> state after the first token."""
        model: Qwen2 = nnx.merge(self.graphdef, params)
        w, p = prompt_ids.shape
        mask = prompt_mask.astype(bool)
        cache = model.init_cache(w, p, self.config.cache_dtype)
        cache = cache.replace(
            k=self._shard(cache.k, "layers", "batch", "cache_seq", "kv_heads", "head_dim"),
            v=self._shard(cache.v, "layers", "batch", "cache_seq", "kv_heads", "head_dim"),
        )
        hidden, cache = model(prompt_ids, positions_from_mask(mask), mask, cache)
        logits = model.logits(hidden[:, -1:])[:, 0]  # left padding: the last column is every row's last token
        t = self.config.max_new_tokens
        state = _DecodeState(
            cache=self._grow(cache, slots),
            tokens=jnp.full((w, t), self.pad_id, jnp.int32),
            logprobs=jnp.zeros((w, t), jnp.float32),
            prompt_len=jnp.sum(mask, axis=1, dtype=jnp.int32),
            keys=keys,
            step=jnp.zeros((), jnp.int32),
            done=~active,
            eos=jnp.zeros((w,), bool),
            length=jnp.zeros((w,), jnp.int32),
        )
        return self._shard_state(self._advance(self._shard_state(state), logits))

    def _decode(self, params, state: _DecodeState, limit) -> _DecodeState:
        """Decodes until every row is done or ``limit`` tokens are sampled (or the cache is full)."""
        model: Qwen2 = nnx.merge(self.graphdef, params)
        limit = jnp.minimum(limit, self.config.max_new_tokens)

        def cond(s: _DecodeState):
            # Token t is fed at slot P + t - 1, so a cache of S slots can sample up to S - P + 1 tokens.
            room = s.cache.index < s.cache.slots
            return (s.step < limit) & room & ~jnp.all(s.done)

        def body(s: _DecodeState):
            last = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)  # [W, 1]
            positions = (s.prompt_len + s.step - 1)[:, None]
            hidden, cache = model(last, positions, jnp.ones(last.shape, bool), s.cache)
            logits = model.logits(hidden)[:, 0]  # [W, V] f32
            return self._shard_state(self._advance(s.replace(cache=cache), logits))

        return jax.lax.while_loop(cond, body, state)

    # --- the host side ---------------------------------------------------------------------------

    def generate(
        self,
        params: nnx.State | Qwen2,
        prompt_ids: np.ndarray,
        prompt_mask: np.ndarray,
        *,
        n: int = 1,
        key: int | jax.Array = 0,
        logprobs: bool = False,
        on_row_done: Callable[[FinishedRow], None] | None = None,
        row_keys: np.ndarray | None = None,
    ) -> Rollout:
        """Samples ``n`` completions of each left-padded prompt. ``key``: an int seed or a JAX PRNG key.
        ``logprobs``: also return each sampled token's log-prob (left on device, see :class:`Rollout`).
        ``on_row_done``: called once per row with its :class:`FinishedRow` as soon as the row ends (the
        continuous scheduler: between device calls, while other rows decode; waves: after each wave), never for
        a preempted partial; an exception it raises stops generate and propagates, naming the row.
        ``row_keys``: [rows, 2] uint32 raw keys, one per row (rows = prompts x n), instead of ``key``'s
        ``fold_in(key, r)``: rows gathered from several seeded calls then sample exactly what those calls did."""
        if isinstance(params, nnx.Module):
            params = nnx.state(params, nnx.Param)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        model_cfg, compute_dtype = self._model_info(params)
        ids, mask = _check_prompts(prompt_ids, prompt_mask, model_cfg.vocab_size)
        if not self.pad_id < model_cfg.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary (size {model_cfg.vocab_size})")
        width = _round_up(int(mask.sum(axis=1).max()), self.config.prompt_bucket)
        bucket_ids, bucket_mask = _left_pad(ids, mask, width, self.pad_id)
        bucket_ids, bucket_mask = np.repeat(bucket_ids, n, axis=0), np.repeat(bucket_mask, n, axis=0)
        rows = bucket_ids.shape[0]
        keys = row_key_data(key, rows) if row_keys is None else _check_row_keys(row_keys, rows)
        done = None if on_row_done is None else _row_callback(on_row_done)

        params = self._decoding_params(params, compute_dtype)
        if self.config.scheduler == "continuous":
            tokens, sampled_logps, lengths, eos = self.batcher.run(
                params,
                bucket_ids,
                bucket_mask,
                keys,
                **self._pool_args(model_cfg, compute_dtype, rows, width),
                on_row_done=done,
            )
            out = {"tokens": tokens, "length": lengths, "eos": eos}
            return self._rollout(
                out, prompt_ids, prompt_mask, n, rows_to_global(sampled_logps, self.mesh) if logprobs else None
            )
        dp, tensor, cache_dtype = self._placement(compute_dtype)
        plan = plan_waves(
            model_cfg, self.config, rows, width, data_parallel=dp, tensor=tensor, itemsize=cache_dtype.itemsize
        )

        outputs, wave_logprobs = [], []
        for wave in range(plan.waves):
            lo, hi = wave * plan.wave_rows, min((wave + 1) * plan.wave_rows, rows)
            fill = plan.wave_rows - (hi - lo)
            take = np.concatenate([np.arange(lo, hi), np.full(fill, lo)])  # fillers copy a real row
            active = np.arange(plan.wave_rows) < hi - lo
            state = self._run_wave(params, bucket_ids[take], bucket_mask[take], keys[take], active, width)
            outputs.append({name: to_host(getattr(state, name))[: hi - lo] for name in ("tokens", "eos", "length")})
            if done is not None:
                wave_out = outputs[-1]
                for k in range(hi - lo):
                    n_k = int(wave_out["length"][k])
                    done(lo + k, wave_out["tokens"][k, :n_k].copy(), bool(wave_out["eos"][k]), 0)
            if logprobs:  # already 0 wherever nothing was sampled
                wave_logprobs.append(state.logprobs if fill == 0 else state.logprobs[: hi - lo])

        out = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
        sampled = None
        if logprobs:
            sampled = jnp.concatenate(wave_logprobs) if len(wave_logprobs) > 1 else wave_logprobs[0]
        return self._rollout(out, prompt_ids, prompt_mask, n, sampled)

    def warm_up(self, params: nnx.State | Qwen2, prompt_ids: np.ndarray, prompt_mask: np.ndarray, *, n: int = 1) -> int:
        """(continuous) Compiles every program ``generate`` on these prompts can call, without sampling, so that
        a timed call compiles nothing (benchmarks; an RL loop compiles once anyway). Returns the programs run."""
        if isinstance(params, nnx.Module):
            params = nnx.state(params, nnx.Param)
        if self.config.scheduler != "continuous":
            raise ValueError("Sampler.warm_up is for sampler.scheduler='continuous'")
        model_cfg, compute_dtype = self._model_info(params)
        ids, mask = _check_prompts(prompt_ids, prompt_mask, model_cfg.vocab_size)
        width = _round_up(int(mask.sum(axis=1).max()), self.config.prompt_bucket)
        rows = ids.shape[0] * n
        return self.batcher.warm_up(
            self._decoding_params(params, compute_dtype),
            width,
            **self._pool_args(model_cfg, compute_dtype, rows, width),
        )

    def _decoding_params(self, params: nnx.State, compute_dtype) -> nnx.State:
        """The weights as decoding reads them: on the sampler's mesh, in the compute dtype."""
        return decode_weights(reshard_params(params, self.mesh), compute_dtype)

    def _placement(self, compute_dtype) -> tuple[int, int, jnp.dtype]:
        """(data-parallel size, KV-head shards, KV cache dtype) for this sampler's mesh and config."""
        dp = data_parallel_size(self.mesh) if self.mesh is not None else 1
        return dp, axis_size(self.mesh, "kv_heads"), jnp.dtype(self.config.cache_dtype or compute_dtype)

    def _pool_args(self, model_cfg, compute_dtype, rows: int, width: int) -> dict:
        """The continuous batcher's pool arguments (``run`` and ``warm_up`` take the same). Planned for the
        bucketed width, so every prompt length in a bucket gets the same pool (one compile)."""
        dp, tensor, cache_dtype = self._placement(compute_dtype)
        pages = plan_pages(
            model_cfg, self.config, rows, width, data_parallel=dp, tensor=tensor, itemsize=cache_dtype.itemsize
        )
        return {
            "slots": pages.slots,
            "pages": pages.pages,
            "page_size": pages.page_size,
            "dp": dp,
            "cache_dtype": cache_dtype,
        }

    def _rollout(
        self, out: dict[str, np.ndarray], prompt_ids, prompt_mask, n: int, logprobs: jax.Array | None
    ) -> Rollout:
        t = self.config.max_new_tokens
        return Rollout(
            prompt_ids=np.repeat(np.asarray(prompt_ids, np.int32), n, axis=0),
            prompt_mask=np.repeat(np.asarray(prompt_mask).astype(bool), n, axis=0),
            completion_ids=out["tokens"],
            completion_mask=np.arange(t)[None, :] < out["length"][:, None],
            logprobs=logprobs,
            lengths=out["length"].astype(np.int32),
            finish=np.where(out["eos"], FinishReason.EOS, FinishReason.LENGTH).astype(np.int8),
        )

    def _run_wave(self, params, ids, mask, keys, active, width) -> _DecodeState:
        segments = self.config.segments(width)
        state = self.prefill_fn(params, *to_global((ids, mask, keys, active), self.mesh), slots=segments[0])
        for k, slots in enumerate(segments):
            if k:
                if bool(to_host(state.done).all()):
                    break
                state = self.grow_fn(state, slots=slots)
            state = self.decode_fn(params, state, jnp.asarray(slots - width, jnp.int32))
        return state

    def _model_info(self, params) -> tuple[Qwen2Config, Any]:
        model = nnx.merge(self.graphdef, params)  # new Variables around the same arrays: no copy
        return model.config, model.compute_dtype


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def row_key_data(key: int | jax.Array, rows: int) -> np.ndarray:
    """[rows, 2] uint32 raw keys: row r gets fold_in(key, r), independent of how rows are batched."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    elif isinstance(key, jax.Array) and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32:
            raise ValueError(f"key must be an int seed or a JAX PRNG key, got an array of {key.dtype}")
        key = jax.random.wrap_key_data(key)
    elif not isinstance(key, jax.Array):
        raise ValueError(f"key must be an int seed or a JAX PRNG key, got {type(key).__name__}")
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows, dtype=jnp.uint32))
    return np.asarray(jax.random.key_data(keys))


def _check_row_keys(row_keys, rows: int) -> np.ndarray:
    keys = np.asarray(row_keys)
    if keys.shape != (rows, 2) or keys.dtype != np.uint32:
        got = f"{keys.dtype}{list(keys.shape)}"
        raise ValueError(f"row_keys must be a [{rows}, 2] uint32 array (one raw key per row), got {got}")
    return keys


def _row_callback(on_row_done: Callable[[FinishedRow], None]) -> Callable[[int, np.ndarray, bool, int], None]:
    """The schedulers' (row, tokens, eos, decoding) call as a FinishedRow; an error names the row it was for."""

    def call(row: int, tokens: np.ndarray, eos: bool, decoding: int) -> None:
        try:
            on_row_done(FinishedRow(row, tokens, FinishReason.EOS if eos else FinishReason.LENGTH, decoding))
        except Exception as e:
            e.add_note(f"raised by generate's on_row_done for row {row}: generation stopped there")
            raise

    return call


def _check_prompts(prompt_ids, prompt_mask, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(prompt_ids)
    mask = np.asarray(prompt_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [B, P]")
    if ids.shape[0] == 0:
        raise ValueError("no prompts to generate from (batch of 0)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must be integers, got {ids.dtype}")
    mask = mask.astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"prompt row {int(empty[0])} has no tokens (its mask is all False)")
    # Left padding: once a row's mask turns True it stays True.
    right = np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
    if right.size:
        raise ValueError(f"prompt row {int(right[0])} is not left-padded (its mask goes from True back to False)")
    bad = mask & ((ids < 0) | (ids >= vocab))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"prompt row {r} holds token id {int(ids[r, c])} outside the vocabulary (size {vocab})")
    return ids.astype(np.int32), mask


def _left_pad(ids: np.ndarray, mask: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-pads left-padded rows to ``width`` columns (dropping all-padding leading columns)."""
    b, p = ids.shape
    out_ids = np.full((b, width), pad_id, np.int32)
    out_mask = np.zeros((b, width), bool)
    keep = min(p, width)
    out_ids[:, width - keep :] = np.where(mask[:, p - keep :], ids[:, p - keep :], pad_id)
    out_mask[:, width - keep :] = mask[:, p - keep :]
    return out_ids, out_mask
