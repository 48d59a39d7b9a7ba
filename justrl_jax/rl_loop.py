"""The RL loop: the only module that sequences the stages of a JustRL step.

Per step: draw ``prompts_per_step`` prompts -> sample ``samples_per_prompt`` each (temperature 1.0)
-> verify on the CPU pool (the strict reward; each row as it ends, while the others still decode)
-> group advantages -> recompute old log-probs -> ``N / mini_batch_size`` AdamW updates -> metrics
-> checkpoint -> validation.

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
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from justrl_jax.advantages import group_advantages
from justrl_jax.checkpoint import Checkpointer, RunPosition, reset_hf_assets, resume_run, save_run
from justrl_jax.config_io import dump_yaml, to_dict
from justrl_jax.data import PromptStream
from justrl_jax.demo import prepare_for_run
from justrl_jax.distributed import barrier
from justrl_jax.evaluation.runner import training_validator
from justrl_jax.global_arrays import to_global
from justrl_jax.memory_estimate import check_device_memory
from justrl_jax.metrics import MetricsWriter, StageTimer, rollout_metrics
from justrl_jax.model.source import Policy, load_policy
from justrl_jax.preemption import StopRequest
from justrl_jax.run_config import RunConfig, check_against_mesh
from justrl_jax.sampler import FinishReason, Sampler
from justrl_jax.sharding import MeshConfig, data_parallel_size, make_mesh
from justrl_jax.storage import run_path
from justrl_jax.train_batch import logprob_gap, rollout_train_batch
from justrl_jax.train_step import init_train_state, make_compute_logps, make_train_step, state_sharding
from justrl_jax.verdict_stream import VerdictStream
from justrl_jax.verifier import Verifier

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive steps whose every update was skipped for a non-finite gradient."""


class RLRunner:
    """Builds every part of a run from a :class:`RunConfig`, then :meth:`run` steps it.

    The runner owns a verifier pool, a checkpointer and a metrics writer: :meth:`run` closes them when it
    returns; a runner that is not run is closed with :meth:`close` (or used as a context manager).
    """

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
        self.run_dir = run_path(run_dir)  # local or gs://
        self.primary = jax.process_index() == 0
        mesh_spec = mesh_spec or cfg.mesh
        self.mesh = make_mesh(MeshConfig.parse(mesh_spec) if mesh_spec else MeshConfig(), devices)
        check_against_mesh(cfg, self.mesh)
        if self.primary:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        model_path, data_path = cfg.model.path, cfg.data.path
        if cfg.demo.enabled:
            assets = prepare_for_run(cfg.demo, self.run_dir, cfg.loop.distributed_timeout_s)
            model_path, data_path = str(assets.model_dir), str(assets.data_path)
        self.data_cfg = dataclasses.replace(cfg.data, path=data_path)

        from transformers import AutoTokenizer

        self.policy: Policy = load_policy(
            model_path,
            self.mesh,
            param_dtype=cfg.model.param_dtype.jnp,
            compute_dtype=cfg.model.dtype.jnp,
            remat=cfg.train.remat,
        )
        self.policy.model.attention = cfg.model.attention  # static, so the graphdef carries it to every step
        check_device_memory(self.policy.model.config, self.mesh, cfg.plan_inputs)
        self.tokenizer = AutoTokenizer.from_pretrained(self.policy.tokenizer_dir)
        self.stream = PromptStream(self.data_cfg, self.tokenizer)
        self.total_steps = cfg.loop.total_steps or self.stream.num_examples // cfg.rollout.prompts_per_step
        if self.total_steps < 1:
            raise ValueError(
                f"{data_path}: {self.stream.num_examples} prompts make no full batch of "
                f"{cfg.rollout.prompts_per_step}; set loop.total_steps"
            )

        self.graphdef, self.state = init_train_state(self.policy.model, cfg.train.optim, self.mesh)
        # A KL term's frozen reference: the starting model's own parameters, laid out like the policy's
        # (the train state holds a copy, so the updates never touch these).
        self.ref_params = nnx.state(self.policy.model, nnx.Param) if cfg.train.loss.kl_coef else None
        self.sharding = state_sharding(self.state)
        self.compute_logps = make_compute_logps(self.graphdef, cfg.train, self.mesh, self.sharding)
        self.train_step = make_train_step(self.graphdef, cfg.train, self.mesh, self.sharding)
        r = cfg.rollout
        self.sampler = Sampler(
            self.graphdef,
            r.sampler_config(),  # the rollout config is a SamplingSettings
            mesh=self.mesh,
            eos_ids=self.policy.eos_ids,
            pad_id=int(self.tokenizer.pad_token_id),
        )
        self.validator = None
        if cfg.validation.enabled:
            self.validator = training_validator(
                cfg.validation, r, self.graphdef, self.tokenizer, eos_ids=self.policy.eos_ids, mesh=self.mesh
            )

        self.key = jax.random.key(cfg.loop.seed)
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint) if cfg.checkpoint.enabled else None
        self.start_step = 0
        resumed = resume_run(
            self.checkpointer, resume, self.state, self.policy, config=to_dict(cfg), model_path=cfg.model.path
        )
        if resumed is not None:
            self.state, position = resumed
            self.stream.set_state(position.data)
            self.key, self.start_step = position.key, position.step
        elif self.checkpointer is not None and self.primary and reset_hf_assets(self.run_dir):
            # Step 0: nothing refers to the run-local copy of an older starting model any more.
            log.warning("starting at step 0: removed the run's old hf_assets/ (copied afresh at the first save)")
        tracker = None
        if self.primary and cfg.loop.wandb.enabled:
            from justrl_jax.wandb_run import WandbRun

            tracker = WandbRun(cfg.loop.wandb, self.run_dir, to_dict(cfg), resumed=self.start_step > 0)
        self.metrics = MetricsWriter(self.run_dir, enabled=self.primary, resume_step=self.start_step, tracker=tracker)
        if self.primary:
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))
        self.verifier = Verifier(cfg.verifier)
        self._closed = False

    def close(self) -> None:
        """Finishes the last asynchronous save, then stops the verifier pool and the metrics writer."""
        if self._closed:
            return
        self._closed = True
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.metrics.close()
        self.verifier.close()

    def __enter__(self) -> RLRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _save(self, step: int, metrics: dict) -> bool:
        """Saves the state after ``step`` completed steps; False when nothing was written (see save_run)."""
        if self.checkpointer is None:
            return False
        position = RunPosition(step=step, data=self.stream.get_state(), key=self.key)
        meta = {"config": to_dict(self.cfg), "mesh": self.mesh, "metrics": metrics}
        return save_run(self.checkpointer, position, self.state, self.policy, **meta)

    # --- one step --------------------------------------------------------------------------------

    def step(self, step: int) -> dict:
        cfg, g = self.cfg, self.cfg.rollout.samples_per_prompt
        timer = StageTimer()
        batch = self.stream.next_batch(cfg.rollout.prompts_per_step)
        golds = [gold for gold in batch.golds for _ in range(g)]
        # Rows go to the verifier as they end, while the others decode; "verify" is only the wait after.
        with VerdictStream(self.verifier, self._decode_text, golds) as verdict_stream:
            with timer("generate"):
                key = jax.random.fold_in(self.key, step)
                rollout = self.sampler.generate(
                    self.state.params,
                    batch.prompt_ids,
                    batch.prompt_mask,
                    n=g,
                    key=key,
                    logprobs=True,
                    on_row_done=verdict_stream,
                )
            # The continuous scheduler's slot occupancy, preemptions and prefill/decode tokens/s.
            sched = self.sampler.stats.as_metrics() if self.sampler.config.scheduler == "continuous" else {}
            with timer("verify"):
                verdicts = verdict_stream.result()
                rewards = np.asarray([v.reward for v in verdicts], np.float32)

        host_batch = rollout_train_batch(
            rollout,
            group_advantages(rewards, g),  # host numpy: every host computes the same
            cfg.train,
            length_bucket=cfg.rollout.length_bucket,
            dp=data_parallel_size(self.mesh),
            pad_id=int(self.tokenizer.pad_token_id),
        )
        train_batch = to_global(host_batch, self.mesh)
        with timer("old_logps"):
            old = self.compute_logps(self.state, train_batch, self.ref_params)
            gap = logprob_gap(train_batch.old_logps, old.logps, train_batch.loss_mask)
            train_batch = train_batch.replace(old_logps=old.logps, ref_logps=old.ref_logps)
        with timer("update"):
            self.state, tm = self.train_step(self.state, train_batch)
            tm = jax.device_get(tm)
        times = timer.done()
        return {
            **rollout_metrics(verdicts, rewards, rollout.lengths, rollout.finish == FinishReason.LENGTH, g),
            "prompt/length_mean": float(batch.prompt_mask.sum(axis=1).mean()),
            "actor/entropy": float(old.entropy),  # token mean over valid response tokens, pre-update policy
            "rollout/logprob_diff_max": float(jax.device_get(gap)),
            **{f"actor/{k}": float(v) for k, v in dataclasses.asdict(tm).items()},
            "data/epoch": self.stream.epoch,
            "perf/generated_tokens_per_s": int(rollout.lengths.sum()) / max(times["time/generate_s"], 1e-9),
            "perf/train_tokens_per_s": float(tm.total_tokens) / max(times["time/update_s"], 1e-9),
            **sched,
            "perf/verifier_wait_s": verdict_stream.wait_s,
            **times,
        }

    def _decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> dict:
        """Runs steps ``start_step .. total_steps - 1`` and returns the last step's metrics.

        SIGTERM (preemption) or a first SIGINT (Ctrl-C): the current step finishes, validation is
        skipped, a checkpoint is saved and ``run`` returns normally, so the process exits 0 within one
        step plus one save. A second SIGINT exits at once (status 130) without saving.
        Raises :class:`NonFiniteError` after ``loop.max_nonfinite_steps`` consecutive steps whose
        updates were all skipped for non-finite gradients, and at once when the state due to be saved
        holds a NaN or Inf; the newest checkpoint on disk is then the last good state.
        """
        cfg = self.cfg
        last: dict = {}
        nonfinite = 0
        with StopRequest() as stop, self:  # closing the runner completes the last asynchronous save
            if self.start_step >= self.total_steps:
                log.warning("nothing to do: the run is complete at step %d", self.start_step)
            self._maybe_validate(self.start_step, first=True)
            for step in range(self.start_step, self.total_steps):
                if step == self.start_step and stop.agreed():
                    log.warning("stopped by %s before step %d: nothing new to save", stop.cause, step)
                    break
                # Hosts start each step together; one that died or hangs fails the others here.
                barrier(f"step-{step}", cfg.loop.distributed_timeout_s)
                last = self.step(step)
                done = step + 1
                nonfinite = nonfinite + 1 if last["actor/updates"] == 0 else 0
                stop_now = stop.agreed()
                if not stop_now:  # preempted: save first, validate another time
                    last.update(self._maybe_validate(done))
                self.metrics.write(step, last)
                self.metrics.progress(done, self.total_steps, last)
                if nonfinite >= cfg.loop.max_nonfinite_steps:
                    raise NonFiniteError(
                        f"{nonfinite} consecutive steps had only non-finite gradients (up to step {step}): "
                        f"every update was skipped (NaN/Inf loss or gradients, see actor/* in "
                        f"{self.metrics.path}); stopping. {self._newest_good()}; resume from it with a "
                        f"smaller train.optim.lr or other data."
                    )
                if stop_now or done % cfg.checkpoint.every_steps == 0 or done == self.total_steps:
                    if not self._save(done, last) and self.checkpointer is not None:
                        raise NonFiniteError(
                            f"after step {step} the parameters or optimizer state hold NaN/Inf (see the "
                            f"log for which); not saved. {self._newest_good()}."
                        )
                if stop_now:
                    saved = f"checkpoint {done} saved" if self.checkpointer else "checkpoints are disabled"
                    log.warning("stopped by %s after %d completed steps; %s", stop.cause, done, saved)
                    break
            if last and self.metrics.tracker is not None:
                self.metrics.tracker.log_plot()  # the final figure, next to the curves it draws
        return last

    def _newest_good(self) -> str:
        return "checkpoints are disabled" if self.checkpointer is None else self.checkpointer.newest_good()

    def _maybe_validate(self, done: int, first: bool = False) -> dict:
        v = self.cfg.validation
        if self.validator is None or (first and not v.before_train) or (not first and done % v.every_steps):
            return {}
        t = time.perf_counter()
        result = self.validator(self.state.params)
        result["time/validate_s"] = time.perf_counter() - t
        if first and self.primary:
            (self.run_dir / "validation_before_train.json").write_text(json.dumps(result, indent=2))
        return result
