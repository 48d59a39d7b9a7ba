"""Tiny model directories and data files for end-to-end tests (JAX-built, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from flax import nnx

from justrl_jax.model.hf_io import export_hf_model
from justrl_jax.model.qwen2 import Qwen2, Qwen2Config
from justrl_jax.model.tiny_tokenizer import ChatStyle, generation_eos_ids, make_tiny_tokenizer
from justrl_jax.prompts import DAPO_PREFIX, DAPO_SUFFIX


def make_tiny_model_dir(path, style: ChatStyle = ChatStyle.DEEPSEEK, *, rope_theta=10000.0, tie=False, seed=0) -> Path:
    """A random tiny Qwen2 with the tiny tokenizer of ``style``, saved as an HF directory."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer(style)
    tokenizer.save_pretrained(path)
    config = Qwen2Config(
        vocab_size=448,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        rope_theta=rope_theta,
        tie_word_embeddings=tie,
        max_position_embeddings=4096,
    )
    eos = list(generation_eos_ids(style, tokenizer))
    export_hf_model(
        Qwen2(config, rngs=nnx.Rngs(seed)),
        path,
        dtype="float32",
        generation_config={"eos_token_id": eos if len(eos) > 1 else eos[0]},
    )
    return path


def write_dapo_parquet(path, n: int = 24) -> Path:
    """Prompts in DAPO-Math-17k's veRL schema, with DAPO's own instruction prefix and suffix."""
    rows = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": f"{DAPO_PREFIX}What is {i} + {i}?{DAPO_SUFFIX}"}],
            "ability": "MATH",
            "reward_model": {"ground_truth": str(2 * i), "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": i},
        }
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return Path(path)


def write_benchmarks(directory, names=("aime24", "aime25", "amc23"), n: int = 2) -> Path:
    """Tiny benchmark files in JustRL's data/<name>/test.parquet layout (veRL schema)."""
    directory = Path(directory)
    for name in names:
        (directory / name).mkdir(parents=True, exist_ok=True)
        rows = [
            {
                "data_source": name,
                "prompt": [{"role": "user", "content": f"Compute {i} * 3."}],
                "ability": "MATH",
                "reward_model": {"ground_truth": str(3 * i), "style": "rule"},
            }
            for i in range(n)
        ]
        pq.write_table(pa.Table.from_pylist(rows), directory / name / "test.parquet")
    return directory


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
