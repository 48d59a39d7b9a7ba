"""The run config: one section per module, composed, loaded from YAML, checked before any compile.

Example::

    cfg = load_run_config("configs/justrl_deepseek_1p5b.yaml", ["rollout.max_new_tokens=4096"])
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import ClassVar

from justrl_jax.checkpoint import CheckpointConfig
from justrl_jax.config_io import ConfigError, apply_overrides, from_dict, load_yaml
from justrl_jax.data import DataConfig
from justrl_jax.demo import DemoConfig
from justrl_jax.model.attention import check_implementation
from justrl_jax.sampling_settings import SamplingSettings
from justrl_jax.train_step import TrainConfig
from justrl_jax.verifier import VerifierConfig
from justrl_jax.wandb_run import WandbConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # the repository's configs/ (editable install)


class DType(enum.Enum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"

    @property
    def jnp(self):
        import jax.numpy as jnp

        return jnp.float32 if self is DType.FLOAT32 else jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The starting policy and its precision.

    path: HF directory, hub id, run directory or checkpoint step (filled in by the demo when empty).
    dtype: compute dtype (bfloat16 on accelerators, as the recipe's FSDP mixed precision).
    param_dtype: master weights (float32, as the recipe).
    attention: full-sequence attention (training and prefill): auto | xla | blockwise | splash | cudnn
        (see :mod:`justrl_jax.model.attention`; auto = splash on TPU, cudnn on GPU, blockwise on CPU).
    """

    path: str = ""
    dtype: DType = DType.FLOAT32
    param_dtype: DType = DType.FLOAT32
    attention: str = "auto"

    def __post_init__(self):
        check_implementation(self.attention)


@dataclasses.dataclass(frozen=True)
class RolloutConfig(SamplingSettings):
    """Sampling of the training rollouts (JustRL: 256 prompts x 8, T 1.0, top_p 1.0, 15,360 tokens); the
    sampling keys (temperature, top_p, top_k, max_new_tokens, kv_cache_budget_gb, ...) are SamplingSettings'."""

    section: ClassVar[str] = "rollout"

    max_new_tokens: int = 15360
    prompts_per_step: int = 256
    samples_per_prompt: int = 8
    length_bucket: int = 128  # completions are trimmed to a multiple of this for the update

    def __post_init__(self):
        super().__post_init__()
        if self.greedy:
            raise ValueError("rollout.greedy must be false: GRPO learns from groups of sampled responses")
        for name in ("prompts_per_step", "samples_per_prompt", "length_bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The outer loop.

    total_steps: rollout steps to run (JustRL reports 4,380 / 3,440); 0 = one pass over the data.
    seed: sampling seed; each step's key is derived from (seed, step), so a resume is exact.
    max_nonfinite_steps: stop after this many consecutive steps whose updates were all skipped.
    wandb: Weights & Biases logging next to metrics.jsonl and TensorBoard (off while its project is empty).
    """

    total_steps: int = 0
    seed: int = 0
    max_nonfinite_steps: int = 5
    distributed_timeout_s: int = 300  # a host that stops answering fails the others after this
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)

    def __post_init__(self):
        if self.total_steps < 0:
            raise ValueError(f"loop.total_steps must be >= 0, got {self.total_steps}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"loop.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.distributed_timeout_s < 1:
            raise ValueError(f"loop.distributed_timeout_s must be >= 1, got {self.distributed_timeout_s}")


VALIDATION_GRADERS = ("robust", "math-verify", "justrl")


@dataclasses.dataclass(frozen=True)
class ValidationConfig(SamplingSettings):
    """In-training validation (JustRL: every 50 steps and before training; AIME24/AIME25/AMC23 avg@32
    at T 0.7, top_p 0.9, 31,744 tokens); the sampling keys are SamplingSettings' (a KV-cache budget of
    0 takes the rollout's)."""

    section: ClassVar[str] = "validation"

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 31744
    enabled: bool = False
    every_steps: int = 50
    before_train: bool = True
    data_dir: str = ""
    benchmarks: tuple[str, ...] = ("aime24", "aime25", "amc23")
    n_samples: int = 32
    grader: str = "robust"  # robust | math-verify (veRL's, as JustRL validated; optional package) | justrl

    def __post_init__(self):
        super().__post_init__()
        if self.grader not in VALIDATION_GRADERS:
            raise ValueError(f"validation.grader must be one of {list(VALIDATION_GRADERS)}, got {self.grader!r}")
        if self.enabled and self.grader == "math-verify":
            from justrl_jax.verifier.math_verify_rule import require_math_verify

            require_math_verify("validation.grader: math-verify")
        if self.every_steps < 1:
            raise ValueError(f"validation.every_steps must be >= 1, got {self.every_steps}")
        if self.n_samples < 1:
            raise ValueError(f"validation.n_samples must be >= 1, got {self.n_samples}")
        if self.enabled and not self.data_dir:
            raise ValueError("validation.enabled needs validation.data_dir (the benchmarks' folder)")
        if not self.benchmarks:
            raise ValueError("validation.benchmarks is empty")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    verifier: VerifierConfig = dataclasses.field(default_factory=VerifierConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    mesh: str = ""  # e.g. "4x4" or "fsdp=8,tensor=2"; --mesh overrides; empty: all devices on fsdp

    def __post_init__(self):
        if self.demo.enabled and (self.model.path or self.data.path):
            raise ValueError("demo.enabled builds its own model and data: leave model.path and data.path empty")
        if not self.demo.enabled:
            if not self.model.path:
                raise ValueError("model.path is empty: name an HF directory, hub id or run directory")
            if not self.data.path:
                raise ValueError("data.path is empty: name the training prompts (parquet or JSONL)")
        n = self.rollout.sequences
        if n % self.train.mini_batch_size:
            raise ValueError(
                f"rollout.prompts_per_step x samples_per_prompt = {n} responses is not a multiple "
                f"of train.mini_batch_size ({self.train.mini_batch_size})"
            )
        if self.train.mini_batch_size % self.rollout.samples_per_prompt:
            raise ValueError(
                f"train.mini_batch_size ({self.train.mini_batch_size}) must hold whole prompt groups "
                f"of rollout.samples_per_prompt ({self.rollout.samples_per_prompt})"
            )

    def plan_inputs(self, fsdp: int, sampler_waves: int = 0):
        """The memory plan's workload for this run on ``fsdp`` data-parallel shards (see ``memory_plan``)."""
        from justrl_jax.memory_estimate import PlanInputs

        itemsize = 2 if self.model.dtype is DType.BFLOAT16 else 4
        return PlanInputs(
            rollout_sequences=self.rollout.sequences,
            prompt_tokens=self.data.max_prompt_tokens,
            max_new_tokens=self.rollout.max_new_tokens,
            micro_batch_sequences=max(1, self.train.micro_batch_size // fsdp),
            compute_bytes=itemsize,
            kv_cache_bytes_per_value=itemsize,
            logp_chunk_tokens=self.train.logp_chunk_size,
            sampler_waves=sampler_waves,
            max_concurrent_rows=self.rollout.max_concurrent_rows,
            packed_row_tokens=self.train.max_tokens_per_row or 0,
            micro_batch_tokens=(self.train.micro_batch_tokens or 0) if self.train.max_tokens_per_row else 0,
            attention=self.model.attention,
        )


def check_against_mesh(cfg: RunConfig, mesh) -> None:
    """What can only be checked once the mesh is known; raised before anything compiles."""
    from justrl_jax.sharding import data_parallel_size

    dp = data_parallel_size(mesh)
    n = cfg.rollout.sequences
    if n % dp:
        raise ValueError(
            f"rollout batch of {n} responses is not divisible by the data-parallel size {dp} "
            f"(mesh {dict(mesh.shape)}); change rollout.prompts_per_step or --mesh"
        )
    if cfg.train.mini_batch_size % dp:
        raise ValueError(
            f"train.mini_batch_size ({cfg.train.mini_batch_size}) is not divisible by the "
            f"data-parallel size {dp} (mesh {dict(mesh.shape)})"
        )


def default_config_path() -> Path:
    return CONFIG_DIR / "demo.yaml"


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Loads a preset (default: the demo), applies ``key=value`` overrides, validates everything."""
    path = Path(path) if path is not None else default_config_path()
    if not path.exists() and (CONFIG_DIR / path.name).exists():
        path = CONFIG_DIR / path.name  # 'configs/x.yaml' also works from outside the source tree
    data = apply_overrides(load_yaml(path), list(overrides))
    try:
        return from_dict(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
