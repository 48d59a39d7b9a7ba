"""Run metrics: one JSONL line per step, TensorBoard scalars, and a one-line progress display.

Only the writer on process 0 writes (multi-host runs create it with ``enabled=False`` elsewhere).
A resumed run truncates the JSONL to the steps before the resume point, so the file always reads
as one uninterrupted run. In a ``gs://`` run directory (objects cannot be appended to) the whole file is
rewritten in one upload per step, so it is always complete; an optional tracker (Weights & Biases, see
:mod:`justrl_jax.wandb_run`) receives the same records.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO

import numpy as np

from justrl_jax.storage import is_remote, run_path

# The columns of the progress line: (metric key, label, format).
_PROGRESS = (
    ("reward/mean", "reward", "{:+.3f}"),
    ("reward/accuracy", "acc", "{:.3f}"),
    ("response/length_mean", "len", "{:.0f}"),
    ("actor/entropy", "entropy", "{:.3f}"),
    ("time/step_s", "step_s", "{:.1f}"),
)


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible
    return value


class MetricsWriter:
    """Appends ``{"step": n, ...}`` lines to ``run_dir/metrics.jsonl`` and mirrors them to TensorBoard."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        stream: IO[str] | None = None,
        resume_step: int | None = None,
        tracker=None,
    ):
        self.enabled = enabled
        self.path = run_path(run_dir) / "metrics.jsonl"
        self.stream = stream if stream is not None else sys.stderr
        self.tracker = tracker  # anything with log(step, record) and close(): the W&B run
        self._tb = None
        self._tb_local: Path | None = None  # where a gs:// run's event files are written before upload
        self._started = time.time()
        self._lines: list[str] = []  # the whole file, for a gs:// run directory (rewritten per step)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb_dir = run_path(run_dir) / "tensorboard"
            # A bucket's event files are written locally and uploaded whole after each step (one object
            # upload each; tensorboardX's own gs:// writer uploads again when garbage-collected).
            self._tb_local = Path(tempfile.mkdtemp(prefix="justrl_jax_tb_")) if is_remote(run_dir) else None
            self._tb = SummaryWriter(str(self._tb_local or self._tb_dir), purge_step=resume_step)

    def _truncate_after(self, resume_step: int | None) -> None:
        """Drops lines with step >= resume_step (written after the checkpoint we resume from)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if resume_step is None or record.get("step", -1) < resume_step:
                keep.append(line)
        if is_remote(self.path):
            self._lines = keep
            self.path.write_text("".join(f"{line}\n" for line in keep))  # one object upload: atomic
            return
        # Replace, never rewrite in place: a kill here must not lose the lines being kept.
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in sorted(metrics.items())}}
        if is_remote(self.path):
            self._lines.append(json.dumps(record))
            self.path.write_text("".join(f"{line}\n" for line in self._lines))
        else:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log(step, record)
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
            self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        if self._tb_local is not None:
            for f in self._tb_local.iterdir():
                (self._tb_dir / f.name).write_bytes(f.read_bytes())

    def progress(self, step: int, total: int, metrics: dict) -> None:
        if not self.enabled:
            return
        parts = [f"step {step}/{total}"]
        for key, label, fmt in _PROGRESS:
            if key in metrics:
                parts.append(f"{label} {fmt.format(float(_plain(metrics[key])))}")
        parts.append(f"elapsed {time.time() - self._started:.0f}s")
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._upload_tensorboard()
            self._tb = None
            if self._tb_local is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


class StageTimer:
    """Wall time of a step and of its stages, as ``time/<stage>_s`` and ``time/step_s`` metrics."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.times[f"time/{stage}_s"] = time.perf_counter() - start

    def done(self) -> dict[str, float]:
        return {**self.times, "time/step_s": time.perf_counter() - self._start}


_VERDICT_STATUSES = ("ok", "no_answer", "timeout", "too_long", "error")


def rollout_metrics(verdicts, rewards: np.ndarray, lengths: np.ndarray, truncated: np.ndarray, group_size: int) -> dict:
    """The reward, response and verifier scalars of one step's rollout (host numpy, one row per response)."""
    statuses = Counter(v.status.value for v in verdicts)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float(np.mean([bool(v.correct) for v in verdicts])),
        "reward/all_equal_groups": float(np.mean(rewards.reshape(-1, group_size).std(axis=1) == 0)),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": int(lengths.max()),
        "response/length_min": int(lengths.min()),
        "response/truncated_frac": float(np.mean(truncated)),
        **{f"verifier/{k}": statuses.get(k, 0) for k in _VERDICT_STATUSES},
    }


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = run_path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a justrl_jax run directory?")
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
