"""One sampling-settings type behind rollouts, validation, evaluation and generate: checked once, named by section."""

import dataclasses

import pytest

from justrl_jax.config_io import ConfigError
from justrl_jax.evaluation.eval_config import EvalConfig
from justrl_jax.evaluation.runner import VALIDATION_SAMPLING, sampler_config, validation_eval_config
from justrl_jax.generate import GenerateConfig
from justrl_jax.run_config import RolloutConfig, ValidationConfig, load_run_config
from justrl_jax.sampler import SamplerConfig
from justrl_jax.sampling import Greedy, Temperature, TopK, TopP
from justrl_jax.sampling_settings import SamplingSettings

CONFIGS = {"rollout": RolloutConfig, "validation": ValidationConfig, "eval": EvalConfig, "generate": GenerateConfig}


def test_every_sampling_config_is_one_type_with_its_own_defaults():
    assert all(issubclass(cls, SamplingSettings) for cls in CONFIGS.values())
    recipe = {  # recipe.md: training T 1.0 / top_p 1.0 / 15,360 tokens; evaluation T 0.7 / top_p 0.9 / 31,744
        "rollout": (1.0, 1.0, 15360),
        "validation": (0.7, 0.9, 31744),
        "eval": (0.7, 0.9, 31744),
        "generate": (1.0, 1.0, 1024),
    }
    for section, cls in CONFIGS.items():
        settings = SamplingSettings.of(cls())
        assert type(settings) is SamplingSettings
        assert (settings.temperature, settings.top_p, settings.max_new_tokens) == recipe[section]
        memory = (settings.kv_cache_budget_gb, settings.decode_chunk)
        assert (settings.top_k, settings.greedy, *memory) == (-1, False, 0, 0)
    assert SamplingSettings.of(ValidationConfig()) == VALIDATION_SAMPLING


@pytest.mark.parametrize("section", CONFIGS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number > 0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": 0}, "top_k must be -1 (off) or >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"kv_cache_budget_gb": -1.0}, "kv_cache_budget_gb must be >= 0"),
        ({"decode_chunk": -2}, "decode_chunk must be an integer >= 0"),
        ({"greedy": "yes"}, "greedy must be true or false"),
    ],
)
def test_bad_settings_are_named_by_their_section(section, bad, message):
    with pytest.raises(ValueError) as error:
        CONFIGS[section](**bad)
    assert str(error.value).startswith(f"{section}.{message}")


def test_rollouts_refuse_greedy_and_yaml_keys_stay_flat():
    with pytest.raises(ValueError, match="rollout.greedy must be false"):
        RolloutConfig(greedy=True)
    cfg = load_run_config(None, ["rollout.top_k=20", "rollout.decode_chunk=4", "validation.top_p=0.95"])
    assert cfg.rollout.strategy() == TopK(k=20, temperature=1.0) and cfg.rollout.sampler_config().decode_chunk == 4
    assert cfg.validation.strategy() == TopP(p=0.95, temperature=0.7)
    with pytest.raises(ConfigError, match="rollout.temperature must be a finite number > 0"):
        load_run_config(None, ["rollout.temperature=0"])


def test_strategy_and_sampler_config_follow_the_settings():
    assert SamplingSettings().strategy() == Temperature(1.0)
    assert SamplingSettings(temperature=0.7, top_p=0.9, top_k=5).strategy() == TopP(p=0.9, temperature=0.7, top_k=5)
    assert SamplingSettings(temperature=0.7, greedy=True).strategy() == Greedy()
    got = SamplingSettings(max_new_tokens=7, kv_cache_budget_gb=0.5, decode_chunk=3).sampler_config(prompt_bucket=16)
    want = SamplerConfig(7, Temperature(1.0), prompt_bucket=16, kv_cache_budget_bytes=2**29, decode_chunk=3)
    assert got == want
    cfg = EvalConfig(benchmarks=("aime24",), top_k=3, bucket_multiple=32, max_new_tokens=9)
    assert sampler_config(cfg) == SamplerConfig(9, TopP(p=0.9, temperature=0.7, top_k=3), prompt_bucket=32)


def test_validation_takes_the_settings_whole():
    settings = dataclasses.replace(VALIDATION_SAMPLING, top_k=4, max_new_tokens=12, decode_chunk=2)
    cfg = validation_eval_config(settings, benchmarks=("aime24",), n_samples=2, batch_size=8)
    assert SamplingSettings.of(cfg) == settings
    assert (cfg.n_samples, cfg.batch_size, cfg.verifier.correct_reward, cfg.verifier.incorrect_reward) == (2, 8, 1, 0)
