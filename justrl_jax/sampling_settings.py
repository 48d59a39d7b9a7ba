"""SamplingSettings: how completions are drawn, one type for rollouts, validation, evaluation and ``generate``.

Each of those configs *is* a ``SamplingSettings`` (a subclass that adds its own keys and defaults), so
the YAML keys stay flat (``rollout.temperature``, ``validation.top_p``, ``eval.max_new_tokens``) and the
checks, the strategy and the sampler config are written once, here. Errors name the config section.

Example::

    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=4096)
    settings.strategy()                      # TopP(p=0.9, temperature=0.7, top_k=-1)
    settings.sampler_config(prompt_bucket=64)
    SamplingSettings.of(cfg.rollout)         # just the sampling part of a subclass
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """temperature > 0 (``greedy`` picks the most likely token instead); ``top_p`` in (0, 1]; ``top_k`` -1
    (off) or >= 1; ``max_new_tokens`` per completion; ``kv_cache_budget_gb`` per device (0: plan from the
    device's free memory, no limit where the device reports none, e.g. CPU; see :mod:`justrl_jax.kv_budget`);
    ``max_concurrent_rows``: decode slots of the continuous scheduler (0: as many as the budget allows);
    ``decode_chunk`` (waves scheduler; 0: one cache of prompt + max_new_tokens; C: grow it C slots at a
    time)."""

    section: ClassVar[str] = "sampling"  # the config section named in errors

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    greedy: bool = False
    max_new_tokens: int = 1024
    kv_cache_budget_gb: float = 0.0
    max_concurrent_rows: int = 0
    decode_chunk: int = 0

    def __post_init__(self):
        s = self.section
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
            raise ValueError(f"{s}.temperature must be a finite number > 0 (greedy: {s}.greedy=true), got {t!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"{s}.top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"{s}.top_k must be -1 (off) or >= 1, got {self.top_k!r}")
        if not isinstance(self.greedy, bool):
            raise ValueError(f"{s}.greedy must be true or false, got {self.greedy!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"{s}.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        budget = self.kv_cache_budget_gb
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
            raise ValueError(f"{s}.kv_cache_budget_gb must be >= 0 (0: plan from the device), got {budget!r}")
        if not _is_int(self.max_concurrent_rows) or self.max_concurrent_rows < 0:
            raise ValueError(
                f"{s}.max_concurrent_rows must be an integer >= 0 (0: what the KV budget allows), "
                f"got {self.max_concurrent_rows!r}"
            )
        if not _is_int(self.decode_chunk) or self.decode_chunk < 0:
            raise ValueError(f"{s}.decode_chunk must be an integer >= 0 (0: off), got {self.decode_chunk!r}")

    @classmethod
    def of(cls, settings: SamplingSettings) -> SamplingSettings:
        """The sampling part of any subclass (a rollout, validation or evaluation config)."""
        return SamplingSettings(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(SamplingSettings)})

    def as_dict(self) -> dict:
        """The sampling keys and values (recorded with evaluation samples, so a resume can be checked)."""
        return dataclasses.asdict(SamplingSettings.of(self))

    def strategy(self):
        from justrl_jax.sampling import strategy_for

        return strategy_for(self.temperature, self.top_p, self.top_k, greedy=self.greedy)

    def sampler_config(self, prompt_bucket: int = 64):
        from justrl_jax.kv_budget import kv_cache_budget_bytes
        from justrl_jax.sampler import SamplerConfig

        return SamplerConfig(
            max_new_tokens=self.max_new_tokens,
            strategy=self.strategy(),
            prompt_bucket=prompt_bucket,
            kv_cache_budget_bytes=kv_cache_budget_bytes(self.kv_cache_budget_gb),
            max_concurrent_rows=self.max_concurrent_rows or None,
            decode_chunk=self.decode_chunk,
        )
