"""The parsed form of an answer: SymPy objects for values, these small nodes for structure.

A scalar, an expression or a matrix is a SymPy object (``sympy.Basic``). Structure that SymPy would
either lose or evaluate away is kept explicitly, so that the comparison can apply the right rule:
ordered tuples, unordered sets and lists, intervals with their endpoint types, set operations, and
relation chains (``a = b = c``, ``0 < x \\le 1``).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class ItemsKind(enum.Enum):
    TUPLE = "tuple"  # (a, b, c): ordered; (a, b) may also be an open interval
    SET = "set"  # \{a, b\} or {a, b}: unordered, duplicates ignored
    LIST = "list"  # a, b  /  a and b  /  a or b: unordered, as answers listing roots are


@dataclasses.dataclass(frozen=True)
class Items:
    kind: ItemsKind
    items: tuple[Any, ...]
    brackets: str = ""  # the opening and closing bracket, e.g. "()" or "[)"


@dataclasses.dataclass(frozen=True)
class Interval:
    lo: Any
    hi: Any
    lo_open: bool
    hi_open: bool


@dataclasses.dataclass(frozen=True)
class SetOp:
    op: str  # "cup" | "cap" | "setminus"
    left: Any
    right: Any


@dataclasses.dataclass(frozen=True)
class Relation:
    """A chain ``parts[0] ops[0] parts[1] ops[1] ...``; ops are "=", "~" (``\\approx``), "<", "<=", ">",
    ">=", "!=", "in"."""

    ops: tuple[str, ...]
    parts: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Word:
    """A word that is not mathematics (``\\text{Evelyn}``); compared case-insensitively."""

    text: str
