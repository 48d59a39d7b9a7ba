"""``python -m justrl_jax.convert``: transformers loads the export and computes the JAX model's logits
(fp32 within 1e-5, bf16 = the bf16-rounded checkpoint); any step converts; a run directory or a
checkpoint step works wherever a model is named (train starting weights, generate --model)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import hf_logits

from justrl_jax import convert as convert_cli
from justrl_jax import generate as generate_cli
from justrl_jax.checkpoint import complete_steps
from justrl_jax.model.qwen2 import positions_from_mask
from justrl_jax.model.safetensors_io import read_safetensors
from justrl_jax.model.source import load_policy
from justrl_jax.rl_loop import RLRunner
from justrl_jax.run_config import load_run_config

pytestmark = pytest.mark.slow  # an RL run to convert


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two steps of the demo, a checkpoint after each."""
    run_dir = tmp_path_factory.mktemp("convert") / "run"
    cfg = load_run_config(None, ["loop.total_steps=2", "checkpoint.every_steps=1", "demo.sft_steps=30"])
    RLRunner(cfg, run_dir, mesh_spec="1x1", devices=jax.devices()[:1]).run()
    assert complete_steps(run_dir) == [1, 2]
    return run_dir


def _flat_params(policy):
    return {
        "/".join(map(str, k)): np.asarray(v.get_value())
        for k, v in nnx.to_flat_state(nnx.state(policy.model, nnx.Param))
    }


def _jax_logits(policy, tokens, mask):
    hidden, _ = policy.model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
    return np.asarray(policy.model.logits(hidden), np.float32)


def _inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 400, (2, 12))
    mask = np.ones((2, 12), bool)
    mask[0, :4] = False  # left padding, as in rollouts
    return tokens, mask


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_computes_the_checkpoints_logits(tmp_path, run_dir, dtype, capsys):
    out = tmp_path / "hf"
    assert convert_cli.main([str(run_dir), "--out", str(out), "--dtype", dtype]) == 0
    assert f"from {run_dir / 'checkpoints' / '2'}" in capsys.readouterr().out
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ):
        assert (out / name).is_file(), name
    assert {str(v.dtype) for v in read_safetensors(out / "model.safetensors").values()} == {dtype}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    policy = load_policy(run_dir)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == policy.eos_ids[0]
    assert tokenizer.eos_token_id == policy.eos_ids[0]
    tokens, mask = _inputs()
    theirs = hf_logits(hf, tokens, mask)[mask]
    if dtype == "float32":
        np.testing.assert_allclose(theirs, _jax_logits(policy, tokens, mask)[mask], atol=1e-5, rtol=1e-5)
    else:
        # The export is the checkpoint rounded to bf16 (computed in fp32 on both sides) ...
        rounded = load_policy(run_dir, param_dtype=jnp.bfloat16)
        np.testing.assert_allclose(theirs, _jax_logits(rounded, tokens, mask)[mask], atol=1e-5, rtol=1e-5)
        # ... which is the fp32 checkpoint within bf16's resolution.
        np.testing.assert_allclose(theirs, _jax_logits(policy, tokens, mask)[mask], atol=0.05, rtol=0.02)


def test_any_step_converts_and_bad_steps_are_named(tmp_path, run_dir, capsys):
    step1 = run_dir / "checkpoints" / "1"
    a = convert_cli.convert(run_dir, tmp_path / "a", step=1, dtype="float32")
    b = convert_cli.convert(step1, tmp_path / "b", dtype="float32")  # a step directory itself
    c = convert_cli.convert(run_dir, tmp_path / "c", dtype="float32")  # newest: step 2
    wa, wb, wc = (read_safetensors(d / "model.safetensors") for d in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)  # step 2 trained past step 1
    assert convert_cli.main([str(run_dir), "--step", "7", "--out", str(tmp_path / "d")]) == 2
    assert "no complete checkpoint at step 7; available: [1, 2]" in capsys.readouterr().err
    assert convert_cli.main([str(step1), "--step", "1", "--out", str(tmp_path / "e")]) == 2
    assert convert_cli.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "f")]) == 2


def test_a_run_is_a_model_wherever_a_model_is_named(tmp_path, run_dir):
    """train's starting weights and generate --model take a run directory (its newest checkpoint) or a
    step; the tokenizer comes with the run (hf_assets), not from where the run started."""
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("demo_assets"))
    newest, first = load_policy(moved), load_policy(moved / "checkpoints" / "1")
    assert (newest.step, first.step) == (2, 1)
    assert newest.tokenizer_dir == moved / "hf_assets"
    base = load_policy(run_dir / "demo_assets" / "base_model")
    assert not all(
        np.array_equal(base_w, w)
        for base_w, w in zip(_flat_params(base).values(), _flat_params(newest).values(), strict=True)
    )

    cfg = load_run_config(
        None,
        [
            "demo.enabled=false",
            f"model.path={moved}",
            "loop.total_steps=1",
            f"data.path={run_dir / 'demo_assets' / 'train.jsonl'}",
        ],
    )
    runner = RLRunner(cfg, tmp_path / "next_run", mesh_spec="1x1", devices=jax.devices()[:1])
    assert runner.start_step == 0 and runner.policy.step == 2
    started = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(runner.state.params)}
    expected = _flat_params(newest)
    assert started.keys() == expected.keys() and all(np.array_equal(started[k], expected[k]) for k in started)
    runner.close()

    # generate --model RUN_DIR gives transformers' greedy tokens on the converted checkpoint.
    hf_dir = convert_cli.convert(moved, tmp_path / "hf", dtype="float32")
    prompts, output = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(json.dumps({"prompt": "Compute 2 + 3."}) + "\n")
    assert (
        generate_cli.main(
            [
                "--model",
                str(moved),
                "--prompts",
                str(prompts),
                "--output",
                str(output),
                "--greedy",
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    row = json.loads(output.read_text())
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = row["prompt_token_ids"]
    with torch.no_grad():
        expected_ids = hf.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones_like(torch.tensor([ids])),
            do_sample=False,
            max_new_tokens=6,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=list(newest.eos_ids),
        )[0, len(ids) :].tolist()
    assert row["samples"][0]["completion_ids"] == expected_ids


def test_convert_never_clobbers_an_existing_directory(tmp_path, run_dir, capsys):
    """An existing --out is refused with its files untouched; --overwrite leaves exactly the new export
    (an older sharded export's index and shards are gone, so no loader reads stale weights)."""
    fresh = tmp_path / "fresh"
    assert convert_cli.main([str(run_dir), "--out", str(fresh), "--dtype", "float32"]) == 0
    out = tmp_path / "out"
    out.mkdir()
    user_files = {
        "notes.txt": "the user's notes",
        "model-00001-of-00002.safetensors": "an older sharded export",
        "model.safetensors.index.json": "{}",
    }
    for name, text in user_files.items():
        (out / name).write_text(text)
    capsys.readouterr()
    assert convert_cli.main([str(run_dir), "--out", str(out), "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists; pass --overwrite" in err, err
    assert {p.name: p.read_text() for p in out.iterdir()} == user_files
    # The run's own checkpoint or tokenizer is never an output, even with --overwrite.
    for inside in (run_dir / "checkpoints" / "2", run_dir / "hf_assets", run_dir.parent):
        assert convert_cli.main([str(run_dir), "--out", str(inside), "--overwrite"]) == 2
        assert "overlaps) the input" in capsys.readouterr().err
    assert complete_steps(run_dir) == [1, 2]

    assert convert_cli.main([str(run_dir), "--out", str(out), "--dtype", "float32", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    for path in fresh.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]  # no temporary left behind


def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, run_dir, capsys):
    damaged = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints" / "2", damaged / "checkpoints" / "2")
    shutil.copytree(run_dir / "hf_assets", damaged / "hf_assets")
    params = damaged / "checkpoints" / "2" / "params"
    largest = max((p for p in params.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:100])
    capsys.readouterr()
    assert convert_cli.main([str(damaged), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"checkpoint {damaged / 'checkpoints' / '2'} does not restore" in err, err
    assert not (tmp_path / "hf").exists()
