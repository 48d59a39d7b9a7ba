"""Prompt examples -> left-padded token batches: the training prompt stream and eval batches.

The training stream follows verl's ``RLHFDataset`` + ``RandomSampler`` as JustRL ran them
(recipe.md §2-4): each problem becomes one user message (``PromptFormat.TRAIN`` appends the boxed
instruction), the model's chat template is applied with ``add_generation_prompt=True`` and the text
tokenized with ``add_special_tokens=False`` (the template supplies the bos); prompts longer than
``max_prompt_tokens`` are dropped (counted and logged) before shuffling; the order is shuffled with
a seed, and epochs repeat, each with its own permutation (a deduplicated file with repeated epochs
stands in for DAPO's 100x duplicated one).

Order, hosts and resume. The stream is one global sequence: position ``g`` holds example
``perm_{g // N}[g % N]`` (N kept examples; grain's index shuffle, seeded per epoch). A global
batch of ``B * shard_count`` rows is a contiguous block of positions, and host ``h`` takes every
``shard_count``-th row of it starting at ``h``. So the hosts' batches are disjoint and together
cover the block, and the whole state is one integer (the next global position) plus what checks
that a resume reads the same data; a resume may even change the number of hosts.

Example::

    stream = PromptStream(DataConfig(path="dapo-math-17k.parquet"), tokenizer,
                          shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = stream.next_batch(256 // jax.process_count())   # this host's prompts
    saved = stream.get_state()                               # JSON-able; restore with set_state
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from justrl_jax.prompts import FileFormat, PromptExample, PromptFormat, format_prompt, read_examples

log = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the prompts come from and how they become batches."""

    # Local .parquet/.jsonl/.json file, hf://datasets/<owner>/<name>/<file>, or <owner>/<name>. Empty
    # means "not set" (e.g. the demo writes its own file); PromptStream then refuses to start.
    path: str = ""
    file_format: FileFormat = FileFormat.AUTO  # AUTO: from the extension
    prompt_format: PromptFormat = PromptFormat.TRAIN
    max_prompt_tokens: int = 1024  # templated prompt length limit; longer prompts are dropped
    bucket_multiple: int = 64  # pad each batch to a multiple of this (capped at max_prompt_tokens)
    shuffle: bool = True
    shuffle_seed: int = 1  # verl's data.seed default
    num_epochs: int | None = None  # None: repeat forever (training stops at a step count)
    skip_malformed: bool = False  # False: a malformed row is an error naming file and row
    strip_dapo_instructions: bool = True  # remove DAPO's "Answer:" prefix and suffix (recipe.md §3)

    def __post_init__(self):
        if not isinstance(self.path, str):
            raise ValueError(f"data.path must be a string, got {self.path!r}")
        if not isinstance(self.file_format, FileFormat):
            raise ValueError(
                f"data.file_format must be one of {[f.value for f in FileFormat]}, got {self.file_format!r}"
            )
        if not isinstance(self.prompt_format, PromptFormat):
            raise ValueError(
                f"data.prompt_format must be one of {[f.value for f in PromptFormat]}, got {self.prompt_format!r}"
            )
        if not _is_int(self.max_prompt_tokens) or self.max_prompt_tokens < 1:
            raise ValueError(f"data.max_prompt_tokens must be an integer >= 1, got {self.max_prompt_tokens!r}")
        if not _is_int(self.bucket_multiple) or self.bucket_multiple < 1:
            raise ValueError(f"data.bucket_multiple must be an integer >= 1, got {self.bucket_multiple!r}")
        if not _is_int(self.shuffle_seed) or not 0 <= self.shuffle_seed < 2**32:
            raise ValueError(f"data.shuffle_seed must be an integer in [0, 2**32), got {self.shuffle_seed!r}")
        if self.num_epochs is not None and (not _is_int(self.num_epochs) or self.num_epochs < 1):
            raise ValueError(f"data.num_epochs must be None (forever) or an integer >= 1, got {self.num_epochs!r}")
        for name in ("shuffle", "skip_malformed", "strip_dapo_instructions"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"data.{name} must be true or false, got {getattr(self, name)!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Host-side prompts of one batch, left-padded so every prompt ends at column P-1."""

    prompt_ids: np.ndarray  # [B, P] int32, pad id left of each prompt
    prompt_mask: np.ndarray  # [B, P] bool, True on prompt tokens (pad may equal eos: use the mask)
    golds: list[str]  # [B] reference answers, as in the file
    problems: list[str]  # [B] bare problems (without the instruction or template)
    example_indices: np.ndarray  # [B] int64 index into the source example list
    positions: np.ndarray  # [B] int64 global stream position (-1 outside a stream)

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def lengths(self) -> np.ndarray:
        """[B] int32 prompt lengths in tokens."""
        return self.prompt_mask.sum(axis=1, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class DataStats:
    rows: int  # rows read from the file
    malformed_skipped: int
    dapo_stripped: int
    overlong_dropped: int  # prompts longer than max_prompt_tokens after templating
    kept: int
    max_prompt_tokens_seen: int  # longest kept prompt


def chat_text(tokenizer, content: str) -> str:
    """``content`` as one user message through the tokenizer's chat template, ready for generation."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def encode_prompts(tokenizer, contents: Sequence[str]) -> list[list[int]]:
    """Token ids of each user-message content after the chat template, tokenized as verl does.

    Identical contents are templated and tokenized once (DAPO's file repeats each problem ~100x).
    """
    unique = list(dict.fromkeys(contents))
    if not unique:
        return []
    ids = tokenizer([chat_text(tokenizer, c) for c in unique], add_special_tokens=False)["input_ids"]
    by_content = dict(zip(unique, ids, strict=True))
    return [by_content[c] for c in contents]


def encode_examples(tokenizer, examples: Sequence[PromptExample], prompt_format: PromptFormat) -> list[list[int]]:
    return encode_prompts(tokenizer, [format_prompt(e.problem, prompt_format) for e in examples])


def padded_length(max_length: int, bucket_multiple: int, cap: int | None = None) -> int:
    """``max_length`` rounded up to the bucket multiple, but not past ``cap`` (when the cap fits it)."""
    padded = -(-max_length // bucket_multiple) * bucket_multiple
    return min(padded, cap) if cap is not None and cap >= max_length else padded


def collate(
    examples: Sequence[PromptExample],
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    bucket_multiple: int = 64,
    max_prompt_tokens: int | None = None,
    example_indices: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> PromptBatch:
    """Left-pads ``token_ids`` (one list per example) into a :class:`PromptBatch`.

    The width is the longest prompt rounded up to ``bucket_multiple`` (capped at
    ``max_prompt_tokens``), so a jitted sampler sees few distinct prompt shapes.
    """
    if len(examples) != len(token_ids) or not examples:
        raise ValueError(
            f"collate needs one token list per example and at least one, got "
            f"{len(examples)} examples and {len(token_ids)} token lists"
        )
    lengths = [len(t) for t in token_ids]
    if min(lengths) == 0:
        raise ValueError(f"example {examples[lengths.index(0)].uid!r} has an empty prompt")
    width = padded_length(max(lengths), bucket_multiple, max_prompt_tokens)
    ids = np.full((len(token_ids), width), pad_id, np.int32)
    mask = np.zeros((len(token_ids), width), bool)
    for row, tokens in enumerate(token_ids):
        ids[row, width - len(tokens) :] = tokens
        mask[row, width - len(tokens) :] = True
    count = len(examples)
    return PromptBatch(
        prompt_ids=ids,
        prompt_mask=mask,
        golds=[e.gold for e in examples],
        problems=[e.problem for e in examples],
        example_indices=np.asarray(range(count) if example_indices is None else example_indices, np.int64),
        positions=np.asarray([-1] * count if positions is None else positions, np.int64),
    )


def eval_batches(
    examples: Sequence[PromptExample],
    tokenizer,
    *,
    batch_size: int,
    prompt_format: PromptFormat = PromptFormat.EVAL,
    bucket_multiple: int = 64,
) -> Iterator[PromptBatch]:
    """Every example once, in file order, ``batch_size`` at a time (the last batch may be smaller).

    No prompt is dropped: evaluation scores every problem of a benchmark.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad_id = _pad_id(tokenizer)
    token_ids = encode_examples(tokenizer, examples, prompt_format)
    for start in range(0, len(examples), batch_size):
        stop = min(start + batch_size, len(examples))
        yield collate(
            examples[start:stop],
            token_ids[start:stop],
            pad_id,
            bucket_multiple=bucket_multiple,
            example_indices=range(start, stop),
        )


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad token")
    return int(tokenizer.pad_token_id)


class PromptStream:
    """The shuffled, repeating, host-sharded stream of training prompts (see the module docstring).

    ``examples`` may be given instead of reading ``config.path`` (tests, the demo); they go through
    the same formatting, templating and length filter.
    """

    def __init__(
        self,
        config: DataConfig,
        tokenizer,
        *,
        shard_index: int = 0,
        shard_count: int = 1,
        examples: Sequence[PromptExample] | None = None,
    ):
        if not _is_int(shard_count) or shard_count < 1:
            raise ValueError(f"shard_count must be an integer >= 1, got {shard_count!r}")
        if not _is_int(shard_index) or not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index!r}")
        self.config = config
        self.shard_index, self.shard_count = shard_index, shard_count
        self._pad_id = _pad_id(tokenizer)
        if examples is None:
            if not config.path:
                raise ValueError("data.path is empty: name the prompt file")
            examples, read = read_examples(
                config.path,
                file_format=config.file_format,
                strip_dapo=config.strip_dapo_instructions,
                skip_malformed=config.skip_malformed,
            )
            rows, skipped, stripped = read.rows, read.malformed_skipped, read.dapo_stripped
        else:
            rows, skipped, stripped = len(examples), 0, 0
        token_ids = encode_examples(tokenizer, examples, config.prompt_format)
        kept = [i for i, t in enumerate(token_ids) if len(t) <= config.max_prompt_tokens]
        self._examples = tuple(examples[i] for i in kept)
        self._token_ids = [token_ids[i] for i in kept]
        self.stats = DataStats(
            rows=rows,
            malformed_skipped=skipped,
            dapo_stripped=stripped,
            overlong_dropped=len(examples) - len(kept),
            kept=len(kept),
            max_prompt_tokens_seen=max(map(len, self._token_ids), default=0),
        )
        if not self._examples:
            raise ValueError(
                f"{config.path or 'the given examples'}: no prompt is left after dropping "
                f"{self.stats.overlong_dropped} longer than data.max_prompt_tokens="
                f"{config.max_prompt_tokens} ({rows} rows, {skipped} malformed)"
            )
        if self.stats.overlong_dropped:
            log.warning(
                "%s: dropped %d of %d prompts longer than %d tokens",
                config.path or "prompts",
                self.stats.overlong_dropped,
                len(examples),
                config.max_prompt_tokens,
            )
        log.info("prompt stream: %s", self.stats)
        self._fingerprint = _fingerprint(self._examples)
        self._order = _order(len(self._examples), config.shuffle_seed if config.shuffle else None)
        self._position = 0  # next global position

    @property
    def num_examples(self) -> int:
        return len(self._examples)

    @property
    def examples(self) -> tuple[PromptExample, ...]:
        """The kept examples; ``PromptBatch.example_indices`` index into these."""
        return self._examples

    @property
    def position(self) -> int:
        """Global rows consumed by all hosts together."""
        return self._position

    @property
    def epoch(self) -> float:
        return self._position / self.num_examples

    def next_batch(self, batch_size: int) -> PromptBatch:
        """This host's next ``batch_size`` prompts; every host must ask for the same size.

        Raises ``StopIteration`` once ``config.num_epochs`` epochs cannot fill another global batch.
        """
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        block = batch_size * self.shard_count
        epochs = self.config.num_epochs
        if epochs is not None and self._position + block > epochs * self.num_examples:
            raise StopIteration(f"the prompt stream has finished its {self.config.num_epochs} epochs")
        positions = [self._position + j * self.shard_count + self.shard_index for j in range(batch_size)]
        indices = [self._order(p) for p in positions]
        self._position += block
        return collate(
            [self._examples[i] for i in indices],
            [self._token_ids[i] for i in indices],
            self._pad_id,
            bucket_multiple=self.config.bucket_multiple,
            max_prompt_tokens=self.config.max_prompt_tokens,
            example_indices=indices,
            positions=positions,
        )

    def get_state(self) -> dict:
        """A small JSON-able dict: the next global position and what a resume must match."""
        return {
            "version": _STATE_VERSION,
            "position": self._position,
            "num_examples": self.num_examples,
            "shuffle": self.config.shuffle,
            "shuffle_seed": self.config.shuffle_seed,
            "fingerprint": self._fingerprint,
        }

    def set_state(self, state: dict) -> None:
        """Resumes at ``state['position']``; refuses a state taken over different data or order."""
        if not isinstance(state, dict):
            raise ValueError(f"data state must be a dict, got {type(state).__name__}")
        expected = self.get_state()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"data state lacks {missing}; it has {sorted(state)}")
        for key in ("version", "num_examples", "shuffle", "shuffle_seed", "fingerprint"):
            if state[key] != expected[key]:
                raise ValueError(
                    f"data state {key}={state[key]!r} does not match this stream's "
                    f"{expected[key]!r}: the resumed run reads different data or order"
                )
        if not _is_int(state["position"]) or state["position"] < 0:
            raise ValueError(f"data state position must be an integer >= 0, got {state['position']!r}")
        self._position = state["position"]


def _order(n: int, seed: int | None):
    """Global position -> example index; every epoch is its own permutation of range(n)."""
    if seed is None:
        return lambda position: position % n
    import grain  # imports JAX, so not at module import

    # Indexing past the end is grain's epoch convention: epoch e is shuffled with seed + e.
    shuffled = grain.MapDataset.range(n).shuffle(seed=seed)
    return lambda position: int(shuffled[position])


def _fingerprint(examples: Sequence[PromptExample]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(e.problem.encode("utf-8") + b"\0" + e.gold.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]
