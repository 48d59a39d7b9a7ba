"""``Verifier``: the object the training loop and the evaluation call.

Strict mode (JustRL's reward) is evaluated inline in the calling thread: it is pure string work
on the last 300 characters, at well over 100k responses per second per core, so a process pool
would only add latency. Robust mode prepares each sample in the caller (extraction,
normalisation, cache lookup; linear time on capped input) and sends the rest to a ``WorkerPool``
under per-sample and per-batch deadlines. JustRL mode (its evaluation rule) goes the same way:
the last box is read in the caller, the normalisations and SymPy run in the pool. ``submit``
returns at once, so the accelerator can generate the next batch while this one is verified.

Example::

    with Verifier(VerifierConfig(mode=VerifierMode.ROBUST, workers=4)) as verifier:
        pending = verifier.submit(responses, golds)      # returns immediately
        ...                                              # generate the next batch
        rewards = [v.reward for v in pending.result()]
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from justrl_jax.verifier.justrl_rule import prepare_justrl
from justrl_jax.verifier.pool import Batch, TaskResult, WorkerPool
from justrl_jax.verifier.robust import Prepared, prepare
from justrl_jax.verifier.strict import strict_verdict
from justrl_jax.verifier.verdict import Verdict, VerdictStatus, make_verdict
from justrl_jax.verifier.verifier_config import VerifierConfig, VerifierMode


class _VerdictCache:
    """A thread-safe LRU map (normalised prediction, normalised gold) -> (correct, status)."""

    def __init__(self, size: int):
        self.size = size
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key, value) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


class PendingVerdicts:
    """The verdicts of one submitted batch; ``result()`` waits for them (in submission order)."""

    def __init__(self, verdicts: list[Verdict | None], batch: Batch | None = None, slots=None, finish=None):
        self._verdicts = verdicts
        self._batch = batch
        self._slots = slots or []  # [(task index, [response indices], cache key)]
        self._finish = finish
        self._lock = threading.Lock()
        self._done = batch is None

    def done(self) -> bool:
        """True when ``result()`` would not wait."""
        return self._done or (self._batch is not None and self._batch.done.is_set())

    def result(self, timeout: float | None = None) -> list[Verdict]:
        """The verdicts; raises TimeoutError if not ready within ``timeout`` seconds."""
        with self._lock:
            if not self._done:
                results = self._batch.result(timeout)
                self._finish(self._verdicts, self._slots, results)
                self._done = True
        return list(self._verdicts)  # type: ignore[arg-type]


class Verifier:
    """Scores decoded responses against gold answers; see the module docstring.

    Usable as a context manager; ``close()`` stops the worker processes (robust mode).
    """

    def __init__(self, config: VerifierConfig | None = None):
        self.config = config or VerifierConfig()
        self._cache = _VerdictCache(self.config.cache_size)
        self._pool: WorkerPool | None = None
        if self.config.mode is not VerifierMode.STRICT:
            cfg = self.config
            self._pool = WorkerPool(
                workers=cfg.workers,
                sample_timeout_s=cfg.sample_timeout_s,
                max_tasks_per_worker=cfg.max_tasks_per_worker,
                memory_limit_mb=cfg.memory_limit_mb,
            )

    @property
    def pool(self) -> WorkerPool | None:
        return self._pool

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    def verify(
        self, responses: Sequence[str], golds: Sequence[str], response_lengths: Sequence[int] | None = None
    ) -> list[Verdict]:
        """Verdicts for ``responses`` against ``golds`` (blocking)."""
        return self.submit(responses, golds, response_lengths).result()

    def submit(
        self, responses: Sequence[str], golds: Sequence[str], response_lengths: Sequence[int] | None = None
    ) -> PendingVerdicts:
        """Starts verifying a batch and returns at once (strict mode: already finished)."""
        lengths = self._check(responses, golds, response_lengths)
        cfg = self.config
        if cfg.mode is VerifierMode.STRICT:
            return PendingVerdicts(
                [strict_verdict(r, g, cfg, n) for r, g, n in zip(responses, golds, lengths, strict=True)]
            )
        verdicts: list[Verdict | None] = [None] * len(responses)
        groups: dict[tuple[str, str], list[int]] = {}
        preds: dict[int, str | None] = {}
        kind = {VerifierMode.JUSTRL: "justrl", VerifierMode.MATH_VERIFY: "math_verify"}.get(cfg.mode, "judge")
        for i, (response, gold) in enumerate(zip(responses, golds, strict=True)):
            try:
                if kind == "justrl":
                    prepared = prepare_justrl(response, gold)
                elif kind == "math_verify":  # Math-Verify extracts for itself, in the worker
                    prepared = Prepared(None, response, gold)
                else:
                    prepared = prepare(response, gold, cfg.max_answer_chars)
            except Exception:  # a bug on odd text must cost one sample, not the training step
                verdicts[i] = make_verdict(False, None, VerdictStatus.ERROR, cfg, lengths[i])
                continue
            preds[i] = prepared.pred
            if prepared.status is not None:
                verdicts[i] = make_verdict(prepared.correct, prepared.pred, prepared.status, cfg, lengths[i])
                continue
            key = (prepared.pred_key, prepared.gold_key)
            cached = self._cache.get(key)
            if cached is not None:
                verdicts[i] = make_verdict(cached[0], prepared.pred, cached[1], cfg, lengths[i])
                continue
            groups.setdefault(key, []).append(i)
        if not groups:
            return PendingVerdicts(verdicts)
        slots = [(t, indices, key) for t, (key, indices) in enumerate(groups.items())]
        batch = self._pool.submit([(kind, key) for key in groups], cfg.batch_timeout_s)

        def finish(out: list, slots_: list, results: list[TaskResult]) -> None:
            for task, indices, key in slots_:
                correct, status = _decode(results[task])
                if results[task].ok:  # a judged verdict; a timeout or crash is retried next time
                    self._cache.put(key, (correct, status))
                for i in indices:
                    out[i] = make_verdict(correct, preds[i], status, cfg, lengths[i])

        return PendingVerdicts(verdicts, batch, slots, finish)

    def close(self) -> None:
        """Stops the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, responses, golds, response_lengths) -> list[int | None]:
        if isinstance(responses, str) or isinstance(golds, str):
            raise TypeError("responses and golds must be sequences of strings, not a single string")
        if len(responses) != len(golds):
            raise ValueError(f"verifier got {len(responses)} responses but {len(golds)} golds")
        for name, values in (("responses", responses), ("golds", golds)):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise TypeError(f"{name}[{i}] must be a str, got {type(value).__name__}")
        if response_lengths is None:
            if self.config.overlong is not None:
                raise ValueError("verifier.overlong is set: response_lengths (tokens) are required")
            return [None] * len(responses)
        if len(response_lengths) != len(responses):
            raise ValueError(f"verifier got {len(response_lengths)} response_lengths for {len(responses)} responses")
        return [int(n) for n in response_lengths]


def _decode(result: TaskResult) -> tuple[bool, VerdictStatus]:
    if result.ok:
        correct, status = result.value
        return bool(correct), VerdictStatus(status)
    if result.error == "timeout":
        return False, VerdictStatus.TIMEOUT
    return False, VerdictStatus.ERROR
