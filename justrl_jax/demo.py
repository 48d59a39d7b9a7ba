"""The CPU demo: a tiny Qwen2 that learns single-digit addition by JustRL's GRPO, in minutes.

The recipe starts from a distilled model that already ends its answers in ``\\boxed{}``; the demo
mirrors that. It builds, offline and from a seed:

1. a tiny tokenizer with DeepSeek's chat template (:mod:`justrl_jax.model.tiny_tokenizer`);
2. a random tiny Qwen2, briefly fine-tuned on worked answers in the recipe's format
   (``\\boxed{d}`` then EOS) and stopped early: like the distilled starting models, it knows the
   format and is right only sometimes (about 40% at the start);
3. a JSONL dataset of problems ``"Compute a + b."`` with ``a + b <= 9``.

The RL loop then runs unchanged on these files (strict verifier, group advantages, clip-higher
PPO), and the reward rises as the model learns to add.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from justrl_jax.model.hf_io import export_hf_model
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config, positions_from_mask
from justrl_jax.storage import download_dir, is_remote, run_path, upload_dir

log = logging.getLogger(__name__)

_PREPARE_TIMEOUT_S = 900  # the longest the other processes wait for process 0 to write the demo assets


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The synthetic task and the tiny starting model (used when ``demo.enabled``)."""

    enabled: bool = False
    max_operand: int = 9  # problems a + b with a + b <= max_operand (single-digit answers)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    sft_steps: int = 150  # warm start on boxed answers, stopped well before it has learned the task
    sft_correct_fraction: float = 1.0  # of warm-start answers that are the right sum (else a random digit)
    sft_learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.max_operand <= 9:
            raise ValueError(f"demo.max_operand must be in [1, 9] (single-digit answers), got {self.max_operand}")
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo.{name} must be >= 1, got {getattr(self, name)}")
        if self.sft_steps < 0:
            raise ValueError(f"demo.sft_steps must be >= 0, got {self.sft_steps}")
        if not 0 <= self.sft_correct_fraction <= 1:
            raise ValueError(f"demo.sft_correct_fraction must be in [0, 1], got {self.sft_correct_fraction}")
        if self.sft_learning_rate <= 0:
            raise ValueError(f"demo.sft_learning_rate must be > 0, got {self.sft_learning_rate}")


@dataclasses.dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    data_path: Path


def problems(max_operand: int) -> list[dict]:
    return [
        {"problem": f"Compute {a} + {b}.", "answer": str(a + b)}
        for a in range(max_operand + 1)
        for b in range(max_operand + 1 - a)
    ]


def prepare(config: DemoConfig, directory: str | Path, prompt_suffix: str) -> DemoAssets:
    """Writes (once) the tiny model directory and the dataset under ``directory``."""
    from justrl_jax.model.tiny_tokenizer import ChatStyle, make_tiny_tokenizer

    directory = Path(directory)
    model_dir, data_path = directory / "base_model", directory / "train.jsonl"
    if (model_dir / "config.json").exists() and data_path.exists():
        return DemoAssets(model_dir, data_path)
    directory.mkdir(parents=True, exist_ok=True)
    rows = problems(config.max_operand)
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    tokenizer = make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    arch = Qwen2Config(
        vocab_size=_round_up(len(tokenizer), 64),
        hidden_size=config.hidden_size,
        intermediate_size=config.hidden_size * 2,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )
    model = Qwen2(arch, rngs=nnx.Rngs(config.seed))
    _format_warm_start(model, tokenizer, rows, config, prompt_suffix)
    tmp_dir = directory / "base_model.tmp"
    tokenizer.save_pretrained(tmp_dir)
    export_hf_model(
        model,
        tmp_dir,
        dtype="float32",
        generation_config={"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id},
    )
    tmp_dir.rename(model_dir)  # the directory appears complete or not at all
    return DemoAssets(model_dir, data_path)


def prepare_for_run(config: DemoConfig, run_dir: Path, timeout_s: float) -> DemoAssets:
    """The demo's assets under ``run_dir/demo_assets`` for a run of one or more processes: process 0
    writes them; the others wait for it, then read the complete files on the shared run directory."""
    from justrl_jax.distributed import barrier
    from justrl_jax.prompts import PromptFormat, format_prompt

    suffix = format_prompt("", PromptFormat.TRAIN)
    if is_remote(run_dir):
        return _prepare_in_bucket(config, run_path(run_dir) / "demo_assets", suffix, timeout_s)
    directory = Path(run_dir) / "demo_assets"
    if jax.process_index() == 0:
        assets = prepare(config, directory, suffix)
    # The others wait for work here, not for a sign of life: the warm start alone can outlast a short
    # loop.distributed_timeout_s on a busy machine. A process 0 that dies meanwhile is still noticed
    # sooner: it hosts jax.distributed's coordination service, whose heartbeats fail the others.
    barrier("demo_assets", max(timeout_s, _PREPARE_TIMEOUT_S))
    if jax.process_index() != 0:
        assets = prepare(config, directory, suffix)  # finds what process 0 wrote
    return assets


def _prepare_in_bucket(config: DemoConfig, remote, suffix: str, timeout_s: float) -> DemoAssets:
    """The demo's assets of a ``gs://`` run: built locally by process 0 and uploaded (``base_model/config.json``
    last, so it marks a complete copy) unless the bucket has them; every process reads a local copy
    (transformers and the data reader read local files only)."""
    from justrl_jax.distributed import barrier

    marker = remote / "base_model" / "config.json"
    if jax.process_index() == 0 and not marker.exists():
        local = Path(tempfile.mkdtemp(prefix="justrl_jax_demo_"))
        try:
            prepare(config, local, suffix)
            upload_dir(local, remote, last="config.json")
        finally:
            shutil.rmtree(local, ignore_errors=True)
    barrier("demo_assets", max(timeout_s, _PREPARE_TIMEOUT_S))
    local = download_dir(remote)
    return DemoAssets(local / "base_model", local / "train.jsonl")


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _format_warm_start(model: Qwen2, tokenizer, rows: list[dict], config: DemoConfig, suffix: str) -> None:
    """Supervised warm start on boxed answers (the right sum ``sft_correct_fraction`` of the time)."""
    if config.sft_steps == 0:
        return
    rng = np.random.default_rng(config.seed)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["problem"] + suffix}], add_generation_prompt=True, tokenize=False
        )
        for r in rows
    ]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    max_len = max(map(len, prompt_ids)) + 8
    optimizer = nnx.Optimizer(model, optax.adam(config.sft_learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens, mask, targets):
        def loss_fn(model):
            hidden, _ = model(tokens[:, :-1], positions_from_mask(mask[:, :-1]), mask[:, :-1])
            logp = jax.nn.log_softmax(model.logits(hidden), axis=-1)
            picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
            return -(picked * targets[:, 1:]).sum() / targets[:, 1:].sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    batch = 32
    for i in range(config.sft_steps):
        idx = rng.integers(0, len(rows), batch)
        tokens = np.full((batch, max_len), tokenizer.pad_token_id, np.int32)
        mask = np.zeros((batch, max_len), bool)
        targets = np.zeros((batch, max_len), np.float32)
        for row, j in enumerate(idx):
            right = rng.random() < config.sft_correct_fraction
            digit = rows[j]["answer"] if right else str(rng.integers(0, config.max_operand + 1))
            answer = tokenizer(f"\\boxed{{{digit}}}", add_special_tokens=False)["input_ids"]
            seq = prompt_ids[j] + answer + [tokenizer.eos_token_id]
            start = max_len - len(seq)  # left padding, as in rollouts
            tokens[row, start:] = seq
            mask[row, start:] = True
            targets[row, max_len - len(answer) - 1 :] = 1.0
        loss = step(model, optimizer, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(targets))
        if i % 50 == 0 or i == config.sft_steps - 1:
            log.info("demo format warm start %d/%d: loss %.3f", i + 1, config.sft_steps, float(loss))
