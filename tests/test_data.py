"""Prompt files -> batches: schemas, DAPO stripping, templates, filtering, order, resume, sharding, padding.

Expected strings are written out here from recipe.md §3, not imported from the code under test.
"""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from justrl_jax.config_io import ConfigError, from_dict
from justrl_jax.data import DataConfig, PromptStream, collate, eval_batches, padded_length
from justrl_jax.model.tiny_tokenizer import ChatStyle, make_tiny_tokenizer
from justrl_jax.prompts import (
    FileFormat,
    MalformedRowError,
    PromptExample,
    PromptFormat,
    format_prompt,
    load_examples,
    read_examples,
)

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
TRAIN_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
EVAL_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."
BOS = "<｜begin▁of▁sentence｜>"


def templated(style: ChatStyle, content: str) -> str:
    if style is ChatStyle.DEEPSEEK:
        return BOS + "<｜User｜>" + content + "<｜Assistant｜><think>\n"
    return "<|im_start|>user\n" + content + "<|im_end|>\n<|im_start|>assistant\n"


def problems(n: int) -> list[str]:
    # Varied lengths, so filtering and bucketing have something to do.
    return [f"Problem {i}: find x if x = {i}" + " + 1" * (i % 7) + "." for i in range(n)]


def verl_row(problem: str, gold, index: int, wrap_dapo: bool = True) -> dict:
    content = DAPO_PREFIX + problem + DAPO_SUFFIX if wrap_dapo else problem
    return {
        "data_source": "math_dapo",
        "prompt": [{"content": content, "role": "user"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": gold, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": str(index)},
    }


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ds_tok():
    return make_tiny_tokenizer(ChatStyle.DEEPSEEK)


@pytest.fixture
def dapo_file(tmp_path):
    rows = [verl_row(p, str(i * 3), i) for i, p in enumerate(problems(23))]
    return write_parquet(tmp_path / "dapo.parquet", rows)


def stream_uids(stream, batch_size, steps):
    return [e for _ in range(steps) for e in stream.next_batch(batch_size).example_indices.tolist()]


# ---------------------------------------------------------------------------------------------- reading


def test_verl_parquet_strips_dapo_instructions_and_keeps_golds(dapo_file):
    examples, stats = read_examples(dapo_file)
    assert [e.problem for e in examples] == problems(23)
    assert [e.gold for e in examples] == [str(i * 3) for i in range(23)]
    assert [e.uid for e in examples] == [str(i) for i in range(23)]
    assert {e.data_source for e in examples} == {"math_dapo"}
    assert (stats.rows, stats.dapo_stripped, stats.malformed_skipped) == (23, 23, 0)
    raw = load_examples(dapo_file, strip_dapo=False)
    assert raw[0].problem == DAPO_PREFIX + problems(1)[0] + DAPO_SUFFIX


def test_dapo_strip_is_exact(tmp_path):
    texts = [
        "  " + DAPO_PREFIX + "indented prefix stays",  # not at the start
        DAPO_PREFIX.rstrip() + "\nalmost the prefix",  # one newline short
        "only suffix" + DAPO_SUFFIX,
        "suffix in the middle" + DAPO_SUFFIX + " tail",
    ]
    path = write_jsonl(tmp_path / "s.jsonl", [{"problem": t, "answer": "1"} for t in texts])
    got = [e.problem for e in load_examples(path)]
    assert got == [texts[0], texts[1], "only suffix", texts[3]]


def test_plain_schema_jsonl_json_and_parquet(tmp_path):
    rows = [
        {"problem_idx": 7, "problem": "Find $n$.", "answer": 204, "problem_type": ["Algebra"]},
        {"problem_idx": 8, "problem": "Find $m$.", "answer": "\\boxed{\\frac{1}{2}}", "problem_type": []},
    ]
    expected = [("Find $n$.", "204", "7"), ("Find $m$.", "\\boxed{\\frac{1}{2}}", "8")]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    paths = [
        write_jsonl(tmp_path / "a.jsonl", rows),
        write_jsonl(tmp_path / "lines.json", rows),
        tmp_path / "list.json",
    ]
    string_answers = [{**r, "answer": str(r["answer"])} for r in rows]
    pq.write_table(pa.Table.from_pylist(string_answers), tmp_path / "b.parquet")
    paths.append(tmp_path / "b.parquet")
    for path in paths:
        examples = load_examples(path)
        assert [(e.problem, e.gold, e.uid) for e in examples] == expected, path
        assert [(e.source, e.row) for e in examples] == [(str(path), 0), (str(path), 1)]
    renamed = tmp_path / "rows.txt"
    renamed.write_text((tmp_path / "a.jsonl").read_text())
    with pytest.raises(ValueError, match="rows.txt.*extension"):
        load_examples(renamed)
    assert len(load_examples(renamed, file_format=FileFormat.JSONL)) == 2


def test_malformed_rows_name_file_and_row_or_are_skipped(tmp_path):
    good = {"problem": "ok", "answer": "1"}
    lines = [good, good, "{not json", good, {"problem": "no answer"}, good]
    jsonl = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(MalformedRowError, match=r"bad\.jsonl: row 2 \(line 3\): not valid JSON"):
        load_examples(jsonl)
    examples, stats = read_examples(jsonl, skip_malformed=True)
    assert (len(examples), stats.rows, stats.malformed_skipped) == (4, 6, 2)
    assert [e.row for e in examples] == [0, 1, 3, 5]

    rows = [verl_row("a", "1", 0), verl_row("b", "2", 1), verl_row("c", "3", 2), verl_row("d", "4", 3)]
    rows[1]["prompt"] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "b"}]
    rows[3]["reward_model"] = {"ground_truth": None, "style": "x"}
    parquet = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(MalformedRowError, match=r"bad\.parquet: row 1: prompt must be a list holding one"):
        load_examples(parquet)
    examples, stats = read_examples(parquet, skip_malformed=True)
    assert [e.problem for e in examples] == ["a", "c"]
    assert stats.malformed_skipped == 2
    with pytest.raises(MalformedRowError, match=r"row 0: has neither"):
        load_examples(write_jsonl(tmp_path / "cols.jsonl", [{"question": "q", "label": "1"}]))
    with pytest.raises(MalformedRowError, match=r"row 0: the problem text is empty"):
        only_instructions = {"problem": DAPO_PREFIX + DAPO_SUFFIX, "answer": 1}
        load_examples(write_jsonl(tmp_path / "e.jsonl", [only_instructions]))


def test_missing_local_file_and_offline_hub_id_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet does not exist"):
        load_examples(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="no-such-owner/no-such-dataset is not a local file"):
        load_examples("no-such-owner/no-such-dataset")  # HF_HUB_OFFLINE=1 in tests
    with pytest.raises(IsADirectoryError):
        load_examples(tmp_path)


# ---------------------------------------------------------------------------------------------- prompts


def test_prompt_formats():
    assert format_prompt("What is 1+1?", PromptFormat.TRAIN) == "What is 1+1?" + TRAIN_SUFFIX
    assert format_prompt("What is 1+1?", PromptFormat.EVAL) == "What is 1+1?" + EVAL_SUFFIX
    assert format_prompt("What is 1+1?", PromptFormat.RAW) == "What is 1+1?"


@pytest.mark.parametrize("style", list(ChatStyle), ids=lambda s: s.value)
def test_batches_hold_the_templated_prompt_exactly(dapo_file, style):
    tok = make_tiny_tokenizer(style)
    stream = PromptStream(DataConfig(path=str(dapo_file), shuffle=False), tok)
    batch = stream.next_batch(5)
    for row in range(5):
        text = templated(style, problems(23)[row] + TRAIN_SUFFIX)
        ids = batch.prompt_ids[row][batch.prompt_mask[row]].tolist()
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        if style is ChatStyle.DEEPSEEK:
            assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert batch.problems == problems(5) and batch.golds == ["0", "3", "6", "9", "12"]


def test_overlong_prompts_are_dropped_and_counted(dapo_file, ds_tok):
    texts = [templated(ChatStyle.DEEPSEEK, p + TRAIN_SUFFIX) for p in problems(23)]
    lengths = [len(ds_tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    limit = sorted(lengths)[15]
    expect_kept = [i for i, n in enumerate(lengths) if n <= limit]
    assert 0 < len(expect_kept) < 23
    stream = PromptStream(DataConfig(path=str(dapo_file), max_prompt_tokens=limit, shuffle=False), ds_tok)
    assert (stream.stats.kept, stream.stats.overlong_dropped, stream.stats.rows) == (
        len(expect_kept),
        23 - len(expect_kept),
        23,
    )
    assert stream.stats.max_prompt_tokens_seen == max(lengths[i] for i in expect_kept)
    assert [e.row for e in stream.examples] == expect_kept
    batch = stream.next_batch(len(expect_kept))
    assert batch.prompt_ids.shape[1] <= limit and batch.lengths.max() <= limit
    with pytest.raises(ValueError, match="no prompt is left"):
        PromptStream(DataConfig(path=str(dapo_file), max_prompt_tokens=min(lengths) - 1), ds_tok)


# ---------------------------------------------------------------------------------------------- order


def test_shuffle_is_seeded_and_each_epoch_is_a_permutation(dapo_file, ds_tok):
    def order(seed, shuffle=True):
        stream = PromptStream(DataConfig(path=str(dapo_file), shuffle_seed=seed, shuffle=shuffle), ds_tok)
        return stream_uids(stream, 23, 3)

    a, b, c = order(1), order(1), order(2)
    assert a == b and a != c
    epochs = [a[k * 23 : (k + 1) * 23] for k in range(3)]
    for epoch in epochs + [c[:23]]:
        assert sorted(epoch) == list(range(23))
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    assert order(1, shuffle=False) == list(range(23)) * 3


def test_state_round_trip_resumes_the_exact_order(dapo_file, ds_tok):
    config = DataConfig(path=str(dapo_file), shuffle_seed=5)
    first = PromptStream(config, ds_tok)
    stream_uids(first, 4, 7)  # crosses an epoch boundary (28 > 23)
    state = json.loads(json.dumps(first.get_state()))
    expected = [first.next_batch(4) for _ in range(9)]
    resumed = PromptStream(config, ds_tok)
    resumed.set_state(state)
    for want in expected:
        got = resumed.next_batch(4)
        np.testing.assert_array_equal(got.prompt_ids, want.prompt_ids)
        np.testing.assert_array_equal(got.positions, want.positions)
        assert got.golds == want.golds
    with pytest.raises(ValueError, match="shuffle_seed"):
        PromptStream(DataConfig(path=str(dapo_file), shuffle_seed=6), ds_tok).set_state(state)
    with pytest.raises(ValueError, match="fingerprint"):
        other = [PromptExample(problem=f"other {i}", gold="1") for i in range(23)]
        PromptStream(config, ds_tok, examples=other).set_state(state)
    with pytest.raises(ValueError, match="lacks"):
        resumed.set_state({"position": 3})


def test_host_shards_are_disjoint_and_cover_the_global_batch(dapo_file, ds_tok):
    config = DataConfig(path=str(dapo_file), shuffle_seed=3)
    hosts = [PromptStream(config, ds_tok, shard_index=h, shard_count=3) for h in range(3)]
    single = PromptStream(config, ds_tok)
    for _ in range(5):  # 5 global batches of 12 cross two epoch boundaries
        parts = [h.next_batch(4) for h in hosts]
        positions = np.concatenate([p.positions for p in parts])
        want = single.next_batch(12)
        assert sorted(positions.tolist()) == want.positions.tolist()  # disjoint and covering
        indices = np.concatenate([p.example_indices for p in parts])
        got = sorted(zip(positions.tolist(), indices.tolist(), strict=True))
        assert got == list(zip(want.positions.tolist(), want.example_indices.tolist(), strict=True))
    # A resume may change the host count: 2 hosts continue where the 3 stopped.
    state = hosts[0].get_state()
    assert all(h.get_state() == state for h in hosts)
    two = [PromptStream(config, ds_tok, shard_index=h, shard_count=2) for h in range(2)]
    for h in two:
        h.set_state(state)
    positions = sorted(p for h in two for p in h.next_batch(6).positions.tolist())
    assert positions == single.next_batch(12).positions.tolist()
    with pytest.raises(ValueError, match="shard_index"):
        PromptStream(config, ds_tok, shard_index=3, shard_count=3)


def test_epoch_limit_stops_the_stream(dapo_file, ds_tok):
    stream = PromptStream(DataConfig(path=str(dapo_file), num_epochs=2), ds_tok)
    assert len(stream_uids(stream, 10, 4)) == 40
    with pytest.raises(StopIteration):
        stream.next_batch(10)  # 50 > 2 * 23


def test_duplicated_rows_stay_separate_examples(tmp_path, ds_tok):
    rows = [verl_row(p, "1", i) for i, p in enumerate(problems(4) * 3)]  # like DAPO's 100x file
    stream = PromptStream(DataConfig(path=str(write_parquet(tmp_path / "dup.parquet", rows))), ds_tok)
    assert stream.num_examples == 12
    assert sorted(stream_uids(stream, 12, 1)) == list(range(12))


# ---------------------------------------------------------------------------------------------- padding


def test_left_padding_and_buckets(ds_tok):
    examples = [PromptExample(problem="x" * n, gold=str(n)) for n in (1, 40, 90)]
    token_ids = [
        ds_tok(templated(ChatStyle.DEEPSEEK, e.problem), add_special_tokens=False)["input_ids"] for e in examples
    ]
    longest = max(map(len, token_ids))
    for bucket, cap, width in [
        (64, None, -(-longest // 64) * 64),
        (16, None, -(-longest // 16) * 16),
        (64, longest + 1, longest + 1),
        (1, None, longest),
    ]:
        batch = collate(examples, token_ids, pad_id=ds_tok.pad_token_id, bucket_multiple=bucket, max_prompt_tokens=cap)
        assert batch.prompt_ids.shape == (3, width) and batch.prompt_ids.dtype == np.int32
        assert batch.prompt_mask.dtype == np.bool_
        for row, tokens in enumerate(token_ids):
            pad = width - len(tokens)
            assert batch.prompt_ids[row, pad:].tolist() == tokens
            assert (batch.prompt_ids[row, :pad] == ds_tok.pad_token_id).all()
            assert batch.prompt_mask[row].tolist() == [False] * pad + [True] * len(tokens)
        assert batch.lengths.tolist() == [len(t) for t in token_ids]
    assert padded_length(65, 64, 1024) == 128 and padded_length(1000, 64, 1024) == 1024
    assert padded_length(1000, 64, 1000) == 1000 and padded_length(1, 64, None) == 64


def test_stream_batches_use_few_widths(tmp_path, ds_tok):
    rows = [{"problem": "y" * (5 + 17 * i), "answer": "1"} for i in range(12)]
    config = DataConfig(path=str(write_jsonl(tmp_path / "w.jsonl", rows)), bucket_multiple=32, max_prompt_tokens=300)
    stream = PromptStream(config, ds_tok)
    widths = {stream.next_batch(3).prompt_ids.shape[1] for _ in range(20)}
    assert all(w % 32 == 0 or w == 300 for w in widths)


def test_eval_batches_keep_file_order_and_eval_format(tmp_path, ds_tok):
    examples = [PromptExample(problem=p, gold=str(i)) for i, p in enumerate(problems(7))]
    batches = list(eval_batches(examples, ds_tok, batch_size=3))
    assert [b.batch_size for b in batches] == [3, 3, 1]
    assert [g for b in batches for g in b.golds] == [str(i) for i in range(7)]
    first = batches[0]
    ids = first.prompt_ids[1][first.prompt_mask[1]].tolist()
    assert ds_tok.decode(ids) == templated(ChatStyle.DEEPSEEK, problems(7)[1] + EVAL_SUFFIX)


# ---------------------------------------------------------------------------------------------- config


def test_config_validation_names_the_field():
    bad = [
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"bucket_multiple": 0}, "bucket_multiple"),
        ({"shuffle_seed": -1}, "shuffle_seed"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"prompt_format": "train"}, "prompt_format"),
        ({"shuffle": 1}, "shuffle"),
        ({"file_format": "csv"}, "file_format"),
        ({"path": 3}, "path"),
    ]
    for kwargs, field in bad:
        with pytest.raises(ValueError, match=f"data.{field}"):
            DataConfig(**kwargs)
    config = from_dict(
        DataConfig, {"path": "x.jsonl", "prompt_format": "eval", "num_epochs": None, "file_format": "parquet"}
    )
    assert (config.prompt_format, config.file_format) == (PromptFormat.EVAL, FileFormat.PARQUET)
    with pytest.raises(ConfigError, match="prompt_format"):
        from_dict(DataConfig, {"prompt_format": "chat"})
    with pytest.raises(ValueError, match="data.path is empty"):
        PromptStream(DataConfig(), make_tiny_tokenizer(ChatStyle.CHATML))


def test_modules_do_not_import_jax():
    code = "import sys, justrl_jax.data, justrl_jax.prompts; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
