"""pass@k / avg@N against exhaustive enumeration and hand counts; the benchmark registry; the table."""

import itertools
import json
import math
from fractions import Fraction

import pytest

from justrl_jax.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkSpec,
    candidate_paths,
    find_benchmark_file,
    get_benchmark,
    parse_benchmarks,
)
from justrl_jax.evaluation.passk import avg_at_n, default_ks, mean_pass_at_k, pass_at_k
from justrl_jax.evaluation.report import EvalReport, markdown_table, score_benchmark, summary, write_report
from justrl_jax.evaluation.samples import SampleRecord, SampleStore


def _enumerated_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of the k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(samples[i] for i in subset) for subset in subsets)
    return Fraction(hits, len(subsets))


def test_pass_at_k_equals_enumeration_of_subsets():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = float(_enumerated_pass_at_k(n, c, k))
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 overflows float64, so the naive ratio fails; exact rationals are the reference.
    n, c, k = 2000, 5, 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(2000, 0, 1000) == 0.0
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, rel=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c "):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="n "):
        pass_at_k(0, 0, 1)


def test_avg_at_n_by_hand_and_equals_pass_at_1():
    counts = [0, 1, 4, 2]  # of 4 samples each: 0/4, 1/4, 4/4, 2/4 -> mean 7/16
    assert avg_at_n(counts, 4) == 7 / 16
    assert mean_pass_at_k(counts, 4, 1) == pytest.approx(7 / 16, abs=1e-15)
    # pass@4 with 4 samples: a problem counts iff any sample is correct -> 3 of 4 problems
    assert mean_pass_at_k(counts, 4, 4) == 0.75


def test_default_ks():
    assert default_ks(32) == (1, 2, 4, 8, 16, 32)
    assert default_ks(4) == (1, 2, 4)
    assert default_ks(6) == (1, 2, 4, 6)
    assert default_ks(1) == (1,)


def test_registry_matches_the_recipe():
    assert [(s.column) for s in BENCHMARKS] == [
        "AIME24@32",
        "AIME25@32",
        "AMC23@32",
        "MATH-500@4",
        "Minerva@4",
        "OlympiadBench@4",
        "HMMT25@32",
        "BRUMO25@32",
        "CMIMC25@32",
    ]
    assert get_benchmark("MATH-500").name == "math500"
    assert get_benchmark("Olympiad-Bench").name == "olympiadbench"
    assert parse_benchmarks("AIME24, amc23") == ("aime24", "amc23")
    assert len(parse_benchmarks("all")) == 9
    with pytest.raises(ValueError, match="unknown benchmark 'aime26'"):
        parse_benchmarks("aime24,aime26")
    with pytest.raises(ValueError, match="listed twice"):
        parse_benchmarks("aime24,AIME24")
    with pytest.raises(ValueError, match="n_samples"):
        BenchmarkSpec("x", "X", 0)


def test_find_benchmark_file_layouts(tmp_path):
    spec = get_benchmark("olympiadbench")
    with pytest.raises(FileNotFoundError) as err:
        find_benchmark_file(tmp_path, spec)
    message = str(err.value)
    assert "'olympiadbench'" in message
    for path in candidate_paths(tmp_path, spec):
        assert str(path) in message
    (tmp_path / "olympiadbench.jsonl").write_text("{}\n")
    assert find_benchmark_file(tmp_path, spec) == tmp_path / "olympiadbench.jsonl"
    (tmp_path / "olympiad-bench").mkdir()  # JustRL's folder, another case
    (tmp_path / "olympiad-bench" / "test.parquet").write_bytes(b"")
    assert find_benchmark_file(tmp_path, spec) == tmp_path / "olympiad-bench" / "test.parquet"


def _record(i, j, correct, *, bench="aime24", length=5, finish="stop"):
    return SampleRecord(
        benchmark=bench,
        problem_index=i,
        sample_index=j,
        seed=7,
        response=f"r{i}.{j}",
        prediction="1",
        verdict="ok",
        correct=correct,
        reward=1.0 if correct else 0.0,
        length=length,
        finish_reason=finish,
        gold="1",
    )


def test_score_table_and_summary(tmp_path):
    aime = BenchmarkSpec("aime24", "AIME24", 4)
    math = BenchmarkSpec("math500", "MATH-500", 2)
    # AIME24: problem 0 has 1/4 correct, problem 1 has 3/4 -> avg@4 = 0.5; pass@2 = mean(1/2, 1) = 0.75
    flags = {
        (0, 0): True,
        (0, 1): False,
        (0, 2): False,
        (0, 3): False,
        (1, 0): True,
        (1, 1): True,
        (1, 2): False,
        (1, 3): True,
    }
    aime_records = [
        _record(i, j, ok, length=10 if ok else 20, finish="stop" if ok else "length") for (i, j), ok in flags.items()
    ]
    # MATH-500: 3 problems x 2 samples, 1 correct of 6 -> avg@2 = 1/6
    math_records = [_record(i, j, (i, j) == (2, 1), bench="math500") for i in range(3) for j in range(2)]
    s_aime = score_benchmark(aime, aime_records, n_problems=2)
    s_math = score_benchmark(math, math_records, n_problems=3)
    assert s_aime.avg_at_n == 0.5
    assert s_aime.pass_at(2) == pytest.approx(0.75)
    assert s_aime.pass_at(4) == 1.0
    assert s_aime.mean_length == 15.0
    assert s_aime.truncated_fraction == 0.5
    assert s_math.avg_at_n == pytest.approx(1 / 6)
    report = EvalReport(model="m", scores=(s_aime, s_math))
    assert report.mean == pytest.approx((0.5 + 1 / 6) / 2)
    table = markdown_table(report, "tiny")
    assert table.splitlines()[0] == "| Model | AIME24@4 | MATH-500@2 | Avg |"
    assert table.splitlines()[2] == "| tiny | 50.00 | 16.67 | 33.33 |"
    md, js = write_report(report, tmp_path, "tiny")
    # Standard errors over problems: std([1/4, 3/4], ddof=1) / sqrt(2) = 1/4; std([0, 0, 1/2], ddof=1) / sqrt(3) = 1/6
    assert s_aime.stderr == pytest.approx(0.25) and s_math.stderr == pytest.approx(1 / 6)
    assert "| tiny | 50.00 ± 25.00 | 16.67 ± 16.67 | 33.33 |" in md.read_text()
    data = json.loads(js.read_text())
    assert data == json.loads(json.dumps(summary(report)))
    assert data["benchmarks"]["aime24"]["pass@k"] == {"1": 0.5, "2": 0.75, "4": 1.0}

    with pytest.raises(ValueError, match=r"'aime24'.*problem 1, sample 3\) is missing"):
        score_benchmark(aime, aime_records[:-1], n_problems=2)
    with pytest.raises(ValueError, match="appears twice"):
        score_benchmark(aime, aime_records + aime_records[:1], n_problems=2)


def test_store_resumes_after_a_cut_line_and_checks_meta(tmp_path):
    store = SampleStore(tmp_path, "aime24")
    store.check_meta({"seed": 0, "max_new_tokens": 8})
    records = [_record(0, j, j == 0) for j in range(3)]
    store.append(records[:2])
    with store.path.open("a") as f:  # a kill in the middle of the next chunk's write
        f.write(records[2].to_json()[:17])
    loaded = SampleStore(tmp_path, "aime24").load()
    assert sorted(loaded) == [(0, 0), (0, 1)]
    assert loaded[(0, 0)] == records[0]
    store.append(records[2:])  # starts on a fresh line: the cut line was dropped
    assert sorted(SampleStore(tmp_path, "aime24").load()) == [(0, 0), (0, 1), (0, 2)]

    store.check_meta({"seed": 0, "max_new_tokens": 8})
    with pytest.raises(ValueError, match="max_new_tokens=8, this run asks for max_new_tokens=16"):
        store.check_meta({"seed": 0, "max_new_tokens": 16})

    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"aime24.samples.jsonl:2: not a JSON line"):
        store.load()


def test_eval_config_defaults_are_the_recipe_and_bad_values_are_named():
    from justrl_jax.evaluation.eval_config import EvalConfig
    from justrl_jax.prompts import PromptFormat, format_prompt
    from justrl_jax.verifier import VerifierMode

    cfg = EvalConfig()
    assert (cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k) == (31744, 0.7, 0.9, -1)
    assert cfg.verifier.mode is VerifierMode.ROBUST
    assert format_prompt("1+1?", cfg.prompt_format) == (
        "1+1? Please reason step by step, and put your final answer within \\boxed{}."
    )
    assert {s.name: s.n_samples for s in cfg.specs()} == {
        "aime24": 32,
        "aime25": 32,
        "amc23": 32,
        "math500": 4,
        "minerva": 4,
        "olympiadbench": 4,
        "hmmt25": 32,
        "brumo25": 32,
        "cmimc25": 32,
    }
    picked = EvalConfig(benchmarks=("CMIMC25", "aime24"), n_samples=8, prompt_format=PromptFormat.TRAIN)
    assert [s.column for s in picked.specs()] == ["AIME24@8", "CMIMC25@8"]  # the paper's column order
    bad = (
        ({"n_samples": 0}, "eval.n_samples"),
        ({"max_new_tokens": 0}, "eval.max_new_tokens"),
        ({"temperature": 0.0}, "eval.temperature"),
        ({"top_p": 1.5}, "eval.top_p"),
        ({"benchmarks": ("aime24", "gsm8k")}, "eval.benchmarks"),
        ({"seed": -1}, "eval.seed"),
        ({"batch_size": 0}, "eval.batch_size"),
        ({"top_k": 0}, "eval.top_k"),
    )
    for kwargs, field in bad:
        with pytest.raises(ValueError, match=field):
            EvalConfig(**kwargs)


def test_units_cover_every_pair_once_with_fixed_seeds():
    from justrl_jax.evaluation.runner import plan_units, sample_seed

    units = plan_units("aime24", n_problems=3, n_samples=5, batch_size=4, seed=11)
    pairs = [p for u in units for p in u.pairs]
    assert sorted(pairs) == [(i, j) for i in range(3) for j in range(5)]
    assert pairs[:4] == [(0, 0), (1, 0), (2, 0), (0, 1)]  # sample-major
    assert [len(u.pairs) for u in units] == [4, 4, 4, 3]
    assert units[1].seed == sample_seed(11, "aime24", 1, 1)
    assert len({u.seed for u in units}) == 4
    assert plan_units("aime24", 3, 5, 4, 11) == units
    assert plan_units("aime25", 3, 5, 4, 11)[0].seed != units[0].seed
    assert plan_units("aime24", 3, 5, 4, 12)[0].seed != units[0].seed
    assert all(0 <= u.seed < 2**31 - 1 for u in units)
