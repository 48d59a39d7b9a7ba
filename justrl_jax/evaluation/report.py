"""Scores from sample records, and the paper's table, a pass@k table and a JSON summary.

Example::

    score = score_benchmark(spec, records, n_problems=30)   # avg@32, pass@1..32, lengths, statuses
    report = EvalReport(model="runs/deepseek", scores=(score, ...))
    print(markdown_table(report))                            # | Model | AIME24@32 | ... | Avg |
    write_report(report, out_dir)                            # results.md, summary.json
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from justrl_jax.evaluation.benchmarks import BenchmarkSpec
from justrl_jax.evaluation.passk import avg_at_n, default_ks, mean_pass_at_k
from justrl_jax.evaluation.samples import SampleRecord


@dataclasses.dataclass(frozen=True)
class BenchmarkScore:
    """One benchmark's numbers (fractions in [0, 1]; the tables print them x100)."""

    name: str
    title: str
    n_samples: int
    n_problems: int
    avg_at_n: float
    pass_at_k: tuple[tuple[int, float], ...]  # ((k, pass@k), ...) for default_ks(n_samples)
    mean_length: float  # completion tokens
    truncated_fraction: float  # finish_reason == "length"
    verdicts: tuple[tuple[str, int], ...]  # verifier status counts, sorted by status
    stderr: float = 0.0  # standard error of avg@N over the problems (0 with one problem)

    @property
    def column(self) -> str:
        return f"{self.title}@{self.n_samples}"

    def pass_at(self, k: int) -> float:
        for kk, value in self.pass_at_k:
            if kk == k:
                return value
        have = [kk for kk, _ in self.pass_at_k]
        raise KeyError(f"pass@{k} was not computed for {self.name} (have k = {have})")


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """All benchmarks of one evaluation, in the paper's column order."""

    model: str
    scores: tuple[BenchmarkScore, ...]

    @property
    def mean(self) -> float:
        """The headline "Avg": the unweighted mean of the benchmarks' avg@N."""
        return float(np.mean([s.avg_at_n for s in self.scores]))

    def score(self, name: str) -> BenchmarkScore:
        for s in self.scores:
            if s.name == name:
                return s
        raise KeyError(f"no score for benchmark {name!r}; have {[s.name for s in self.scores]}")


def correct_counts(records: Iterable[SampleRecord], n_problems: int, n_samples: int) -> list[int]:
    """Correct samples per problem; ValueError if any (problem, sample) pair is missing or extra."""
    seen: set[tuple[int, int]] = set()
    counts = [0] * n_problems
    for r in records:
        if not (0 <= r.problem_index < n_problems and 0 <= r.sample_index < n_samples):
            raise ValueError(
                f"{r.benchmark}: record (problem {r.problem_index}, sample {r.sample_index}) is "
                f"outside {n_problems} problems x {n_samples} samples"
            )
        if r.key in seen:
            raise ValueError(f"{r.benchmark}: (problem {r.problem_index}, sample {r.sample_index}) appears twice")
        seen.add(r.key)
        counts[r.problem_index] += bool(r.correct)
    expected = n_problems * n_samples
    if len(seen) != expected:
        missing = next((i, j) for i in range(n_problems) for j in range(n_samples) if (i, j) not in seen)
        raise ValueError(
            f"have {len(seen)} of {expected} samples; e.g. (problem {missing[0]}, sample {missing[1]}) is missing"
        )
    return counts


def score_benchmark(spec: BenchmarkSpec, records: Iterable[SampleRecord], n_problems: int) -> BenchmarkScore:
    """avg@N, pass@k for k in default_ks(N), length and verdict statistics of a complete benchmark."""
    records = list(records)
    try:
        counts = correct_counts(records, n_problems, spec.n_samples)
    except ValueError as e:
        raise ValueError(f"benchmark {spec.name!r}: {e}") from e
    n = spec.n_samples
    statuses = collections.Counter(r.verdict for r in records)
    per_problem = np.asarray(counts, float) / n
    return BenchmarkScore(
        name=spec.name,
        title=spec.title,
        n_samples=n,
        n_problems=n_problems,
        avg_at_n=avg_at_n(counts, n),
        pass_at_k=tuple((k, mean_pass_at_k(counts, n, k)) for k in default_ks(n)),
        mean_length=float(np.mean([r.length for r in records])),
        truncated_fraction=float(np.mean([r.finish_reason == "length" for r in records])),
        verdicts=tuple(sorted(statuses.items())),
        stderr=standard_error(per_problem),
    )


def standard_error(per_problem: np.ndarray) -> float:
    """The standard error of the mean of per-problem accuracies (sample std / sqrt(problems)): the
    spread a benchmark's avg@N has from its finite problem set and N samples; a point on a
    30-problem benchmark is often within it."""
    if len(per_problem) < 2:
        return 0.0
    return float(np.std(per_problem, ddof=1) / np.sqrt(len(per_problem)))


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def markdown_table(report: EvalReport, label: str | None = None, *, stderr: bool = False) -> str:
    """The paper's layout: one row, columns ``AIME24@32 ... CMIMC25@32 | Avg``, x100, two decimals
    (``stderr``: each avg@N followed by ``± its standard error``)."""
    return markdown_rows([(label or report.model, report)], stderr=stderr)


def markdown_rows(rows, *, stderr: bool = False) -> str:
    """The paper's layout with one row per (label, report); the reports cover the same benchmarks."""
    first = rows[0][1]
    header = ["Model", *(s.column for s in first.scores), "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, report in rows:
        cells = [_pct(s.avg_at_n) + (f" ± {_pct(s.stderr)}" if stderr else "") for s in report.scores]
        lines.append("| " + " | ".join([label, *cells, _pct(report.mean)]) + " |")
    return "\n".join(lines) + "\n"


def pass_at_k_table(report: EvalReport) -> str:
    """Rows = benchmarks, columns = pass@k (x100); blank where k exceeds that benchmark's N."""
    ks = sorted({k for s in report.scores for k, _ in s.pass_at_k})
    lines = ["| Benchmark | N | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 2)]
    for s in report.scores:
        values = dict(s.pass_at_k)
        cells = [_pct(values[k]) if k in values else "" for k in ks]
        lines.append(f"| {s.title} | {s.n_samples} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(report: EvalReport) -> dict:
    """JSON-ready summary: per benchmark avg@N, pass@k, lengths and verdicts (fractions, not x100)."""
    return {
        "model": report.model,
        "avg": report.mean,
        "benchmarks": {
            s.name: {
                "column": s.column,
                "n_samples": s.n_samples,
                "n_problems": s.n_problems,
                f"avg@{s.n_samples}": s.avg_at_n,
                "pass@k": {str(k): v for k, v in s.pass_at_k},
                "mean_length": s.mean_length,
                "truncated_fraction": s.truncated_fraction,
                "verdicts": dict(s.verdicts),
                "stderr": s.stderr,
            }
            for s in report.scores
        },
    }


RULE_ONLY_NOTE = (
    "rule only: a lower bound of the paper's protocol (JustRL's rule without its model judge, "
    "CompassVerifier-3B, which the paper asks about every sample the rule rejects; add --judge)."
)


def write_report(
    report: EvalReport,
    out_dir: str | Path,
    label: str | None = None,
    *,
    judged: EvalReport | None = None,
    note: str | None = None,
) -> tuple[Path, Path]:
    """Writes ``results.md`` (the paper's table with standard errors and the pass@k table) and
    ``summary.json``; returns both. ``judged``: the same samples graded by rule + judge, shown as a
    second row (``report`` is then the rule-only row); ``note`` is printed under the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    js = out / "summary.json"
    name = label or report.model
    rows = [(name, report)] if judged is None else [(f"{name} (rule only)", report), (f"{name} (rule + judge)", judged)]
    text = (
        f"# Evaluation of {name}\n\navg@N (pass@1 averaged over N samples) ± its standard error over the "
        f"problems, x100\n\n{markdown_rows(rows, stderr=True)}\n"
        + (f"{note}\n\n" if note else "")
        + f"Unbiased pass@k (Chen et al. 2021), x100{' (rule + judge)' if judged is not None else ''}\n\n"
        f"{pass_at_k_table(judged or report)}"
    )
    data = summary(report)
    if judged is not None:
        data["rule_plus_judge"] = summary(judged)
    for path, content in ((md, text), (js, json.dumps(data, indent=1) + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    return md, js
