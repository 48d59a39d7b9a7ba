"""The Checkpointer: NaN/Inf never written, retention keeps only good checkpoints, a partial save is
invisible (and cleaned up), and a train state saved on a 4x4 mesh restores onto 2x8 and one device."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from justrl_jax.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointMismatch,
    NoRestorableCheckpoint,
    abstract_like,
    complete_steps,
    dict_changes,
    find_checkpoint,
    read_meta,
    restore_newest_restorable,
    restore_step_dir,
)
from justrl_jax.model.construct import create_model
from justrl_jax.model.qwen2 import Qwen2Config
from justrl_jax.optim import OptimConfig
from justrl_jax.sharding import make_mesh
from justrl_jax.train_step import init_train_state

SYNC = CheckpointConfig(async_save=False, keep=2)


def _save(ckpt, step, w, moment=0.0):
    return ckpt.save(
        step,
        {"w": jnp.asarray(w, jnp.float32)},
        {"opt_state": {"mu": jnp.full(3, moment, jnp.float32)}, "step": jnp.int32(step)},
        {"step": step},
    )


def test_config_is_validated():
    with pytest.raises(ValueError, match="checkpoint.every_steps must be an integer >= 1, got 0"):
        CheckpointConfig(every_steps=0)
    with pytest.raises(ValueError, match="checkpoint.keep"):
        CheckpointConfig(keep=0)
    with pytest.raises(ValueError, match="checkpoint.async_save must be true or false"):
        CheckpointConfig(async_save="yes")


def test_non_finite_values_are_never_saved(tmp_path, caplog):
    with Checkpointer(tmp_path, SYNC) as ckpt, caplog.at_level(logging.ERROR):
        assert _save(ckpt, 1, [1.0, 2.0, 3.0])
        assert not _save(ckpt, 2, [1.0, np.nan, 3.0])
        assert "['w']" in caplog.text and "NOT written" in caplog.text
        assert not _save(ckpt, 3, [1.0, 2.0, 3.0], moment=np.inf)  # the optimizer state counts too
        assert "['opt_state']['mu']" in caplog.text
        assert ckpt.all_steps() == [1]
    assert complete_steps(tmp_path) == [1]


def test_retention_keeps_the_newest_good_checkpoints(tmp_path):
    with Checkpointer(tmp_path, SYNC) as ckpt:
        for step in (1, 2, 3):
            assert _save(ckpt, step, [float(step)] * 3)
        assert ckpt.all_steps() == [2, 3]  # keep=2
        for step in (4, 5, 6):  # a diverged run: nothing written, so nothing good is pushed out
            assert not _save(ckpt, step, [np.inf] * 3)
        assert ckpt.all_steps() == [2, 3]
        target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
        other = {
            "opt_state": {"mu": jax.ShapeDtypeStruct((3,), jnp.float32)},
            "step": jax.ShapeDtypeStruct((), jnp.int32),
        }
        restored = ckpt.restore(3, target, other)
        assert np.array_equal(restored.params["w"], [3.0] * 3) and restored.meta == {"step": 3}
        with pytest.raises(FileNotFoundError, match="no complete checkpoint at step 1; available: \\[2, 3\\]"):
            ckpt.restore(1, target, other)
        assert ckpt.delete_after(2) == [3] and ckpt.all_steps() == [2]


def test_a_partial_save_is_invisible_and_cleaned_up(tmp_path):
    with Checkpointer(tmp_path, SYNC) as ckpt:
        _save(ckpt, 1, [1.0] * 3)
        _save(ckpt, 2, [2.0] * 3)
    # What a kill during the save of step 3 leaves: every item written, the directory never renamed.
    partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "checkpoints" / "2", partial)
    assert complete_steps(tmp_path) == [1, 2]
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "2"
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        find_checkpoint(partial)
    with pytest.raises(FileNotFoundError, match="not a complete justrl_jax checkpoint"):
        restore_step_dir(partial, {}, {})
    with Checkpointer(tmp_path, SYNC) as ckpt:  # the next start: resumes from 2, saves 3 again
        assert ckpt.latest_step() == 2
        assert _save(ckpt, 3, [3.0] * 3)
    assert not partial.exists()  # Orbax removes the leftover, at the latest before its first save
    assert complete_steps(tmp_path) == [2, 3]


def _tiny_state(mesh, seed):
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    _, state = init_train_state(create_model(config, mesh, seed=seed), OptimConfig(), mesh)
    return state


@pytest.mark.slow
def test_a_state_saved_on_4x4_restores_onto_2x8_and_one_device(tmp_path):
    state = _tiny_state(make_mesh("4x4"), seed=0)

    # Moments that are not zeros, so a misplaced shard cannot hide.
    def perturb(tree):
        keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(tree))))
        return jax.tree.map(
            lambda x: (
                x + jax.random.normal(next(keys), x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x + 7
            ),
            tree,
        )

    opt_state = jax.jit(perturb, out_shardings=jax.tree.map(lambda x: x.sharding, state.opt_state))(state.opt_state)
    params = nnx.to_pure_dict(state.params)
    other = {"opt_state": opt_state, "step": state.step + 5}
    for tree in (params, opt_state):  # really saved from shards of a 16-device mesh
        assert any(
            len(x.sharding.device_set) == 16 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(tree)
        )
    expected = jax.tree.map(np.asarray, (params, other))
    with Checkpointer(tmp_path, SYNC) as ckpt:
        assert ckpt.save(5, params, other, {"step": 5})
        for target_mesh in (make_mesh("2x8"), None):
            fresh = _tiny_state(target_mesh, seed=1)
            target_params = abstract_like(nnx.to_pure_dict(fresh.params))
            target_other = abstract_like({"opt_state": fresh.opt_state, "step": fresh.step})
            restored = ckpt.restore(5, target_params, target_other)
            got = (restored.params, restored.opt_state)
            same = jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), expected, got)
            assert all(jax.tree.leaves(same)), target_mesh
            placed = jax.tree.map(
                lambda t, x: x.sharding.is_equivalent_to(t.sharding, x.ndim), (target_params, target_other), got
            )
            assert all(jax.tree.leaves(placed)), target_mesh


def test_dict_changes_names_the_changed_keys():
    saved = {"train": {"optim": {"lr": 1e-3, "betas": [0.9, 0.999]}}, "loop": {"seed": 0}}
    now = {"train": {"optim": {"lr": 1e-4, "betas": (0.9, 0.999)}}, "loop": {"seed": 0, "new": 1}}
    assert dict_changes(saved, now) == [("loop.new", None, 1), ("train.optim.lr", 1e-3, 1e-4)]


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_resume_falls_back_past_damaged_checkpoints_and_keeps_them(tmp_path, caplog):
    """Newest first: a truncated params file (step 4), a truncated meta (step 3) and a missing meta
    (step 2) are each reported by step and path and moved aside, never deleted; step 1 is used."""
    with Checkpointer(tmp_path, CheckpointConfig(async_save=False, keep=5)) as ckpt:
        for step in range(1, 5):
            assert _save(ckpt, step, [float(step)] * 3)
    steps = tmp_path / "checkpoints"
    big = _largest_file(steps / "4" / "params")
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    meta3 = steps / "3" / "meta" / "metadata"
    truncated = meta3.read_text()[:5]
    meta3.write_text(truncated)
    (steps / "2" / "meta" / "metadata").unlink()
    target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    other = {"opt_state": {"mu": jax.ShapeDtypeStruct((3,), jnp.float32)}, "step": jax.ShapeDtypeStruct((), jnp.int32)}

    def restore(step_dir):
        return restore_step_dir(step_dir, target, other)

    with Checkpointer(tmp_path, SYNC) as ckpt, caplog.at_level(logging.WARNING):
        step, restored = restore_newest_restorable(ckpt, restore)
        assert step == 1 and np.asarray(restored.params["w"]).tolist() == [1.0] * 3
        assert ckpt.all_steps() == [1]
    for bad in (4, 3, 2):
        assert f"checkpoint {bad} ({steps / str(bad)}) does not restore" in caplog.text
        assert f"{steps / str(bad)} -> {tmp_path / 'checkpoints_damaged' / str(bad)}" in caplog.text
    assert sorted(p.name for p in (tmp_path / "checkpoints_damaged").iterdir()) == ["2", "3", "4"]
    assert (tmp_path / "checkpoints_damaged" / "3" / "meta" / "metadata").read_text() == truncated  # as it was
    assert complete_steps(tmp_path) == [1]


def test_when_no_checkpoint_restores_the_run_stops_naming_each_and_moves_none(tmp_path):
    with Checkpointer(tmp_path, SYNC) as ckpt:
        for step in (1, 2):
            assert _save(ckpt, step, [1.0, 2.0, 3.0])
    for step in (1, 2):
        (tmp_path / "checkpoints" / str(step) / "meta" / "metadata").write_text("{trunc")

    with Checkpointer(tmp_path, SYNC) as ckpt:
        with pytest.raises(NoRestorableCheckpoint) as info:
            restore_newest_restorable(ckpt, read_meta)
        assert ckpt.all_steps() == [1, 2]
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for step in (2, 1):
        assert f"step {step} ({tmp_path / 'checkpoints' / str(step)}): JSONDecodeError" in message
    assert not (tmp_path / "checkpoints_damaged").exists()
    assert restore_newest_restorable(Checkpointer(tmp_path / "empty", SYNC), read_meta) is None


def test_a_checkpoint_of_another_model_stops_the_run_without_falling_back(tmp_path):
    with Checkpointer(tmp_path, SYNC) as ckpt:
        for step in (1, 2):
            assert _save(ckpt, step, [1.0, 2.0, 3.0])

    def mismatch(step_dir):
        raise CheckpointMismatch(f"{step_dir} holds another architecture")

    with Checkpointer(tmp_path, SYNC) as ckpt, pytest.raises(CheckpointMismatch, match="2 holds another"):
        restore_newest_restorable(ckpt, mismatch)
    assert complete_steps(tmp_path) == [1, 2]
