"""The memory plan: exact parameter/optimizer bytes from the real shapes, and refusal when too big."""

import dataclasses
import math

import pytest
import transformers

from justrl_jax.memory_estimate import GIB, PlanInputs, plan_memory, sharded_param_bytes
from justrl_jax.model.qwen2 import Qwen2Config
from justrl_jax.sharding import MeshConfig


def _hf_param_count(config: Qwen2Config) -> int:
    """The real architecture's parameter count from transformers' own module, without allocating it."""
    import torch

    hf = transformers.Qwen2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(hf)
    return sum(p.numel() for p in model.parameters())


def test_deepseek_plan_on_4x4_counts_parameters_exactly():
    config = Qwen2Config()  # DeepSeek-R1-Distill-Qwen-1.5B (untied)
    real = _hf_param_count(config)
    assert real == 1_777_088_000
    plan = plan_memory(config, MeshConfig.parse("4x4"), 16, device="tpu-v5p")
    assert plan.total_params == real
    # Exact per-device bytes from the sharding rules: every matrix splits 16 ways except the KV
    # projections (2 heads cannot split over tensor=4: only over fsdp) and the replicated norms/biases.
    c = config
    d, h, n, k, f, v, layers = (
        c.hidden_size,
        c.head_dim,
        c.num_heads,
        c.num_kv_heads,
        c.intermediate_size,
        c.vocab_size,
        c.num_layers,
    )
    per_layer = d * n * h / 16 + n * h / 4 + 2 * (d * k * h / 4 + k * h) + n * h * d / 16 + 3 * d * f / 16 + 2 * d
    expected = 4 * (layers * per_layer + 2 * v * d / 16 + d)
    assert plan.params_per_device == expected
    assert plan.optimizer_per_device == 2 * expected  # AdamW mu and nu, fp32
    assert plan.grads_per_device == expected
    assert plan.fits()


def test_plan_refuses_what_cannot_fit():
    config = Qwen2Config()
    plan = plan_memory(config, MeshConfig.parse("1x1"), 1, PlanInputs(micro_batch_sequences=8), device="tpu-v5e")
    assert not plan.fits()
    assert "DOES NOT FIT" in plan.table()


@pytest.mark.slow
def test_waves_bound_the_kv_cache():
    config = Qwen2Config()
    one = plan_memory(config, MeshConfig.parse("4x4"), 16, PlanInputs(sampler_waves=1))
    eight = plan_memory(config, MeshConfig.parse("4x4"), 16, PlanInputs(sampler_waves=8))
    assert one.kv_cache_per_device == 8 * eight.kv_cache_per_device
    auto = plan_memory(config, MeshConfig.parse("4x4"), 16, device="tpu-v5e")
    assert auto.generation_peak <= 16 * GIB and auto.sampler_waves > 1


def test_sharded_bytes_single_device_is_whole_model():
    config = Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    )
    per_device, total = sharded_param_bytes(config, MeshConfig(1, 1), 1, 4)
    assert per_device == 4 * total == 4 * config.num_params()
    with pytest.raises(ValueError, match="needs 8 devices"):
        sharded_param_bytes(config, MeshConfig(4, 2), 16, 4)
    assert math.isclose(sharded_param_bytes(config, MeshConfig(4, 1), 4, 4)[0], 4 * total / 4, rel_tol=0.05)


def test_packed_rows_and_the_attention_choice_are_counted():
    config = Qwen2Config()
    mesh = MeshConfig.parse("4x4")

    def activations(**kw):
        return plan_memory(config, mesh, 16, PlanInputs(**kw), device="tpu-v5p").activations_per_device

    padded_xla = activations(micro_batch_sequences=2, attention="xla")
    packed = dict(packed_row_tokens=16384, micro_batch_tokens=32768)
    assert activations(**packed, attention="xla") == padded_xla  # the same 2 x 16,384 tokens per device
    blockwise = activations(**packed, attention="blockwise")
    splash = activations(**packed, attention="splash")
    assert splash < blockwise < padded_xla / 3
    assert activations(**packed, attention="auto") == splash  # auto on a TPU is splash
    # Blockwise attention grows linearly with the row; the einsum reference quadratically.
    half = dict(packed_row_tokens=8192, micro_batch_tokens=16384)
    xla_gap = padded_xla - activations(**half, attention="xla")
    assert xla_gap > 3 * (blockwise - activations(**half, attention="blockwise"))
    with pytest.raises(ValueError, match="plan.micro_batch_tokens"):
        PlanInputs(packed_row_tokens=16384, micro_batch_tokens=8192)
    with pytest.raises(ValueError, match="model.attention"):
        PlanInputs(attention="flash")


def test_a_gpu_plan_counts_the_weights_decoding_reads_and_cudnns_dense_mask():
    config, mesh = Qwen2Config(), MeshConfig.parse("1x1")
    plan = plan_memory(config, mesh, 1, PlanInputs(), device="h200")
    # bf16 compute over fp32 master weights: the sampler decodes from a bf16 copy (sampler.decode_weights)
    assert plan.rollout_weights_per_device == plan.params_per_device // 2
    assert plan.generation_peak == (
        plan.params_per_device + plan.optimizer_per_device + plan.rollout_weights_per_device + plan.kv_cache_per_device
    )
    assert plan_memory(config, mesh, 1, PlanInputs(compute_bytes=4)).rollout_weights_per_device == 0

    def activations(tokens, attention):
        inputs = PlanInputs(packed_row_tokens=tokens, micro_batch_tokens=tokens, attention=attention)
        return plan_memory(config, mesh, 1, inputs, device="h200").activations_per_device

    # auto on a GPU in bf16 is cudnn, whose [rows, 1, T, S] bool mask and bf16 bias grow with the row's square
    assert activations(16384, "auto") == activations(16384, "cudnn")
    quadratic = 16384**2 * 3
    assert activations(16384, "cudnn") - activations(16384, "splash") == quadratic


def test_refusal_names_the_token_budget():
    from justrl_jax.memory_estimate import advice

    config = Qwen2Config()
    inputs = PlanInputs(packed_row_tokens=16384, micro_batch_tokens=16 * 16384, attention="xla")
    plan = plan_memory(config, MeshConfig.parse("1x1"), 1, inputs, device="tpu-v5e")
    assert not plan.fits()
    assert advice(plan, inputs, MeshConfig.parse("1x1")).startswith("activations: lower train.micro_batch_tokens")


def test_presets_plan_packed_rows():
    from justrl_jax.run_config import load_run_config

    cfg = load_run_config("configs/justrl_deepseek_1p5b.yaml")
    inputs = cfg.plan_inputs(fsdp=4)
    assert (inputs.packed_row_tokens, inputs.micro_batch_tokens, inputs.attention) == (16384, 32768, "auto")
    assert inputs.micro_batch_shape() == (2, 16384)


def test_the_kv_cache_is_counted_in_pages():
    config = Qwen2Config()
    inputs = PlanInputs(prompt_tokens=1024, max_new_tokens=15360, page_size=16, sampler_waves=1)
    plan = plan_memory(config, MeshConfig.parse("4x4"), 16, inputs)
    row_pages = math.ceil((1024 + 15360 - 1) / 16)  # the last sampled token is never fed back
    page_bytes = 2 * config.num_layers * 16 * config.num_kv_heads * config.head_dim * 2  # 2 KV heads: not split
    assert plan.concurrent_rows_per_device == 2048 // 4 and plan.kv_pages_per_device == 512 * row_pages
    assert plan.kv_cache_per_device == 512 * row_pages * page_bytes
    capped = plan_memory(config, MeshConfig.parse("4x4"), 16, dataclasses.replace(inputs, max_concurrent_rows=256))
    assert capped.concurrent_rows_per_device == 64 and capped.sampler_waves == 8
    assert capped.kv_cache_per_device == 64 * row_pages * page_bytes
    assert f"{64 * row_pages:,} pages" in capped.table()
