"""Where a model comes from: an HF directory or hub id, a run directory, or one checkpoint step.

Every command that names a model (``train`` starting weights, ``generate --model``,
``evaluate --model``, ``convert``) resolves it here, so all of them accept the same three forms:

* ``/models/DeepSeek-R1-Distill-Qwen-1.5B`` or ``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`` (HF);
* ``runs/deepseek`` (a run directory: its newest complete checkpoint);
* ``runs/deepseek/checkpoints/1200`` (that step).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from justrl_jax.checkpoint import HF_ASSETS_COMPLETE, find_checkpoint, hf_assets_dir, read_meta, restore_params
from justrl_jax.model.construct import abstract_model, state_shardings
from justrl_jax.model.hf_io import load_hf_model, read_hf_config, read_hf_tensors, resolve_model_dir
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.storage import download_dir, is_remote, run_path


@dataclasses.dataclass(frozen=True)
class Policy:
    """A loaded model and what is needed to talk to it."""

    model: Qwen2
    tokenizer_dir: Path  # HF directory holding the tokenizer (and generation_config.json)
    eos_ids: tuple[int, ...]
    step: int | None = None  # checkpoint step, when it came from a run


def tokenizer_dir_of(step_dir: str | Path) -> Path:
    """Where the tokenizer of a checkpoint is: its run's ``hf_assets`` copy, else the starting model. A
    run in a bucket has its copy downloaded (transformers reads local files only)."""
    step_dir = run_path(step_dir)
    assets = hf_assets_dir(step_dir.parent.parent)
    if is_remote(assets) and (assets / HF_ASSETS_COMPLETE).exists():
        assets = download_dir(assets)
    candidates = [assets]
    recorded = read_meta(step_dir).get("model", {}).get("tokenizer_dir")
    if recorded:
        candidates.append(Path(recorded))
    for candidate in candidates:
        if (candidate / "tokenizer_config.json").is_file() or (candidate / "tokenizer.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"no tokenizer for checkpoint {step_dir}: looked in {', '.join(str(c) for c in candidates)}"
    )


def eos_ids_of(model_dir: Path) -> tuple[int, ...]:
    """The ids generation stops on: generation_config.json's eos (int or list), then the
    tokenizer's eos when it is not among them. vLLM stops on this union (JustRL's evaluation ran
    there); a model whose generation config lists only ``<|endoftext|>`` while its chat turn ends in
    the tokenizer's ``<|im_end|>`` would otherwise run past the end of its turn."""
    ids: list[int] = []
    gen = model_dir / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        if eos is not None:
            ids = [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]
    from transformers import AutoTokenizer

    try:
        tokenizer_eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    except (OSError, ValueError):
        if not ids:
            raise
        tokenizer_eos = None  # no loadable tokenizer here: the generation config's ids alone
    if tokenizer_eos is not None and int(tokenizer_eos) not in ids:
        ids.append(int(tokenizer_eos))
    if not ids:
        raise ValueError(f"{model_dir}: no eos_token_id in generation_config.json or the tokenizer")
    return tuple(ids)


def describe_model(name: str | Path) -> tuple[Qwen2Config, Path]:
    """The architecture and tokenizer directory of ``name`` without reading any weights (to check
    inputs against the vocabulary before the expensive load)."""
    step_dir = find_checkpoint(name)
    if step_dir is None:
        model_dir = resolve_model_dir(str(name))
        return read_hf_config(model_dir), model_dir
    info = read_meta(step_dir).get("model")
    if not info:
        raise ValueError(f"{step_dir}: checkpoint meta has no 'model' entry")
    return Qwen2Config(**info["arch"]), tokenizer_dir_of(step_dir)


def check_model(name: str | Path) -> None:
    """Reads what describes ``name`` (its config or checkpoint meta, its tokenizer's place, and the
    safetensors headers against the file sizes) without reading a weight: a damaged model is a
    one-line error before the expensive load."""
    describe_model(name)
    if find_checkpoint(name) is None:
        read_hf_tensors(resolve_model_dir(str(name)))  # memory-mapped: only headers and sizes are read


def load_policy(
    name: str | Path,
    mesh: Mesh | None = None,
    *,
    param_dtype=jnp.float32,
    compute_dtype=jnp.float32,
    remat: bool = False,
) -> Policy:
    """Loads ``name`` (HF dir/hub id, run dir or checkpoint step) straight into the sharded layout."""
    step_dir = find_checkpoint(name)
    if step_dir is None:
        model_dir = resolve_model_dir(str(name))
        model = load_hf_model(str(model_dir), mesh, param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)
        return Policy(model, model_dir, eos_ids_of(model_dir))
    meta = read_meta(step_dir)
    info = meta.get("model")
    if not info:
        raise ValueError(f"{step_dir}: checkpoint meta has no 'model' entry")
    config = Qwen2Config(**info["arch"])
    abstract = abstract_model(config, param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)
    graphdef, state = nnx.split(abstract)
    params_state = nnx.state(abstract, nnx.Param)
    if mesh is not None:
        shardings = state_shardings(params_state, mesh)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(
            lambda v: v.replace(device), params_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )
    target = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s.get_value()),
        params_state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    restored = restore_params(step_dir, nnx.to_pure_dict(target))
    nnx.replace_by_pure_dict(state, restored)
    model = nnx.merge(graphdef, state)
    return Policy(model, tokenizer_dir_of(step_dir), tuple(info["eos_ids"]), int(step_dir.name))
