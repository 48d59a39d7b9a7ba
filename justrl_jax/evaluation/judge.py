"""JustRL's model judge: the second grading stage, over the samples its rule marked incorrect.

As JustRL's released ``evals/grade.py`` does it: every response the rule (``--grader justrl``)
does not accept is shown, whole (thinking included), with its gold to the judge model
(CompassVerifier-3B for the paper's table) in a fixed grading prompt whose question field is always
empty (the released code reads a ``question`` field its sample files do not have); the prompt is one
user message through the judge's chat template; the judge decodes greedily up to 2,048 new tokens
(stopping on its EOS ids, the tokenizer's and the generation config's); the sample is correct when
the decoded output (special tokens skipped), stripped, is exactly ``A``.

The judge runs on our own JAX sampler. The pass reads each benchmark's ``<name>.samples.jsonl``
and writes the verdicts back into it (``judge`` = the judge's output, ``judge_correct``; the rule's
``correct`` is kept): judged records are appended a batch at a time (fsync'ed; the latest line of
a sample wins) and the file is compacted at the end, so a killed pass resumes where it stopped.
``judge.meta.json`` records the judge model and settings; resuming with another judge is refused.

One difference from vLLM remains: vLLM stops a row at the judge's context length (32,768 for
CompassVerifier-3B), ours decodes the full 2,048 tokens past a very long prompt. It matters only
for a response near the 31,744-token cap whose judge output is not a single letter.

Example::

    judge = Judge.load("opencompass/CompassVerifier-3B", mesh=mesh, batch_size=32)
    judge_benchmarks(judge, "eval/deepseek", ["aime24", "aime25"])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from justrl_jax.evaluation.samples import SampleRecord, SampleStore

log = logging.getLogger(__name__)

JUDGE_MAX_NEW_TOKENS = 2048  # JustRL: SamplingParams(temperature=0.0, max_tokens=2048)

# JustRL's grading prompt (``CV_PROMPT`` in evals/grade.py) byte for byte, as ``str.format`` renders it
# (its ``\\boxed{{}}`` is ``\boxed{}`` here); three lines end in a space. Test: test_evaluation_judge.
_PROMPT_HEAD = "\n".join(
    [
        "",
        "Please as a grading expert, judge whether the final answers given by the candidates below are consistent "
        "with the standard answers, that is, whether the candidates answered correctly. ",
        "Here are some evaluation criteria:",
        "1. Please refer to the given standard answer. You don't need to re-generate the answer to the question "
        "because the standard answer has been given. You only need to judge whether the candidate's answer is "
        "consistent with the standard answer according to the form of the question. THE STANDARD ANSWER IS ALWAYS "
        "CORRECT AND THE QUESTION IS PERFECTLY VALID. NEVER QUESTION THEM.",
        "2. ONLY compare the FINAL ANSWER - COMPLETELY IGNORE any potential errors in the REASONING PROCESSES.",
        "3. Some answers may be expressed in different ways, such as some answers may be a mathematical expression, "
        "some answers may be a textual description, as long as the meaning expressed is the same. Before making a "
        "judgment, please understand the question and the standard answer first, and then judge whether the "
        "candidate's answer is correct.",
        "4. Some answers may consist of multiple items, such as multiple-choice questions, multiple-select "
        "questions, fill-in-the-blank questions, etc. Regardless of the question type, the final answer will be "
        "considered correct as long as it matches the standard answer, regardless of whether the reasoning process "
        "is correct. For multiple-select questions and multi-blank fill-in-the-blank questions, all corresponding "
        "options or blanks must be answered correctly and match the standard answer exactly to be deemed correct.",
        "5. If the prediction is given with \\boxed{}, please ignore the \\boxed{} and only judge whether the "
        "candidate's answer is consistent with the standard answer.",
        "6. If the candidate's answer is invalid (e.g., incomplete (cut off mid-response), lots of unnormal "
        "repetitive content, or irrelevant to the question, saying it can't answer the question because some "
        "irresistible factors, like ethical issues, no enough information, etc.), select option C (INVALID).Please "
        "judge whether the following answers are consistent with the standard answer based on the above criteria. "
        "Grade the predicted answer of this new question as one of:",
        "A: CORRECT ",
        "B: INCORRECT",
        "C: INVALID",
        'Just return the letters "A", "B", or "C", with no text around it.',
        "Here is your task. Simply reply with either CORRECT, INCORRECT, or INVALID. Don't apologize or correct "
        "yourself if there was a mistake; we are just trying to grade the answer.",
        "<Original Question Begin>:",
        "",  # the question: always empty in JustRL's grading
        "<Original Question End>",
        "<Standard Answer Begin>:",
        "",
    ]
)
_PROMPT_MIDDLE = "\n<Standard Answer End>\n<Candidate's Answer Begin>: \n"
_PROMPT_TAIL = "\n<Candidate's Answer End>\nJudging the correctness of the candidate's answer:\n"


def judge_prompt(gold: str, response: str) -> str:
    """JustRL's grading prompt for one sample (question empty, the whole response)."""
    return _PROMPT_HEAD + gold + _PROMPT_MIDDLE + response + _PROMPT_TAIL


def judge_says_correct(output: str) -> bool:
    """JustRL's parsing: correct only when the judge's output, stripped, is exactly ``A``."""
    return output.strip() == "A"


class Judge:
    """A judge model on our sampler: chat-templated prompts in, greedy decoded outputs out."""

    def __init__(
        self,
        model,
        tokenizer,
        eos_ids: Sequence[int],
        *,
        name: str,
        mesh=None,
        batch_size: int = 16,
        max_new_tokens: int = JUDGE_MAX_NEW_TOKENS,
        kv_cache_budget_gb: float = 0.0,
        prompt_bucket: int = 1024,
    ):
        from flax import nnx

        from justrl_jax.sampler import Sampler, SamplerConfig
        from justrl_jax.sampling import Greedy

        if batch_size < 1:
            raise ValueError(f"judge batch_size must be >= 1, got {batch_size}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError(f"judge tokenizer {name!r} has neither a pad nor an eos token")
        self.name = name
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.eos_ids = tuple(int(i) for i in eos_ids)
        graphdef, self.params = nnx.split(model, nnx.Param)
        config = SamplerConfig(
            max_new_tokens=max_new_tokens,
            strategy=Greedy(),
            prompt_bucket=prompt_bucket,  # prompts hold whole responses (to ~32k tokens): few, coarse widths
            kv_cache_budget_bytes=int(kv_cache_budget_gb * 2**30) or None,
        )
        self.sampler = Sampler(graphdef, config, mesh=mesh, eos_ids=self.eos_ids, pad_id=int(pad))

    @classmethod
    def load(cls, name: str, *, mesh=None, dtype: str = "bfloat16", **kwargs) -> Judge:
        """The judge from an HF directory or hub id (CompassVerifier-3B: a Qwen2 model)."""
        import jax.numpy as jnp
        from transformers import AutoTokenizer

        from justrl_jax.model.source import load_policy

        jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        policy = load_policy(name, mesh, param_dtype=jdtype, compute_dtype=jdtype)
        tokenizer = AutoTokenizer.from_pretrained(policy.tokenizer_dir)
        return cls(policy.model, tokenizer, policy.eos_ids, name=str(name), mesh=mesh, **kwargs)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The chat-templated user message, tokenized as vLLM tokenizes a text prompt."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text)["input_ids"])

    def outputs(self, prompts: Sequence[str]) -> list[str]:
        """The judge's decoded greedy output for each prompt (at most ``batch_size`` per call)."""
        if not 1 <= len(prompts) <= self.batch_size:
            raise ValueError(f"judge takes 1..{self.batch_size} prompts per call, got {len(prompts)}")
        tokens = [self.prompt_ids(p) for p in prompts]
        rows = tokens + [tokens[-1]] * (self.batch_size - len(tokens))  # one batch shape; extras dropped
        width = max(len(t) for t in rows)
        ids = np.zeros((len(rows), width), np.int32)
        mask = np.zeros((len(rows), width), bool)
        for r, t in enumerate(rows):
            ids[r, width - len(t) :] = t
            mask[r, width - len(t) :] = True
        rollout = self.sampler.generate(self.params, ids, mask, n=1, key=0)
        lengths = np.asarray(rollout.lengths)[: len(prompts)]
        completions = np.asarray(rollout.completion_ids)[: len(prompts)]
        return self.tokenizer.batch_decode(
            [row[:n] for row, n in zip(completions, lengths, strict=True)], skip_special_tokens=True
        )

    def meta(self) -> dict:
        return {"judge_model": self.name, "judge_max_new_tokens": self.max_new_tokens, "judge_decoding": "greedy"}


def _rewrite(store: SampleStore, records: dict) -> None:
    """The samples file compacted to one line per sample (atomically)."""
    tmp = store.path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for key in sorted(records):
            f.write(records[key].to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, store.path)


def judge_benchmark(judge: Judge, out_dir: str | Path, benchmark: str, *, max_items: int | None = None) -> int:
    """Judges the rule failures of one benchmark not judged yet; returns how many it judged.

    ``max_items`` stops after about that many (a batch is never split), leaving a resumable state."""
    store = SampleStore(out_dir, benchmark)
    records = store.load()
    todo = [r for r in records.values() if not r.correct and r.judge_correct is None]
    # Similar lengths together: less padding per batch and fewer prompt widths to compile.
    todo.sort(key=lambda r: (len(r.response), r.key))
    judged = 0
    for start in range(0, len(todo), judge.batch_size):
        if max_items is not None and judged >= max_items:
            break
        batch = todo[start : start + judge.batch_size]
        outputs = judge.outputs([judge_prompt(r.gold, r.response) for r in batch])
        updated = [
            dataclasses.replace(r, judge=o, judge_correct=judge_says_correct(o))
            for r, o in zip(batch, outputs, strict=True)
        ]
        store.append(updated)
        for r in updated:
            records[r.key] = r
        judged += len(updated)
        log.info("%s: judged %d of %d rule failures", benchmark, start + len(batch), len(todo))
    if store.path.exists():
        _rewrite(store, records)
    return judged


def judge_benchmarks(
    judge: Judge, out_dir: str | Path, benchmarks: Sequence[str], *, max_items: int | None = None
) -> bool:
    """Runs (or resumes) the judge pass over ``benchmarks``; True when every rule failure is judged."""
    SampleStore(out_dir, "judge").check_meta(judge.meta())  # judge.meta.json: one judge per folder
    left = max_items
    for name in benchmarks:
        done = judge_benchmark(judge, out_dir, name, max_items=left)
        if left is not None:
            left -= done
            if left <= 0:
                break
    return all(
        r.correct or r.judge_correct is not None
        for name in benchmarks
        for r in SampleStore(out_dir, name).load().values()
    )


def with_judge(records: Sequence[SampleRecord]) -> list[SampleRecord]:
    """The records scored by rule + judge: correct when the rule or the judge says so."""
    return [dataclasses.replace(r, correct=bool(r.correct or r.judge_correct)) for r in records]


def judge_meta(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / "judge.meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def judged_report(report, specs, out_dir: str | Path):
    """``report`` (rule only, from :func:`runner.evaluate`) re-scored from the JSONL with the judge's
    verdicts: the rule + judge row of the paper's protocol."""
    from justrl_jax.evaluation.report import EvalReport, score_benchmark

    scores = []
    for spec in specs:
        records = SampleStore(out_dir, spec.name).load().values()
        scores.append(score_benchmark(spec, with_judge(list(records)), report.score(spec.name).n_problems))
    return EvalReport(model=report.model, scores=tuple(scores))
