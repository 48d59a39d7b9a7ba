"""JustRL's model judge on our sampler: the prompt byte for byte, greedy parity with transformers,
the exact-``A`` parsing, a resumable pass over the per-sample JSONL, and the two-row table.

``tests/data/justrl_judge_prompt.txt`` is JustRL's released ``CV_PROMPT`` (evals/grade.py, read
with ``ast.literal_eval``) formatted once as its code does (``question=""``) with the gold and the
response used below. No judge weights exist offline: tiny Qwen2 models stand in (a random one, and
one built to answer ``A``).
"""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from justrl_jax.evaluation.judge import (
    JUDGE_MAX_NEW_TOKENS,
    Judge,
    judge_benchmarks,
    judge_prompt,
    judge_says_correct,
)
from justrl_jax.evaluation.samples import SampleRecord, SampleStore
from justrl_jax.model.source import load_policy
from justrl_jax.model.tiny_tokenizer import ChatStyle, save_tiny_tokenizer
from justrl_jax.sampling import Greedy
from tests.hf_reference import make_hf_qwen2
from tests.tiny_run import make_tiny_model_dir

FIXTURE_GOLD = "\\frac{1}{2}"
FIXTURE_RESPONSE = "<think>\nhmm {x}\n</think>\nSo $\\boxed{0.5}$."


def test_prompt_is_justrls_byte_for_byte():
    from pathlib import Path

    with (Path(__file__).parent / "data" / "justrl_judge_prompt.txt").open(encoding="utf-8", newline="") as f:
        expected = f.read()
    assert judge_prompt(FIXTURE_GOLD, FIXTURE_RESPONSE) == expected
    assert "<Original Question Begin>:\n\n<Original Question End>" in expected  # the question is always empty


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        ("A", True),
        (" A\n", True),
        ("\nA ", True),
        ("A.", False),
        ("a", False),
        ("B", False),
        ("C", False),
        ("CORRECT", False),
        ("A: CORRECT", False),
        ("", False),
        ("AA", False),
    ],
)
def test_only_exactly_A_is_correct(output, correct):
    assert judge_says_correct(output) is correct


@pytest.fixture(scope="module")
def random_judge(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("judge"), ChatStyle.CHATML, seed=5)
    policy = load_policy(str(path))  # float32
    tokenizer = AutoTokenizer.from_pretrained(path)
    return path, policy, tokenizer


def test_greedy_output_equals_transformers_generate(random_judge):
    path, policy, tokenizer = random_judge
    new = 24
    judge = Judge(policy.model, tokenizer, policy.eos_ids, name=str(path), batch_size=2, max_new_tokens=new)
    prompts = [judge_prompt(FIXTURE_GOLD, FIXTURE_RESPONSE), judge_prompt("7", "The answer is \\boxed{7}.")]
    ours = judge.outputs(prompts)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for prompt, got in zip(prompts, ours, strict=True):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = torch.as_tensor([tokenizer(text)["input_ids"]])
        assert ids.shape[1] == len(judge.prompt_ids(prompt))
        with torch.no_grad():
            out = ref.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new,
                eos_token_id=list(policy.eos_ids),
                pad_token_id=tokenizer.pad_token_id,
            )
        assert got == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert judge.sampler.config.max_new_tokens == new
    default = Judge(policy.model, tokenizer, policy.eos_ids, name=str(path))
    assert default.max_new_tokens == JUDGE_MAX_NEW_TOKENS == 2048
    assert isinstance(default.sampler.config.strategy, Greedy)


def _record(i, j, correct, response):
    return SampleRecord(
        benchmark="aime24",
        problem_index=i,
        sample_index=j,
        seed=1,
        response=response,
        prediction=None,
        verdict="ok",
        correct=correct,
        reward=float(correct),
        length=5,
        finish_reason="stop",
        gold=str(i),
    )


def _write_samples(out):
    store = SampleStore(out, "aime24")
    store.check_meta({"seed": 1})
    records = [
        _record(i, j, (i + j) % 3 == 0, f"<think>{'x' * (i * 7 + j)}</think> \\boxed{{{j}}}")
        for i in range(4)
        for j in range(2)
    ]
    store.append(records)
    return records


def test_an_interrupted_judge_pass_resumes(random_judge, tmp_path):
    path, policy, tokenizer = random_judge
    judge = Judge(policy.model, tokenizer, policy.eos_ids, name=str(path), batch_size=2, max_new_tokens=8)
    full, part = tmp_path / "full", tmp_path / "part"
    records = _write_samples(full)
    _write_samples(part)
    failures = sum(not r.correct for r in records)
    assert failures == 5

    assert judge_benchmarks(judge, full, ["aime24"])
    assert not judge_benchmarks(judge, part, ["aime24"], max_items=1)  # stops after one batch of 2
    first = SampleStore(part, "aime24").load()
    assert sum(r.judge is not None for r in first.values()) == 2
    assert judge_benchmarks(judge, part, ["aime24"])
    resumed, expected = SampleStore(part, "aime24").load(), SampleStore(full, "aime24").load()
    assert resumed == expected
    for key, r in first.items():
        if r.judge is not None:
            assert resumed[key] == r  # judged once, never again
    for r in expected.values():
        original = next(o for o in records if o.key == r.key)
        assert r.correct == original.correct  # the rule's verdict is kept
        assert (r.judge is None) == original.correct  # only the rule's failures are judged
        if r.judge is not None:
            assert r.judge_correct == judge_says_correct(r.judge)
    lines = (part / "aime24.samples.jsonl").read_text().splitlines()
    assert len(lines) == len(records)  # compacted: one line per sample
    assert json.loads((part / "judge.meta.json").read_text())["judge_model"] == str(path)
    other = Judge(policy.model, tokenizer, policy.eos_ids, name="another-judge", batch_size=2, max_new_tokens=8)
    with pytest.raises(ValueError, match="judge_model"):
        judge_benchmarks(other, part, ["aime24"])


def _a_judge(path):
    """A tiny Qwen2 (chatml) whose next token depends only on the current one: after the generation
    prompt's last token it writes ``A``, then ``<|im_end|>``."""
    tok = save_tiny_tokenizer(ChatStyle.CHATML, path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    a = tok("A", add_special_tokens=False)["input_ids"]
    assert len(a) == 1
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    _, model = make_hf_qwen2(path, vocab=448, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, :2] = 0.0
        emb[newline] = 0.0
        emb[newline, 0] = 1.0
        emb[a[0]] = 0.0
        emb[a[0], 1] = 1.0
        head = model.lm_head.weight
        head.zero_()
        head[a[0], 0] = 10.0
        head[eos, 1] = 10.0
    model.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return path


def test_evaluate_cli_rule_only_and_rule_plus_judge(tmp_path, capsys):
    from justrl_jax.evaluate import main as evaluate_main
    from tests.test_evaluation_run import _boxing_model, _data

    model, data = _boxing_model(tmp_path / "model"), _data(tmp_path / "data")
    judge = _a_judge(tmp_path / "judge")
    out = tmp_path / "out"
    args = [
        "--model",
        str(model),
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--benchmarks",
        "aime24",
        "--n-samples",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--verifier-workers",
        "1",
        "--grader",
        "justrl",
        "--label",
        "tiny",
    ]
    assert evaluate_main(args) == 0
    text = (out / "results.md").read_text()
    assert "rule only: a lower bound of the paper's protocol" in text
    records = [json.loads(line) for line in (out / "aime24.samples.jsonl").read_text().splitlines()]
    rule = np.mean([r["correct"] for r in records])
    assert 0 < rule < 1  # gold 9 is never written, so the rule rejects some samples

    capsys.readouterr()
    assert evaluate_main([*args, "--judge", str(judge)]) == 0  # later, on the finished folder
    table = capsys.readouterr().out
    assert f"| tiny (rule only) | {100 * rule:.2f} ± " in table
    assert "| tiny (rule + judge) | 100.00 ± 0.00 | 100.00 |" in table  # the judge says A to every failure
    judged = [json.loads(line) for line in (out / "aime24.samples.jsonl").read_text().splitlines()]
    key = lambda r: (r["problem_index"], r["sample_index"])  # noqa: E731
    assert {key(r): r["correct"] for r in judged} == {key(r): r["correct"] for r in records}  # rule kept
    assert all((r["judge"] == "A") != r["correct"] for r in judged)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["avg"] == pytest.approx(rule) and summary["rule_plus_judge"]["avg"] == 1.0
    assert "(rule + judge)" in (out / "results.md").read_text()
    assert evaluate_main([*args[:-4], "--label", "tiny", "--judge", str(judge)]) == 2  # robust grader: refused
