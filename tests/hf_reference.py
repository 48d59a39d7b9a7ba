"""Tiny random transformers Qwen2 models, built at test time (PyTorch is the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers


def make_hf_qwen2(
    out_dir,
    *,
    vocab=97,
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=96,
    rope_theta=10000.0,
    tie=False,
    config_style="v5",
    seed=0,
) -> tuple[Path, transformers.Qwen2ForCausalLM]:
    """Saves a random Qwen2ForCausalLM (fp32) to ``out_dir``.

    ``config_style="hub"`` rewrites config.json the way the real DeepSeek/Qwen configs are written
    (top-level ``rope_theta`` and ``torch_dtype``), ``"v5"`` keeps transformers 5's ``rope_parameters``.
    """
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rope_theta=rope_theta,
        tie_word_embeddings=tie,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
    )
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases and norms, so a layout mistake cannot hide behind zeros/ones
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = Path(out_dir)
    model.save_pretrained(out)
    if config_style == "hub":
        path = out / "config.json"
        data = json.loads(path.read_text())
        rope = data.pop("rope_parameters")
        data["rope_theta"] = rope["rope_theta"]
        data["torch_dtype"] = data.pop("dtype", "float32") or "float32"
        data.pop("layer_types", None)
        path.write_text(json.dumps(data))
    return out, model


def hf_logits(model, tokens, mask):
    """Left-padded batch through transformers, the positions HF generate would use."""
    t = torch.as_tensor(tokens)
    m = torch.as_tensor(mask).long()
    pos = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=t, attention_mask=m, position_ids=pos).logits.float().numpy()
