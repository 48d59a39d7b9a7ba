"""The robust verifier's process pool: deadlines, crashes, recycling, shutdown, threads, and the
adversarial cases, all on real worker processes (one shared pool per module: a worker takes about
a second to start with SymPy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from verifier_cases import CASES_PATH, load_cases

from justrl_jax.verifier import VerdictStatus, Verifier, VerifierConfig, VerifierMode, robust_verdict
from justrl_jax.verifier.pool import WorkerPool

pytestmark = pytest.mark.slow  # real worker processes

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TIMEOUT_S = 2.0


def _adversarial_cases() -> list[dict]:
    return [c for c in load_cases() if "max_seconds" in c and c["mode_hint"] in ("any", "robust") and not c["disputed"]]


ADVERSARIAL = _adversarial_cases()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


@pytest.fixture(scope="module")
def verifier():
    cfg = VerifierConfig(mode=VerifierMode.ROBUST, workers=2, sample_timeout_s=SAMPLE_TIMEOUT_S, batch_timeout_s=60.0)
    with Verifier(cfg) as v:
        assert v.pool.wait_ready()  # startup (imports) is not part of any test's time limit
        yield v


def _half_is_served(verifier) -> None:
    """A sample that needs a worker (not settled by string equality in the parent)."""
    assert [v.correct for v in verifier.verify(["so \\boxed{\\frac{1}{2}}"], ["0.5"])] == [True]


@pytest.mark.skipif(not ADVERSARIAL, reason=f"case file {CASES_PATH} not found")
@pytest.mark.parametrize("case", ADVERSARIAL, ids=[c["id"] for c in ADVERSARIAL])
def test_adversarial_case_is_false_in_time_and_pool_keeps_serving(verifier, case):
    # No clock here: the sample deadline that bounds a slow case is proven by state in
    # test_big_integer_worker_is_killed_and_replaced; this checks the verdict and that the pool serves on.
    (verdict,) = verifier.verify([case["response"]], [case["gold"]])
    assert not verdict.correct and verdict.reward == -1.0
    _half_is_served(verifier)


def test_big_integer_worker_is_killed_and_replaced(verifier):
    pool = verifier.pool
    _half_is_served(verifier)
    restarts, before = pool.restarts, set(pool.pids())
    start = time.perf_counter()
    # 10 ** (10 ** 10) is a real computation stuck in C: no signal handler could interrupt it. The
    # batch deadline is far away, so a "timeout" can only be the sample deadline's.
    results = pool.submit([("power", (10, 10**10)), ("judge", ("\\frac{1}{2}", "0.5"))], 3600).result(300)
    assert results[0].error == "timeout" and not results[0].ok
    assert results[1].ok and results[1].value == (True, "ok")
    assert time.perf_counter() - start >= SAMPLE_TIMEOUT_S  # not killed before its deadline
    assert pool.restarts == restarts + 1
    killed = before - set(pool.pids())
    assert len(killed) == 1 and _wait_gone(killed)
    _half_is_served(verifier)


def _wait_for(condition, what: str, guard_s: float = 300.0) -> None:
    """Waits for a state; the guard only turns a hang into a failure (it is no speed requirement)."""
    deadline = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.01)


def test_worker_killed_from_outside_fails_only_its_sample():
    # One worker, and no sample deadline that could fire first: only the kill ends the big power.
    # Kill when the state is known (the first judge answered, so the power is running and the second
    # judge waits behind it on the same worker), never after a guessed delay.
    with WorkerPool(workers=1, sample_timeout_s=3600.0) as pool:
        assert pool.wait_ready()
        judge = ("judge", ("x^2 - 1", "(x-1)(x+1)"))
        batch = pool.submit([judge, ("power", (10, 10**10)), judge], 3600)
        _wait_for(lambda: batch.results[0] is not None, "the first sample answered")
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        results = batch.result(300)
        assert results[0].ok and results[0].value == (True, "ok")
        assert (results[1].ok, results[1].error) == (False, "crash")
        assert results[2].ok and results[2].value == (True, "ok")  # re-queued to the replacement
        assert pool.restarts == 1 and pool.pids() != [pid] and _wait_gone([pid])


def test_batch_deadline_times_out_unfinished_samples(verifier):
    results = verifier.pool.submit([("power", (10, 10**10))] * 3 + [("judge", ("1", "2"))], 0.5).result(300)
    # The judge waits behind a power (two samples in flight per worker, two workers) that only a kill
    # ends; a sample deadline would re-queue it and it would be answered. Its timeout is the batch's.
    assert [r.error for r in results] == ["timeout"] * 4
    _half_is_served(verifier)


def test_workers_are_cpu_only_capped_and_never_import_jax(verifier):
    (probe,) = verifier.pool.submit([("probe", ())], 60).result(30)
    assert probe.ok
    assert probe.value["rlimit_as"] == verifier.config.memory_limit_mb * 1024 * 1024
    assert not {"jax", "jaxlib", "flax", "torch", "tensorflow"} & set(probe.value["packages"])
    assert "sympy" in probe.value["packages"]


def test_memory_cap_stops_a_runaway_allocation(verifier):
    over_cap = 2 * verifier.config.memory_limit_mb * 1024 * 1024
    results = verifier.pool.submit(
        [("allocate", (over_cap,)), ("allocate", (1024,)), ("judge", ("\\frac{1}{2}", "0.5"))], 60
    ).result(30)
    assert (results[0].ok, results[0].error) == (False, "MemoryError")
    assert results[1].ok and results[1].value == 1024
    assert results[2].value == (True, "ok")


def test_timed_out_samples_score_incorrect_and_are_not_cached():
    # Solving a degree-11 polynomial inequality takes SymPy ~0.5 s: ten times this deadline.
    slow = "so \\boxed{x^{11} - 3x^7 + 2x^3 - 5x + 1 \\ge 0}"
    cfg = VerifierConfig(mode=VerifierMode.ROBUST, workers=1, sample_timeout_s=0.05)
    with Verifier(cfg) as verifier:
        verifier.pool.wait_ready()
        verdicts = verifier.verify([slow, "\\boxed{3}"], ["(0, 1)", "3"])
        assert [(v.status, v.correct, v.reward) for v in verdicts] == [
            (VerdictStatus.TIMEOUT, False, -1.0),
            (VerdictStatus.OK, True, 1.0),
        ]  # the 2nd is settled inline
        assert verifier.pool.restarts == 1 and verifier.cache_hits == 0
        verdicts = verifier.verify([slow], ["(0, 1)"])  # not served from the cache: judged (and killed) again
        assert verdicts[0].status is VerdictStatus.TIMEOUT and verifier.cache_hits == 0


def test_async_submit_returns_at_once_and_matches_inline(verifier):
    responses = [f"step {i}: so \\boxed{{\\frac{{{i}}}{{{i + 1}}}}}" for i in range(60)]
    golds = [f"{i / (i + 1):.12f}" if i % 2 else f"\\frac{{{i + 1}}}{{{i + 2}}}" for i in range(60)]
    # Every worker slot (two workers, two samples in flight each) holds a power that only a kill ends:
    # submit must come back while no answer can exist yet.
    blocker = verifier.pool.submit([("power", (10, 10**10))] * 4, 3600)
    pending = verifier.submit(responses, golds)
    assert not pending.done()
    for pid in verifier.pool.pids():
        os.kill(pid, signal.SIGKILL)
    assert all(r.error in ("crash", "timeout") for r in blocker.result(300))
    verdicts = pending.result(timeout=300)
    assert pending.done()
    assert verdicts == [robust_verdict(r, g) for r, g in zip(responses, golds, strict=True)]
    assert sum(v.correct for v in verdicts) == 30  # the odd ones: the decimal of i/(i+1)


def test_boxed_code_runs_nothing_in_the_workers(verifier, tmp_path):
    marker = tmp_path / "pwned"
    responses = [
        f"so \\boxed{{__import__('os').system('touch {marker}')}}",
        f"so \\boxed{{exec(\"open('{marker}', 'w')\")}}",
    ]
    verdicts = verifier.verify(responses, ["0", "\\frac{1}{2}"])
    assert [v.correct for v in verdicts] == [False, False]
    assert not marker.exists()


def test_repeated_answers_hit_the_cache(verifier):
    responses, golds = ["so \\boxed{0.25}"] * 8, ["\\frac{1}{4}"] * 8
    assert all(v.correct for v in verifier.verify(responses, golds))
    hits = verifier.cache_hits
    assert all(v.correct for v in verifier.verify(responses, golds))
    assert verifier.cache_hits == hits + 8


def test_calls_from_many_threads(verifier):
    def job(k: int):
        responses = [f"\\boxed{{{k} + {i}}}" for i in range(10)]
        golds = [str(k + i + (i % 3 == 0)) for i in range(10)]
        return [v.correct for v in verifier.verify(responses, golds)], [i % 3 != 0 for i in range(10)]

    with ThreadPoolExecutor(max_workers=4) as executor:
        for got, want in executor.map(job, range(8)):
            assert got == want


def test_pool_created_in_a_finished_thread_keeps_working():
    box = {}

    def make():
        cfg = VerifierConfig(mode=VerifierMode.ROBUST, workers=1, max_tasks_per_worker=3)
        box["verifier"] = Verifier(cfg)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    verifier = box["verifier"]
    seen = set()
    try:
        # 8 samples needing the worker, recycled every 3: several workers, every answer right.
        for i in range(8):
            assert verifier.verify([f"\\boxed{{{i}.0}}"], [f"\\frac{{{2 * i}}}{{2}}"])[0].correct
            seen.update(verifier.pool.pids())
        assert len(seen) >= 3
    finally:
        verifier.close()
    assert _wait_gone(seen)


def test_no_process_outlives_an_exception_in_the_with_block():
    pids = []
    with pytest.raises(RuntimeError, match="boom"):
        with Verifier(VerifierConfig(mode=VerifierMode.ROBUST, workers=2)) as verifier:
            _half_is_served(verifier)
            pids = verifier.pool.pids()
            raise RuntimeError("boom")
    assert len(pids) == 2 and _wait_gone(pids, timeout=2.0)
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not children & set(pids)
    with pytest.raises(RuntimeError, match="closed"):
        verifier.verify(["\\boxed{1}"], ["2"])


_TRAINER_LIKE_SCRIPT = textwrap.dedent("""
    import json, signal, sys, time
    # Ctrl-C raises KeyboardInterrupt as in a terminal, however pytest was started: a background job of a
    # shell without job control inherits SIGINT ignored, and Python then installs no handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.argv[1] == "with-jax":
        import jax  # noqa: F401  (the trainer's process imports JAX; its verifier workers must not)
    from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode
    verifier = Verifier(VerifierConfig(mode=VerifierMode.ROBUST, workers=2))
    assert verifier.verify(["\\\\boxed{\\\\frac{1}{2}}"], ["0.5"])[0].correct
    probes = verifier.pool.submit([("probe", ())] * 2, 60).result(60)
    print(json.dumps({"pids": verifier.pool.pids(), "packages": [p.value["packages"] for p in probes]}),
          flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)  # no close(), no with-block: the exit-time finalizer must stop the workers
    with verifier:
        time.sleep(120)
""")


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill", "exit"])
def test_trainer_process_leaves_no_orphans(tmp_path, how):
    # Ctrl-C in a process that imported JAX (its workers must not); SIGKILL of the parent, which
    # no handler sees: the workers die with it (PDEATHSIG); a normal exit without close().
    script = tmp_path / "trainer_like.py"
    script.write_text(_TRAINER_LIKE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    with subprocess.Popen(
        [sys.executable, str(script), {"ctrl-c": "with-jax"}.get(how, how)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:  # leaving it waits for the process and closes its pipes
        try:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            report = json.loads(line)
            assert len(report["pids"]) == 2
            for packages in report["packages"]:
                assert "jax" not in packages and "sympy" in packages
            if how != "exit":
                proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
            proc.wait(timeout=30)
            if how == "ctrl-c":
                assert "KeyboardInterrupt" in proc.stderr.read()
            if how == "exit":
                assert proc.returncode == 0, proc.stderr.read()
            assert _wait_gone(report["pids"], timeout=5.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_closed_verifier_rejects_work():
    verifier = Verifier(VerifierConfig(mode=VerifierMode.ROBUST, workers=1))
    verifier.close()
    verifier.close()  # idempotent
    assert verifier.verify(["\\boxed{3}"], ["3"])[0].status is VerdictStatus.OK  # settled in the caller
    with pytest.raises(RuntimeError, match="closed"):
        verifier.verify(["\\boxed{x}"], ["y"])
