"""Where a run's files live: a local path or a Cloud Storage URL (``gs://bucket/prefix``), one path type.

:func:`run_path` gives a ``pathlib.Path`` for a local path (so local runs behave exactly as before) and
an ``etils.epath.Path`` for ``gs://`` (the path layer Orbax itself uses; without TensorFlow it reads and
writes through gcsfs). Orbax writes the checkpoint arrays through TensorStore. Credentials come from the
environment as Google's libraries find them (Application Default Credentials); nothing here stores them.

Emulators: gcsfs and google-cloud-storage read ``STORAGE_EMULATOR_HOST``, TensorStore reads
``TENSORSTORE_GCS_HTTP_URL``; :func:`check_location` sets the second from the first when only the first
is set, so one variable points every layer at a local server.

Cloud Storage writes whole objects atomically but renames nothing atomically, so a file written "in one
piece" (config, metrics, plot) is uploaded in one call, and a directory (an export, the run's tokenizer
copy) is marked complete by its last object.

Example::

    check_location("gs://bucket/runs/x", "--run-dir")  # a clear error now, not in the middle of a save
    run_dir = run_path("gs://bucket/runs/x")
    (run_dir / "config.yaml").write_text(text)
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

GCS = "gs://"
EMULATOR_VAR = "STORAGE_EMULATOR_HOST"  # google-cloud-storage and gcsfs
TENSORSTORE_VAR = "TENSORSTORE_GCS_HTTP_URL"  # TensorStore (Orbax's array writes)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_PROBE_TIMEOUT_S = 20.0
_downloads: dict[str, Path] = {}  # URL -> its local copy (download_dir)


class StorageError(ValueError):
    """A storage location that cannot be used (bad URL, no credentials, unreachable, no bucket)."""


def is_remote(path: Any) -> bool:
    return str(path).startswith(GCS)


def run_path(path: Any):
    """``pathlib.Path`` for a local path, ``etils.epath.Path`` for ``gs://`` (same methods for our uses)."""
    if is_remote(path):
        from etils import epath

        _configure_gcsfs()
        return epath.Path(str(path))
    return Path(path)


def _configure_gcsfs() -> None:
    """No listing cache: other hosts (and a killed run's successor) change the bucket behind this process's
    back, and a stale listing would hide a checkpoint or show a deleted one."""
    import fsspec.config

    fsspec.config.conf.setdefault("gs", {})["use_listings_cache"] = False
    logging.getLogger("gcsfs").addFilter(_NoBucketTypeProbe())
    if logging.getLogger("fsspec").level == logging.NOTSET:
        logging.getLogger("fsspec").setLevel(logging.WARNING)  # its read-ahead cache logs every file opened


class _NoBucketTypeProbe(logging.Filter):
    """Drops gcsfs's warning that it could not ask (without credentials: an emulator) whether a bucket is
    zonal; it then uses the plain backend, which is right for every regional bucket."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Could not determine bucket type" not in record.getMessage()


def absolute(path: Any):
    """The absolute form of a local path; a ``gs://`` URL as it is (it is already absolute)."""
    return run_path(path) if is_remote(path) else Path(path).absolute()


def same_or_nested(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` name the same place or one lies inside the other (URLs compared as text)."""
    if is_remote(a) or is_remote(b):
        x, y = str(a).rstrip("/"), str(b).rstrip("/")
        return x == y or x.startswith(y + "/") or y.startswith(x + "/")
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def split_url(url: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; a malformed URL is a StorageError naming it."""
    if not is_remote(url):
        raise StorageError(f"{url} is not a gs:// URL")
    bucket, _, prefix = url[len(GCS) :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise StorageError(
            f"{url}: {bucket!r} is not a Cloud Storage bucket name (3-222 characters: lowercase letters, digits, "
            f"'-', '_', '.'); write gs://BUCKET/path"
        )
    return bucket, prefix.strip("/")


def _emulator() -> str | None:
    host = os.environ.get(EMULATOR_VAR, "").strip()
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def check_location(url: Any, what: str) -> None:
    """Fails at once, naming ``url`` and ``what`` (the flag or key it came from), when a ``gs://`` location
    cannot be used: malformed, the gcs extra not installed, no credentials, endpoint unreachable, bucket
    missing or not readable. Local paths pass unchecked (their own checks come later)."""
    if not is_remote(url):
        return
    url = str(url)
    try:
        bucket, prefix = split_url(url)
    except StorageError as e:
        raise StorageError(f"{what} {e}") from None
    try:
        import gcsfs  # noqa: F401 - the path layer's gs:// backend
        import google.auth
        import google.auth.exceptions
        import requests
    except ImportError as e:
        raise StorageError(
            f"{what} {url}: Cloud Storage support is not installed ({e.name}); pip install -e '.[gcs]'"
        ) from None
    emulator = _emulator()
    if emulator:
        os.environ.setdefault(TENSORSTORE_VAR, emulator)  # TensorStore then writes to the same server
        session, endpoint = requests.Session(), emulator
    else:
        try:
            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
        except google.auth.exceptions.DefaultCredentialsError as e:
            raise StorageError(
                f"{what} {url}: no Google Cloud credentials ({str(e).splitlines()[0]}); run "
                f"'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from None
        from google.auth.transport.requests import AuthorizedSession

        session, endpoint = AuthorizedSession(credentials), "https://storage.googleapis.com"
    # Listing one object needs only storage.objects.list, which every role that may run here has (reading
    # the bucket's own metadata would need storage.buckets.get, which object-level roles lack).
    probe = f"{endpoint}/storage/v1/b/{bucket}/o"
    try:
        reply = session.get(probe, params={"prefix": prefix, "maxResults": 1}, timeout=_PROBE_TIMEOUT_S)
    except (requests.RequestException, google.auth.exceptions.GoogleAuthError) as e:
        raise StorageError(
            f"{what} {url}: cannot reach Cloud Storage at {endpoint} ({type(e).__name__}); check the network"
            + (f" or {EMULATOR_VAR}" if emulator else "")
        ) from None
    if reply.status_code == 404:
        raise StorageError(f"{what} {url}: bucket {bucket!r} does not exist; create it or fix the URL")
    if reply.status_code in (401, 403):
        raise StorageError(
            f"{what} {url}: the credentials found may not list objects in bucket {bucket!r} (HTTP "
            f"{reply.status_code}); grant them storage access or use other credentials"
        )
    if reply.status_code != 200:
        raise StorageError(f"{what} {url}: Cloud Storage answered HTTP {reply.status_code} for bucket {bucket!r}")


def rmtree(path: Any) -> None:
    """Removes a directory tree (a local one, or every object under a ``gs://`` prefix)."""
    p = run_path(path)
    if is_remote(path):
        if p.exists():
            p.rmtree()
    else:
        shutil.rmtree(p)


def upload_dir(local: Path, remote: Any, *, last: str | None = None) -> None:
    """Copies the files of ``local`` (recursively) under ``remote``; ``last`` (a file name in ``local``)
    is written after every other one, so its presence says the copy is complete."""
    remote = run_path(remote)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)  # stable: ``last`` moves to the end
    for f in files:
        target = remote / str(f.relative_to(local))
        target.write_bytes(f.read_bytes())


def download_dir(remote: Any) -> Path:
    """A local copy of the files under ``remote`` (small directories: a tokenizer, the demo's model), in a
    temporary directory removed when the process exits; made once per process and URL."""
    if str(remote) in _downloads:
        return _downloads[str(remote)]
    import fsspec

    local = Path(tempfile.mkdtemp(prefix="justrl_jax_gcs_"))
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    _configure_gcsfs()
    fs = fsspec.filesystem("gs")
    root = str(remote)[len(GCS) :].rstrip("/")
    for name in fs.find(root):  # every object under the prefix, as "bucket/path"
        target = local / name[len(root) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(name))
    _downloads[str(remote)] = local
    return local
