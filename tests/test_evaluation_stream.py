"""Evaluation as one stream: every pair of every benchmark through one scheduler run, each row verified as it
ends, gives the records that one generate call per unit (the unit's seed, its rows in order, verified after
it) gives, in the same file order; units are written while later rows still decode."""

import json

import pytest
from flax import nnx
from tiny_run import make_tiny_model_dir, read_jsonl, write_benchmarks
from transformers import AutoTokenizer

from justrl_jax.data import collate, encode_examples
from justrl_jax.evaluation.eval_config import EvalConfig
from justrl_jax.evaluation.runner import (
    _Budget,
    eval_generator,
    evaluate,
    load_benchmarks,
    plan_units,
    plan_work,
    run_benchmarks,
)
from justrl_jax.model.source import load_policy
from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode

NAMES = ("aime24", "amc23")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny model that also stops on 40 ordinary tokens (~1 in 11 per step), so rows end at very
    different lengths, and two benchmarks of 3 problems."""
    root = tmp_path_factory.mktemp("stream")
    model = make_tiny_model_dir(root / "model", seed=3)
    gen = json.loads((model / "generation_config.json").read_text())
    gen["eos_token_id"] = [gen["eos_token_id"], *range(300, 340)]
    (model / "generation_config.json").write_text(json.dumps(gen))
    data = write_benchmarks(root / "data", names=NAMES, n=3)
    cfg = EvalConfig(
        benchmarks=NAMES,
        n_samples=3,
        max_new_tokens=12,
        batch_size=4,
        seed=5,
        verifier=VerifierConfig(mode=VerifierMode.STRICT, correct_reward=1.0, incorrect_reward=0.0),
    )
    policy = load_policy(model)
    return policy, AutoTokenizer.from_pretrained(policy.tokenizer_dir), cfg, data, root


def _per_unit_reference(generator, params, verifier, bench, cfg):
    """What evaluation did before the stream: one generate call per unit with the unit's seed, then verify."""
    token_ids = encode_examples(generator.tokenizer, bench.examples, cfg.prompt_format)
    records = []
    for unit in plan_units(bench.spec.name, len(bench.examples), bench.spec.n_samples, cfg.batch_size, cfg.seed):
        examples = [bench.examples[i] for i, _ in unit.pairs]
        batch = collate(
            examples, [token_ids[i] for i, _ in unit.pairs], generator.pad_id, bucket_multiple=generator.bucket_multiple
        )
        rollout = generator.sampler.generate(params, batch.prompt_ids, batch.prompt_mask, n=1, key=unit.seed)
        ids = [row[:n] for row, n in zip(rollout.completion_ids, rollout.lengths, strict=True)]
        texts = generator.tokenizer.batch_decode(ids, skip_special_tokens=True)
        verdicts = verifier.verify(texts, [e.gold for e in examples], response_lengths=rollout.lengths.tolist())
        for (i, j), text, n, finish, v in zip(
            unit.pairs, texts, rollout.lengths, rollout.finish, verdicts, strict=True
        ):
            records.append((i, j, unit.seed, text, int(n), ("stop", "length")[int(finish)], v.status.value, v.reward))
    return records


@pytest.mark.slow
def test_one_stream_gives_the_per_unit_records_in_file_order(setup, tmp_path):
    policy, tokenizer, cfg, data, _ = setup
    outcome = evaluate(policy.model, tokenizer, cfg, data, tmp_path, eos_ids=policy.eos_ids, model_name="tiny")
    assert outcome.report is not None

    graphdef, params = nnx.split(policy.model, nnx.Param)
    generator = eval_generator(graphdef, tokenizer, cfg, eos_ids=policy.eos_ids, mesh=None)
    benchmarks = load_benchmarks(data, cfg.specs())
    lengths = set()
    with Verifier(cfg.verifier) as verifier:
        for bench in benchmarks:
            expected = _per_unit_reference(generator, params, verifier, bench, cfg)
            got = [
                (r["problem_index"], r["sample_index"], r["seed"], r["response"], r["length"], r["finish_reason"])
                + (r["verdict"], r["reward"])
                for r in read_jsonl(tmp_path / f"{bench.spec.name}.samples.jsonl")
            ]
            assert got == expected  # same samples, verdicts and line order
            lengths |= {r[4] for r in got}
    assert len(lengths) >= 4  # rows ended at very different lengths


@pytest.mark.slow
def test_units_are_written_while_later_rows_still_decode(setup):
    policy, tokenizer, cfg, data, _ = setup
    graphdef, params = nnx.split(policy.model, nnx.Param)
    generator = eval_generator(graphdef, tokenizer, cfg, eos_ids=policy.eos_ids, mesh=None)
    benchmarks = load_benchmarks(data, cfg.specs())
    work = plan_work(benchmarks, cfg.batch_size, cfg.seed, [{} for _ in benchmarks], _Budget(None))
    calls_at_write = []

    def write(b, records):
        calls_at_write.append((b, len(records), generator.sampler.stats.decode_calls))

    with Verifier(cfg.verifier) as verifier:
        new = run_benchmarks(
            generator, params, verifier, benchmarks, work, prompt_format=cfg.prompt_format, write=write
        )
    stats = generator.sampler.stats
    prompt_tokens = sum(len(t) for b in benchmarks for t in encode_examples(tokenizer, b.examples, cfg.prompt_format))
    assert stats.prefill_tokens == 3 * prompt_tokens  # every pair of both benchmarks went through one run
    assert [(b, n) for b, n, _ in calls_at_write] == [(0, 4), (0, 4), (0, 1), (1, 4), (1, 4), (1, 1)]  # unit order
    assert calls_at_write[0][2] < stats.decode_calls  # the first unit was on disk before decoding ended
    assert [len(records) for records in new] == [9, 9]
