"""Math prompt files -> ``PromptExample`` (problem text + gold answer), and the recipe's prompt formats.

Two row schemas are read, from parquet, JSON Lines or a JSON list:

* verl (DAPO-Math-17k and JustRL's benchmark parquets): ``prompt`` = a list holding one user
  message, ``reward_model.ground_truth`` = the gold answer; optional ``data_source`` and
  ``extra_info.index``;
* plain (MathArena and most JSONL sets): ``problem`` and ``answer``; optional ``id``,
  ``unique_id`` or ``problem_idx``.

DAPO-Math-17k wraps every problem in its own "Answer:" instructions; JustRL removed them and asked
for a box instead (recipe.md §3), so by default the exact DAPO prefix and suffix are stripped.
Golds are kept as ``str(ground_truth)``: a boxed gold stays boxed (the verifier unwraps it).

Example::

    examples = load_examples("data/aime24/test.parquet")
    content = format_prompt(examples[0].problem, PromptFormat.EVAL)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class PromptFormat(enum.Enum):
    """How the user message is built from the bare problem."""

    TRAIN = "train"  # problem + "\n\n" + instruction: verl's use_boxed_suffix_prompt (training, in-loop val)
    EVAL = "eval"  # problem + " " + instruction: JustRL's evals/gen_vllm.py
    RAW = "raw"  # the problem text as it is (for files whose prompts already carry an instruction)


def format_prompt(problem: str, prompt_format: PromptFormat) -> str:
    """The user-message content for ``problem`` (the chat template is applied later)."""
    if prompt_format is PromptFormat.TRAIN:
        return problem + "\n\n" + BOXED_INSTRUCTION
    if prompt_format is PromptFormat.EVAL:
        return problem + " " + BOXED_INSTRUCTION
    if prompt_format is PromptFormat.RAW:
        return problem
    raise ValueError(f"unknown prompt format {prompt_format!r}")


def strip_dapo_instructions(text: str) -> tuple[str, bool]:
    """Removes DAPO's exact instruction prefix and suffix; returns (text, whether anything was removed)."""
    stripped = text.removeprefix(DAPO_PREFIX).removesuffix(DAPO_SUFFIX)
    return stripped, stripped != text


class FileFormat(enum.Enum):
    AUTO = "auto"  # from the extension
    PARQUET = "parquet"
    JSONL = "jsonl"
    JSON = "json"  # a JSON list of objects, or JSON Lines under a .json name (as HF datasets often are)


_EXTENSIONS = {".parquet": FileFormat.PARQUET, ".jsonl": FileFormat.JSONL, ".json": FileFormat.JSON}


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One problem. ``problem`` is the bare problem (no instruction); ``gold`` the reference answer."""

    problem: str
    gold: str
    source: str = ""  # the file it came from
    row: int = -1  # 0-based row in that file
    uid: str = ""  # the row's id column if it has one, else the row number
    data_source: str = ""  # verl's data_source column, if any


@dataclasses.dataclass(frozen=True)
class ReadStats:
    rows: int  # data rows seen (blank JSONL lines excluded)
    malformed_skipped: int
    dapo_stripped: int  # rows whose DAPO prefix or suffix was removed


class MalformedRowError(ValueError):
    """A row does not fit either schema; the message names the file and the row."""


def load_examples(
    path: str | Path,
    *,
    file_format: FileFormat = FileFormat.AUTO,
    strip_dapo: bool = True,
    skip_malformed: bool = False,
) -> list[PromptExample]:
    """Reads every row of a benchmark or training file (either schema) into ``PromptExample`` s.

    Malformed rows raise :class:`MalformedRowError` naming the file and row, or are skipped (and
    logged) when ``skip_malformed``.
    """
    examples, _ = read_examples(path, file_format=file_format, strip_dapo=strip_dapo, skip_malformed=skip_malformed)
    return examples


def read_examples(
    path: str | Path,
    *,
    file_format: FileFormat = FileFormat.AUTO,
    strip_dapo: bool = True,
    skip_malformed: bool = False,
) -> tuple[list[PromptExample], ReadStats]:
    """:func:`load_examples`, also returning the counts of rows read, skipped and stripped."""
    local = resolve_data_path(str(path))
    fmt = detect_format(local, file_format)
    examples: list[PromptExample] = []
    rows = skipped = stripped = 0
    first_error = ""
    for row_index, row in _read_rows(local, fmt):
        rows += 1
        try:
            example, was_stripped = _parse_row(row, str(local), row_index, strip_dapo)
        except MalformedRowError as e:
            if not skip_malformed:
                raise
            skipped += 1
            first_error = first_error or str(e)
            continue
        stripped += was_stripped
        examples.append(example)
    if skipped:
        log.warning("%s: skipped %d malformed rows of %d (first: %s)", local, skipped, rows, first_error)
    return examples, ReadStats(rows=rows, malformed_skipped=skipped, dapo_stripped=stripped)


def detect_format(path: Path, file_format: FileFormat = FileFormat.AUTO) -> FileFormat:
    if file_format is not FileFormat.AUTO:
        return file_format
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the file format from the extension {path.suffix!r}; "
            f"use one of {sorted(_EXTENSIONS)} or set data.file_format"
        )
    return fmt


# ------------------------------------------------------------------------------------------------
# Where the file is: a local path, or a Hugging Face dataset (only resolvable with network access).

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_data_path(path: str) -> Path:
    """A local file path for ``path``: a local file, ``hf://datasets/<owner>/<name>/<file>``, or
    ``<owner>/<name>`` (a hub dataset holding exactly one parquet/JSON(L) file).

    Hub files come through ``huggingface_hub`` (its cache, so offline runs find files already
    downloaded); anything it cannot provide is a ``FileNotFoundError`` naming ``path``.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        raise IsADirectoryError(f"data path {path} is a directory; name the data file inside it")
    if local.is_file():
        return local
    if path.startswith("hf://datasets/"):
        parts = path.removeprefix("hf://datasets/").split("/", 2)
        if len(parts) < 3 or not all(parts):
            raise FileNotFoundError(f"data path {path} must look like hf://datasets/<owner>/<name>/<file>")
        return _hub_download(path, f"{parts[0]}/{parts[1]}", parts[2])
    if _HUB_ID.fullmatch(path) and Path(path).suffix.lower() not in _EXTENSIONS:
        return _hub_download(path, path, None)
    raise FileNotFoundError(f"data file {path} does not exist")


def _hub_download(path: str, repo_id: str, filename: str | None) -> Path:
    import huggingface_hub

    if filename is None:
        try:
            names = huggingface_hub.list_repo_files(repo_id, repo_type="dataset")
        except Exception as e:  # hub errors (offline mode, HTTP, unknown repo) differ by version
            raise _hub_error(path, e) from e
        files = [f for f in names if Path(f).suffix.lower() in _EXTENSIONS]
        if len(files) != 1:
            raise FileNotFoundError(
                f"hub dataset {repo_id} holds {len(files)} data files {files[:10]}; "
                f"name one as hf://datasets/{repo_id}/<file>"
            )
        filename = files[0]
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as e:
        raise _hub_error(path, e) from e


def _hub_error(path: str, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"data path {path} is not a local file and the hub could not provide it ({type(error).__name__}: {error})"
    )


# ------------------------------------------------------------------------------------------------
# Rows. A row that cannot be read at all (bad JSON) is reported like a row with a bad value.

_ROW_COLUMNS = (
    "prompt",
    "reward_model",
    "data_source",
    "extra_info",
    "problem",
    "answer",
    "id",
    "unique_id",
    "problem_idx",
)


def _read_rows(path: Path, fmt: FileFormat) -> Iterator[tuple[int, Any]]:
    if fmt is FileFormat.PARQUET:
        yield from _read_parquet(path)
    elif fmt is FileFormat.JSONL:
        yield from _read_jsonl(path)
    elif fmt is FileFormat.JSON:
        with path.open(encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise MalformedRowError(f"{path}: not valid JSON ({e})") from e
            yield from enumerate(data)
        else:
            yield from _read_jsonl(path)
    else:
        raise ValueError(f"{path}: unsupported file format {fmt!r}")


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path} is not a readable parquet file ({e}); check the file or its extension") from e
    columns = [c for c in _ROW_COLUMNS if c in file.schema_arrow.names]
    row = 0
    # Record batches keep the Python objects of a ~1.8M-row file from all existing at once.
    for batch in file.iter_batches(batch_size=8192, columns=columns):
        for record in batch.to_pylist():
            yield row, record
            row += 1


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for row, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield row, json.loads(line)
            except json.JSONDecodeError as e:
                yield row, _BadJson(str(e))


@dataclasses.dataclass(frozen=True)
class _BadJson:
    error: str


def _parse_row(row: Any, source: str, index: int, strip_dapo: bool) -> tuple[PromptExample, bool]:
    where = f"{source}: row {index}"
    if isinstance(row, _BadJson):
        raise MalformedRowError(f"{where} (line {index + 1}): not valid JSON ({row.error})")
    if not isinstance(row, Mapping):
        raise MalformedRowError(f"{where}: expected an object, got {type(row).__name__}")
    if "prompt" in row and "reward_model" in row:
        problem = _verl_problem(row["prompt"], where)
        reward_model = row["reward_model"]
        if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
            raise MalformedRowError(f"{where}: reward_model must be a mapping with a ground_truth")
        gold = _gold(reward_model["ground_truth"], f"{where}: reward_model.ground_truth")
        extra = row.get("extra_info")
        uid = extra.get("index") if isinstance(extra, Mapping) else None
        uid = row.get("id") if uid is None else uid
    elif "problem" in row and "answer" in row:
        problem = row["problem"]
        if not isinstance(problem, str):
            raise MalformedRowError(f"{where}: problem must be a string, got {type(problem).__name__}")
        gold = _gold(row["answer"], f"{where}: answer")
        uid = next((row[k] for k in ("id", "unique_id", "problem_idx") if row.get(k) is not None), None)
    else:
        raise MalformedRowError(
            f"{where}: has neither verl columns (prompt, reward_model) nor plain columns "
            f"(problem, answer); it has {sorted(row)}"
        )
    was_stripped = False
    if strip_dapo:
        problem, was_stripped = strip_dapo_instructions(problem)
    if not problem.strip():
        raise MalformedRowError(f"{where}: the problem text is empty")
    data_source = row.get("data_source")
    return PromptExample(
        problem=problem,
        gold=gold,
        source=source,
        row=index,
        uid=str(index) if uid is None else str(uid),
        data_source="" if data_source is None else str(data_source),
    ), was_stripped


def _verl_problem(messages: Any, where: str) -> str:
    # verl builds the conversation from this list; JustRL's files hold exactly one user message,
    # and a second message (a system prompt) would be silently lost here, so it is an error.
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], Mapping):
        raise MalformedRowError(f"{where}: prompt must be a list holding one user message, got {messages!r:.200}")
    message = messages[0]
    if message.get("role") != "user" or not isinstance(message.get("content"), str):
        raise MalformedRowError(
            f"{where}: prompt[0] must be {{'role': 'user', 'content': <str>}}, got {message!r:.200}"
        )
    return message["content"]


def _gold(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedRowError(f"{where} must be a string or a number, got {value!r:.100}")
    gold = str(value)
    if not gold.strip():
        raise MalformedRowError(f"{where} is empty")
    return gold
