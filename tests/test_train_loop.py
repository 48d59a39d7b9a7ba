"""The RL loop end to end: the demo learns on one device, and a 2x2 mesh takes the same first steps; the
shipped JustRL configs run.

One 40-step learning run (one device, as the CPU demo runs): a second 40-step run on a mesh would cost as
much again. The 2x2 mesh (data and tensor axes both split) instead runs the first 2 steps from the same
starting model and must log what the one-device run logged: the same rollouts (rewards, lengths) and the
same losses and gradient norms up to rounding. A mesh bug in the loop's glue (rows, rewards or
advantages placed on the wrong shard) changes those at once. 4x4 itself runs the loop in the KL test
below, and equals one device in test_train_step, test_sampler and test_continuous_batching."""

import math
import shutil

import jax
import pytest
from tiny_run import make_tiny_model_dir, read_jsonl, write_benchmarks, write_dapo_parquet

from justrl_jax import train as train_cli
from justrl_jax.config_io import ConfigError
from justrl_jax.model.tiny_tokenizer import ChatStyle
from justrl_jax.plot import plot_run
from justrl_jax.rl_loop import RLRunner
from justrl_jax.run_config import load_run_config

DEMO_STEPS = 40  # the shipped demo (configs/demo.yaml) cut short: 0.45 -> 0.77 here, 0.45 -> 0.89 in full


MESH_STEPS = 2  # steps 0 and 1 roll out from the starting model (step 0 runs at lr 0), step 1 updates it


def _run_demo(run_dir, mesh, devices, steps=DEMO_STEPS):
    cfg = load_run_config(None, [f"loop.total_steps={steps}", "checkpoint.every_steps=100"])
    runner = RLRunner(cfg, run_dir, mesh_spec=mesh, devices=devices)
    runner.run()
    return read_jsonl(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """The 40-step demo on one device: its run directory and its metrics (read-only for the tests)."""
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    return run_dir, _run_demo(run_dir, "1x1", jax.devices()[:1])


def _assert_learns(records):
    """Like the full demo's promise (at most ~0.5 accuracy over the first 10 steps, at least 0.85 over the
    last 10), on a shorter run and with room for another CPU's rounding: a low start, a clear rise."""
    assert [r["step"] for r in records] == list(range(DEMO_STEPS))
    accuracy = [r["reward/accuracy"] for r in records]
    first, last = sum(accuracy[:10]) / 10, sum(accuracy[-10:]) / 10
    assert first <= 0.55 and last >= 0.65 and last >= first + 0.2, (first, last)
    for r in records:
        for key in ("actor/entropy", "actor/grad_norm", "response/length_mean", "actor/learning_rate"):
            assert math.isfinite(r[key]), (key, r)
    _assert_sampler_agrees_with_trainer(records)


@pytest.mark.slow
def test_demo_learns_on_one_device(one_device_run, tmp_path):
    run_dir, records = one_device_run
    _assert_learns(records)
    assert (run_dir / "config.yaml").exists()
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "checkpoints" / str(DEMO_STEPS)).is_dir()  # the final step is saved
    png = plot_run(shutil.copytree(run_dir, tmp_path / "run"))  # plotted in a copy: the fixture stays as it was
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_on_2x2_mesh_takes_the_one_device_first_steps(one_device_run, tmp_path):
    """From the very model the one-device run started from (the warm start is itself an XLA computation
    whose last bits depend on the device count), the 2x2 run logs the same first steps."""
    one_dir, one = one_device_run
    run_dir = tmp_path / "run"
    shutil.copytree(one_dir / "demo_assets", run_dir / "demo_assets")
    mesh = _run_demo(run_dir, "2x2", jax.devices()[:4], steps=MESH_STEPS)
    assert [r["step"] for r in mesh] == list(range(MESH_STEPS))
    _assert_sampler_agrees_with_trainer(mesh)
    for ours, theirs in zip(mesh, one[:MESH_STEPS], strict=True):
        # Slot and page statistics follow the mesh's shards; timings follow the machine.
        keys = [k for k in theirs if not k.startswith(("time/", "perf/", "rollout/"))]
        assert sorted(keys) == sorted(k for k in ours if not k.startswith(("time/", "perf/", "rollout/")))
        for key in keys:
            if key.startswith(("reward/", "response/")) or key in ("step", "actor/updates", "actor/learning_rate"):
                assert ours[key] == theirs[key], (ours["step"], key)  # the same tokens were sampled
            else:  # computed on another mesh: equal up to the order of floating-point reductions
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (ours["step"], key)
    assert 0 < one[0]["reward/accuracy"] < 1 and one[1]["actor/grad_norm"] > 0  # something to compare


def test_kl_to_the_initial_policy_runs_and_is_logged(tmp_path):
    """train.loss.kl_coef > 0: reference log-probs of the frozen starting model, k3 KL logged."""
    run_dir = tmp_path / "run"
    sets = ["loop.total_steps=3", "train.loss.kl_coef=0.001", "checkpoint.enabled=false", "demo.sft_steps=30"]
    assert train_cli.main(["--run-dir", str(run_dir), "--mesh", "4x4", *[a for s in sets for a in ("--set", s)]]) == 0
    records = read_jsonl(run_dir / "metrics.jsonl")
    kl = [r["actor/ref_kl"] for r in records]
    assert len(kl) == 3 and all(math.isfinite(k) and k >= 0 for k in kl), kl
    # Step 0 runs at lr 0 (warm-up): the policy is still the reference, up to rounding between the two
    # log-prob paths; then the updates move it away (here ~1e-3 and ~7e-3).
    assert kl[0] < 1e-6 and max(kl[1:]) > 1e-4, kl
    _assert_sampler_agrees_with_trainer(records)


def _assert_sampler_agrees_with_trainer(records):
    # The sampler's log-probs (KV cache, one token at a time) and the trainer's (whole sequences) of the
    # same tokens under the same parameters: equal up to fp32 rounding; a misalignment would be O(1).
    gaps = [r["rollout/logprob_diff_max"] for r in records]
    assert all(0.0 <= g < 1e-3 for g in gaps) and max(gaps) > 0.0, gaps


@pytest.mark.parametrize(
    "preset, style", [("justrl_deepseek_1p5b", ChatStyle.DEEPSEEK), ("justrl_nemotron_1p5b", ChatStyle.CHATML)]
)
@pytest.mark.slow
def test_shipped_configs_run_two_steps(tmp_path, preset, style):
    """Everything as shipped except the model (tiny, random), the data files and the sizes."""
    model = make_tiny_model_dir(tmp_path / "model", style, rope_theta=500000.0 if "nemotron" in preset else 1e4)
    data = write_dapo_parquet(tmp_path / "dapo.parquet", n=8)
    bench = write_benchmarks(tmp_path / "bench")
    cfg = load_run_config(
        f"configs/{preset}.yaml",
        [
            f"model.path={model}",
            f"data.path={data}",
            f"validation.data_dir={bench}",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=6",
            "rollout.length_bucket=8",
            "train.mini_batch_size=8",
            "train.micro_batch_size=4",
            "train.max_tokens_per_row=128",  # packed, as shipped, in small rows
            "train.micro_batch_tokens=256",
            "data.bucket_multiple=16",
            "validation.n_samples=2",
            "validation.max_new_tokens=6",
            "loop.total_steps=2",
        ],
    )
    assert cfg.train.loss.clip_high == 0.28 and cfg.train.optim.lr == 1e-6 and cfg.rollout.samples_per_prompt == 8
    runner = RLRunner(cfg, tmp_path / "run", mesh_spec="2x1", devices=jax.devices()[:2])
    runner.run()
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1]
    assert records[0]["actor/learning_rate"] == 0.0  # warm-up: step 0 runs at lr 0
    assert records[1]["actor/learning_rate"] == pytest.approx(1e-7)
    assert records[0]["actor/updates"] == 2  # 16 responses / mini-batch 8
    assert "val/mean" in records[1] or (tmp_path / "run" / "validation_before_train.json").exists()


def test_bad_config_fails_before_compiling(tmp_path):
    with pytest.raises(ConfigError, match="rollout.temperature"):
        load_run_config(None, ["rollout.temperature=0"])
    with pytest.raises(ConfigError, match="unknown config key 'rollout.temprature'"):
        load_run_config(None, ["rollout.temprature=1"])
    with pytest.raises(ConfigError, match="not a multiple of train.mini_batch_size"):
        load_run_config(None, ["rollout.prompts_per_step=3"])
    small = ["rollout.prompts_per_step=3", "rollout.samples_per_prompt=8", "train.mini_batch_size=24"]
    cfg = load_run_config(None, [*small, "train.micro_batch_size=24"])
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 16"):
        RLRunner(cfg, tmp_path / "run", mesh_spec="16x1")
    with pytest.raises(ValueError, match="needs 12 devices"):
        RLRunner(load_run_config(None), tmp_path / "run", mesh_spec="3x4")
