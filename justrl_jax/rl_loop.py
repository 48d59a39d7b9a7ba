"""The RL loop: the only module that sequences the stages of a JustRL step.

Per step: draw ``prompts_per_step`` prompts -> sample ``samples_per_prompt`` each (temperature 1.0)
-> verify on the CPU pool (the strict reward) -> group advantages -> recompute old log-probs ->
``N / mini_batch_size`` AdamW updates -> metrics -> checkpoint -> validation.

Reproducibility: the sampling key of step ``s`` is ``fold_in(key(seed), s)`` and the data position
is checkpointed, so a resumed run repeats exactly what an uninterrupted one does.

Multi-host: every process runs this same loop; each reads the same global batch (cheap host work)
and feeds only its own devices' rows; only process 0 writes metrics and the progress line;
checkpoints are written collectively by Orbax.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from justrl_jax.advantages import group_advantages
from justrl_jax.checkpoint import Checkpointer, abstract_like
from justrl_jax.config_io import dump_yaml, to_dict
from justrl_jax.data import PromptStream
from justrl_jax.distributed import barrier
from justrl_jax.kv_budget import kv_cache_budget_bytes
from justrl_jax.metrics import MetricsWriter
from justrl_jax.model.source import Policy, load_policy
from justrl_jax.run_config import RunConfig
from justrl_jax.sampler import Sampler, SamplerConfig
from justrl_jax.sampling import strategy_for
from justrl_jax.sharding import MeshConfig, data_parallel_size, make_mesh
from justrl_jax.train_batch import build_train_batch
from justrl_jax.train_step import (
    TrainState,
    init_train_state,
    make_compute_logps,
    make_train_step,
    state_sharding,
)
from justrl_jax.verifier import Verifier

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive steps whose every update was skipped for a non-finite gradient."""


@dataclasses.dataclass
class _Stop:
    """Set by SIGTERM/SIGINT: finish the current step, save, exit 0."""

    requested: bool = False
    signal_name: str = ""


def _install_stop_handlers(stop: _Stop) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame):
        stop.requested = True
        stop.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step, then exiting", stop.signal_name)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM,)}
    for sig in previous:
        signal.signal(sig, handler)
    return previous


def check_against_mesh(cfg: RunConfig, mesh) -> None:
    """What can only be checked once the mesh is known; raised before anything compiles."""
    dp = data_parallel_size(mesh)
    n = cfg.rollout.sequences
    if n % dp:
        raise ValueError(
            f"rollout batch of {n} responses is not divisible by the data-parallel size {dp} "
            f"(mesh {dict(mesh.shape)}); change rollout.prompts_per_step or --mesh"
        )
    if cfg.train.mini_batch_size % dp:
        raise ValueError(
            f"train.mini_batch_size ({cfg.train.mini_batch_size}) is not divisible by the "
            f"data-parallel size {dp} (mesh {dict(mesh.shape)})"
        )


def _to_global(tree, mesh, spec):
    """Host numpy (identical on every process) -> global arrays sharded by ``spec``."""
    sharding = jax.sharding.NamedSharding(mesh, spec)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


class RLRunner:
    """Builds every part of a run from a :class:`RunConfig`, then :meth:`run` steps it."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        mesh_spec: str | None = None,
        resume: bool | str = True,
        devices: list | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.primary = jax.process_index() == 0
        mesh_spec = mesh_spec or cfg.mesh
        self.mesh = make_mesh(MeshConfig.parse(mesh_spec) if mesh_spec else MeshConfig(), devices)
        check_against_mesh(cfg, self.mesh)
        if self.primary:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        model_path, data_path = cfg.model.path, cfg.data.path
        if cfg.demo.enabled:
            from justrl_jax.demo import prepare
            from justrl_jax.prompts import PromptFormat, format_prompt

            suffix = format_prompt("", PromptFormat.TRAIN)
            # One writer (process 0); the others wait for complete files on the shared run dir.
            if self.primary:
                assets = prepare(cfg.demo, self.run_dir / "demo_assets", suffix)
            barrier("demo_assets", cfg.loop.distributed_timeout_s)
            if not self.primary:
                assets = prepare(cfg.demo, self.run_dir / "demo_assets", suffix)  # reads what process 0 wrote
            model_path, data_path = str(assets.model_dir), str(assets.data_path)
        self.data_cfg = dataclasses.replace(cfg.data, path=data_path)

        from transformers import AutoTokenizer

        policy: Policy = load_policy(
            model_path,
            self.mesh,
            param_dtype=cfg.model.param_dtype.jnp,
            compute_dtype=cfg.model.dtype.jnp,
            remat=cfg.train.remat,
        )
        self.policy = policy
        self._check_memory(policy.model.config)
        self.tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
        self.stream = PromptStream(self.data_cfg, self.tokenizer)
        self.total_steps = cfg.loop.total_steps or self.stream.num_examples // cfg.rollout.prompts_per_step
        if self.total_steps < 1:
            raise ValueError(
                f"{data_path}: {self.stream.num_examples} prompts make no full batch of "
                f"{cfg.rollout.prompts_per_step}; set loop.total_steps"
            )

        self.graphdef, self.state = init_train_state(policy.model, cfg.train.optim, self.mesh)
        self.sharding = state_sharding(self.state)
        self.compute_logps = make_compute_logps(self.graphdef, cfg.train, self.mesh, self.sharding)
        self.train_step = make_train_step(self.graphdef, cfg.train, self.mesh, self.sharding)
        r = cfg.rollout
        self.sampler = Sampler(
            self.graphdef,
            SamplerConfig(
                max_new_tokens=r.max_new_tokens,
                strategy=strategy_for(r.temperature, r.top_p, r.top_k),
                kv_cache_budget_bytes=kv_cache_budget_bytes(r.kv_cache_budget_gb),  # 0: from the device
                max_concurrent_rows=r.max_concurrent_rows or None,
            ),
            mesh=self.mesh,
            eos_ids=policy.eos_ids,
            pad_id=int(self.tokenizer.pad_token_id),
        )
        self.key = jax.random.key(cfg.loop.seed)
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint) if cfg.checkpoint.enabled else None
        self.start_step = 0
        self._restore(resume)
        self.metrics = MetricsWriter(self.run_dir, enabled=self.primary, resume_step=self.start_step)
        if self.primary:
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))

    def _check_memory(self, arch) -> None:
        """Prints the memory plan and refuses, before anything compiles, what cannot fit the device."""
        from justrl_jax.memory_estimate import advice, plan_memory

        cfg = self.cfg
        stats = jax.local_devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        fsdp, tensor = self.mesh.shape["fsdp"], self.mesh.shape["tensor"]
        inputs = cfg.plan_inputs(fsdp, sampler_waves=1 if limit is None else 0)
        plan = plan_memory(arch, MeshConfig(fsdp, tensor), fsdp * tensor, inputs)
        if limit is not None:
            plan = dataclasses.replace(plan, device_memory=int(limit))
        log.info("memory plan per device (mesh fsdp=%d, tensor=%d):\n%s", fsdp, tensor, plan.table())
        if limit is not None and plan.training_peak > limit:
            raise ValueError(
                f"the update needs ~{plan.training_peak / 2**30:.1f} GiB per device but "
                f"{jax.local_devices()[0].device_kind} has {limit / 2**30:.1f} GiB; reduce "
                f"{advice(plan, inputs, MeshConfig(fsdp, tensor))}"
            )

    # --- checkpoints -----------------------------------------------------------------------------

    def _meta(self, step: int, metrics: dict) -> dict:
        """Everything besides the arrays that an exact resume (and ``convert``) needs."""
        return {
            "format": 1,
            "step": step,
            "data": self.stream.get_state(),
            "rng": np.asarray(jax.random.key_data(self.key)).tolist(),
            "config": to_dict(self.cfg),
            "mesh": {str(k): int(v) for k, v in self.mesh.shape.items()},
            "process_count": jax.process_count(),
            "saved_at_unix_s": time.time(),
            "model": {
                "arch": dataclasses.asdict(self.policy.model.config),
                "tokenizer_dir": str(Path(self.policy.tokenizer_dir).absolute()),
                "eos_ids": list(self.policy.eos_ids),
            },
            "train": {"step": int(self.state.step), "skipped_updates": int(self.state.skipped_updates)},
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }

    def _save(self, step: int, metrics: dict) -> bool:
        """Starts saving the state after ``step`` completed steps (in the background when async).

        Returns False when nothing was written: checkpoints are disabled, or the parameters or the
        optimizer state are not finite (never saved, so retention only ever keeps good ones).
        """
        if self.checkpointer is None:
            return False
        from justrl_jax.checkpoint import save_hf_assets

        if self.primary:  # the tokenizer and configs, once, so the run converts on any machine
            save_hf_assets(self.policy.tokenizer_dir, self.run_dir)
        params = nnx.to_pure_dict(self.state.params)
        other = {
            "opt_state": self.state.opt_state,
            "step": self.state.step,
            "skipped_updates": self.state.skipped_updates,
        }
        saved = self.checkpointer.save(step, params, other, self._meta(step, metrics))
        if saved:
            log.info("checkpoint: step %d -> %s", step, self.checkpointer.step_dir(step))
        return saved

    def _restore(self, resume: bool | str) -> None:
        """Continues from a checkpoint, or starts the run directory over.

        ``True``: its newest complete checkpoint, if any. A path: that run directory's newest complete
        checkpoint or that checkpoint step, onto this run's mesh, then this run directory continues
        from it (its own newer checkpoints are deleted). ``False``: step 0, deleting old checkpoints.
        """
        from justrl_jax.checkpoint import dict_changes, read_meta, restore_step_dir
        from justrl_jax.model.source import find_checkpoint

        if self.checkpointer is None:
            if isinstance(resume, (str, Path)):
                raise ValueError(f"--resume {resume}: checkpoint.enabled is false in this run's config")
            return
        own = self.checkpointer
        if resume is False:
            dropped = own.delete_after(-1)
            if dropped:
                log.warning("--no-resume: deleted the checkpoints %s in %s; starting at step 0", dropped, own.directory)
            return
        if isinstance(resume, (str, Path)):
            step_dir = find_checkpoint(resume)
            if step_dir is None:
                raise FileNotFoundError(f"--resume {resume}: not a run directory or a checkpoint step directory")
            source = "the checkpoint given by --resume"
        else:
            latest = own.latest_step()
            if latest is None:
                log.info("no checkpoint in %s: starting at step 0", own.directory)
                return
            step_dir = own.step_dir(latest)
            source = "the newest complete checkpoint of this run directory"
        meta = read_meta(step_dir)
        step = int(meta["step"])

        differs = dict_changes(meta["model"]["arch"], dataclasses.asdict(self.policy.model.config))
        if differs:
            raise ValueError(
                f"checkpoint {step_dir} holds another architecture than model.path "
                f"({self.cfg.model.path}): "
                + ", ".join(f"{k} {saved!r} (checkpoint) != {now!r}" for k, saved, now in differs)
            )
        changed = dict_changes(meta.get("config", {}), to_dict(self.cfg))
        if changed:
            log.warning(
                "resuming with a config that differs from the checkpoint's: %s",
                "; ".join(f"{k}: {saved!r} -> {now!r}" for k, saved, now in changed),
            )

        params_target = abstract_like(nnx.to_pure_dict(self.state.params))
        other_target = abstract_like(
            {"opt_state": self.state.opt_state, "step": self.state.step, "skipped_updates": self.state.skipped_updates}
        )
        restored = restore_step_dir(step_dir, params_target, other_target)
        params = self.state.params
        nnx.replace_by_pure_dict(params, restored.params)
        other = restored.opt_state
        self.state = TrainState(
            params=params, opt_state=other["opt_state"], step=other["step"], skipped_updates=other["skipped_updates"]
        )
        self.stream.set_state(meta["data"])
        self.key = jax.random.wrap_key_data(jnp.asarray(meta["rng"], dtype=jnp.uint32))
        self.start_step = step
        # This run directory's history now continues from `step`: a checkpoint of the abandoned
        # future (or another run's step of the same number) must not be resumed from or collide later.
        same = step_dir.absolute().resolve() == own.step_dir(step).resolve()
        dropped = own.delete_after(step if same else step - 1)
        if dropped:
            log.warning(
                "deleted the checkpoints %s of %s: the run continues from step %d of %s",
                dropped,
                own.directory,
                step,
                step_dir,
            )
        log.warning("resuming from step %d (%s): %s, saved on mesh %s", step, step_dir, source, meta.get("mesh", "?"))

    # --- one step --------------------------------------------------------------------------------

    def step(self, step: int) -> dict:
        cfg = self.cfg
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        batch = self.stream.next_batch(cfg.rollout.prompts_per_step)

        t = time.perf_counter()
        rollout = self.sampler.generate(
            self.state.params,
            batch.prompt_ids,
            batch.prompt_mask,
            n=cfg.rollout.samples_per_prompt,
            key=jax.random.fold_in(self.key, step),
        )
        # The Rollout is already gathered to every host as numpy (the sampler does it per wave).
        completion, completion_mask = rollout.completion_ids, rollout.completion_mask
        lengths, finish = completion_mask.sum(axis=1), rollout.finish
        times["time/generate_s"] = time.perf_counter() - t
        if self.sampler.config.scheduler == "continuous":
            times.update(self.sampler.stats.as_metrics())  # slot occupancy, preemptions, prefill/decode tokens/s

        t = time.perf_counter()
        texts = self.tokenizer.batch_decode(
            [row[:n] for row, n in zip(completion, lengths, strict=True)], skip_special_tokens=True
        )
        golds = [g for g in batch.golds for _ in range(cfg.rollout.samples_per_prompt)]
        verdicts = self.verifier.verify(texts, golds, response_lengths=lengths.tolist())
        rewards = np.asarray([v.reward for v in verdicts], np.float32)
        times["time/verify_s"] = time.perf_counter() - t

        advantages = np.asarray(group_advantages(jnp.asarray(rewards), cfg.rollout.samples_per_prompt))
        prompt_ids = np.repeat(batch.prompt_ids, cfg.rollout.samples_per_prompt, axis=0)
        prompt_mask = np.repeat(batch.prompt_mask, cfg.rollout.samples_per_prompt, axis=0)
        host_batch = build_train_batch(
            prompt_ids,
            prompt_mask,
            completion,
            completion_mask,
            advantages,
            cfg.rollout.length_bucket,
            int(self.tokenizer.pad_token_id),
        )
        train_batch = _to_global(host_batch, self.mesh, jax.sharding.PartitionSpec("fsdp"))

        t = time.perf_counter()
        old = self.compute_logps(self.state, train_batch)
        train_batch = train_batch.replace(old_logps=old.logps)
        old_entropy = float(old.entropy)
        times["time/old_logps_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.state, tm = self.train_step(self.state, train_batch)
        tm = jax.device_get(tm)
        times["time/update_s"] = time.perf_counter() - t
        times["time/step_s"] = time.perf_counter() - t0

        statuses = Counter(v.status.value for v in verdicts)
        correct = np.asarray([bool(v.correct) for v in verdicts])
        gen_tokens = int(lengths.sum())
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/accuracy": float(correct.mean()),
            "reward/all_equal_groups": float(
                np.mean(rewards.reshape(-1, cfg.rollout.samples_per_prompt).std(axis=1) == 0)
            ),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": int(lengths.max()),
            "response/length_min": int(lengths.min()),
            "response/truncated_frac": float(np.mean(finish == _finish_length())),
            "prompt/length_mean": float(batch.prompt_mask.sum(axis=1).mean()),
            "actor/entropy": old_entropy,  # token mean over valid response tokens, pre-update policy
            **{f"actor/{k}": float(v) for k, v in dataclasses.asdict(tm).items()},
            **{f"verifier/{k}": statuses.get(k, 0) for k in ("ok", "no_answer", "timeout", "too_long", "error")},
            "data/epoch": self.stream.epoch,
            "perf/generated_tokens_per_s": gen_tokens / max(times["time/generate_s"], 1e-9),
            "perf/train_tokens_per_s": float(tm.total_tokens) / max(times["time/update_s"], 1e-9),
            **times,
        }
        return metrics

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> dict:
        """Runs steps ``start_step .. total_steps - 1`` and returns the last step's metrics.

        SIGTERM (preemption): the current step finishes, validation is skipped, a checkpoint is saved
        and ``run`` returns normally, so the process exits 0 within one step plus one save.
        Raises :class:`NonFiniteError` after ``loop.max_nonfinite_steps`` consecutive steps whose
        updates were all skipped for non-finite gradients, and at once when the state due to be saved
        holds a NaN or Inf; the newest checkpoint on disk is then the last good state.
        """
        cfg = self.cfg
        stop = _Stop()
        previous = _install_stop_handlers(stop)
        last: dict = {}
        nonfinite = 0

        def stopping() -> bool:
            # Orbax saves collectively: all hosts must stop after the same step, even when SIGTERM
            # reached them at different moments.
            if jax.process_count() == 1:
                return stop.requested
            from jax.experimental import multihost_utils

            return bool(np.any(multihost_utils.process_allgather(np.int32(stop.requested))))

        def newest_checkpoint() -> str:
            if self.checkpointer is None:
                return "checkpoints are disabled"
            self.checkpointer.wait()
            latest = self.checkpointer.latest_step()
            if latest is None:
                return f"no checkpoint was written in {self.checkpointer.directory}"
            return f"the newest checkpoint, {self.checkpointer.step_dir(latest)}, holds the last good state"

        try:
            with Verifier(cfg.verifier) as self.verifier:
                if self.start_step >= self.total_steps:
                    log.warning("nothing to do: the run is complete at step %d", self.start_step)
                self._maybe_validate(self.start_step, first=True)
                for step in range(self.start_step, self.total_steps):
                    if step == self.start_step and stopping():
                        log.warning(
                            "stopped by %s before step %d: nothing new to save",
                            stop.signal_name or "a signal to another host",
                            step,
                        )
                        break
                    # Hosts start each step together; one that died or hangs fails the others here.
                    barrier(f"step-{step}", cfg.loop.distributed_timeout_s)
                    last = self.step(step)
                    done = step + 1
                    all_skipped = last["actor/updates"] == 0
                    nonfinite = nonfinite + 1 if all_skipped else 0
                    stop_now = stopping()
                    if not stop_now:  # preempted: save first, validate another time
                        last.update(self._maybe_validate(done))
                    self.metrics.write(step, last)
                    self.metrics.progress(done, self.total_steps, last)
                    if nonfinite >= cfg.loop.max_nonfinite_steps:
                        raise NonFiniteError(
                            f"{nonfinite} consecutive steps had only non-finite gradients (up to step {step}): "
                            f"every update was skipped (NaN/Inf loss or gradients, see actor/* in "
                            f"{self.metrics.path}); stopping. {newest_checkpoint()}; resume from it with a "
                            f"smaller train.optim.lr or other data."
                        )
                    if stop_now or done % cfg.checkpoint.every_steps == 0 or done == self.total_steps:
                        if not self._save(done, last) and self.checkpointer is not None:
                            raise NonFiniteError(
                                f"after step {step} the parameters or optimizer state hold NaN/Inf (see the "
                                f"log for which); not saved. {newest_checkpoint()}."
                            )
                    if stop_now:
                        log.warning(
                            "stopped by %s after %d completed steps; %s",
                            stop.signal_name or "a signal to another host",
                            done,
                            f"checkpoint {done} saved" if self.checkpointer else "checkpoints are disabled",
                        )
                        break
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()  # the last asynchronous save completes before we return
            self.metrics.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return last

    def _maybe_validate(self, done: int, first: bool = False) -> dict:
        v = self.cfg.validation
        if not v.enabled or (first and not v.before_train) or (not first and done % v.every_steps):
            return {}
        from justrl_jax.evaluation.runner import validate

        t = time.perf_counter()
        result = validate(self, v)
        result["time/validate_s"] = time.perf_counter() - t
        if first and self.primary:
            (self.run_dir / "validation_before_train.json").write_text(json.dumps(result, indent=2))
        return result


def _finish_length():
    from justrl_jax.sampler import FinishReason

    return FinishReason.LENGTH.value
