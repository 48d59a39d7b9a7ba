"""``python -m justrl_jax.generate``: greedy tokens equal transformers' generate; bad input names its line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_reference import make_hf_qwen2
from xla_flags import cpu_flags

from justrl_jax.generate import GenerateConfig
from justrl_jax.model.tiny_tokenizer import ChatStyle, save_tiny_tokenizer

pytestmark = pytest.mark.slow  # the CLI end to end, in subprocesses and in-process


TIMEOUT_S = 1800  # a guard against a hang only: a loaded machine can take minutes


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "justrl_jax.generate", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "XLA_FLAGS": cpu_flags(1)},
    )


def test_greedy_cli_equals_transformers(tmp_path):
    path, ref = make_hf_qwen2(tmp_path / "hf", vocab=448, hidden=64, heads=4, kv_heads=2, seed=5)
    tokenizer = save_tiny_tokenizer(ChatStyle.DEEPSEEK, path)
    prompts = tmp_path / "prompts.jsonl"
    texts = ["What is 2 + 2?", "Compute the sum of the first ten odd numbers."]
    prompts.write_text(
        "".join(json.dumps({"prompt": t, "id": i}) + "\n" for i, t in enumerate(texts))
        + json.dumps({"prompt_ids": [5, 6, 7], "id": 2})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    res = _run(
        "--model", str(path), "--prompts", str(prompts), "--output", str(out), "--greedy", "--max-new-tokens", "6"
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    for row in rows:
        ids = row["prompt_token_ids"]
        if "prompt" in row:
            templated = tokenizer.apply_chat_template(
                [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False
            )
            assert ids == tokenizer(templated, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = ref.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=6,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )[0, len(ids) :].tolist()
        sample = row["samples"][0]
        assert sample["completion_ids"] == expected
        assert len(sample["logprobs"]) == len(expected) and all(lp <= 0 for lp in sample["logprobs"])
        assert sample["finish_reason"] == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")
        assert np.isfinite(sample["logprobs"]).all()


def test_greedy_cli_with_rows_ending_apart_and_slots_reused_equals_transformers(tmp_path, capsys):
    from justrl_jax.generate import main

    path, ref = make_hf_qwen2(tmp_path / "hf", vocab=448, hidden=64, heads=4, kv_heads=2, seed=7)
    save_tiny_tokenizer(ChatStyle.DEEPSEEK, path)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, 448, size=int(n)).tolist() for n in (3, 9, 1, 14, 6, 2, 11, 5)]
    new = 20
    with torch.no_grad():
        free = [
            ref.generate(
                input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                do_sample=False, max_new_tokens=new, eos_token_id=None, pad_token_id=0,
            )[0, len(p) :].tolist()
            for p in prompts
        ]  # fmt: skip
    # Stop ids taken from the greedy runs themselves, so rows end at different steps (some run to the cap).
    eos = sorted({free[0][2], free[3][9], free[5][15]})
    gen_config = path / "generation_config.json"
    gen_config.write_text(json.dumps({**json.loads(gen_config.read_text()), "eos_token_id": eos}))
    expected = []
    for tokens in free:
        stop = next((i for i, t in enumerate(tokens) if t in eos), len(tokens) - 1)
        expected.append(tokens[: stop + 1])
    assert len({len(e) for e in expected}) >= 3
    lines = [json.dumps({"prompt_ids": p, "id": i}) + "\n" for i, p in enumerate(prompts)]
    (tmp_path / "p.jsonl").write_text("".join(lines))
    out = tmp_path / "out.jsonl"
    capsys.readouterr()
    assert main([
        "--model", str(path), "--prompts", str(tmp_path / "p.jsonl"), "--output", str(out), "--greedy",
        "--max-new-tokens", str(new), "--max-concurrent-rows", "2", "--steps-per-call", "3", "--prompt-bucket", "4",
    ]) == 0  # fmt: skip
    assert "2 slots" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(prompts)))  # input order
    for row, want in zip(rows, expected, strict=True):
        sample = row["samples"][0]
        assert sample["completion_ids"] == want
        assert sample["finish_reason"] == ("stop" if want[-1] in eos else "length")


SCHEDULERS = ("continuous", "waves")


@pytest.fixture(scope="module")
def mesh_case(tmp_path_factory):
    """A model, 3 prompts x n=3 (9 sampled rows over 4 data shards), and the CLI's output on a 4x1 mesh with
    each scheduler: both runs in one 4-device process (``main`` as ``python -m`` calls it; one JAX start)."""
    root = tmp_path_factory.mktemp("mesh_cli")
    path, _ = make_hf_qwen2(root / "hf", vocab=448, hidden=64, heads=4, kv_heads=2, seed=9)
    save_tiny_tokenizer(ChatStyle.DEEPSEEK, path)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(1, 448, size=n).tolist() for n in (3, 8, 5)]
    (root / "p.jsonl").write_text("".join(json.dumps({"prompt_ids": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
    common = ["--model", str(path), "--prompts", str(root / "p.jsonl"), "--n", "3", "--max-new-tokens", "8"]
    common += ["--prompt-bucket", "4", "--seed", "3"]
    sharded = {s: root / f"out_4x1_{s}.jsonl" for s in SCHEDULERS}
    argsets = [[*common, "--output", str(sharded[s]), "--scheduler", s, "--mesh", "4x1"] for s in SCHEDULERS]
    script = "import json, sys\nfrom justrl_jax.generate import main\n"
    script += "sys.exit(max([main(args) for args in json.loads(sys.argv[1])]))"
    res = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argsets)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "XLA_FLAGS": cpu_flags(4)},
    )
    assert res.returncode == 0, res.stderr
    return common, sharded


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_mesh_cli_with_rows_not_a_multiple_of_the_data_axis_equals_one_device(tmp_path, mesh_case, scheduler):
    from justrl_jax.generate import main

    common, outputs = mesh_case
    out = tmp_path / "out.jsonl"  # one device: this process's default device, no mesh
    assert main([*common, "--output", str(out), "--scheduler", scheduler]) == 0
    one, sharded = ([json.loads(line) for line in f.read_text().splitlines()] for f in (out, outputs[scheduler]))
    assert len(sharded) == 3 and all(len(row["samples"]) == 3 for row in sharded)
    for a, b in zip(one, sharded, strict=True):
        for x, y in zip(a["samples"], b["samples"], strict=True):
            assert (x["completion_ids"], x["finish_reason"]) == (y["completion_ids"], y["finish_reason"])
            np.testing.assert_allclose(x["logprobs"], y["logprobs"], atol=1e-5)


def test_malformed_prompt_line_is_named(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": \n')
    res = _run("--model", str(tmp_path), "--prompts", str(prompts), "--output", str(tmp_path / "o.jsonl"))
    assert res.returncode == 2 and "line 2" in res.stderr


def test_bad_settings_and_out_of_vocabulary_ids_are_errors(tmp_path, capsys):
    from justrl_jax.generate import main

    path, _ = make_hf_qwen2(tmp_path / "hf", vocab=448, hidden=64, heads=4, kv_heads=2)
    save_tiny_tokenizer(ChatStyle.CHATML, path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n\n{"prompt_ids": [1, 2, 448]}\n')
    common = ["--model", str(path), "--prompts", str(prompts), "--output", str(tmp_path / "o.jsonl")]
    assert main([*common, "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert main([*common, "--kv-cache-budget-gb", "-1"]) == 2
    assert main(common) == 2
    assert "line 3" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()


def test_inputs_and_output_are_checked_before_the_model_loads(tmp_path, capsys):
    """A bad id on line 3 is named before any weight is read (this model has none: reading them would
    fail otherwise), and an existing --output is left untouched; in = out is refused."""
    from justrl_jax.generate import main

    path, _ = make_hf_qwen2(tmp_path / "hf", vocab=448, hidden=64, heads=4, kv_heads=2)
    save_tiny_tokenizer(ChatStyle.CHATML, path)
    (path / "model.safetensors").unlink()
    prompts, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt_ids": [1, 2]}\n{"prompt_ids": [1, 2, 448]}\n')
    out.write_text("earlier results\n")
    capsys.readouterr()  # the progress bars of building the model
    for extra in ([], ["--overwrite"]):
        assert main(["--model", str(path), "--prompts", str(prompts), "--output", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        if extra:
            assert f"{prompts}: line 3: " in err and "vocabulary (size 448)" in err, err
        else:
            assert "already exists; pass --overwrite" in err, err
        assert out.read_text() == "earlier results\n"
    assert main(["--model", str(path), "--prompts", str(prompts), "--output", str(prompts), "--overwrite"]) == 2
    assert "overlaps) the input" in capsys.readouterr().err
    # A run directory without a checkpoint is a one-line error too.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    prompts.write_text('{"prompt_ids": [1, 2]}\n')
    assert main(["--model", str(tmp_path / "run"), "--prompts", str(prompts), "--output", str(tmp_path / "x")]) == 2
    assert "has no complete checkpoint yet" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "o.jsonl", "p.jsonl", "run"]


def test_config_file_and_set_equal_the_flags(tmp_path, capsys):
    from justrl_jax.generate import _parser, load_generate_config, main

    path, _ = make_hf_qwen2(tmp_path / "hf", vocab=448, hidden=64, heads=4, kv_heads=2, seed=5)
    save_tiny_tokenizer(ChatStyle.DEEPSEEK, path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is 2 + 2?"}\n{"prompt_ids": [5, 6, 7]}\n')
    config = tmp_path / "generate.yaml"
    config.write_text("temperature: 0.7\ntop_p: 0.9\nmax_new_tokens: 5\nn: 3\nseed: 4\nbatch_size: 1\n")

    def run(name, *settings):
        out = tmp_path / f"{name}.jsonl"
        assert main(["--model", str(path), "--prompts", str(prompts), "--output", str(out), *settings]) == 0
        return out.read_text()

    flags = "--temperature 0.7 --top-p 0.9 --max-new-tokens 5 --n 2 --seed 4 --batch-size 1".split()
    by_flags = run("flags", *flags)
    assert run("config", "--config", str(config), "--set", "n=2") == by_flags
    assert [len(json.loads(line)["samples"]) for line in by_flags.splitlines()] == [2, 2]

    parse = _parser().parse_args
    common = ["--model", "m", "--prompts", "p", "--output", "o", "--config", str(config)]
    cfg = load_generate_config(parse([*common, "--n", "5", "--set", "n=6", "--greedy"]))
    assert (cfg.n, cfg.greedy, cfg.temperature, cfg.max_new_tokens) == (6, True, 0.7, 5)  # --set beats a flag
    assert load_generate_config(parse(common[:6])) == GenerateConfig()  # no file, no flags: the defaults
    capsys.readouterr()
    for bad, named in (
        (["--set", "temprature=0.5"], "unknown config key 'temprature'"),
        (["--set", "n=0"], "generate.n must be an integer >= 1"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
    ):
        assert main(["--model", str(path), "--prompts", str(prompts), "--output", str(tmp_path / "x.jsonl"), *bad]) == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
