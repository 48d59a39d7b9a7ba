"""EvalConfig: what an evaluation samples and how it scores, frozen and checked before any compile.

The defaults are JustRL's evaluation protocol (recipe.md section 6): the nine benchmarks with
their own N (32 or 4), temperature 0.7, top_p 0.9, up to 31,744 new tokens, the prompt
``"{problem} Please reason step by step, and put your final answer within \\boxed{}."`` as one
user message through the chat template, and the robust verifier.

Example::

    cfg = EvalConfig(benchmarks=("aime24", "math500"), n_samples=4, max_new_tokens=4096)
    [s.column for s in cfg.specs()]        # ['AIME24@4', 'MATH-500@4']
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from justrl_jax.evaluation.benchmarks import BENCHMARKS, BenchmarkSpec, get_benchmark
from justrl_jax.prompts import PromptFormat
from justrl_jax.sampling_settings import SamplingSettings
from justrl_jax.verifier import VerifierConfig, VerifierMode


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _robust() -> VerifierConfig:
    return VerifierConfig(mode=VerifierMode.ROBUST)


@dataclasses.dataclass(frozen=True)
class EvalConfig(SamplingSettings):
    """One evaluation; ``n_samples`` / ``max_new_tokens`` apply to every chosen benchmark. The sampling
    keys (temperature, top_p, top_k, greedy, max_new_tokens, kv_cache_budget_gb, decode_chunk) are
    SamplingSettings'."""

    section: ClassVar[str] = "eval"

    benchmarks: tuple[str, ...] = tuple(s.name for s in BENCHMARKS)  # any spelling get_benchmark accepts
    n_samples: int | None = None  # None: each benchmark's own N (32 or 4)
    max_new_tokens: int = 31744  # JustRL: max_tokens=31744 (32,768 context minus the prompt budget)
    temperature: float = 0.7
    top_p: float = 0.9  # top_k: -1, off (vLLM's default, as JustRL ran)
    seed: int = 0  # every generate call's seed derives from (seed, benchmark, sample index, problem index)
    # (problem, sample) pairs per unit (a seed; resume and --max-samples granularity) and, without a KV budget,
    # the rows that decode at once; every pair of the evaluation goes through one scheduler stream.
    batch_size: int = 64
    prompt_format: PromptFormat = PromptFormat.EVAL
    max_problems: int | None = None  # None: every problem; else the first N of each benchmark (smoke tests)
    bucket_multiple: int = 64  # prompts are left-padded to a multiple of this (few compiled shapes)
    verifier: VerifierConfig = dataclasses.field(default_factory=_robust)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.benchmarks, str) or not self.benchmarks:
            raise ValueError(f"eval.benchmarks must be a non-empty list of names, got {self.benchmarks!r}")
        names = []
        for b in self.benchmarks:
            try:
                names.append(get_benchmark(b).name)
            except ValueError as e:
                raise ValueError(f"eval.benchmarks: {e}") from None
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"eval.benchmarks lists {duplicates[0]!r} twice")
        object.__setattr__(self, "benchmarks", tuple(names))
        if self.n_samples is not None and (not _is_int(self.n_samples) or self.n_samples < 1):
            raise ValueError(f"eval.n_samples must be None (each benchmark's N) or >= 1, got {self.n_samples!r}")
        for name in ("batch_size", "bucket_multiple"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"eval.{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"eval.seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.prompt_format, PromptFormat):
            raise ValueError(
                f"eval.prompt_format must be one of {[f.value for f in PromptFormat]}, got {self.prompt_format!r}"
            )
        if self.max_problems is not None and (not _is_int(self.max_problems) or self.max_problems < 1):
            raise ValueError(f"eval.max_problems must be None (all) or >= 1, got {self.max_problems!r}")
        if not isinstance(self.verifier, VerifierConfig):
            raise ValueError(f"eval.verifier must be a VerifierConfig, got {type(self.verifier).__name__}")

    def specs(self) -> tuple[BenchmarkSpec, ...]:
        """The chosen benchmarks in the paper's column order, with the ``n_samples`` override applied."""
        chosen = set(self.benchmarks)
        out = []
        for spec in BENCHMARKS:
            if spec.name in chosen:
                n = spec.n_samples if self.n_samples is None else self.n_samples
                out.append(dataclasses.replace(spec, n_samples=n))
        return tuple(out)
