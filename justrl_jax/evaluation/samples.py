"""Per-sample results on disk: one append-only JSONL per benchmark, readable after a kill.

``OUT/<benchmark>.samples.jsonl`` holds one :class:`SampleRecord` per line. Lines are written a
chunk at a time, flushed and fsync'ed, so a kill loses at most the chunk in flight and can leave
at most one truncated *last* line, which :meth:`SampleStore.load` drops (and cuts off the file,
so that the next append starts on a fresh line). A broken line anywhere else is not a kill and
is reported with its line number.

``OUT/<benchmark>.meta.json`` records the settings that decide what a sample is (model, seed,
temperature, ...). Resuming with different settings would silently mix two evaluations, so it
is an error naming the setting.

Example::

    store = SampleStore(out_dir, "aime24")
    store.check_meta({"seed": 0, "max_new_tokens": 31744, ...})
    done = store.load()                       # {(problem_index, sample_index): SampleRecord}
    store.append([record, ...])
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One generated sample and its verdict."""

    benchmark: str
    problem_index: int  # row of the benchmark file
    sample_index: int  # 0 .. N-1
    seed: int  # the seed of the generate call that produced it (see runner.sample_seed)
    response: str  # decoded completion, special tokens skipped
    prediction: str | None  # the answer the verifier extracted (None: no answer found)
    verdict: str  # verifier status: ok, no_answer, timeout, too_long, error
    correct: bool
    reward: float
    length: int  # completion tokens, EOS included when generated
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)
    gold: str
    judge: str | None = None  # the model judge's output (evaluation.judge), when it was asked
    judge_correct: bool | None = None  # its verdict; ``correct`` stays the rule's

    @property
    def key(self) -> tuple[int, int]:
        return (self.problem_index, self.sample_index)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> SampleRecord:
        missing = [f for f in _REQUIRED if f not in data]
        if missing:
            raise ValueError(f"{where}: sample record lacks field {missing[0]!r}")
        return cls(**{f: data[f] for f in _FIELDS if f in data})


_FIELDS = tuple(f.name for f in dataclasses.fields(SampleRecord))
_REQUIRED = tuple(f.name for f in dataclasses.fields(SampleRecord) if f.default is dataclasses.MISSING)


class SampleStore:
    """The JSONL of one benchmark's samples plus its meta file."""

    def __init__(self, out_dir: str | Path, benchmark: str):
        self.out_dir = Path(out_dir)
        self.benchmark = benchmark
        self.path = self.out_dir / f"{benchmark}.samples.jsonl"
        self.meta_path = self.out_dir / f"{benchmark}.meta.json"

    def check_meta(self, meta: dict[str, Any]) -> None:
        """Writes ``meta`` on first use; afterwards raises ValueError if any entry differs."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = json.loads(json.dumps(meta))  # the JSON form, so tuples compare as lists
        if self.meta_path.exists():
            try:
                old = json.loads(self.meta_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{self.meta_path} is not valid JSON ({e}); delete it and "
                    f"{self.path.name} to start {self.benchmark} afresh"
                ) from e
            for key in sorted(set(old) | set(meta)):
                if old.get(key) != meta.get(key):
                    raise ValueError(
                        f"{self.path} was written with {key}={old.get(key)!r}, this run asks for "
                        f"{key}={meta.get(key)!r}; resuming would mix two evaluations: use another --out "
                        f"or delete {self.path.name} and {self.meta_path.name}"
                    )
            return
        if self.path.exists() and self.path.stat().st_size > 0:
            raise ValueError(f"{self.path} exists without {self.meta_path.name}: cannot tell how it was made")
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.meta_path)

    def load(self) -> dict[tuple[int, int], SampleRecord]:
        """The samples written so far, by (problem_index, sample_index); drops a truncated last line."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        # A complete file ends in "\n", so the final piece is b"". Anything else is a cut last line.
        complete, tail = lines[:-1], lines[-1]
        records: dict[tuple[int, int], SampleRecord] = {}
        good_bytes = 0
        for number, line in enumerate(complete, start=1):
            where = f"{self.path}:{number}"
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if number == len(complete) and not tail:
                    # The last newline-terminated line is broken: a kill between write and flush of
                    # a multi-block line. Treat it like a cut tail.
                    tail = line
                    break
                raise ValueError(f"{where}: not a JSON line ({e}); only the last line may be truncated") from e
            record = SampleRecord.from_dict(data, where)
            if record.benchmark != self.benchmark:
                raise ValueError(f"{where}: record of benchmark {record.benchmark!r} in the file of {self.benchmark!r}")
            records[record.key] = record  # a chunk regenerated after a cut line may repeat a key
            good_bytes += len(line) + 1
        if tail:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)
        return records

    def append(self, records: list[SampleRecord]) -> None:
        """Appends ``records`` and makes them durable before returning."""
        if not records:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(r.to_json() + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
