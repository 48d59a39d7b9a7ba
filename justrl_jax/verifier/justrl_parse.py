"""A safe parser of the plain-math strings JustRL's rule hands to SymPy (no eval, no sympify).

JustRL's rule compares ``(gold) - (answer)`` by ``sympy.parse_expr(text.replace("^", "**"),
standard_transformations + implicit_multiplication_application)``, which evaluates Python. This
module reads the same strings (already normalised: lower case, no spaces or braces, at most two
distinct letters) with a recursive-descent parser and builds the SymPy objects ``parse_expr``
builds for them:

* numbers as Python reads them: ``12`` -> Integer, ``1.5``, ``.5``, ``1.``, ``1e-5`` -> Float of
  the literal (so ``1e-5`` is 10^-5 here, as in ``parse_expr``); ``007`` is refused (a Python
  syntax error);
* names: ``pi`` and ``oo`` are the constants, ``sqrt(..)`` and ``ln(..)`` the functions, a Greek
  letter's name (``mu``, ``nu``, ``xi``) or a name with ``_`` is one symbol, any other name is
  split into one symbol per letter and one integer per digit run, multiplied (``xy`` -> x*y,
  ``x2`` -> 2*x), as ``split_symbols`` does;
* ``+ - * / **`` with Python's precedence (``-2**2`` = -4, ``2**-1`` = 1/2, ``**`` right
  associative), postfix ``!`` and ``!!`` (factorial), and implicit multiplication between
  adjacent operands (``2x``, ``2(3)``, ``(1)(2)``, ``sqrt(3)sqrt(2)``, ``x(2)``).

Anything else raises :class:`RefusedError` (the rule then says "not equal"): other characters,
commas (tuples), comparisons, other SymPy names (``nan``, ``zoo``, ``re``, ``im``...), Python
literals SymPy would read specially (``0x10``, ``2j``), a letter applied to a factorial group
(``k(d-k)!``, which ``parse_expr`` fails on), and integer powers or factorials too large to compute
quickly. Digit runs may hold single underscores, as in Python (``52_8`` is 528).
"""

from __future__ import annotations

import re
import unicodedata

MAX_INTEGER_BITS = 100_000  # an exact power or factorial larger than this is refused, not computed
MAX_DEPTH = 200  # parentheses nested deeper are refused (no RecursionError on hostile input)

_DIGITS = r"[0-9](?:_?[0-9])*"  # Python's digit runs: "52_8" is 528
_NUMBER = re.compile(rf"(?:{_DIGITS}\.?(?:{_DIGITS})?|\.{_DIGITS})(?:e[-+]?{_DIGITS})?", re.IGNORECASE)
_OPERATORS = ("**", "!!", "+", "-", "*", "/", "(", ")", "!")


class RefusedError(ValueError):
    """The string is not one the safe parser reads (the rule's SymPy step then says "not equal")."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t\n\r\f":
            i += 1
            continue
        if char.isdigit() or (char == "." and i + 1 < len(text) and text[i + 1].isdigit()):
            if not ("0" <= char <= "9" or char == "."):
                raise RefusedError(f"non-ASCII digit {char!r}")
            m = _NUMBER.match(text, i)
            literal = m.group(0)
            i = m.end()
            if i < len(text) and (text[i] in "jJ_" or (literal == "0" and text[i] in "xXbBoO")):
                raise RefusedError(f"Python literal {literal + text[i]!r}")
            digits = literal.split("e")[0].split("E")[0].replace("_", "")
            if len(digits) > 1 and digits[0] == "0" and digits.isdigit() and digits.strip("0"):
                raise RefusedError(f"integer with a leading zero {literal!r}")
            out.append(("num", literal))
            continue
        if char.isalpha() or char == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            out.extend(_name_tokens(text[i:j]))
            i = j
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                out.append(("op", op))
                i += len(op)
                break
        else:
            raise RefusedError(f"character {char!r}")
    return out


def _is_greek_name(name: str) -> bool:
    try:
        unicodedata.lookup("GREEK SMALL LETTER " + name.upper())
    except KeyError:
        return False
    return True


_REFUSED_NAMES = frozenset("nan zoo re im li ff rf".split())
_KEPT_NAMES = frozenset(("pi", "oo", "sqrt", "ln")) | _REFUSED_NAMES


def _name_tokens(name: str) -> list[tuple[str, str]]:
    """split_symbols: a name that is not a SymPy name, a Greek letter or one with ``_`` becomes one
    token per letter and per digit run (``x2y`` -> x 2 y, multiplied by adjacency)."""
    if name in _KEPT_NAMES or "_" in name or len(name) == 1 or _is_greek_name(name):
        return [("name", name)]
    return [("num", part) if part.isdigit() else ("name", part) for part in re.findall(r"[0-9]+|\D", name)]


class _Parser:
    def __init__(self, text: str):
        import sympy

        self.sympy = sympy
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take_op(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.pos += 1
            return True
        return False

    def parse(self):
        value = self.expr()
        if self.peek() is not None:
            raise RefusedError(f"unexpected {self.peek()[1]!r}")
        return value

    def expr(self):
        value = self.term()
        while True:
            if self.take_op("+"):
                value = value + self.term()
            elif self.take_op("-"):
                value = value - self.term()
            else:
                return value

    def _starts_operand(self) -> bool:
        token = self.peek()
        return token is not None and (token[0] in ("num", "name") or token == ("op", "("))

    def term(self):
        value = self.factor()
        while True:
            if self.take_op("*"):
                value = value * self.factor()
            elif self.take_op("/"):
                value = value / self.factor()
            elif self._starts_operand():  # implicit multiplication: "2x", "(1)(2)", "x(2)"
                value = value * self.power()
            else:
                return value

    def factor(self):
        if self.take_op("-"):
            return -self.factor()
        if self.take_op("+"):
            return self.factor()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.take_op("**"):
            exponent = self.factor()  # right associative; a unary sign is allowed after **
            _check_power(self.sympy, base, exponent)
            return base**exponent
        return base

    def postfix(self):
        value = self.atom()
        while True:
            if self.take_op("!"):
                value = _factorial(self.sympy.factorial, value)
            elif self.take_op("!!"):
                value = _factorial(self.sympy.factorial2, value)
            else:
                return value

    def atom(self):
        token = self.peek()
        if token is None:
            raise RefusedError("unexpected end")
        kind, text = token
        if token == ("op", "("):
            self.pos += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise RefusedError("parentheses nested too deeply")
            value = self.expr()
            if not self.take_op(")"):
                raise RefusedError("unclosed parenthesis")
            self.depth -= 1
            return value
        self.pos += 1
        if kind == "num":
            return self.sympy.Float(text) if any(c in text for c in ".eE") else self.sympy.Integer(int(text))
        if kind == "name":
            return self.name(text)
        raise RefusedError(f"unexpected {text!r}")

    def name(self, name: str):
        sympy = self.sympy
        if name in ("sqrt", "ln") and self.peek() == ("op", "("):
            argument = self.atom()
            return sympy.sqrt(argument) if name == "sqrt" else sympy.log(argument)
        if name == "pi":
            return sympy.pi
        if name == "oo":
            return sympy.oo
        if name in _KEPT_NAMES:  # a function without its argument, or a name SymPy reads specially
            raise RefusedError(f"SymPy name {name!r}")
        if self._factorial_of_call():
            # "k(d-k)!": parse_expr's factorial step makes k an undefined function and then fails to
            # multiply it (TypeError), so the released rule says "not equal".
            raise RefusedError(f"{name}(..)! is not an expression parse_expr builds")
        return sympy.Symbol(name)

    def _factorial_of_call(self) -> bool:
        """Whether the next tokens are a parenthesised group directly followed by ``!`` or ``!!``."""
        if self.peek() != ("op", "("):
            return False
        depth = 0
        for i in range(self.pos, len(self.tokens)):
            if self.tokens[i] == ("op", "("):
                depth += 1
            elif self.tokens[i] == ("op", ")"):
                depth -= 1
                if depth == 0:
                    return i + 1 < len(self.tokens) and self.tokens[i + 1] in (("op", "!"), ("op", "!!"))
        return False


def _check_power(sympy, base, exponent) -> None:
    if isinstance(base, sympy.Integer) and isinstance(exponent, sympy.Integer):
        size = abs(int(exponent)) * max(int(abs(base)).bit_length(), 1)
        if abs(int(base)) > 1 and size > MAX_INTEGER_BITS:
            raise RefusedError("integer power too large")


def _factorial(function, value):
    import sympy

    if isinstance(value, sympy.Integer) and int(value) > 5000:
        raise RefusedError("factorial too large")
    return function(value)


def parse_plain(text: str):
    """The SymPy expression of a normalised plain-math string; RefusedError when not read."""
    try:
        return _Parser(text).parse()
    except RecursionError:
        raise RefusedError("expression nested too deeply") from None
