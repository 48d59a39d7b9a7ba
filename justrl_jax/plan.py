"""``python -m justrl_jax.plan --config FILE --mesh 4x4 --device tpu-v5p``: memory per device, no hardware.

Prints parameters, gradients, AdamW moments, KV cache and activations per device for the configured
model, mesh, batch and lengths, and exits 1 (naming what to change) when it cannot fit; a bad
config, mesh or model path is a one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from justrl_jax.config_io import add_override_flag
from justrl_jax.console import quiet_start
from justrl_jax.memory_estimate import DEVICE_MEMORY, advice, attention_for, plan_memory
from justrl_jax.sharding import MeshConfig


def architecture_of(model_path: str):
    """The Qwen2Config of a model path, reading only its config.json (no weights)."""
    from pathlib import Path

    from justrl_jax.checkpoint import find_checkpoint
    from justrl_jax.model.hf_io import read_hf_config, resolve_model_dir
    from justrl_jax.model.qwen2 import Qwen2Config

    step_dir = find_checkpoint(model_path) if Path(model_path).exists() else None
    if step_dir is not None:
        from justrl_jax.checkpoint import read_meta

        return Qwen2Config(**read_meta(step_dir)["model"]["arch"])
    if Path(model_path).is_dir():
        return read_hf_config(model_path)
    known = {
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": Qwen2Config(),
        "nvidia/OpenMath-Nemotron-1.5B": Qwen2Config(rope_theta=500000.0),
    }
    if model_path in known:  # the recipe's two models, planned without a download
        return known[model_path]
    return read_hf_config(resolve_model_dir(model_path))


def main(argv: list[str] | None = None) -> int:
    quiet_start()  # before JAX or transformers can print their false advisories
    p = argparse.ArgumentParser(prog="python -m justrl_jax.plan", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--mesh", required=True, help="e.g. 4x4 or fsdp=8,tensor=2")
    p.add_argument("--device", required=True, choices=sorted(DEVICE_MEMORY))
    add_override_flag(p, "train.micro_batch_tokens=16384")
    args = p.parse_args(argv)

    from justrl_jax.run_config import load_run_config

    try:  # a bad config, mesh or model is the user's to fix: one line, exit 2 (1 means "does not fit")
        cfg = load_run_config(args.config, args.overrides)
        mesh = MeshConfig.parse(args.mesh)
        if mesh.fsdp <= 0:
            raise ValueError("--mesh must give every axis size for planning (e.g. 4x4)")
        devices = mesh.fsdp * mesh.tensor
        arch = architecture_of(cfg.model.path)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = cfg.rollout
    inputs = cfg.plan_inputs(mesh.fsdp)
    rows, width = inputs.micro_batch_shape()
    micro = f"{rows} packed row(s) of {width} tokens" if inputs.packed_row_tokens else f"{rows} sequence(s)"
    attention = attention_for(inputs.attention, args.device, inputs.compute_bytes)
    plan = plan_memory(arch, mesh, devices, inputs, device=args.device)
    print(
        f"{args.config} on mesh {mesh} ({devices} x {args.device}), {r.sequences} responses of up to "
        f"{inputs.prompt_tokens} + {inputs.max_new_tokens} tokens, {micro} per device per micro-batch, "
        f"{attention} attention"
    )
    print(plan.table())
    if not plan.fits():
        print(f"error: does not fit in {args.device} memory; reduce {advice(plan, inputs, mesh)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
