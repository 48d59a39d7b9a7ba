"""Finding the answer in a response, and the gold answer in a reference.

Two rules live here:

* ``strict_box``: veRL's DAPO rule used by JustRL, byte for byte: keep the last 300 characters,
  then the last 100, take the last ``\\boxed{`` and match braces (every ``{``/``}`` counts, as in
  DAPO). An incomplete last box is no answer (DAPO does not fall back to an earlier box).
* ``final_answer``: the robust extraction. Text after the last ``</think>`` (a missing tag is not
  an error), cut at the first chat special token; the last complete ``\\boxed{}``/``\\fbox{}`` (or
  ``\\boxed 5``) or the last "Final Answer:"/"final answer is"/"the answer is"/"Answer:" statement,
  whichever comes later (a statement after the box must state math); failing both, a closing
  "Therefore/Thus/Hence ..." sentence that ends the response and states exactly one number or
  math block; failing that, the response's last sentence when it ends with a math block or a
  number (at most one word, a unit, after it), as Math-Verify reads free text: the whole
  response when it is one line, else a complete sentence ending with a period. Never "the last
  number anywhere", never "any match", never a sentence cut off by truncation. Several boxes are joined only when the
  gold has that many items and the boxes are separated by connectors ("and", commas,
  ``\\quad``, a ``y_2 =`` label) or a short phrase within one sentence ("papers and"), so
  ``\\boxed{8} ... \\boxed{9}`` is 9 for gold 9, and ``\\boxed{1}. Later, \\boxed{2}`` is 2.

Everything here is linear in the response length: braces are matched once with a stack over the
brace positions found by one regex pass, and each box looks its closing brace up in that table.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re

STRICT_WINDOW_CHARS = 300  # DAPO compute_score: solution_str[-300:]
STRICT_BOX_CHARS = 100  # DAPO is_correct_strict_box: pred[-100:]
_STRICT_BOX = "\\boxed{"

# Math delimiters that may surround a whole gold answer, outermost first.
_GOLD_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


_BRACES = re.compile(r"[{}]")


def strict_box(response: str) -> str | None:
    """DAPO's strict-box prediction: the content of the last ``\\boxed{`` in the last 100 of the last
    300 characters, or None when that box is missing or not closed."""
    # response[-300:][-100:] is response[-100:]; both cuts are DAPO's, the second one decides.
    window = response[-STRICT_WINDOW_CHARS:][-STRICT_BOX_CHARS:]
    start = window.rfind(_STRICT_BOX)
    if start < 0:
        return None
    depth = 0
    for m in _BRACES.finditer(window, start):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return window[start + len(_STRICT_BOX) : m.start()]
    return None


def _strip_delimiters(text: str) -> str:
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for left, right in _GOLD_DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                inner = text[len(left) : len(text) - len(right)]
                # "$a$ and $b$" is not one delimited block: the inner text must not reopen it.
                if left == "$" and "$" in inner:
                    continue
                text = inner.strip()
                changed = True
                break
    return text


@functools.lru_cache(maxsize=65536)  # a prompt's gold is checked once per sample (8 per group)
def clean_gold(gold: str) -> str:
    """Gold pre-processing shared by both modes: surrounding whitespace and ``$..$``, ``$$..$$``,
    ``\\(..\\)``, ``\\[..\\]`` removed; a gold holding a box is reduced to its last box's content.
    DAPO-Math-17k golds are plain integers, for which this is the identity."""
    text = _strip_delimiters(gold)
    if _STRICT_BOX in text:
        start = text.rfind(_STRICT_BOX)
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return _strip_delimiters(text[start + len(_STRICT_BOX) : i])
    return text


# ----------------------------------------------------------------------------------------------
# Robust extraction


class AnswerSource(enum.Enum):
    BOX = "box"  # the last complete \boxed{} / \fbox{} (or a group of joined boxes)
    STATEMENT = "statement"  # a "Final Answer: ..." / "final answer is ..." / "Answer: ..." line
    CONCLUSION = "conclusion"  # a closing "Therefore ... 12 ..." sentence with exactly one number
    FINAL_SENTENCE = "final_sentence"  # the response's complete last sentence, holding math or a number
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class Extraction:
    span: str | None  # the answer text, not yet normalised; None = no answer
    source: AnswerSource


_THINK_END = "</think>"
# Chat-template special tokens (Qwen <|im_end|>, DeepSeek <｜end▁of▁sentence｜>): text after one is
# not part of the answer.
_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|<｜[^｜<>]{1,40}｜>")
_BRACE_TOKEN = re.compile(r"\\\\|\\[{}]|[{}]")
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed[ \t]+([^\s${}\\]+)")
_STATEMENT_MARKER = re.compile(
    r"(?i)\bfinal\s+answer\b\s*(?:is\b\s*:?|:|=)?\s*|\banswer\s*:\s*|\bthe\s+answer\s+is\b\s*:?\s*"
)
_LOOSE_MARKER = re.compile(r"(?i)\b(?:final\s+)?answer\b\s*(?:is\b\s*:?|:|=)?\s*")
_MAX_STATEMENT_CHARS = 2000

# What may separate two boxes of one multi-part answer: connectors, spacing, math delimiters,
# punctuation and "y_2 =" style labels, but no other words or digits.
_CONNECTOR_PIECES = re.compile(
    r"\\(?:quad|qquad|text\s*\{\s*(?:and|or|,)?\s*\}|mathrm\s*\{\s*(?:and|or)\s*\}|[,;:! ()\[\]])"
    r"|\b(?:and|or)\b|[A-Za-z](?:_\{?[A-Za-z0-9]{1,6}\}?)?\s*=|\$|\s"
)
_MAX_SEPARATOR_CHARS = 60


def _match_braces(text: str) -> dict[int, int]:
    """Position of each unescaped ``{`` -> position of its matching ``}`` (unmatched ones absent)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE_TOKEN.finditer(text):
        token = m.group()
        if len(token) == 2:  # \\ (a line break) or an escaped brace \{ \}: not structural
            continue
        if token == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


@dataclasses.dataclass(frozen=True)
class _Box:
    start: int
    end: int  # one past the closing brace
    inner: slice  # the content's position (sliced only for the boxes used: nested boxes overlap)

    def content(self, text: str) -> str:
        return text[self.inner]


def _top_level_boxes(text: str) -> list[_Box]:
    """Complete boxes not nested inside another complete box, in text order."""
    boxes = []
    if "box" in text:
        pairs = _match_braces(text)
        for m in _BOX_OPEN.finditer(text):
            close = pairs.get(m.end() - 1)
            if close is not None:
                boxes.append(_Box(m.start(), close + 1, slice(m.end(), close)))
        for m in _BOX_BARE.finditer(text):
            boxes.append(_Box(m.start(), m.end(), slice(m.start(1), m.end(1))))
    boxes.sort(key=lambda b: b.start)
    top: list[_Box] = []
    for box in boxes:
        if top and box.start < top[-1].end:
            continue  # nested inside the previous top-level box
        top.append(box)
    return top


def _is_connector(separator: str) -> bool:
    if len(separator) > _MAX_SEPARATOR_CHARS:
        return False
    rest = _CONNECTOR_PIECES.sub("", separator)
    return not any(c.isalnum() for c in rest) and "." not in rest


_SEPARATOR_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n\s*\n")
_MAX_SEPARATOR_WORDS = 4


def _is_box_separator(separator: str) -> bool:
    """Between two boxes of one answer: connectors, or a short phrase within one sentence
    (``\\boxed{1} papers and \\boxed{2}``, ``\\text{ for part (a) and }``); not a new sentence
    (``\\boxed{1}. Later, \\boxed{2}``) and not a longer stretch of text."""
    if _is_connector(separator):
        return True
    if len(separator) > _MAX_SEPARATOR_CHARS or _SENTENCE_END.search(separator):
        return False
    words = [w for w in _SEPARATOR_WORD.findall(_CONNECTOR_PIECES.sub(" ", separator)) if w not in ("text", "mathrm")]
    return len(words) <= _MAX_SEPARATOR_WORDS


def _joined_tail(boxes: list[_Box], text: str, limit: int | None = None) -> list[_Box]:
    """The longest run of boxes at the end of ``boxes`` that one short phrase or connectors separate
    (at most ``limit`` boxes: the walk back stops there, so it is linear in the boxes it keeps)."""
    first = len(boxes) - 1
    while first > 0 and (limit is None or len(boxes) - first < limit):
        if not _is_box_separator(text[boxes[first - 1].end : boxes[first].start]):
            break
        first -= 1
    return boxes[first:]


def _math_mask(text: str, inside_dollar: bool = False) -> list[bool]:
    """For each character, whether it lies inside ``$..$``, ``$$..$$``, ``\\(..\\)`` or ``\\[..\\]``
    (``inside_dollar``: the text starts inside ``$..$``)."""
    mask = [False] * len(text)
    closing = "$" if inside_dollar else None  # the delimiter that ends the current math block
    i = 0
    while i < len(text):
        if closing is None:
            for opening, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
                if text.startswith(opening, i) and not (opening[0] == "$" and text[i - 1 : i] == "\\"):
                    closing = close
                    for k in range(i, min(i + len(opening), len(text))):
                        mask[k] = True
                    i += len(opening)
                    break
            else:
                i += 1
            continue
        if text.startswith(closing, i) and (closing != "$" or text[i - 1 : i] != "\\"):
            for k in range(i, min(i + len(closing), len(text))):
                mask[k] = True
            i += len(closing)
            closing = None
            continue
        mask[i] = True
        i += 1
    return mask


def _sentence(text: str) -> str:
    """``text`` up to the end of its first sentence or line, ignoring periods and line breaks
    inside math."""
    text = text[:_MAX_STATEMENT_CHARS]
    mask = _math_mask(text)
    for i, char in enumerate(text):
        if mask[i]:
            continue
        if char == "\n":
            return text[:i]
        if char == "." and (i + 1 == len(text) or text[i + 1].isspace()):
            return text[:i]
    return text


def answer_region(response: str) -> str:
    """The part of a response that may hold the final answer: after the last ``</think>``, before
    the first chat special token."""
    cut = response.rfind(_THINK_END)
    text = response[cut + len(_THINK_END) :] if cut >= 0 else response
    special = _SPECIAL_TOKEN.search(text)
    return text[: special.start()] if special else text


def final_answer(response: str, gold_items: int = 1) -> Extraction:
    """The response's final answer span (see the module docstring). ``gold_items`` is the number of
    top-level items of the gold (``count_items``); that many joined boxes form one answer."""
    text = answer_region(response)
    boxes = _top_level_boxes(text)
    box_span, box_end = None, -1
    if boxes:
        run = _joined_tail(boxes, text, gold_items) if gold_items > 1 else [boxes[-1]]
        if len(run) < gold_items:
            run = run[-1:]
        else:
            run = run[-gold_items:]
        box_span = ", ".join(b.content(text) for b in run)
        box_end = run[-1].end
    statement, statement_start = None, -1
    # Only the tail can hold a statement that comes after the last box; the marker regex then runs
    # over a bounded window from the last candidate on.
    last = None
    for m in _STATEMENT_MARKER.finditer(text, max(box_end, 0)):
        last = m
    if last is not None:
        # Markdown around the statement ("**Final Answer**", "### Answer:") is not the answer.
        statement = _sentence(text[last.end() :].lstrip(" *#:_\t")).strip(" *#_\t\n")
        statement_start = last.start()
    # After a box, a statement overrides it only when it states something mathematical ("the answer
    # is $5$"), not a remark ("\\boxed{5}. I checked: the answer is correct").
    if statement and statement_start >= box_end and (box_span is None or re.search(r"[0-9$\\]", statement)):
        return Extraction(statement, AnswerSource.STATEMENT)
    if box_span is not None:
        return Extraction(box_span, AnswerSource.BOX)
    conclusion = _conclusion(text)
    if conclusion is not None:
        return Extraction(conclusion, AnswerSource.CONCLUSION)
    # Reasoning that opened a <think> block and never closed it was cut off: its last sentence is
    # an intermediate step, not a final answer.
    unfinished = _THINK_END not in response and "<think>" in response
    final = None if unfinished else _final_sentence(text)
    if final is not None:
        return Extraction(final, AnswerSource.FINAL_SENTENCE)
    return Extraction(None, AnswerSource.NONE)


_LINE_PIECES = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\n", re.DOTALL)  # display math spans lines
_MAX_FINAL_CHARS = 400


def _final_sentence(text: str) -> str | None:
    """The last sentence of the response when it states a math block or a number, as Math-Verify reads
    a free-text answer (``Answer $9$``, ``28 percent``, ``The identity matrix is $I$.``). A response
    of one line is its own statement; a longer one must end with a complete sentence (a period), so
    a response cut off mid-sentence has no answer here, and neither has one sentence that ends in a
    digit without a period. Inline math never spans a line break."""
    text = text.rstrip()
    tail = text[-2 * _MAX_FINAL_CHARS :]  # patterns run on the tail only: linear time
    tail = _BOILERPLATE.sub("", tail).rstrip()
    start = 0
    for m in _LINE_PIECES.finditer(tail):
        if m.group() == "\n":
            start = m.end()
    line = tail[start:].strip()
    whole = start == 0 and len(tail) == len(text.rstrip()) or not tail[:start].strip()
    if not line or not (whole or line.endswith(".")):
        return None
    mask = _math_mask(line)
    cut = 0
    for i in range(len(line) - 1):
        if not mask[i] and line[i] in ".!?" and line[i + 1].isspace():
            cut = i + 1
        elif line[i] == "$" and line[i + 1] == " " and not mask[i + 1] and line[i + 2 : i + 3].isupper():
            cut = i + 1  # "... $y = 6$ So, the pair is ...": a new sentence after math, no period
    sentence = line[cut:].strip().rstrip(".").strip()
    if len(sentence) > _MAX_FINAL_CHARS or (cut == 0 and len(line) == len(tail) < len(text)):
        return None  # a sentence too long to be a statement, or one that starts before the window
    # The answer ends the sentence: at most one word (a unit, "percent") after the last math block
    # or digit, so "First we have $x=5$ and then" (cut off) states nothing.
    ends = [m.end() for m in _MATH_SEGMENT.finditer(sentence)]
    ends += [i + 1 for i, c in enumerate(sentence) if c.isdigit()]  # a digit inside math ends before it
    if not ends or not _AT_MOST_ONE_WORD.fullmatch(sentence[max(ends) :]):
        return None
    if not line.endswith(".") and sentence[-1] in "0123456789":
        return None  # "... the number of ways is 12" may have been cut inside the number
    return sentence


_AT_MOST_ONE_WORD = re.compile(r"[^A-Za-z]*(?:[A-Za-z]+[^A-Za-z]*)?")


_BOILERPLATE = re.compile(r"(?i)I hope (?:it|this) is correct\.?$")
_CONCLUSION_WORD = re.compile(r"(?<![A-Za-z])(?:Therefore|Thus|Hence|In conclusion)\b[,:]?")
_CONCLUSION_NUMBER = re.compile(r"(?<![A-Za-z0-9_^])[0-9]+(?:[.,][0-9]+)*(?:/[0-9]+)?")
_MAX_CONCLUSION_CHARS = 400


def _conclusion(text: str) -> str | None:
    """The response's closing sentence when it is a conclusion ("Therefore ... is 2/3.") stating
    exactly one number or one math block, else None. The sentence must be complete (end with a
    period), so a response cut off mid-sentence has no answer here."""
    text = text.rstrip()
    cut = max(0, len(text) - 2 * _MAX_CONCLUSION_CHARS)  # patterns run on the tail only: linear time
    text = (text[:cut] + _BOILERPLATE.sub("", text[cut:])).rstrip()
    if not text.endswith("."):
        return None
    offset = max(0, len(text) - _MAX_CONCLUSION_CHARS)
    body = text[offset:-1]
    # The window may open inside inline math: "$" parity of everything before it says so.
    inside = (text.count("$", 0, offset) - 2 * text.count("$$", 0, offset) - text.count("\\$", 0, offset)) % 2
    mask = _math_mask(body, inside_dollar=bool(inside))
    start = None
    for m in _CONCLUSION_WORD.finditer(body):
        if not mask[m.start()]:
            start = m.start()
    if start is None:
        return None
    # No sentence may end between the conclusion word and the final period.
    for i in range(start, len(body) - 1):
        if not mask[i] and (body[i] == "\n" or (body[i] in ".!?" and body[i + 1].isspace())):
            return None
    sentence = body[start:]
    sentence = sentence[_CONCLUSION_WORD.match(sentence).end() :].strip()
    segments = list(_MATH_SEGMENT.finditer(sentence))
    plain = _MATH_SEGMENT.sub(" ", sentence)
    if len(segments) + len(_CONCLUSION_NUMBER.findall(plain)) != 1:
        return None
    return sentence


def refine_span(span: str) -> str:
    """Reduces an answer span that is a sentence to its answer: after the last "answer is"/"Answer:"
    marker, after the last " is "/" are " outside math, else the math segments it holds."""
    span = span.replace("**", "")
    last = None
    for m in _LOOSE_MARKER.finditer(span):
        last = m
    if last is not None and span[last.end() :].strip():
        span = _sentence(span[last.end() :])
    outside = _outside_math(span)
    verb = None
    for m in re.finditer(r"\s(?:is|are|was|equals)\s", outside):
        verb = m
    # "the largest $n$ is 34" -> "34", but "$x < 5$ is the solution" keeps its math.
    if verb is not None and re.search(r"[0-9$\\]", span[verb.end() :]):
        span = span[verb.end() :]
    segments = math_segments(span)
    if segments:
        span = ", ".join(segments)
    return span.strip()


def _outside_math(span: str) -> str:
    """``span`` with math blocks blanked (same length, so positions carry over)."""
    return "".join("_" if inside else char for char, inside in zip(span, _math_mask(span), strict=True))


_MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def math_segments(span: str) -> list[str]:
    """The contents of the ``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]`` blocks of a sentence, when
    it is more than one block; several blocks are kept only when joined by connectors."""
    found = [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _MATH_SEGMENT.finditer(span)]
    if not found:
        return []
    if len(found) == 1 and found[0][0] == 0 and found[0][1] == len(span.rstrip(" .")):
        return [found[0][2].strip()]
    run = [found[-1]]
    for prev in reversed(found[:-1]):
        if not _is_connector(span[prev[1] : run[0][0]]):
            break
        run.insert(0, prev)
    return [seg[2].strip() for seg in run]


def count_items(answer: str) -> int:
    """Top-level items of an answer: commas, semicolons and the words and/or outside brackets; a set
    written ``{1,2,3}`` or ``\\{1,2,3\\}`` counts its elements."""
    answer = re.sub(r"\\(?:text|mathrm)\s*\{\s*(and|or)\s*\}", r" \1 ", answer.strip())
    for left, right in (("\\{", "\\}"), ("{", "}")):
        if answer.startswith(left) and answer.endswith(right):
            inner = answer[len(left) : len(answer) - len(right)]
            if _balanced(inner):
                answer = inner
                break
    depth, items = 0, 1
    i, n = 0, len(answer)
    while i < n:
        char = answer[i]
        if char == "\\" and i + 1 < n and answer[i + 1] in "{}":
            depth += 1 if answer[i + 1] == "{" else -1
            i += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth <= 0 and char in ",;":
            items += 1
        i += 1
    if depth <= 0:
        items += len(re.findall(r"\b(?:and|or)\b", _bracket_free(answer)))
    return max(items, 1)


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _bracket_free(answer: str) -> str:
    return re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", answer)


def gold_span(gold: str) -> str:
    """The robust gold: delimiters stripped; a gold holding boxes becomes its last box, or its last
    boxes joined when only connectors separate them (``\\boxed{2}, \\boxed{3}`` -> ``2, 3``)."""
    text = _strip_delimiters(gold)
    text = re.sub(r"\\\\(?=(?:boxed|fbox)\b)", "\\\\", text)  # "\\boxed" (doubly escaped) is a box
    boxes = _top_level_boxes(text)
    if not boxes:
        return text
    run = _joined_tail(boxes, text)
    return _strip_delimiters(", ".join(b.content(text) for b in run))
