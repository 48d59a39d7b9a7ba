"""Outputs that never clobber: refuse an output that is an input or already exists, write atomically.

Every command that writes a file or a directory (``generate``, ``verify``, ``convert``, ``plot``;
``evaluate`` checks only overlap, its out folder being a resumable store) goes through here:

* :func:`check_output` before any expensive work: the output must not be (or hold, or sit inside)
  an input, and must not exist unless ``--overwrite`` was given;
* :func:`atomic_file` / :func:`atomic_dir` write under a temporary name next to the target and
  rename it into place only once complete, so a failure or a kill leaves the old output intact.

A ``gs://`` output (``convert --out``, ``plot --out``) is written locally first, then uploaded: a file in
one upload (Cloud Storage writes each object atomically), a directory file by file with
``config.json`` last after the old export was removed (a bucket renames nothing atomically, so a
failure during the upload leaves no old export but never a new one that looks complete).

Example::

    check_output(args.output, [args.input], overwrite=args.overwrite, flag="--output")
    with atomic_file(args.output) as f:
        f.write(...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from justrl_jax.storage import is_remote, rmtree, run_path, same_or_nested, upload_dir


class OutputError(ValueError):
    """An output path that would overwrite an input or an existing output; the message says what to do."""


def _overlap(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same path or one lies inside the other (after symlinks)."""
    if is_remote(a) or is_remote(b):
        return same_or_nested(a, b)
    if a.exists() and b.exists() and os.path.samefile(a, b):  # hard links too
        return True
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(
    output: str | Path,
    inputs: Sequence[str | Path],
    *,
    overwrite: bool,
    flag: str = "--output",
    directory: bool = False,
) -> Path:
    """Refuses ``output`` when it is (or holds, or lies inside) one of ``inputs``, when it exists and
    ``overwrite`` is false, or when it is a directory where a file is wanted (and the reverse)."""
    output = run_path(output)
    for source in inputs:
        source = run_path(source)
        if source.exists() and _overlap(output, source):
            raise OutputError(f"{flag} {output} is (or overlaps) the input {source}; choose another {flag}")
    if output.exists() or (not is_remote(output) and output.is_symlink()):
        if directory and not output.is_dir():
            raise OutputError(f"{flag} {output} is a file; name a directory")
        if not directory and output.is_dir():
            raise OutputError(f"{flag} {output} is a directory; name a file")
        if not overwrite and not (directory and not any(output.iterdir())):
            raise OutputError(f"{flag} {output} already exists; pass --overwrite to replace it, or choose another path")
    return output


def _temporary(path: Path) -> Path:
    """A sibling name (same filesystem, so the final rename is atomic) unique to this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Opens a temporary sibling of ``path`` for writing; renames it onto ``path`` when the block ends
    without an exception, and removes it otherwise (the old ``path``, if any, is untouched)."""
    if is_remote(path):
        with tempfile.TemporaryDirectory() as local:
            tmp = Path(local) / "out"
            with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
                yield f
            run_path(path).write_bytes(tmp.read_bytes())  # one object: complete or absent
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary sibling directory; when the block succeeds it replaces ``path`` as a
    whole (so nothing a previous content left, such as stale shards, survives). On failure it is
    removed and ``path`` is untouched."""
    if is_remote(path):
        with tempfile.TemporaryDirectory() as local:
            yield Path(local)
            if run_path(path).exists():
                rmtree(path)
            upload_dir(Path(local), path, last="config.json")
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)  # the old content stays whole until the new one is in place
        try:
            tmp.rename(path)
        except OSError:
            if old.exists():
                old.rename(path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
