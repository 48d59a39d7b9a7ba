"""Bytes per device before anything compiles: parameters, optimizer, gradients, KV cache, activations.

Parameter, gradient and optimizer bytes are exact: they come from the model's own parameter
shapes and the same logical-axis rules the run shards them with (a dimension a mesh axis does
not divide is replicated, e.g. 2 KV heads over tensor=4). Activations are an estimate of the
peak of one training micro-batch with per-layer rematerialisation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from justrl_jax.model.attention import DEFAULT_BLOCK, check_implementation
from justrl_jax.model.construct import abstract_model
from justrl_jax.model.qwen2 import Qwen2Config
from justrl_jax.sharding import MeshConfig, logical_spec

log = logging.getLogger(__name__)

GIB = 1 << 30

# Usable accelerator memory per device (bytes) by name.
DEVICE_MEMORY: dict[str, int] = {
    "tpu-v4": 32 * GIB,
    "tpu-v5e": 16 * GIB,
    "tpu-v5p": 95 * GIB,
    "tpu-v6e": 32 * GIB,
    "h100": 80 * 10**9,
    "h200": 141 * 10**9,
}


@dataclasses.dataclass(frozen=True)
class _MeshShape:
    """Just enough of a Mesh (``.shape``) for ``logical_spec`` without devices."""

    shape: dict[str, int]


_MAY_BE_ZERO = ("sampler_waves", "max_concurrent_rows", "packed_row_tokens", "micro_batch_tokens", "update_copies")


@dataclasses.dataclass(frozen=True)
class PlanInputs:
    """The workload: JustRL's defaults are 256 prompts x 8 samples, 1,024 + 15,360 tokens."""

    rollout_sequences: int = 2048  # prompts x samples generated per step
    prompt_tokens: int = 1024
    max_new_tokens: int = 15360
    micro_batch_sequences: int = 1  # sequences per device per micro-batch in the update
    kv_cache_bytes_per_value: int = 2  # bf16 cache
    compute_bytes: int = 2  # bf16 activations
    param_bytes: int = 4  # fp32 master weights
    logp_chunk_tokens: int = 1024  # sequence chunk for logprobs/entropy
    sampler_waves: int = 0  # generation split into this many waves; 0 = as few as fit the device
    page_size: int = 128  # tokens per KV page (the continuous sampler's default)
    max_concurrent_rows: int = 0  # decode slots over all devices; 0: as many as fit (see sampler_waves)
    packed_row_tokens: int = 0  # train.max_tokens_per_row; 0 = the padded layout (one sequence a row)
    micro_batch_tokens: int = 0  # packed: tokens per device per micro-batch (0 = one row)
    attention: str = "auto"  # model.attention; auto is resolved by the device (see attention_for)
    attention_block: int = DEFAULT_BLOCK  # blockwise attention's block
    # Decoder layers whose intermediates are live at once in the backward pass: 1 where per-layer remat
    # bounds them (the assumption for accelerators, not measured here); XLA:CPU keeps every layer's
    # (measured: its compiled temporaries barely change with remat; scripts/memory_plan_vs_bench.py).
    live_layers: int = 1
    # fp32 parameter-sized buffers the optimizer update holds beside the state: new parameters and both
    # moments (3) where the outputs do not reuse the donated inputs' memory (XLA:CPU), else 0.
    update_copies: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name == "attention":
                check_implementation(self.attention)
                continue
            minimum = 0 if f.name in _MAY_BE_ZERO else 1
            if getattr(self, f.name) < minimum:
                raise ValueError(f"plan.{f.name} must be >= {minimum}, got {getattr(self, f.name)}")
        if self.packed_row_tokens and self.micro_batch_tokens and self.micro_batch_tokens < self.packed_row_tokens:
            raise ValueError(
                f"plan.micro_batch_tokens ({self.micro_batch_tokens}) is below one packed row "
                f"({self.packed_row_tokens})"
            )

    def micro_batch_shape(self) -> tuple[int, int]:
        """(rows, tokens per row) of one micro-batch on one device."""
        if self.packed_row_tokens:
            return max(1, self.micro_batch_tokens // self.packed_row_tokens), self.packed_row_tokens
        return self.micro_batch_sequences, self.prompt_tokens + self.max_new_tokens


def attention_for(name: str, device: str | None, compute_bytes: int) -> str:
    """The implementation ``model.attention`` stands for on ``device`` (None: this CPU), as the model picks."""
    if name != "auto":
        return name
    if device is not None and device.startswith("tpu"):
        return "splash"
    if device is not None and compute_bytes == 2:
        return "cudnn"
    return "blockwise"


# Live fp32 [heads, T, S] (or [heads, T, block]) arrays at the attention's peak in the backward pass
# (scores, probabilities, their gradients and masks), measured on the bench model (see
# scripts/memory_plan_vs_bench.py).
_XLA_SCORE_COPIES = 4
_BLOCK_TILE_COPIES = 4


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    params_per_device: int
    grads_per_device: int
    optimizer_per_device: int
    kv_cache_per_device: int
    sampler_waves: int
    activations_per_device: int
    total_params: int
    device_memory: int | None
    kv_pages_per_device: int = 0  # pages of this device's data shard's pool (its concurrent rows at full length)
    rollout_weights_per_device: int = 0  # the weights in the compute dtype, for decoding (sampler.decode_weights)
    kv_page_size: int = 128
    concurrent_rows_per_device: int = 0

    @property
    def training_peak(self) -> int:
        return self.params_per_device + self.grads_per_device + self.optimizer_per_device + self.activations_per_device

    @property
    def generation_peak(self) -> int:
        return (
            self.params_per_device
            + self.optimizer_per_device
            + self.rollout_weights_per_device
            + self.kv_cache_per_device
        )

    @property
    def peak(self) -> int:
        return max(self.training_peak, self.generation_peak)

    def fits(self) -> bool:
        return self.device_memory is None or self.peak <= self.device_memory

    def table(self) -> str:
        rows = [
            ("parameters (fp32)", self.params_per_device),
            ("gradients (fp32)", self.grads_per_device),
            ("AdamW moments (2 x fp32)", self.optimizer_per_device),
            ("weights for decoding (compute dtype)", self.rollout_weights_per_device),
            (
                f"KV cache ({self.concurrent_rows_per_device} rows at once x "
                f"{self.kv_pages_per_device // max(self.concurrent_rows_per_device, 1)} pages of "
                f"{self.kv_page_size} tokens = {self.kv_pages_per_device:,} pages; {self.sampler_waves} row turn(s))",
                self.kv_cache_per_device,
            ),
            ("activations (one micro-batch)", self.activations_per_device),
            ("peak, training", self.training_peak),
            ("peak, generation", self.generation_peak),
        ]
        lines = [f"model parameters: {self.total_params:,}"]
        lines += [f"{name:<32}{value / GIB:>10.2f} GiB" for name, value in rows]
        if self.device_memory is not None:
            verdict = "fits" if self.fits() else "DOES NOT FIT"
            lines.append(f"{'device memory':<32}{self.device_memory / GIB:>10.2f} GiB  -> {verdict}")
        return "\n".join(lines)


def sharded_param_bytes(
    config: Qwen2Config, mesh: MeshConfig, num_devices: int, bytes_per_value: int
) -> tuple[int, int]:
    """(bytes of parameters on one device, total parameter count), exactly, from the real shapes."""
    fsdp, tensor = mesh.resolve(num_devices)
    shape = _MeshShape(MeshConfig(fsdp, tensor).axis_sizes())
    state = nnx.state(abstract_model(config), nnx.Param)
    per_device = 0
    total = 0
    for _, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        axes = variable.get_metadata().get("logical_axes")
        spec = logical_spec(axes, shape, value.shape) if axes else ()
        local = 1
        for dim, axis in zip(value.shape, tuple(spec) + (None,) * (len(value.shape) - len(spec)), strict=True):
            local *= dim // (shape.shape[axis] if axis else 1)
        per_device += local * bytes_per_value
        total += math.prod(value.shape)
    return per_device, total


def plan_memory(
    config: Qwen2Config,
    mesh: MeshConfig,
    num_devices: int,
    inputs: PlanInputs = PlanInputs(),
    device: str | None = None,
) -> MemoryPlan:
    if device is not None and device not in DEVICE_MEMORY:
        raise ValueError(f"unknown device {device!r}; choose one of {sorted(DEVICE_MEMORY)}")
    fsdp, tensor = mesh.resolve(num_devices)
    params, total = sharded_param_bytes(config, mesh, num_devices, inputs.param_bytes)
    fp32_params = params // inputs.param_bytes * 4
    # The sampler decodes from a copy of the weights in the compute dtype when that is narrower.
    rollout_weights = (
        params // inputs.param_bytes * inputs.compute_bytes if inputs.compute_bytes < inputs.param_bytes else 0
    )

    # KV cache, in pages (the continuous sampler's pool): each fsdp (data) shard has its own slots and its own
    # pool, which only its devices hold (justrl_jax.page_pool), so a device counts its shard's rows; KV heads
    # split over tensor only when divisible. A row at its longest holds ceil((prompt + new - 1) / page_size)
    # pages; the pool is planned for every concurrent row at full length (more rows than that may run, and
    # preempt).
    kv_heads = config.num_kv_heads // tensor if config.num_kv_heads % tensor == 0 else config.num_kv_heads
    slots = inputs.prompt_tokens + inputs.max_new_tokens
    row_pages = math.ceil((slots - 1) / inputs.page_size)
    page_bytes = 2 * config.num_layers * inputs.page_size * kv_heads * config.head_dim * inputs.kv_cache_bytes_per_value
    per_seq = row_pages * page_bytes
    seqs_total = math.ceil(inputs.rollout_sequences / fsdp)
    if inputs.max_concurrent_rows:
        seqs_total = min(seqs_total, math.ceil(inputs.max_concurrent_rows / fsdp))
    waves = inputs.sampler_waves
    if waves == 0:
        waves = 1
        if device is not None:  # as few turns as leave the cache room beside params and optimizer
            room = DEVICE_MEMORY[device] - 4 * fp32_params - rollout_weights
            waves = max(1, math.ceil(seqs_total * per_seq / room)) if room > per_seq else seqs_total
    concurrent = math.ceil(seqs_total / waves)
    waves = math.ceil(math.ceil(inputs.rollout_sequences / fsdp) / concurrent)
    kv = concurrent * per_seq

    # Activations of one micro-batch (rows x w tokens on this device): remat keeps each layer's input;
    # live_layers layers are live at a time (MLP hidden and the attention's working set, with their
    # gradients), plus one chunk of fp32 logits per row (and the update's buffers, see PlanInputs).
    rows, w = inputs.micro_batch_shape()
    t = rows * w
    heads = config.num_heads // tensor if config.num_heads % tensor == 0 else config.num_heads
    mlp = config.intermediate_size // tensor if config.intermediate_size % tensor == 0 else config.intermediate_size
    saved = config.num_layers * t * config.hidden_size * inputs.compute_bytes
    layer = t * (4 * config.hidden_size + 3 * mlp) * inputs.compute_bytes
    impl = attention_for(inputs.attention, device, inputs.compute_bytes)
    if impl == "xla":  # fp32 scores over the whole row
        attention = rows * heads * w * w * 4 * _XLA_SCORE_COPIES
    elif impl == "blockwise":  # fp32 tiles of one query block against one key block
        block = min(inputs.attention_block, w)
        attention = rows * heads * block * block * 4 * _BLOCK_TILE_COPIES
        # remat keeps each layer's attention output and fp32 log-sum-exp (attention.REMAT_POLICY)
        saved += config.num_layers * t * heads * (config.head_dim * inputs.compute_bytes + 4)
    else:  # fused kernels: tiles in on-chip memory; the log-sum-exp per query stays
        attention = rows * heads * w * 4
        if impl == "cudnn":
            # jax.nn.dot_product_attention takes segments only as a dense mask, which it turns into an additive
            # bias: a bool and a compute-dtype [rows, 1, T, S] array per layer call (attention.cudnn_attention).
            attention += rows * w * w * (1 + inputs.compute_bytes)
    vocab = config.vocab_size // tensor if config.vocab_size % tensor == 0 else config.vocab_size
    logits = rows * min(inputs.logp_chunk_tokens, w) * vocab * 4 * 3
    live = min(inputs.live_layers, config.num_layers) * (2 * layer + attention)  # forward values and gradients
    activations = saved + live + logits + inputs.update_copies * fp32_params
    return MemoryPlan(
        params_per_device=params,
        grads_per_device=fp32_params,
        optimizer_per_device=2 * fp32_params,
        kv_cache_per_device=kv,
        rollout_weights_per_device=rollout_weights,
        sampler_waves=waves,
        kv_pages_per_device=concurrent * row_pages,
        kv_page_size=inputs.page_size,
        concurrent_rows_per_device=concurrent,
        activations_per_device=activations,
        total_params=total,
        device_memory=DEVICE_MEMORY.get(device) if device else None,
    )


def advice(plan: MemoryPlan, inputs: PlanInputs, mesh: MeshConfig) -> str:
    """What to change when the plan does not fit, largest item first."""
    items = {
        "the KV cache: lower rollout.max_new_tokens or the rollout batch, or use more fsdp devices": (
            plan.kv_cache_per_device
        ),
        (
            "activations: lower train.micro_batch_tokens / train.max_tokens_per_row (packed) or "
            "train.micro_batch_size, use a memory-linear model.attention, or lower the maximum lengths"
        ): plan.activations_per_device,
        "parameters/optimizer state: shard over more devices (a larger --mesh)": plan.params_per_device
        + plan.grads_per_device
        + plan.optimizer_per_device,
    }
    ranked = sorted(items.items(), key=lambda kv: -kv[1])
    return "; ".join(f"{name} ({value / GIB:.1f} GiB)" for name, value in ranked)


def check_device_memory(
    arch: Qwen2Config, mesh: Mesh, plan_inputs: Callable[..., PlanInputs], device: jax.Device | None = None
) -> MemoryPlan:
    """Logs the memory plan of a run and refuses, before anything compiles, what cannot fit the device.

    ``plan_inputs(fsdp, sampler_waves=...)`` gives the run's workload (``RunConfig.plan_inputs``). Where
    the device reports no memory limit (CPU) the plan is only logged, for one sampler wave.
    """
    device = device or jax.local_devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    mesh_cfg = MeshConfig.of(mesh)
    inputs = plan_inputs(mesh_cfg.fsdp, sampler_waves=1 if limit is None else 0)
    plan = plan_memory(arch, mesh_cfg, mesh.size, inputs)
    if limit is not None:
        plan = dataclasses.replace(plan, device_memory=int(limit))
    log.info("memory plan per device (mesh %s):\n%s", mesh_cfg, plan.table())
    if limit is not None and plan.training_peak > limit:
        raise ValueError(
            f"the update needs ~{plan.training_peak / GIB:.1f} GiB per device but {device.device_kind} has "
            f"{limit / GIB:.1f} GiB; reduce {advice(plan, inputs, mesh_cfg)}"
        )
    return plan
