"""End-to-end evaluation on a tiny model: the table, the JSONL, resume after interruption, repeatability.

The tiny model is a transformers Qwen2 (random, then edited in PyTorch) whose attention and MLP
outputs are zeroed, so the next token depends only on the current one. After the chat template's
last token it writes ``\\boxed{``, then ``3`` or ``6`` with equal probability, then ``}`` and EOS.
Problems with gold 3 or 6 are therefore right about half the time and gold 9 never: the numbers
are non-trivial, differ between seeds, and each verdict can be checked by hand from the response.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from flax import nnx
from transformers import AutoTokenizer

from justrl_jax.evaluate import main as evaluate_main
from justrl_jax.evaluation.eval_config import EvalConfig
from justrl_jax.evaluation.passk import avg_at_n, mean_pass_at_k
from justrl_jax.evaluation.runner import VALIDATION_SAMPLING, Validator, validation_eval_config
from justrl_jax.model.source import load_policy
from justrl_jax.model.tiny_tokenizer import ChatStyle, save_tiny_tokenizer
from tests.hf_reference import make_hf_qwen2

MAX_NEW = 6
COMMON = [
    "--benchmarks",
    "aime24,hmmt25",
    "--n-samples",
    "4",
    "--max-new-tokens",
    str(MAX_NEW),
    "--batch-size",
    "4",
    "--dtype",
    "float32",
    "--verifier-workers",
    "1",
    "--seed",
    "3",
]


def _boxing_model(path):
    """The model described in the module docstring, saved as an HF directory with its tokenizer."""
    tok = save_tiny_tokenizer(ChatStyle.DEEPSEEK, path)
    eos = tok.eos_token_id
    boxed, three, six, close = tok.convert_tokens_to_ids(["\\boxed{", "3", "6", "}"])
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]  # the generation prompt's last token
    _, model = make_hf_qwen2(path, vocab=448, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, :4] = 0.0  # coordinates 0..3 are the "state" of the chain; no other token has them
        for token, axis in ((newline, 0), (boxed, 1), (three, 2), (six, 2), (close, 3)):
            emb[token] = 0.0
            emb[token, axis] = 1.0
        head = model.lm_head.weight  # [V, H]
        head.zero_()
        for token, axis in ((boxed, 0), (three, 1), (six, 1), (close, 2), (eos, 3)):
            head[token, axis] = 10.0
    model.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return path


def _data(root):
    """aime24 in the veRL schema (parquet, one boxed gold); hmmt25 in the MathArena schema (JSONL)."""
    (root / "AIME24").mkdir(parents=True)
    rows = [
        {
            "data_source": "AIME24",
            "prompt": [{"role": "user", "content": f"  Problem {i}: what is it? "}],
            "ability": "math",
            "reward_model": {"ground_truth": gold, "style": "rule"},
        }
        for i, gold in enumerate(["3", "\\boxed{6}", "9"])
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "AIME24" / "test.parquet")
    lines = [
        {"problem_idx": i + 1, "problem": f"Count to {g}.", "answer": g, "problem_type": ["x"]}
        for i, g in enumerate(["6", "3"])
    ]
    (root / "hmmt25.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return _boxing_model(root / "model"), _data(root / "data"), root


def _args(model, data, out):
    return ["--model", str(model), "--data-dir", str(data), "--out", str(out), *COMMON]


def _records(out, name):
    return [json.loads(line) for line in (out / f"{name}.samples.jsonl").read_text().splitlines()]


def _by_key(out, name):
    return {(r["problem_index"], r["sample_index"]): r for r in _records(out, name)}


@pytest.mark.slow
def test_missing_benchmark_is_reported_before_loading_anything(setup, tmp_path):
    model, data, _ = setup
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "justrl_jax.evaluate",
            "--model",
            str(tmp_path / "no-model"),
            "--data-dir",
            str(data),
            "--benchmarks",
            "aime24,math500",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "benchmark 'math500'" in proc.stderr
    assert str(data / "MATH-500" / "test.parquet") in proc.stderr
    assert str(data / "math500.jsonl") in proc.stderr


@pytest.mark.slow
def test_table_jsonl_resume_and_repeat(setup, capsys):
    model, data, root = setup
    full, part = root / "full", root / "part"

    assert evaluate_main([*_args(model, data, full), "--label", "tiny"]) == 0
    table = capsys.readouterr().out

    golds = {"aime24": ["3", "6", "9"], "hmmt25": ["6", "3"]}
    summary = json.loads((full / "summary.json").read_text())
    expected_cells = []
    for name, gold in golds.items():
        records = _records(full, name)
        assert sorted((r["problem_index"], r["sample_index"]) for r in records) == [
            (i, j) for i in range(len(gold)) for j in range(4)
        ]
        for r in records:  # every verdict checked by hand from the response
            digit = r["response"].removeprefix("\\boxed{").removesuffix("}")
            assert r["response"] in ("\\boxed{3}", "\\boxed{6}"), r
            assert r["prediction"] == digit
            assert r["correct"] == (digit == gold[r["problem_index"]])
            assert r["reward"] == (1.0 if r["correct"] else 0.0)
            assert r["length"] == 4 and r["finish_reason"] == "stop"  # \boxed{ d } EOS
            assert r["verdict"] == "ok"
        counts = [sum(r["correct"] for r in records if r["problem_index"] == i) for i in range(len(gold))]
        if "9" in gold:
            assert counts[gold.index("9")] == 0  # the model never writes a 9
        bench = summary["benchmarks"][name]
        assert bench["avg@4"] == pytest.approx(avg_at_n(counts, 4))
        for k in (1, 2, 4):
            assert bench["pass@k"][str(k)] == pytest.approx(mean_pass_at_k(counts, 4, k))
        expected_cells.append(f"{100 * avg_at_n(counts, 4):.2f}")
    mean = (summary["benchmarks"]["aime24"]["avg@4"] + summary["benchmarks"]["hmmt25"]["avg@4"]) / 2
    assert summary["avg"] == pytest.approx(mean)
    row = f"| tiny | {' | '.join(expected_cells)} | {100 * mean:.2f} |"
    assert "| Model | AIME24@4 | HMMT25@4 | Avg |" in table and row in table
    se_cells = []
    for name, gold in golds.items():
        records = _records(full, name)
        acc = [sum(r["correct"] for r in records if r["problem_index"] == i) / 4 for i in range(len(gold))]
        se_cells.append(f"{100 * np.std(acc, ddof=1) / np.sqrt(len(acc)):.2f}")
    cells_se = " | ".join(f"{c} ± {e}" for c, e in zip(expected_cells, se_cells, strict=True))
    assert f"| tiny | {cells_se} | {100 * mean:.2f} |" in (full / "results.md").read_text()  # with standard errors
    eos = AutoTokenizer.from_pretrained(model).eos_token_id
    assert json.loads((full / "aime24.meta.json").read_text())["eos_ids"] == [eos]  # the stop set is recorded
    responses = [r["response"] for name in golds for r in _records(full, name)]
    assert len(set(responses)) == 2, "the seeds should give both digits somewhere"

    # Interrupted: stop after 5 new samples (two units of 4 -> 8 written), then a cut last line.
    assert evaluate_main([*_args(model, data, part), "--max-samples", "5"]) == 0
    assert not (part / "results.md").exists()
    first = _by_key(part, "aime24")
    assert len(first) == 8
    with (part / "aime24.samples.jsonl").open("a") as f:
        f.write('{"benchmark": "aime24", "problem_index": 2, "sample_in')
    capsys.readouterr()
    assert evaluate_main([*_args(model, data, part), "--label", "tiny"]) == 0
    assert row in capsys.readouterr().out
    resumed = _by_key(part, "aime24")
    assert len(_records(part, "aime24")) == 12  # only the 4 missing ones were added
    assert all(resumed[k] == v for k, v in first.items())
    for name in golds:
        assert _by_key(part, name) == _by_key(full, name)  # the same samples as the uninterrupted run
    assert json.loads((part / "summary.json").read_text()) == summary

    # A complete folder: nothing is generated, the same numbers come back.
    before = (full / "aime24.samples.jsonl").read_bytes()
    assert evaluate_main([*_args(model, data, full), "--label", "tiny"]) == 0
    assert row in capsys.readouterr().out
    assert (full / "aime24.samples.jsonl").read_bytes() == before

    # The same settings from a --config file (and --set): the samples on disk match them, so the complete
    # folder is resumed as is (any setting that differed would be refused, as below).
    config = root / "eval.yaml"
    config.write_text(
        "benchmarks: [aime24, hmmt25]\nn_samples: 2\nmax_new_tokens: 6\nbatch_size: 4\nseed: 3\n"
        "verifier: {workers: 1}\n"
    )
    args = ["--model", str(model), "--data-dir", str(data), "--out", str(full), "--dtype", "float32"]
    assert evaluate_main([*args, "--config", str(config), "--set", "n_samples=4", "--label", "tiny"]) == 0
    assert row in capsys.readouterr().out
    assert (full / "aime24.samples.jsonl").read_bytes() == before

    # Resuming with other settings is refused, naming the setting.
    assert evaluate_main([*_args(model, data, full), "--temperature", "0.5"]) == 2
    assert "temperature=0.7" in capsys.readouterr().err


@pytest.mark.slow
def test_validator_metrics_are_repeatable(setup):
    model_dir, data, _ = setup
    policy = load_policy(model_dir)
    graphdef, params = nnx.split(policy.model, nnx.Param)
    tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
    settings = dataclasses.replace(VALIDATION_SAMPLING, max_new_tokens=MAX_NEW)
    cfg = validation_eval_config(settings, benchmarks=("aime24", "hmmt25"), n_samples=4, batch_size=4)
    validator = Validator(graphdef, tokenizer, cfg, data, eos_ids=policy.eos_ids)
    first = validator(params)
    names = {f"val/{b}/{m}" for b in ("aime24", "hmmt25") for m in ("avg@4", "pass@4", "length_mean")}
    assert set(first) == names | {"val/mean"}
    # aime24: 3 problems x 4 samples, and the gold-9 problem is never right.
    assert first["val/aime24/avg@4"] * 12 == pytest.approx(round(first["val/aime24/avg@4"] * 12))
    assert first["val/aime24/avg@4"] <= 8 / 12 and first["val/aime24/pass@4"] <= 2 / 3
    assert first["val/mean"] == pytest.approx((first["val/aime24/avg@4"] + first["val/hmmt25/avg@4"]) / 2)
    assert first["val/aime24/length_mean"] == 4.0
    assert validator(params) == first  # fixed seeds: the same parameters score the same


def test_out_folder_is_never_an_input(setup, capsys):
    model, data, _ = setup
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for out in (data, data / "aime24", model):
        assert evaluate_main(_args(model, data, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "overlaps) the input" in err, err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    (model.parent / "run_without_checkpoint" / "checkpoints").mkdir(parents=True)
    assert evaluate_main(_args(model.parent / "run_without_checkpoint", data, model.parent / "o")) == 2
    assert "has no complete checkpoint yet" in capsys.readouterr().err
    assert not (model.parent / "o").exists()


def test_settings_come_from_defaults_file_flags_then_set(tmp_path, capsys):
    from justrl_jax.evaluate import _config, _parser
    from justrl_jax.verifier import VerifierMode

    config = tmp_path / "eval.yaml"
    config.write_text("benchmarks: [aime24]\nn_samples: 8\ntemperature: 0.6\ntop_k: 20\nverifier: {workers: 2}\n")
    common = ["--model", "m", "--data-dir", "d", "--config", str(config)]
    cfg = _config(_parser().parse_args(common))
    assert (cfg.benchmarks, cfg.n_samples, cfg.temperature, cfg.top_p, cfg.top_k) == (("aime24",), 8, 0.6, 0.9, 20)
    # The command's own verifier defaults (1/0 rewards, robust) stay under the file's workers.
    v = cfg.verifier
    assert (v.mode, v.correct_reward, v.incorrect_reward, v.workers) == (VerifierMode.ROBUST, 1.0, 0.0, 2)
    cfg = _config(_parser().parse_args([*common, "--n-samples", "2", "--temperature", "0.5", "--set", "n_samples=3"]))
    assert (cfg.n_samples, cfg.temperature) == (3, 0.5)  # a flag beats the file, --set beats the flag
    cfg = _config(_parser().parse_args([*common, "--benchmarks", "AIME25,math-500", "--verifier", "strict"]))
    assert cfg.benchmarks == ("aime25", "math500") and cfg.verifier.mode is VerifierMode.STRICT
    assert _config(_parser().parse_args(["--model", "m", "--data-dir", "d"])).benchmarks == EvalConfig().benchmarks

    for bad, named in (
        (["--set", "temprature=0.5"], "unknown config key 'temprature'"),
        (["--set", "top_p=1.5"], "eval.top_p must be in (0, 1]"),
        (["--set", "verifier.workers=many"], "verifier.workers must be an integer"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
    ):
        assert evaluate_main(["--model", "m", "--data-dir", str(tmp_path), *bad]) == 2
        assert named in capsys.readouterr().err
