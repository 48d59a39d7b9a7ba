"""Benchmarks -> samples -> verdicts -> scores: the evaluation run and the in-training validation.

Work layout. The (problem, sample) pairs of a benchmark are taken sample-major
(sample 0 of every problem, then sample 1, ...) and cut into *units* of ``batch_size`` pairs. A
unit's seed depends only on the benchmark and the config, and each of its rows draws from its own
key (``fold_in(key(seed), position in the unit)``), so a row's sample never depends on which other
rows are generated with it or on what was already done. That is what makes a resumed evaluation
equal an uninterrupted one: only the missing pairs are generated and written.

Seeds. A unit's seed is :func:`sample_seed` of (``--seed``, benchmark name, sample index and
problem index of its first pair), a 31-bit integer like the seeds JustRL drew for vLLM, stored
with every sample; the same seed and config give the same samples.

One stream. Every missing pair of every benchmark goes through one scheduler stream (the
continuous scheduler refills a decode slot as soon as a row ends, so a long evaluation never waits
for the slowest sample of a batch). Each row is handed to the verifier's CPU pool as it ends, while
the others decode; a unit's records are appended (and fsync'ed) once its verdicts, and those of
every unit before it, are in, so each file keeps unit order and a kill loses only the units in flight.

Example::

    policy = load_policy("runs/deepseek", mesh)
    tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
    outcome = evaluate(policy.model, tokenizer, EvalConfig(), "data", "eval/deepseek",
                       eos_ids=policy.eos_ids, mesh=mesh, model_name="runs/deepseek")
    print(markdown_table(outcome.report))
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from flax import nnx

from justrl_jax.data import collate, encode_examples
from justrl_jax.evaluation.benchmarks import VALIDATION_BENCHMARKS, BenchmarkSpec, find_benchmark_file
from justrl_jax.evaluation.eval_config import EvalConfig
from justrl_jax.evaluation.report import RULE_ONLY_NOTE, EvalReport, score_benchmark, write_report
from justrl_jax.evaluation.samples import SampleRecord, SampleStore
from justrl_jax.prompts import PromptExample, PromptFormat, load_examples
from justrl_jax.sampler import FinishedRow, FinishReason, Sampler, SamplerConfig, row_key_data
from justrl_jax.sampling_settings import SamplingSettings
from justrl_jax.verdict_stream import VerdictStream
from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode

log = logging.getLogger(__name__)

VALIDATION_SAMPLING = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=31744)  # JustRL's validation


# --- benchmark data ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark's spec and its problems, in file order (problem index = row)."""

    spec: BenchmarkSpec
    path: Path
    examples: tuple[PromptExample, ...]

    @property
    def fingerprint(self) -> str:
        """A short hash of the problems and golds: a resume must read the same benchmark."""
        digest = hashlib.sha256()
        for e in self.examples:
            digest.update(e.problem.encode("utf-8") + b"\0" + e.gold.encode("utf-8") + b"\0")
        return digest.hexdigest()[:16]


def load_benchmarks(
    data_dir: str | Path, specs: Sequence[BenchmarkSpec], *, max_problems: int | None = None
) -> tuple[Benchmark, ...]:
    """Finds every benchmark's file first (so a missing one fails before any reading or compiling),
    then reads them. Problems and golds are stripped of surrounding whitespace, as JustRL's
    ``evals/gen_vllm.py`` does."""
    paths = [find_benchmark_file(data_dir, spec) for spec in specs]
    out = []
    for spec, path in zip(specs, paths, strict=True):
        examples = load_examples(path, strip_dapo=False)
        if not examples:
            raise ValueError(f"benchmark {spec.name!r}: {path} has no problems")
        examples = [dataclasses.replace(e, problem=e.problem.strip(), gold=e.gold.strip()) for e in examples]
        out.append(Benchmark(spec, path, tuple(examples[:max_problems])))
    return tuple(out)


# --- units and seeds -----------------------------------------------------------------------------


def sample_seed(seed: int, benchmark: str, sample_index: int, problem_index: int) -> int:
    """A 31-bit seed from (seed, benchmark, sample, problem): stable across Python runs and hosts."""
    text = f"{seed}/{benchmark}/{sample_index}/{problem_index}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % (2**31 - 1)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One generate call: its (problem, sample) pairs (at most ``batch_size``) and its seed."""

    pairs: tuple[tuple[int, int], ...]
    seed: int


def plan_units(benchmark: str, n_problems: int, n_samples: int, batch_size: int, seed: int) -> tuple[Unit, ...]:
    """The benchmark's pairs, sample-major, cut into units of ``batch_size`` (see the module docstring)."""
    pairs = [(i, j) for j in range(n_samples) for i in range(n_problems)]
    units = []
    for start in range(0, len(pairs), batch_size):
        chunk = tuple(pairs[start : start + batch_size])
        units.append(Unit(chunk, sample_seed(seed, benchmark, chunk[0][1], chunk[0][0])))
    return tuple(units)


# --- generation ----------------------------------------------------------------------------------


_FINISH_NAMES = {FinishReason.EOS.value: "stop", FinishReason.LENGTH.value: "length"}


class CompletionGenerator:
    """Token prompts -> sampled rows, streamed through one scheduler; each row is reported as it ends.

    The continuous scheduler takes every row in one generate call (at most ``rows`` decode at once when the
    KV budget sets no bound). The waves scheduler gets calls of exactly ``rows`` rows (one compiled shape; the
    last call is filled up with repeats of its last row, whose outputs are dropped).
    """

    def __init__(
        self,
        graphdef,
        tokenizer,
        *,
        rows: int,
        sampler_config: SamplerConfig,
        eos_ids: Sequence[int],
        mesh=None,
        bucket_multiple: int = 64,
    ):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad token")
        if sampler_config.max_concurrent_rows is None and sampler_config.kv_cache_budget_bytes is None:
            # No budget would mean every row of the stream at once: keep the batch size's bound.
            sampler_config = dataclasses.replace(sampler_config, max_concurrent_rows=rows)
        self.tokenizer = tokenizer
        self.rows = rows
        self.bucket_multiple = bucket_multiple
        self.pad_id = int(tokenizer.pad_token_id)
        self.sampler = Sampler(graphdef, sampler_config, mesh=mesh, eos_ids=tuple(eos_ids), pad_id=self.pad_id)

    def stream(
        self,
        params,
        examples: Sequence[PromptExample],
        token_ids: Sequence[Sequence[int]],
        row_keys: np.ndarray,
        on_row_done: Callable[[FinishedRow], None],
    ) -> None:
        """One sample per prompt; row r draws from ``row_keys[r]`` ([R, 2] uint32 raw keys) and is handed to
        ``on_row_done`` as soon as it ends (its ``row`` is the index into ``examples``)."""
        total = len(examples)
        call = total if self.sampler.config.scheduler == "continuous" else self.rows
        for lo in range(0, total, call):
            hi = min(lo + call, total)
            # Waves: repeats of the last prompt keep the batch shape (no recompile for a short last call).
            take = list(range(lo, hi)) + [hi - 1] * (call - (hi - lo))
            batch = collate(
                [examples[r] for r in take],
                [token_ids[r] for r in take],
                self.pad_id,
                bucket_multiple=self.bucket_multiple,
            )

            def done(row: FinishedRow, lo=lo, hi=hi) -> None:
                if lo + row.row < hi:  # a filler's output is dropped
                    on_row_done(dataclasses.replace(row, row=lo + row.row))

            self.sampler.generate(
                params, batch.prompt_ids, batch.prompt_mask, n=1, row_keys=row_keys[take], on_row_done=done
            )

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


# --- benchmarks as one stream --------------------------------------------------------------------


@dataclasses.dataclass
class _Budget:
    """How many more samples this run may write (None: unlimited); a unit is never split."""

    left: int | None

    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0

    def spend(self, n: int) -> None:
        if self.left is not None:
            self.left -= n


@dataclasses.dataclass(frozen=True)
class _UnitWork:
    """The pairs of one unit this run generates (those not on disk), in unit order."""

    benchmark: int  # index into the streamed benchmarks
    unit: Unit
    todo: tuple[int, ...]  # positions in unit.pairs


def plan_work(
    benchmarks: Sequence[Benchmark],
    rows: int,
    seed: int,
    done: Sequence[dict[tuple[int, int], SampleRecord]],
    budget: _Budget,
) -> list[_UnitWork]:
    """The units' missing pairs, benchmark by benchmark, until ``budget`` is spent (checked before each unit)."""
    work = []
    for b, (bench, on_disk) in enumerate(zip(benchmarks, done, strict=True)):
        for unit in plan_units(bench.spec.name, len(bench.examples), bench.spec.n_samples, rows, seed):
            todo = tuple(k for k, pair in enumerate(unit.pairs) if pair not in on_disk)
            if not todo:
                continue
            if budget.exhausted():
                break
            work.append(_UnitWork(b, unit, todo))
            budget.spend(len(todo))
    return work


def run_benchmarks(
    generator: CompletionGenerator,
    params,
    verifier: Verifier,
    benchmarks: Sequence[Benchmark],
    work: Sequence[_UnitWork],
    *,
    prompt_format: PromptFormat,
    write: Callable[[int, list[SampleRecord]], None] | None = None,
) -> list[list[SampleRecord]]:
    """Generates and verifies the pairs of ``work`` as one stream: every row goes to the verifier as it ends,
    while the others decode. A unit's records go to ``write(benchmark index, records)`` as soon as its
    verdicts and those of every unit before it are in (so each file keeps unit order), which makes a kill
    lose only the units still in flight. Returns the new records of each benchmark."""
    token_ids = [encode_examples(generator.tokenizer, b.examples, prompt_format) for b in benchmarks]
    rows = [(w, k) for w in work for k in w.todo]  # (unit work, position in the unit)
    new: list[list[SampleRecord]] = [[] for _ in benchmarks]
    if not rows:
        return new
    examples = [benchmarks[w.benchmark].examples[w.unit.pairs[k][0]] for w, k in rows]
    golds = [e.gold for e in examples]
    keys = np.concatenate([row_key_data(w.unit.seed, len(w.unit.pairs))[list(w.todo)] for w in work])
    prompts = [token_ids[w.benchmark][w.unit.pairs[k][0]] for w, k in rows]
    ended: list[FinishedRow | None] = [None] * len(rows)
    first_row = np.cumsum([0] + [len(w.todo) for w in work])  # work[u]'s rows: first_row[u] .. first_row[u + 1]
    flushed = 0  # units written so far

    def flush(wait: bool) -> None:
        nonlocal flushed
        while flushed < len(work):
            span = range(first_row[flushed], first_row[flushed + 1])
            if not wait and not all(ended[r] is not None and stream.ready(r) for r in span):
                return
            w = work[flushed]
            spec, bench = benchmarks[w.benchmark].spec, benchmarks[w.benchmark].examples
            records = []
            for r in span:
                i, j = w.unit.pairs[rows[r][1]]
                row, verdict = ended[r], stream.verdict(r)
                records.append(
                    SampleRecord(
                        benchmark=spec.name,
                        problem_index=i,
                        sample_index=j,
                        seed=w.unit.seed,
                        response=stream.texts[r],
                        prediction=verdict.pred,
                        verdict=verdict.status.value,
                        correct=bool(verdict.correct),
                        reward=float(verdict.reward),
                        length=len(row.tokens),
                        finish_reason=_FINISH_NAMES[int(row.finish)],
                        gold=bench[i].gold,
                    )
                )
            if write is not None:
                write(w.benchmark, records)
            new[w.benchmark].extend(records)
            flushed += 1

    def on_row_done(row: FinishedRow) -> None:
        ended[row.row] = row
        stream(row)
        flush(wait=False)

    t = time.perf_counter()
    with VerdictStream(verifier, generator.decode, golds) as stream:
        generator.stream(params, examples, prompts, keys, on_row_done)
        stream.result()
        flush(wait=True)
    names = sorted({benchmarks[w.benchmark].spec.name for w in work})
    log.info(
        "%s: generated %d samples in %.1fs (waited %.1fs for verdicts after decoding)",
        ", ".join(names),
        len(rows),
        time.perf_counter() - t,
        stream.wait_s,
    )
    return new


# --- the evaluation ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchmarkProgress:
    name: str
    total: int  # problems x samples
    found: int  # samples already on disk when this run started
    generated: int  # samples this run wrote


@dataclasses.dataclass(frozen=True)
class EvalOutcome:
    """What :func:`evaluate` did. ``report`` is None when ``max_samples`` stopped it before the end."""

    report: EvalReport | None
    progress: tuple[BenchmarkProgress, ...]
    out_dir: Path

    @property
    def generated(self) -> int:
        return sum(p.generated for p in self.progress)


def sampler_config(cfg: EvalConfig) -> SamplerConfig:
    return cfg.sampler_config(prompt_bucket=cfg.bucket_multiple)


def eval_generator(graphdef, tokenizer, cfg: EvalConfig, *, eos_ids: Sequence[int], mesh) -> CompletionGenerator:
    """The generator of an evaluation (or a validation) with ``cfg``'s rows, sampling and prompt buckets."""
    return CompletionGenerator(
        graphdef,
        tokenizer,
        rows=cfg.batch_size,
        sampler_config=sampler_config(cfg),
        eos_ids=eos_ids,
        mesh=mesh,
        bucket_multiple=cfg.bucket_multiple,
    )


def evaluate(
    model,
    tokenizer,
    cfg: EvalConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    eos_ids: Sequence[int],
    mesh=None,
    model_name: str = "model",
    label: str | None = None,
    extra_meta: dict | None = None,
    max_samples: int | None = None,
) -> EvalOutcome:
    """Runs (or resumes) an evaluation; writes the per-sample JSONL, results.md and summary.json.

    ``model`` is an NNX Qwen2 (e.g. ``load_policy(...).model``); ``model_name`` and ``extra_meta``
    are recorded so that a resume with another model is refused. ``max_samples`` stops the run
    after at least that many new samples (at a unit boundary), leaving a resumable state.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be None or >= 1, got {max_samples}")
    out = Path(out_dir)
    specs = cfg.specs()
    benchmarks = load_benchmarks(data_dir, specs, max_problems=cfg.max_problems)
    stores = {b.spec.name: SampleStore(out, b.spec.name) for b in benchmarks}
    for b in benchmarks:  # refuse a mismatched resume before compiling anything
        stores[b.spec.name].check_meta(_meta(cfg, b, model_name, extra_meta, eos_ids))
    graphdef, params = nnx.split(model, nnx.Param)  # a model with other state is an error here
    generator = eval_generator(graphdef, tokenizer, cfg, eos_ids=eos_ids, mesh=mesh)
    done = [stores[b.spec.name].load() for b in benchmarks]
    work = plan_work(benchmarks, cfg.batch_size, cfg.seed, done, _Budget(max_samples))
    with Verifier(cfg.verifier) as verifier:
        new = run_benchmarks(
            generator,
            params,
            verifier,
            benchmarks,
            work,
            prompt_format=cfg.prompt_format,
            write=lambda b, records: stores[benchmarks[b].spec.name].append(records),
        )
    progress = []
    for b, on_disk, added in zip(benchmarks, done, new, strict=True):
        total = len(b.examples) * b.spec.n_samples
        progress.append(BenchmarkProgress(b.spec.name, total, len(on_disk), len(added)))
        log.info("%s: %d of %d samples were on disk, %d generated", b.spec.name, len(on_disk), total, len(added))
    complete = all(p.found + p.generated >= p.total for p in progress)
    if not complete:
        return EvalOutcome(None, tuple(progress), out)
    scores = []
    for b in benchmarks:
        records = stores[b.spec.name].load().values()  # from disk: the report is what the JSONL says
        scores.append(score_benchmark(b.spec, records, len(b.examples)))
    report = EvalReport(model=model_name, scores=tuple(scores))
    note = RULE_ONLY_NOTE if cfg.verifier.mode is VerifierMode.JUSTRL else None
    write_report(report, out, label, note=note)
    return EvalOutcome(report, tuple(progress), out)


def _meta(cfg: EvalConfig, benchmark: Benchmark, model_name: str, extra: dict | None, eos_ids=()) -> dict:
    """The settings that decide what a sample is; a resume must match them all."""
    return {
        "model": model_name,
        **(extra or {}),
        "eos_ids": [int(i) for i in eos_ids],  # generation stops on any of them
        "benchmark": benchmark.spec.name,
        "data_fingerprint": benchmark.fingerprint,
        "n_problems": len(benchmark.examples),
        "n_samples": benchmark.spec.n_samples,
        "max_new_tokens": cfg.max_new_tokens,
        **({"greedy": True} if cfg.greedy else {}),  # absent when false: older sample files stay resumable
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "bucket_multiple": cfg.bucket_multiple,
        "prompt_format": cfg.prompt_format.value,
        "verifier": {
            "mode": cfg.verifier.mode.value,
            "correct_reward": cfg.verifier.correct_reward,
            "incorrect_reward": cfg.verifier.incorrect_reward,
        },
    }


# --- in-training validation ----------------------------------------------------------------------


def validation_eval_config(
    settings: SamplingSettings = VALIDATION_SAMPLING,
    *,
    benchmarks: Sequence[str] = VALIDATION_BENCHMARKS,
    n_samples: int | None = 32,
    batch_size: int = 64,
    seed: int = 0,
    grader: str = "robust",
) -> EvalConfig:
    """JustRL's veRL validation as an EvalConfig: ``settings`` (T 0.7, top_p 0.9, 31,744 tokens by
    default), the training prompt format (boxed suffix after "\\n\\n"), reward 1/0, scored by ``grader``
    (robust, justrl, or math-verify: what veRL used for JustRL's validation curves, so ours line up with
    the paper's Figure 1)."""
    return EvalConfig(
        **SamplingSettings.of(settings).as_dict(),
        benchmarks=tuple(benchmarks),
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
        prompt_format=PromptFormat.TRAIN,
        verifier=VerifierConfig(mode=VerifierMode(grader), correct_reward=1.0, incorrect_reward=0.0),
    )


class Validator:
    """Scores parameters on a few benchmarks; reads the data and builds the sampler once (one compile).

    The seeds are the same at every call, so successive validations differ only by the parameters.

    Example::

        validator = Validator(graphdef, tokenizer, validation_eval_config(batch_size=512), "data",
                              eos_ids=(151643,), mesh=mesh)
        metrics = validator(state.params)   # {'val/aime24/avg@32': ..., 'val/mean': ...}
    """

    def __init__(
        self, graphdef, tokenizer, cfg: EvalConfig, data_dir: str | Path, *, eos_ids: Sequence[int], mesh=None
    ):
        self.cfg = cfg
        self.benchmarks = load_benchmarks(data_dir, cfg.specs(), max_problems=cfg.max_problems)
        self.generator = eval_generator(graphdef, tokenizer, cfg, eos_ids=eos_ids, mesh=mesh)

    def __call__(self, params) -> dict[str, float]:
        """``val/<name>/avg@N``, ``val/<name>/pass@N`` and ``val/<name>/length_mean`` per benchmark,
        and ``val/mean`` (the unweighted mean of the avg@N)."""
        metrics: dict[str, float] = {}
        scores = []
        empty = [{} for _ in self.benchmarks]
        work = plan_work(self.benchmarks, self.cfg.batch_size, self.cfg.seed, empty, _Budget(None))
        with Verifier(self.cfg.verifier) as verifier:
            new = run_benchmarks(
                self.generator, params, verifier, self.benchmarks, work, prompt_format=self.cfg.prompt_format
            )
        for b, records in zip(self.benchmarks, new, strict=True):
            score = score_benchmark(b.spec, records, len(b.examples))
            n = b.spec.n_samples
            metrics[f"val/{b.spec.name}/avg@{n}"] = score.avg_at_n
            metrics[f"val/{b.spec.name}/pass@{n}"] = score.pass_at(n)
            metrics[f"val/{b.spec.name}/length_mean"] = score.mean_length
            scores.append(score.avg_at_n)
        metrics["val/mean"] = float(np.mean(scores))
        return metrics


def training_validator(cfg, rollout, graphdef, tokenizer, *, eos_ids: Sequence[int], mesh=None) -> Validator:
    """The RL loop's in-training :class:`Validator`, built once per run (one compile, reused).

    ``cfg`` is the run's ``validation`` section and ``rollout`` its ``rollout`` section. Rows per
    generate call: as many as keep the KV cache (rows x tokens) no larger than the training rollouts',
    which the run already fits.
    """
    rows = max(1, min(rollout.sequences, rollout.sequences * rollout.max_new_tokens // cfg.max_new_tokens))
    settings = dataclasses.replace(
        SamplingSettings.of(cfg), kv_cache_budget_gb=cfg.kv_cache_budget_gb or rollout.kv_cache_budget_gb
    )
    eval_cfg = validation_eval_config(
        settings, benchmarks=cfg.benchmarks, n_samples=cfg.n_samples, batch_size=rows, grader=cfg.grader
    )
    return Validator(graphdef, tokenizer, eval_cfg, cfg.data_dir, eos_ids=eos_ids, mesh=mesh)
