"""Hugging Face <-> justrl_jax: a strict config check, one key table used both ways, safetensors IO.

Example::

    model = load_hf_model("/models/DeepSeek-R1-Distill-Qwen-1.5B", mesh=mesh, compute_dtype=jnp.bfloat16)
    export_hf_model(model, "/tmp/export", dtype="bfloat16", source_dir="/models/DeepSeek-R1-Distill-Qwen-1.5B")
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from justrl_jax.global_arrays import to_host
from justrl_jax.model.construct import from_host_arrays
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.model.safetensors_io import read_safetensors, write_safetensors

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


# --- the key table -------------------------------------------------------------------------------
# Each entry: our parameter path (with {i} for the layer), the HF tensor name, and the layout change.
# Layouts: HF Linear weights are [out, in]; ours are [in, ...heads] / [heads..., out] (see qwen2.py).


@dataclasses.dataclass(frozen=True)
class _Entry:
    ours: str
    hf: str
    layout: str  # one of: copy, linear_in, bias_heads, linear_out, transpose


_LAYER_TABLE = (
    _Entry("layers/{i}/input_norm/scale", "model.layers.{i}.input_layernorm.weight", "copy"),
    _Entry("layers/{i}/post_attn_norm/scale", "model.layers.{i}.post_attention_layernorm.weight", "copy"),
    _Entry("layers/{i}/attn/q_kernel", "model.layers.{i}.self_attn.q_proj.weight", "linear_in"),
    _Entry("layers/{i}/attn/q_bias", "model.layers.{i}.self_attn.q_proj.bias", "bias_heads"),
    _Entry("layers/{i}/attn/k_kernel", "model.layers.{i}.self_attn.k_proj.weight", "linear_in"),
    _Entry("layers/{i}/attn/k_bias", "model.layers.{i}.self_attn.k_proj.bias", "bias_heads"),
    _Entry("layers/{i}/attn/v_kernel", "model.layers.{i}.self_attn.v_proj.weight", "linear_in"),
    _Entry("layers/{i}/attn/v_bias", "model.layers.{i}.self_attn.v_proj.bias", "bias_heads"),
    _Entry("layers/{i}/attn/o_kernel", "model.layers.{i}.self_attn.o_proj.weight", "linear_out"),
    _Entry("layers/{i}/mlp/gate_kernel", "model.layers.{i}.mlp.gate_proj.weight", "transpose"),
    _Entry("layers/{i}/mlp/up_kernel", "model.layers.{i}.mlp.up_proj.weight", "transpose"),
    _Entry("layers/{i}/mlp/down_kernel", "model.layers.{i}.mlp.down_proj.weight", "transpose"),
)
_GLOBAL_TABLE = (
    _Entry("embedding", "model.embed_tokens.weight", "copy"),
    _Entry("final_norm/scale", "model.norm.weight", "copy"),
    _Entry("lm_head", "lm_head.weight", "transpose"),
)


def key_table(config: Qwen2Config) -> list[_Entry]:
    entries = [e for e in _GLOBAL_TABLE if e.ours != "lm_head" or not config.tie_word_embeddings]
    for i in range(config.num_layers):
        entries += [_Entry(e.ours.format(i=i), e.hf.format(i=i), e.layout) for e in _LAYER_TABLE]
    return entries


def _to_ours(w: np.ndarray, layout: str, heads: int, head_dim: int) -> np.ndarray:
    if layout == "copy":
        return w
    if layout == "transpose":
        return w.T
    if layout == "linear_in":  # [N*H, D] -> [D, N, H]
        return w.T.reshape(w.shape[1], heads, head_dim)
    if layout == "bias_heads":  # [N*H] -> [N, H]
        return w.reshape(heads, head_dim)
    if layout == "linear_out":  # [D, N*H] -> [N, H, D]
        return w.T.reshape(heads, head_dim, w.shape[0])
    raise AssertionError(layout)


def _to_hf(w: np.ndarray, layout: str) -> np.ndarray:
    if layout == "copy":
        return w
    if layout == "transpose":
        return w.T
    if layout == "linear_in":  # [D, N, H] -> [N*H, D]
        return w.reshape(w.shape[0], -1).T
    if layout == "bias_heads":
        return w.reshape(-1)
    if layout == "linear_out":  # [N, H, D] -> [D, N*H]
        return w.reshape(-1, w.shape[-1]).T
    raise AssertionError(layout)


def _heads_for(entry: _Entry, config: Qwen2Config) -> int:
    return config.num_kv_heads if ("k_" in entry.ours or "v_" in entry.ours) else config.num_heads


# --- config --------------------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = "config.json") -> Qwen2Config:
    """Qwen2Config from an HF config dict; anything we would silently get wrong is an error naming it."""
    arch = hf.get("architectures") or ["Qwen2ForCausalLM"]
    if hf.get("model_type", "qwen2") != "qwen2" or arch[0] != "Qwen2ForCausalLM":
        raise ValueError(
            f"{source}: model_type={hf.get('model_type')!r}, architectures={arch}: only "
            "Qwen2ForCausalLM (model_type 'qwen2') is supported"
        )
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
    if hf.get("rope_scaling"):
        raise ValueError(f"{source}: rope_scaling={hf['rope_scaling']!r} is not supported")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{source}: rope_parameters.rope_type={rope['rope_type']!r} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(f"{source}: layer_types={sorted(set(layer_types))} (only full_attention is supported)")
    if hf.get("attention_dropout", 0.0):
        raise ValueError(f"{source}: attention_dropout={hf['attention_dropout']} is not supported")
    heads = hf["num_attention_heads"]
    return Qwen2Config(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
    )


def config_to_hf(config: Qwen2Config, dtype: str) -> dict:
    import transformers

    if config.head_dim * config.num_heads != config.hidden_size:
        raise ValueError("HF Qwen2 requires head_dim * num_heads == hidden_size")
    hf = transformers.Qwen2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.max_position_embeddings,
        use_sliding_window=False,
    ).to_dict()
    hf["architectures"] = ["Qwen2ForCausalLM"]
    hf["dtype"] = dtype
    return hf


# --- import --------------------------------------------------------------------------------------


def resolve_model_dir(name_or_path: str) -> Path:
    """A local directory, or a hub id downloaded (when the network and HF_HUB_OFFLINE allow)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"model path {name_or_path!r} is a file; expected an HF model directory")
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/")):
        raise FileNotFoundError(f"model directory {name_or_path!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"])
        )
    except Exception as e:  # noqa: BLE001 - report why the hub id could not be used
        raise FileNotFoundError(
            f"model {name_or_path!r} is not a local directory and could not be fetched from the hub: {e}"
        ) from e


def read_hf_config(model_dir: str | os.PathLike) -> Qwen2Config:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore the model's config.json") from e
    if not isinstance(hf, dict):
        raise ValueError(f"{path} must hold a JSON object; restore the model's config.json")
    return config_from_hf(hf, str(path))


def read_hf_tensors(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-mapped tensors from model.safetensors or a sharded index."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{model_dir} has no model.safetensors or model.safetensors.index.json "
            "(PyTorch .bin checkpoints are not supported; re-save with safetensors)"
        )
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(read_safetensors(model_dir / name))
    return tensors


def hf_arrays_getter(tensors: dict[str, np.ndarray], config: Qwen2Config) -> Callable[[tuple[str, ...]], np.ndarray]:
    table = {e.ours: e for e in key_table(config)}
    tied_lm_head = "lm_head.weight" in tensors and config.tie_word_embeddings

    def get(path: tuple[str, ...]) -> np.ndarray:
        key = "/".join(path)
        entry = table.get(key)
        if entry is None:
            raise KeyError(f"parameter {key} has no entry in the HF key table")
        if entry.hf not in tensors:
            raise KeyError(f"HF checkpoint has no tensor {entry.hf!r} (needed for {key})")
        w = np.asarray(tensors[entry.hf])
        return _to_ours(w, entry.layout, _heads_for(entry, config), config.head_dim)

    del tied_lm_head  # a tied checkpoint may still carry lm_head.weight; the embedding is authoritative
    return get


def load_hf_model(
    name_or_path: str,
    mesh: Mesh | None = None,
    *,
    param_dtype=jnp.float32,
    compute_dtype=jnp.float32,
    remat: bool = False,
) -> Qwen2:
    """Loads an HF Qwen2 checkpoint straight into the (sharded) justrl_jax layout."""
    model_dir = resolve_model_dir(name_or_path)
    config = read_hf_config(model_dir)
    tensors = read_hf_tensors(model_dir)
    expected = {e.hf for e in key_table(config)}
    unknown = sorted(set(tensors) - expected - {"lm_head.weight"})
    if unknown:
        raise ValueError(f"{model_dir}: unexpected tensors {unknown[:5]} (is this really a Qwen2 model?)")
    return from_host_arrays(
        config,
        hf_arrays_getter(tensors, config),
        mesh,
        param_dtype=param_dtype,
        compute_dtype=compute_dtype,
        remat=remat,
    )


# --- export --------------------------------------------------------------------------------------

_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def export_params(params: nnx.State, config: Qwen2Config, dtype: str = "bfloat16") -> dict[str, np.ndarray]:
    """HF-named host arrays from a parameter state (gathered from every shard)."""
    if dtype not in _NP_DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(_NP_DTYPES)}, got {dtype!r}")
    flat = {"/".join(map(str, path)): v for path, v in nnx.to_flat_state(params)}
    out = {}
    for entry in key_table(config):
        if entry.ours not in flat:
            raise KeyError(f"parameter {entry.ours} missing from the state being exported")
        value = flat[entry.ours]
        value = value[...] if isinstance(value, nnx.Variable) else value
        host = to_host(value).astype(np.float32)  # whole, even when sharded over several hosts
        out[entry.hf] = _to_hf(host, entry.layout).astype(_NP_DTYPES[dtype])
    return out


def export_hf_model(
    model_or_params: Qwen2 | nnx.State,
    out_dir: str | os.PathLike,
    *,
    config: Qwen2Config | None = None,
    dtype: str = "bfloat16",
    source_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = 4 << 30,
    generation_config: dict | None = None,
) -> Path:
    """Writes config.json, generation_config.json, safetensors (sharded past ``max_shard_bytes``) and
    the source model's tokenizer files into ``out_dir``, which transformers then loads."""
    if isinstance(model_or_params, Qwen2):
        config = model_or_params.config
        params = nnx.state(model_or_params, nnx.Param)
    else:
        params = model_or_params
        if config is None:
            raise ValueError("export_hf_model needs config= when given a parameter state")
    tensors = export_params(params, config, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / fname, shard)
            weight_map.update({name: fname for name in shard})
        total = sum(a.nbytes for a in tensors.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )

    (out / "config.json").write_text(json.dumps(config_to_hf(config, dtype), indent=2))
    gen = dict(generation_config or {})
    if source_dir is not None:
        source_dir = Path(source_dir)
        if not gen and (source_dir / "generation_config.json").exists():
            gen = json.loads((source_dir / "generation_config.json").read_text())
        for name in TOKENIZER_FILES:
            if (source_dir / name).exists() and source_dir.resolve() != out.resolve():
                shutil.copy2(source_dir / name, out / name)
    if gen:
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out
