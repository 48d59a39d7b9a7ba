"""``python -m justrl_jax.train [--config FILE] [--mesh 4x4] [--run-dir DIR] [--set key=value ...]``.

With no arguments it runs the CPU demo (``configs/demo.yaml``): a tiny Qwen2 learns single-digit
addition with the JustRL recipe in a few minutes. The JustRL runs::

    python -m justrl_jax.train --config configs/justrl_deepseek_1p5b.yaml --mesh 4x4 \\
        --run-dir gs://bucket/runs/deepseek

Re-running the same command with the same run directory resumes from its newest checkpoint.
On a multi-host TPU slice run the same command on every host: ``jax.distributed`` is initialised
from the TPU environment (or from ``--coordinator/--num-processes/--process-id``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from justrl_jax.config_io import add_override_flag
from justrl_jax.console import quiet_start


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m justrl_jax.train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML preset (default: configs/demo.yaml, the CPU demo)")
    p.add_argument("--mesh", default=None, help="'4x4' (fsdp x tensor) or 'fsdp=8,tensor=2'; default all fsdp")
    p.add_argument("--run-dir", default=None, help="checkpoints, metrics and logs (default runs/<config name>)")
    add_override_flag(p, "rollout.max_new_tokens=4096")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="resume from this run directory or checkpoint step instead of --run-dir's newest",
    )
    resume.add_argument(
        "--no-resume",
        action="store_true",
        help="start from step 0 even if checkpoints exist (deletes them and the run's hf_assets/)",
    )
    p.add_argument(
        "--adopt-run-dir",
        action="store_true",
        help="run in a non-empty directory that is not a justrl_jax run directory (files named like the run's "
        "own, such as config.yaml or metrics.jsonl, are then replaced)",
    )
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process without TPU env)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--log-level", default="INFO")
    return p


def _maybe_init_distributed(args, timeout_s: int) -> None:
    """One process per host: explicit flags, or a multi-worker TPU slice's own environment."""
    import jax

    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if args.coordinator is not None or "," in hosts:
        # Cross-process collectives for CPU devices (tests, CPU clusters); accelerators ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.coordinator is not None:
        if args.num_processes is None or args.process_id is None:
            raise SystemExit("error: --coordinator needs --num-processes and --process-id")
        jax.distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            initialization_timeout=timeout_s,
            heartbeat_timeout_seconds=max(10, timeout_s // 3),
            shutdown_timeout_seconds=timeout_s,
        )
    elif "," in hosts:
        jax.distributed.initialize(initialization_timeout=timeout_s)


# A user's mistake (a bad value, path or file) is one line and exit 2; anything else is a bug: a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def check_inputs(cfg) -> None:
    """Reads the data file (every row) and what describes the model (config, safetensors headers)
    before the expensive load, so a bad file is named at once. The demo makes its own."""
    if cfg.demo.enabled:
        return
    from justrl_jax.model.source import check_model
    from justrl_jax.prompts import read_examples

    read_examples(
        cfg.data.path,
        file_format=cfg.data.file_format,
        strip_dapo=cfg.data.strip_dapo_instructions,
        skip_malformed=cfg.data.skip_malformed,
    )
    check_model(cfg.model.path)


def main(argv: list[str] | None = None) -> int:
    quiet_start()  # before JAX or transformers can print their false advisories
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from justrl_jax.run_config import default_config_path, load_run_config

    try:
        cfg = load_run_config(args.config, args.overrides)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _maybe_init_distributed(args, cfg.loop.distributed_timeout_s)

    from pathlib import Path

    import jax

    from justrl_jax.run_dir import RunDirLock

    name = Path(args.config or default_config_path()).stem
    run_dir = args.run_dir or str(Path("runs") / name)
    resume: bool | str = args.resume if args.resume else not args.no_resume
    from justrl_jax.storage import check_location

    try:  # a bucket that cannot be used is one line now, not an error in the middle of the first save
        check_location(run_dir, "--run-dir")
        check_location(args.resume or "", "--resume")
        check_location(cfg.model.path, "model.path")
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Process 0 owns the run directory for the whole run (the others write only what Orbax shares).
    lock = RunDirLock(run_dir, adopt=args.adopt_run_dir)
    try:
        if jax.process_index() == 0:
            lock.acquire()
        check_inputs(cfg)
        from justrl_jax.rl_loop import RLRunner

        runner = RLRunner(cfg, run_dir, mesh_spec=args.mesh, resume=resume)
    except USER_ERRORS as e:
        lock.discard_failed_start()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException:
        lock.discard_failed_start()
        raise
    try:
        final = runner.run()
    finally:
        lock.release()
    if final and runner.primary:
        from justrl_jax.metrics import read_metrics

        accuracy = [r["reward/accuracy"] for r in read_metrics(run_dir) if isinstance(r.get("reward/accuracy"), float)]
        k = min(10, len(accuracy))
        if k:
            print(
                f"done: {run_dir}: mean accuracy {sum(accuracy[:k]) / k:.3f} over the first {k} steps, "
                f"{sum(accuracy[-k:]) / k:.3f} over the last {k} (metrics.jsonl, tensorboard/, checkpoints/)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
