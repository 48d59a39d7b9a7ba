"""Verification overlapped with decoding: generate's on_row_done sees every row once, as it finally ends (never
a preempted partial); the VerdictStream gives the verdicts of verifying the whole rollout at once, submits some
while other rows still decode, and reports a verifier failure naming the row instead of hanging."""

import numpy as np
import pytest
from paged_setup import EOS, NEW, PAGE_BYTES, ragged_prompts, tiny_model

from justrl_jax.model.tiny_tokenizer import ChatStyle, make_tiny_tokenizer
from justrl_jax.sampler import FinishReason, Sampler, SamplerConfig
from justrl_jax.sampling import Temperature
from justrl_jax.verdict_stream import VerdictStream
from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode
from justrl_jax.verifier.pool import PoolError

ROW_PAGES = -(-(12 + NEW - 1) // 4)  # prompt bucket 12 + 23 cached new tokens, pages of 4


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def prompts():
    return ragged_prompts()


def _sampler(model, **kwargs):
    config = SamplerConfig(max_new_tokens=NEW, strategy=Temperature(1.0), prompt_bucket=4, page_size=4, **kwargs)
    return Sampler(model, config, eos_ids=EOS, pad_id=0)


@pytest.fixture(scope="module")
def sampler(model):  # 18 rows through 4 slots; one instance, so its programs compile once for the module
    return _sampler(model, **SCHEDULES["slots_reused"])


SCHEDULES = {
    "slots_reused": dict(max_concurrent_rows=4, steps_per_call=5),
    "preempted": dict(max_concurrent_rows=8, steps_per_call=3, kv_cache_budget_bytes=(ROW_PAGES + 4) * PAGE_BYTES),
    "waves": dict(scheduler="waves", kv_cache_budget_bytes=10**6),
}


@pytest.mark.parametrize("schedule", ["slots_reused", pytest.param("preempted", marks=pytest.mark.slow), "waves"])
def test_on_row_done_sees_every_final_row_once_with_the_rollout_tokens(model, prompts, sampler, schedule):
    if schedule != "slots_reused":
        sampler = _sampler(model, **SCHEDULES[schedule])
    seen = []
    rollout = sampler.generate(model, *prompts, n=3, key=11, on_row_done=seen.append)
    rows = [d.row for d in seen]
    assert sorted(rows) == list(range(18)), rows  # each row exactly once
    for d in seen:
        n = int(rollout.lengths[d.row])
        np.testing.assert_array_equal(d.tokens, rollout.completion_ids[d.row, :n])
        assert d.finish == FinishReason(rollout.finish[d.row])
    if schedule == "preempted":
        assert sampler.stats.preemptions > 0  # partial rows were dropped and recomputed, yet reported only once
    if schedule != "waves":
        # Rows were reported in the order they ended, not row order, and while other rows still decoded.
        assert rows != sorted(rows)
        assert any(d.decoding > 0 for d in seen)
    assert len(set(rollout.lengths.tolist())) >= 4  # rows end at very different lengths


def test_stream_verdicts_equal_verifying_the_rollout_at_once_and_overlap_decoding(model, prompts, sampler):
    tokenizer = make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    golds = [str(i % 10) for i in range(18)]
    with Verifier(VerifierConfig(mode=VerifierMode.STRICT)) as verifier:

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        with VerdictStream(verifier, decode, golds) as stream:
            rollout = sampler.generate(model, *prompts, n=3, key=11, on_row_done=stream)
            verdicts = stream.result()
        ids = [row[:n] for row, n in zip(rollout.completion_ids, rollout.lengths, strict=True)]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        assert stream.texts == texts
        assert verdicts == verifier.verify(texts, golds, response_lengths=rollout.lengths.tolist())
    assert stream.overlapped > 0  # submitted while other rows were still in decode slots
    assert stream.wait_s >= 0


def test_a_verifier_failure_stops_generation_naming_the_row(model, prompts, sampler):
    verifier = Verifier(VerifierConfig(mode=VerifierMode.ROBUST, workers=1))
    verifier.close()  # a pool that cannot take work: every submit raises
    seen = []
    with VerdictStream(verifier, lambda ids: "\\boxed{x^2+2x+1}", ["(x+1)^2"] * 18) as stream:

        def on_row_done(done):
            seen.append(done.row)
            stream(done)

        with pytest.raises(PoolError, match="closed") as info:
            sampler.generate(model, *prompts, n=3, key=11, on_row_done=on_row_done)
    notes = "\n".join(info.value.__notes__)
    assert f"while verifying rollout row {seen[0]}" in notes  # the row whose submit failed
    assert "raised by generate's on_row_done for row" in notes  # and where generation stopped
    assert len(seen) < 18  # stopped early, not after decoding everything


def test_a_failure_on_the_last_row_surfaces_in_result(model, prompts, sampler):
    order = []
    sampler.generate(model, *prompts, n=3, key=11, on_row_done=lambda d: order.append(d.row))
    last = order[-1]

    calls = []

    def decode(ids):  # runs in the stream's one thread, in the order rows end
        calls.append(ids)
        if len(calls) == len(order):
            raise UnicodeError(f"cannot decode {len(ids)} tokens")
        return "x"

    with Verifier(VerifierConfig(mode=VerifierMode.STRICT)) as verifier:
        with VerdictStream(verifier, decode, ["1"] * 18) as stream:
            sampler.generate(model, *prompts, n=3, key=11, on_row_done=stream)
            with pytest.raises(UnicodeError, match="cannot decode") as info:
                stream.result()
    assert f"while verifying rollout row {last}" in "\n".join(info.value.__notes__)


def test_row_keys_and_stream_misuse_are_named(model, prompts, sampler):
    with pytest.raises(ValueError, match=r"row_keys must be a \[18, 2\] uint32 array"):
        sampler.generate(model, *prompts, n=3, row_keys=np.zeros((17, 2), np.uint32))
    with Verifier(VerifierConfig(mode=VerifierMode.STRICT)) as verifier:
        with VerdictStream(verifier, str, ["1"] * 19) as stream:
            sampler.generate(model, *prompts, n=3, key=11, on_row_done=stream)
            with pytest.raises(RuntimeError, match="1 of 19 rows never reached the verifier"):
                stream.result()


@pytest.mark.slow
def test_the_loop_rewards_with_overlap_equal_verifying_after_generation(tmp_path):
    """One RL step verifies rows while decoding; its reward metrics equal the old order (generate the same
    seeded rollout, then decode and verify it all at once)."""
    import jax

    from justrl_jax.data import PromptStream
    from justrl_jax.metrics import rollout_metrics
    from justrl_jax.rl_loop import RLRunner
    from justrl_jax.run_config import load_run_config

    sets = [
        "loop.total_steps=1",
        "checkpoint.enabled=false",
        "demo.sft_steps=30",
        "rollout.prompts_per_step=8",
        "rollout.max_concurrent_rows=32",  # 128 rows through 32 slots: rows end while others decode
        "verifier.mode=robust",
    ]
    cfg = load_run_config(None, sets)
    with RLRunner(cfg, tmp_path / "run", mesh_spec="1x1", devices=jax.devices()[:1]) as runner:
        g = cfg.rollout.samples_per_prompt
        batch = PromptStream(runner.data_cfg, runner.tokenizer).next_batch(cfg.rollout.prompts_per_step)
        key = jax.random.fold_in(runner.key, 0)
        rollout = runner.sampler.generate(runner.state.params, batch.prompt_ids, batch.prompt_mask, n=g, key=key)
        ids = [row[:n] for row, n in zip(rollout.completion_ids, rollout.lengths, strict=True)]
        texts = runner.tokenizer.batch_decode(ids, skip_special_tokens=True)
        golds = [gold for gold in batch.golds for _ in range(g)]
        verdicts = runner.verifier.verify(texts, golds, response_lengths=rollout.lengths.tolist())
        rewards = np.asarray([v.reward for v in verdicts], np.float32)
        expected = rollout_metrics(verdicts, rewards, rollout.lengths, rollout.finish == FinishReason.LENGTH, g)
        assert 0 < expected["reward/accuracy"] < 1  # some right, some wrong: a reward mix-up would show

        metrics = runner.step(0)
    assert {k: metrics[k] for k in expected} == expected
    assert metrics["perf/verifier_wait_s"] >= 0 and "time/verify_s" in metrics
