"""gs:// run directories against a real Cloud Storage server (fake-gcs-server on 127.0.0.1): the path
layer, the run-directory lock, metrics, atomic outputs, and the clear errors a bad location gives at start.
"""

import json
import os
import subprocess
import sys

import pytest
from gcs_emulator import GcsEmulator

from justrl_jax.gcs_lock import GcsRunLock
from justrl_jax.metrics import MetricsWriter, read_metrics
from justrl_jax.output_file import OutputError, atomic_dir, atomic_file, check_output
from justrl_jax.run_dir import RunDirError, RunDirLock, is_run_dir
from justrl_jax.storage import StorageError, check_location, download_dir, run_path, upload_dir


@pytest.fixture(scope="module")
def bucket():
    emulator = GcsEmulator()
    try:
        yield emulator.create_bucket("justrl-test")
    finally:
        emulator.stop()


def test_a_usable_bucket_passes_and_bad_locations_fail_naming_the_path(bucket):
    check_location(f"{bucket}/runs/a", "--run-dir")
    with pytest.raises(StorageError, match=r"--run-dir gs://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        check_location("gs://no-such-bucket/x", "--run-dir")
    with pytest.raises(StorageError, match=r"gs://Bad_Bucket!/x: 'Bad_Bucket!' is not a Cloud Storage bucket name"):
        check_location("gs://Bad_Bucket!/x", "--run-dir")


def test_the_lock_is_exclusive_survives_a_dead_holder_and_marks_the_run_directory(bucket, tmp_path):
    run = f"{bucket}/runs/lock"
    first = RunDirLock(run).acquire()
    assert is_run_dir(run)
    with pytest.raises(RunDirError, match=rf"in use by another run \(host .*, pid {os.getpid()}"):
        RunDirLock(run).acquire()
    first.release()
    RunDirLock(run).acquire().release()  # released: the next run takes it

    # A holder killed on this host: its pid no longer exists, so the lock is taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"host": os.uname().nodename, "pid": int(dead.stdout), "started": "x", "heartbeat_unix_s": 9e18}
    run_path(f"{run}/run.lock").write_text(json.dumps(record))
    taken = GcsRunLock(run).acquire()
    held = json.loads(run_path(f"{run}/run.lock").read_text())
    assert held["pid"] == os.getpid() and not held["released"]
    taken.release()


def test_a_foreign_prefix_is_refused_and_a_failed_start_leaves_nothing(bucket):
    run_path(f"{bucket}/data/file.txt").write_text("not a run")
    with pytest.raises(RunDirError, match="is not a justrl_jax run directory"):
        RunDirLock(f"{bucket}/data").acquire()
    lock = RunDirLock(f"{bucket}/runs/failed").acquire()
    (run_path(f"{bucket}/runs/failed") / "config.yaml").write_text("x")
    lock.discard_failed_start()
    assert not run_path(f"{bucket}/runs/failed").exists()


def test_metrics_in_a_bucket_are_rewritten_whole_and_truncated_on_resume(bucket):
    run = f"{bucket}/runs/metrics"
    writer = MetricsWriter(run, tensorboard=True)
    for step in range(4):
        writer.write(step, {"reward/mean": step / 4})
    writer.close()
    assert [r["step"] for r in read_metrics(run)] == [0, 1, 2, 3]
    assert any(p.name.startswith("events.out.tfevents") for p in run_path(f"{run}/tensorboard").iterdir())
    resumed = MetricsWriter(run, tensorboard=False, resume_step=2)
    resumed.write(2, {"reward/mean": 9.0})
    resumed.close()
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(run)] == [(0, 0.0), (1, 0.25), (2, 9.0)]


def test_atomic_outputs_and_directory_copies_in_a_bucket(bucket, tmp_path):
    out = f"{bucket}/out/figure.bin"
    with atomic_file(out, "wb") as f:
        f.write(b"abc")
    assert run_path(out).read_bytes() == b"abc"
    with pytest.raises(OutputError, match="already exists"):
        check_output(out, [], overwrite=False)
    with pytest.raises(OutputError, match=r"is \(or overlaps\) the input gs://"):
        check_output(f"{bucket}/out", [out], overwrite=True, directory=True)
    with atomic_dir(f"{bucket}/out/export") as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"\0" * 10)
    with atomic_dir(f"{bucket}/out/export") as tmp:  # replaces the old export as a whole
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in run_path(f"{bucket}/out/export").iterdir()) == ["config.json"]
    local = tmp_path / "tree"
    (local / "a").mkdir(parents=True)
    (local / "a" / "x.txt").write_text("x")
    (local / "config.json").write_text("{}")
    upload_dir(local, f"{bucket}/copy", last="config.json")
    back = download_dir(f"{bucket}/copy")
    assert (back / "a" / "x.txt").read_text() == "x" and (back / "config.json").read_text() == "{}"


def _train_error(run_dir: str, capsys) -> str:
    """``train``'s exit status must be 2; returns its last stderr line (the one-line error)."""
    from justrl_jax import train

    assert train.main(["--run-dir", run_dir, "--set", "loop.total_steps=1"]) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_train_fails_at_start_for_a_missing_bucket_no_credentials_or_no_endpoint(bucket, monkeypatch, capsys):
    """Exit 2 and one line naming the path, before the run directory is claimed or the model built."""
    assert _train_error("gs://no-such-bucket/run", capsys) == (
        "error: --run-dir gs://no-such-bucket/run: bucket 'no-such-bucket' does not exist; create it or fix the URL"
    )
    assert _train_error("gs://x/run", capsys).startswith("error: --run-dir gs://x/run: 'x' is not a Cloud Storage")
    with monkeypatch.context() as m:  # an endpoint nothing listens on (a closed port of this host)
        m.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
        assert _train_error(f"{bucket}/run", capsys) == (
            f"error: --run-dir {bucket}/run: cannot reach Cloud Storage at http://127.0.0.1:9 (ConnectionError); "
            "check the network or STORAGE_EMULATOR_HOST"
        )
    with monkeypatch.context() as m:  # real Cloud Storage, credentials that are not there: found before any request
        m.delenv("STORAGE_EMULATOR_HOST")
        m.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")
        last = _train_error(f"{bucket}/run", capsys)
        assert last.startswith(f"error: --run-dir {bucket}/run: no Google Cloud credentials (File /nonexistent/")
        assert "gcloud auth application-default login" in last
    assert not run_path(f"{bucket}/run").exists()
