"""The nine JustRL benchmarks: names, samples per problem, and where their files are found.

The order of :data:`BENCHMARKS` is the column order of the paper's tables. Files are looked up
under a data directory in JustRL's layout (``data/<Folder>/test.parquet``, e.g.
``data/Olympiad-Bench/test.parquet``) or as JSONL, in either schema (veRL or MathArena; see
:mod:`justrl_jax.data`).

Example::

    spec = get_benchmark("aime24")               # BenchmarkSpec(name='aime24', n_samples=32, ...)
    path = find_benchmark_file("data", spec)     # data/AIME24/test.parquet
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: its key, its column title, its N for avg@N and the folder names it may have."""

    name: str  # the key used on the command line and in metric names, e.g. "aime24"
    title: str  # the paper's column title, e.g. "AIME24" (the column reads "AIME24@32")
    n_samples: int  # samples per problem (N of avg@N)
    folders: tuple[str, ...] = ()  # folder / file stems tried under --data-dir, JustRL's spelling first

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"benchmark.name must be lower-case letters, digits, '-' or '_', got {self.name!r}")
        if not self.title.strip():
            raise ValueError(f"benchmark.title of {self.name!r} must be non-empty")
        if self.n_samples < 1:
            raise ValueError(f"benchmark.n_samples of {self.name!r} must be >= 1, got {self.n_samples}")
        if any(not f or "/" in f for f in self.folders):
            raise ValueError(f"benchmark.folders of {self.name!r} must be plain names, got {self.folders}")

    @property
    def column(self) -> str:
        """The table column, e.g. ``AIME24@32``."""
        return f"{self.title}@{self.n_samples}"

    def stems(self) -> tuple[str, ...]:
        """Folder/file stems to try, without duplicates: the declared folders, then title and name."""
        out: list[str] = []
        for stem in (*self.folders, self.title, self.name):
            if stem not in out:
                out.append(stem)
        return tuple(out)


# Samples per problem and folder names as in JustRL's evals/gen_vllm.py and data/ [recipe.md, section 6].
BENCHMARKS: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec("aime24", "AIME24", 32, ("AIME24",)),
    BenchmarkSpec("aime25", "AIME25", 32, ("AIME25",)),
    BenchmarkSpec("amc23", "AMC23", 32, ("AMC23",)),
    BenchmarkSpec("math500", "MATH-500", 4, ("MATH-500", "MATH500", "math-500")),
    BenchmarkSpec("minerva", "Minerva", 4, ("Minerva",)),
    BenchmarkSpec("olympiadbench", "OlympiadBench", 4, ("Olympiad-Bench", "OlympiadBench", "olympiad-bench")),
    BenchmarkSpec("hmmt25", "HMMT25", 32, ("HMMT25",)),
    BenchmarkSpec("brumo25", "BRUMO25", 32, ("BRUMO25",)),
    BenchmarkSpec("cmimc25", "CMIMC25", 32, ("CMIMC25",)),
)

# JustRL's in-training validation set (veRL val, every 50 steps) [recipe.md, sections 5 and 6].
VALIDATION_BENCHMARKS: tuple[str, ...] = ("aime24", "aime25", "amc23")


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def get_benchmark(name: str) -> BenchmarkSpec:
    """The registered benchmark called ``name`` (case, '-' and '_' ignored: 'MATH-500' is 'math500')."""
    key = _key(name)
    for spec in BENCHMARKS:
        if key in {_key(s) for s in spec.stems()}:
            return spec
    known = ", ".join(s.name for s in BENCHMARKS)
    raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {known}")


def parse_benchmarks(text: str) -> tuple[str, ...]:
    """``'aime24, AIME25,math-500'`` -> ('aime24', 'aime25', 'math500'); 'all' gives all nine."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("benchmarks: the list is empty")
    if [p.lower() for p in parts] == ["all"]:
        return tuple(s.name for s in BENCHMARKS)
    names = tuple(get_benchmark(p).name for p in parts)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"benchmarks: {duplicates[0]!r} is listed twice")
    return names


def candidate_paths(data_dir: str | Path, spec: BenchmarkSpec) -> list[Path]:
    """Paths tried, per stem: <stem>/test.parquet, <stem>/test.jsonl, <stem>.jsonl, <stem>.parquet."""
    root = Path(data_dir)
    out: list[Path] = []
    for stem in spec.stems():
        out += [
            root / stem / "test.parquet",
            root / stem / "test.jsonl",
            root / f"{stem}.jsonl",
            root / f"{stem}.parquet",
        ]
    return out


def find_benchmark_file(data_dir: str | Path, spec: BenchmarkSpec) -> Path:
    """The data file of ``spec`` under ``data_dir``; FileNotFoundError naming every path tried.

    Folder names are matched case-insensitively (``aime24/``, ``AIME24/`` and ``Aime24/`` all work),
    since copies of JustRL's ``data/`` folder differ in spelling.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark {spec.name!r}: data directory {root} does not exist")
    tried = candidate_paths(root, spec)
    for path in tried:
        if path.is_file():
            return path
    by_lower = {p.name.lower(): p for p in root.iterdir()}
    for path in tried:
        rel = path.relative_to(root)
        head = by_lower.get(rel.parts[0].lower())
        if head is None:
            continue
        found = head.joinpath(*rel.parts[1:])
        if found.is_file():
            return found
    listing = "\n  ".join(str(p) for p in tried)
    raise FileNotFoundError(f"benchmark {spec.name!r}: no data file found under {root}; tried (any case):\n  {listing}")
