"""What the benchmark scripts share: model shapes, one random HF Qwen2 and the same weights in justrl_jax,
the FLOPs and bytes a step does, and the hardware ceilings the figures are compared with.

Both sides of a benchmark must run the very same weights: the HF model is built once (seeded, on the
peer's device) and its state dict is handed to justrl_jax's importer in memory, so a 1.5B model does not
make a round trip through safetensors on disk.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from justrl_jax.model.construct import from_host_arrays
from justrl_jax.model.hf_io import config_from_hf, config_to_hf, hf_arrays_getter
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config

# The shapes of the recipe's models (recipe.md: DeepSeek-R1-Distill-Qwen-1.5B; untied embeddings).
PRESETS = {
    "deepseek-1.5b": dict(vocab=151936, hidden=1536, mlp=8960, layers=28, heads=12, kv_heads=2),
}

DTYPES = ("float32", "bfloat16")

# Dense matmul FLOP/s by dtype and HBM bytes/s, from the vendors' datasheets (SXM parts): the ceilings MFU
# and the bandwidth fraction are quoted against. Matched by substring of jax's device_kind.
DATASHEET = {
    "H200": {"bfloat16": 989e12, "float32": 67e12, "hbm": 4.8e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12, "hbm": 3.35e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12, "hbm": 2.0e12},
}


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a real model's shape (overrides sizes)")
    ap.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="compute dtype of both sides (master weights fp32)"
    )


def apply_preset(args) -> None:
    for name, value in PRESETS.get(args.preset, {}).items():
        setattr(args, name, value)


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_config(args, max_positions: int) -> Qwen2Config:
    """The benchmark model's shape from the command line (after ``apply_preset``)."""
    return Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        rms_norm_eps=1e-6,
        max_position_embeddings=max(4096, max_positions),
    )


def hf_model(args, max_positions: int):
    """A seeded random ``Qwen2ForCausalLM`` in fp32 on the peer's device (the same weights every call), of
    :func:`model_config`'s shape, through the exporter's config mapping."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config.from_dict(config_to_hf(model_config(args, max_positions), "float32"))
    with torch.device(torch_device()):
        return transformers.Qwen2ForCausalLM(cfg).float()


def jax_model(hf, *, compute_dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False) -> Qwen2:
    """The HF model's weights in justrl_jax's layout, through the importer users load checkpoints with."""
    config = config_from_hf(hf.config.to_dict())
    tensors = {name: t.detach().float().cpu().numpy() for name, t in hf.state_dict().items()}
    return from_host_arrays(
        config,
        hf_arrays_getter(tensors, config),
        None,
        param_dtype=param_dtype,
        compute_dtype=compute_dtype,
        remat=remat,
    )


def datasheet() -> dict | None:
    kind = jax.devices()[0].device_kind
    return next((peaks for name, peaks in DATASHEET.items() if name in kind), None)


def matmul_params(cfg: Qwen2Config) -> int:
    """Weights each token multiplies through in the decoder layers (the unembedding apart)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = d * cfg.num_heads * hd * 2 + d * cfg.num_kv_heads * hd * 2 + 3 * d * f
    return cfg.num_layers * per_layer


def train_flops(cfg: Qwen2Config, sequence_lengths, scored_tokens: int) -> float:
    """Model FLOPs of one training step (forward + backward, rematerialisation not counted, as MFU is defined).

    Every token goes through the layers (6 FLOPs per weight); only scored tokens are unembedded; causal
    attention scores each sequence's (L^2 + L) / 2 query-key pairs, twice (QK^T and PV) at 2 FLOPs per
    multiply-add, forward and twice that backward.
    """
    lengths = np.asarray(sequence_lengths, np.float64)
    tokens = lengths.sum()
    pairs = (lengths * (lengths + 1) / 2).sum()
    attention = 3 * 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs
    return 6 * matmul_params(cfg) * tokens + 6 * cfg.hidden_size * cfg.vocab_size * scored_tokens + attention


def mfu_line(flops: float, seconds: float, dtype: str) -> str:
    achieved = flops / seconds
    line = f"model_tflops_per_step={flops / 1e12:.1f}  achieved_tflops={achieved / 1e12:.1f}"
    peaks = datasheet()
    if peaks is not None:
        line += f"  mfu={achieved / peaks[dtype]:.3f} (of the datasheet's {peaks[dtype] / 1e12:.0f} TFLOP/s {dtype})"
    return line
