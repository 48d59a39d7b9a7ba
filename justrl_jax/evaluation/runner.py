"""Benchmarks -> samples -> verdicts -> scores: the evaluation run and the in-training validation.

Work layout. The (problem, sample) pairs of a benchmark are taken sample-major
(sample 0 of every problem, then sample 1, ...) and cut into *units* of exactly ``batch_size``
rows; the last unit is filled up with repeats of its last row, whose outputs are dropped. Every
generate call therefore has the same batch shape (one compile, reused across benchmarks), and
a unit's rows and seed depend only on the benchmark and the config, never on what was already
done. That is what makes a resumed evaluation equal an uninterrupted one: a unit is regenerated
whole (identically, on the same hardware and software) and only its missing pairs are written.

Seeds. A unit's seed is :func:`sample_seed` of (``--seed``, benchmark name, sample index and
problem index of its first pair), a 31-bit integer like the seeds JustRL drew for vLLM, stored
with every sample; the same seed and config give the same samples.

Overlap. While unit k+1 is generated on the accelerator, unit k is verified in the verifier's
CPU pool; unit k's records are appended (and fsync'ed) once its verdicts are in.

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
from justrl_jax.sampler import FinishReason, Sampler, SamplerConfig
from justrl_jax.sampling_settings import SamplingSettings
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


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # decoded with special tokens skipped
    length: int  # completion tokens (EOS included when generated)
    finish_reason: str  # "stop" or "length"


_FINISH_NAMES = {FinishReason.EOS.value: "stop", FinishReason.LENGTH.value: "length"}


class CompletionGenerator:
    """Token prompts -> decoded completions, always ``rows`` rows per call (one compiled shape)."""

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
        self.tokenizer = tokenizer
        self.rows = rows
        self.bucket_multiple = bucket_multiple
        self.pad_id = int(tokenizer.pad_token_id)
        self.sampler = Sampler(graphdef, sampler_config, mesh=mesh, eos_ids=tuple(eos_ids), pad_id=self.pad_id)

    def generate(
        self, params, examples: Sequence[PromptExample], token_ids: Sequence[Sequence[int]], seed: int
    ) -> list[Completion]:
        """One sample per given prompt (at most ``rows``); row r draws from ``fold_in(key(seed), r)``."""
        real = len(examples)
        if not 1 <= real <= self.rows:
            raise ValueError(f"generate takes 1..{self.rows} prompts, got {real}")
        # Waves: repeats of the last prompt keep the batch shape (no recompile for a short last unit); their
        # outputs are dropped. Per-row keys make the real rows independent of the filler. The continuous
        # scheduler's programs do not depend on the row count, so it gets no filler to decode.
        fill = self.rows - real if self.sampler.config.scheduler == "waves" else 0
        batch = collate(
            list(examples) + [examples[-1]] * fill,
            list(token_ids) + [token_ids[-1]] * fill,
            self.pad_id,
            bucket_multiple=self.bucket_multiple,
        )
        rollout = self.sampler.generate(params, batch.prompt_ids, batch.prompt_mask, n=1, key=seed)
        lengths = np.asarray(rollout.lengths)[:real]
        ids = np.asarray(rollout.completion_ids)[:real]
        finish = np.asarray(rollout.finish)[:real]
        texts = self.tokenizer.batch_decode(
            [row[:n] for row, n in zip(ids, lengths, strict=True)], skip_special_tokens=True
        )
        return [Completion(t, int(n), _FINISH_NAMES[int(f)]) for t, n, f in zip(texts, lengths, finish, strict=True)]


# --- one benchmark -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Budget:
    """How many more samples this run may write (None: unlimited); a unit is never split."""

    left: int | None

    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0

    def spend(self, n: int) -> None:
        if self.left is not None:
            self.left -= n


def run_benchmark(
    generator: CompletionGenerator,
    params,
    verifier: Verifier,
    benchmark: Benchmark,
    *,
    prompt_format: PromptFormat,
    seed: int,
    done: dict[tuple[int, int], SampleRecord] | None = None,
    write: Callable[[list[SampleRecord]], None] | None = None,
    budget: _Budget | None = None,
) -> list[SampleRecord]:
    """Generates and verifies every (problem, sample) pair of ``benchmark`` not in ``done``.

    A unit's records go to ``write`` (if given) once its verdicts are in, which is after the next
    unit has been generated (verification overlaps generation), so a kill loses at most two
    units. Returns the new records.
    """
    spec, examples = benchmark.spec, benchmark.examples
    done = done or {}
    budget = budget or _Budget(None)
    token_ids = encode_examples(generator.tokenizer, examples, prompt_format)
    units = plan_units(spec.name, len(examples), spec.n_samples, generator.rows, seed)
    new: list[SampleRecord] = []

    def finish(pending) -> None:
        unit, todo, completions, verdicts = pending
        records = []
        for (i, j), completion, verdict in zip(todo, completions, verdicts.result(), strict=True):
            records.append(
                SampleRecord(
                    benchmark=spec.name,
                    problem_index=i,
                    sample_index=j,
                    seed=unit.seed,
                    response=completion.text,
                    prediction=verdict.pred,
                    verdict=verdict.status.value,
                    correct=bool(verdict.correct),
                    reward=float(verdict.reward),
                    length=completion.length,
                    finish_reason=completion.finish_reason,
                    gold=examples[i].gold,
                )
            )
        if write is not None:
            write(records)
        new.extend(records)

    pending = None
    for unit in units:
        todo_index = [k for k, pair in enumerate(unit.pairs) if pair not in done]
        if not todo_index:
            continue
        if budget.exhausted():
            break
        t = time.perf_counter()
        completions = generator.generate(
            params, [examples[i] for i, _ in unit.pairs], [token_ids[i] for i, _ in unit.pairs], unit.seed
        )
        todo = [unit.pairs[k] for k in todo_index]
        kept = [completions[k] for k in todo_index]
        verdicts = verifier.submit(
            [c.text for c in kept], [examples[i].gold for i, _ in todo], response_lengths=[c.length for c in kept]
        )
        log.info("%s: generated %d samples in %.1fs", spec.name, len(unit.pairs), time.perf_counter() - t)
        budget.spend(len(todo))
        if pending is not None:
            finish(pending)
        pending = (unit, todo, kept, verdicts)
    if pending is not None:
        finish(pending)
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
    budget = _Budget(max_samples)
    progress = []
    with Verifier(cfg.verifier) as verifier:
        for b in benchmarks:
            store = stores[b.spec.name]
            done = store.load()
            total = len(b.examples) * b.spec.n_samples
            new = run_benchmark(
                generator,
                params,
                verifier,
                b,
                prompt_format=cfg.prompt_format,
                seed=cfg.seed,
                done=done,
                write=store.append,
                budget=budget,
            )
            progress.append(BenchmarkProgress(b.spec.name, total, len(done), len(new)))
            log.info("%s: %d of %d samples were on disk, %d generated", b.spec.name, len(done), total, len(new))
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
        with Verifier(self.cfg.verifier) as verifier:
            for b in self.benchmarks:
                records = run_benchmark(
                    self.generator, params, verifier, b, prompt_format=self.cfg.prompt_format, seed=self.cfg.seed
                )
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
