"""A small recursive-descent LaTeX parser that builds SymPy objects directly.

No ``eval``, ``exec``, ``sympify``, ``parse_expr`` or ``lambdify`` ever sees model text: each
token becomes a SymPy constructor call chosen by this parser (``Integer``, ``Symbol``, ``Add``,
``Pow``, ...), so ``\\boxed{__import__('os').system(...)}`` is just an unparseable string.

Guards run while the tree is built, before SymPy can start a long computation: nesting deeper
than ``MAX_DEPTH``, an integer literal over ``MAX_LITERAL_DIGITS`` digits, a power whose exact
value would exceed ``MAX_POWER_DIGITS`` digits (power towers such as ``9^{9^{9^9}}``), and
factorial or binomial arguments over ``MAX_FACTORIAL_ARG``. Each raises ``GuardError``.

Grammar, loosest binding first::

    answer   := relation ((',' | ';' | 'and' | 'or') relation)*
    relation := setexpr (relop setexpr)*            relop: = < > \\le \\ge \\ne \\approx \\in
    setexpr  := sum (('\\cup' | '\\cap' | '\\setminus') sum)*
    sum      := term (('+' | '-' | '\\pm' | '\\mp') term)*
    term     := unary (('*' | '\\cdot' | '\\times' | '/' | '\\div' | ':') unary | implicit factor)*
    unary    := ('-' | '+' | '\\pm') unary | power
    power    := postfix ('^' argument)?
    postfix  := primary ('!' | '_' argument)*
    primary  := number | letter | word | group | (..) | [..] | \\{..\\} | |..| | \\frac | \\sqrt
              | \\binom | function | \\sum | \\prod | matrix environment | constant | symbol command
"""

from __future__ import annotations

import dataclasses
import math
import re

import sympy

from justrl_jax.verifier.answer import Interval, Items, ItemsKind, Relation, SetOp, Word

MAX_DEPTH = 50
MAX_LITERAL_DIGITS = 4000
MAX_POWER_DIGITS = 10_000
MAX_FACTORIAL_ARG = 10_000
MAX_MATRIX_POWER = 16

# The sign of a \pm term; expanded into the two values by the comparison.
PM = sympy.Dummy("pm")
# The "..." of a sequence answer.
ELLIPSIS = sympy.Symbol("\\ldots")


class ParseError(ValueError):
    """The text is not an answer this parser understands."""


class GuardError(ValueError):
    """The answer is too large to evaluate safely (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # num letter word cmd sym op begin end rowsep cellsep eof
    text: str
    start: int
    end: int


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<begin>\\begin\s*\{\s*(?P<benv>[A-Za-z]+\*?)\s*\})
  | (?P<end>\\end\s*\{\s*(?P<eenv>[A-Za-z]+\*?)\s*\})
  | (?P<textword>\\text\s*\{\s*(?P<tw>[A-Za-z]+)\s*\})
  | (?P<rowsep>\\\\)
  | (?P<cmd>\\[A-Za-z]+)
  | (?P<sym>\\[^A-Za-z\s])
  | (?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
  | (?P<letters>[A-Za-z]+)
  | (?P<op><=|>=|!=|[-+*/^_!'=<>()\[\]{},;:|&])
""",
    re.VERBOSE,
)

_CONNECTOR_WORDS = {"and", "or"}
_MIN_WORD_LETTERS = 4  # a bare run of letters this long is a word, shorter runs are products
# Short words that answer a question ("Is n odd?"): words in any case, never products of letters.
ANSWER_WORDS = frozenset({"yes", "no", "odd", "even", "none", "all", "both", "true", "false", "not", "nor"})
_MATRIX_ENVS = {"pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "matrix", "smallmatrix", "array"}


def _is_answer_word(word: str) -> bool:
    # "NO" in \\frac{NO}{BO} is a segment, "No" and "no" are words.
    return word.casefold() in ANSWER_WORDS and not (len(word) == 2 and word.isupper())


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    env_depth = 0
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected character {text[pos]!r} at {pos}")
        kind = m.lastgroup
        start, pos = m.start(), m.end()
        if kind == "ws":
            continue
        if kind == "begin":
            env_depth += 1
            tokens.append(Token("begin", m.group("benv"), start, pos))
        elif kind == "end":
            env_depth -= 1
            tokens.append(Token("end", m.group("eenv"), start, pos))
        elif kind == "textword":
            word = m.group("tw")
            tokens.append(Token("letter" if len(word) == 1 else "word", word, start, pos))
        elif kind == "rowsep":
            if env_depth > 0:  # outside a matrix, \\ is a line break
                tokens.append(Token("rowsep", "\\\\", start, pos))
        elif kind == "letters":
            word = m.group()
            if word in _CONNECTOR_WORDS or len(word) >= _MIN_WORD_LETTERS or _is_answer_word(word):
                tokens.append(Token("word", word, start, pos))
            else:
                tokens.extend(Token("letter", c, start + i, start + i + 1) for i, c in enumerate(word))
        elif kind == "op" and m.group() == "&":
            if env_depth > 0:  # outside a matrix, & is an alignment mark
                tokens.append(Token("cellsep", "&", start, pos))
        elif kind == "cmd":
            tokens.append(Token("cmd", m.group()[1:], start, pos))
        else:
            tokens.append(Token(kind, m.group(), start, pos))
    tokens.append(Token("eof", "", len(text), len(text)))
    return tokens


_FUNCTIONS = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "cot": sympy.cot,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "exp": sympy.exp,
    "ln": sympy.log,
    "log": sympy.log,
    "lg": sympy.log,
}
_MULTI_ARG = {"max": sympy.Max, "min": sympy.Min, "gcd": sympy.gcd, "lcm": sympy.lcm}
_CONSTANTS = {"pi": sympy.pi, "infty": sympy.oo, "infinity": sympy.oo, "e": sympy.E}
_DECORATIONS = {
    "overline",
    "vec",
    "hat",
    "bar",
    "tilde",
    "overrightarrow",
    "widehat",
    "mathbf",
    "boldsymbol",
    "mathcal",
    "mathbb",
    "mathit",
    "dot",
    "ddot",
    "underline",
}
_RELOPS = {
    "=": "=",
    "<": "<",
    ">": ">",
    "le": "<=",
    "ge": ">=",
    "ne": "!=",
    "approx": "~",  # an approximate value: the comparison reads the exact and the approximate part
    "sim": "~",
    "in": "in",
    "equiv": "=",
    "simeq": "=",
    "cong": "=",
}
_SETOPS = {"cup": "cup", "cap": "cap", "setminus": "setminus"}
_FUNCTION_LETTERS = set("fghFGH")
_INVERSE = ("^", "{", "-", "1", "}")  # the tokens of ^{-1} after a function letter
_IMPLICIT_CMDS = (
    {"frac", "sqrt", "binom", "sum", "prod", "text"}
    | set(_FUNCTIONS)
    | set(_MULTI_ARG)
    | set(_CONSTANTS)
    | _DECORATIONS
)


def _is_expr(value) -> bool:
    return isinstance(value, sympy.Basic)


def _need_expr(value, what: str):
    if not _is_expr(value):
        raise ParseError(f"{what} needs a value, got {type(value).__name__}")
    return value


def _digits(n: int) -> float:
    return abs(n).bit_length() * math.log10(2)


def safe_pow(base, exp):
    """``base ** exp`` with the power-size guard (exact powers past MAX_POWER_DIGITS digits)."""
    if isinstance(base, sympy.MatrixBase):
        if not (exp.is_Integer and abs(int(exp)) <= MAX_MATRIX_POWER):
            raise ParseError("matrix power needs a small integer exponent")
        return base ** int(exp)
    if base.is_Rational and exp.is_Rational:
        size = max(_digits(int(base.p)), _digits(int(base.q)))
        if size > 0.5 and abs(exp) * size > MAX_POWER_DIGITS:  # |base| not in {0, 1}
            raise GuardError("power too large to evaluate")
    if exp.is_Rational and base.is_number and not base.is_Rational:
        if abs(exp) > MAX_POWER_DIGITS and not base.has(sympy.Float):
            raise GuardError("exponent too large to evaluate")
    return sympy.Pow(base, exp)


def safe_factorial(arg):
    if arg.is_Integer and int(arg) > MAX_FACTORIAL_ARG:
        raise GuardError("factorial argument too large")
    if arg.is_number and arg.is_real and not arg.is_Integer and abs(arg) > MAX_FACTORIAL_ARG:
        raise GuardError("factorial argument too large")
    if not arg.is_number and arg.has(sympy.Integer):
        for atom in arg.atoms(sympy.Integer):
            if abs(int(atom)) > MAX_FACTORIAL_ARG:
                raise GuardError("factorial argument too large")
    return sympy.factorial(arg)


def safe_binomial(n, k):
    for arg in (n, k):
        if arg.is_number and arg.is_real and abs(arg) > MAX_FACTORIAL_ARG:
            raise GuardError("binomial argument too large")
    return sympy.binomial(n, k)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- token helpers --------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def at(self, kind: str, text: str | None = None) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == kind and (text is None or tok.text == text)

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def at_cmd(self, *names: str) -> bool:
        return self.tok.kind == "cmd" and self.tok.text in names

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect_op(self, op: str) -> Token:
        if not self.at_op(op):
            raise ParseError(f"expected {op!r} at {self.tok.start}, got {self.tok.text!r}")
        return self.advance()

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise GuardError(f"answer nested deeper than {MAX_DEPTH}")

    def leave(self):
        self.depth -= 1

    # -- grammar --------------------------------------------------------------------------
    def parse(self):
        value = self.answer()
        if not self.at("eof"):
            raise ParseError(f"unexpected {self.tok.text!r} at {self.tok.start}")
        return value

    def answer(self):
        """Items separated by ``;`` group the items separated by commas and connectors
        (``p=5, q=2; p=7, q=2``); when no group has several items, all are one flat list."""
        groups = [self.comma_list()]
        while self.at_op(";"):
            self.advance()
            groups.append(self.comma_list())
        return groups[0] if len(groups) == 1 else Items(ItemsKind.LIST, tuple(groups))

    def comma_list(self):
        items = [self.relation()]
        while self.at_op(",") or self.at_connector():
            self.advance()
            while self.at_connector():  # "19, 46, and 82"
                self.advance()
            items.append(self.relation())
        return items[0] if len(items) == 1 else Items(ItemsKind.LIST, tuple(items))

    def at_inverse(self) -> bool:
        """At ``^{-1}(`` (or ``^-1(``)."""
        ahead = self.tokens[self.i : self.i + len(_INVERSE) + 1]
        texts = tuple(t.text for t in ahead)
        return texts[: len(_INVERSE)] == _INVERSE and texts[len(_INVERSE) :] == ("(",)

    def at_connector(self) -> bool:
        return self.at("word") and self.tok.text in _CONNECTOR_WORDS

    def relation(self):
        parts = [self.setexpr()]
        ops = []
        while True:
            if self.at_op("=", "<", ">"):
                ops.append(self.advance().text)
            elif self.at_op("<=", ">=", "!="):
                ops.append({"<=": "<=", ">=": ">=", "!=": "!="}[self.advance().text])
            elif self.tok.kind == "cmd" and self.tok.text in _RELOPS:
                ops.append(_RELOPS[self.advance().text])
            else:
                break
            parts.append(self.setexpr())
        return parts[0] if not ops else Relation(tuple(ops), tuple(parts))

    def setexpr(self):
        left = self.sum()
        while self.tok.kind == "cmd" and self.tok.text in _SETOPS:
            op = _SETOPS[self.advance().text]
            left = SetOp(op, left, self.sum())
        return left

    def sum(self):
        left = self.term()
        while True:
            if self.at_op("+"):
                self.advance()
                left = _need_expr(left, "+") + _need_expr(self.term(), "+")
            elif self.at_op("-"):
                self.advance()
                left = _need_expr(left, "-") - _need_expr(self.term(), "-")
            elif self.at_cmd("pm", "mp"):
                sign = PM if self.advance().text == "pm" else -PM
                left = _need_expr(left, "\\pm") + sign * _need_expr(self.term(), "\\pm")
            else:
                return left

    def term(self):
        left = self.unary()
        while True:
            if self.at_op("*") or self.at_cmd("cdot", "times", "ast"):
                self.advance()
                left = _mul(left, self.unary())
            elif self.at_op("/", ":") or self.at_cmd("div"):
                self.advance()
                left = _div(left, self.unary())
            elif self.starts_implicit_factor():
                left = _mul(left, self.power())
            else:
                return left

    def starts_implicit_factor(self) -> bool:
        tok = self.tok
        if tok.kind in ("letter", "begin"):
            return True
        if tok.kind == "word":
            return tok.text not in _CONNECTOR_WORDS
        if tok.kind == "op":
            return tok.text == "("
        if tok.kind == "cmd":
            return tok.text in _IMPLICIT_CMDS or tok.text not in (
                set(_RELOPS) | set(_SETOPS) | {"cdot", "times", "div", "pm", "mp", "ast", "ldots", "in"}
            )
        return False

    def unary(self):
        if self.at_op("-"):
            self.advance()
            self.enter()
            value = -_need_expr(self.unary(), "-")
            self.leave()
            return value
        if self.at_op("+"):
            self.advance()
            return _need_expr(self.unary(), "+")
        if self.at_cmd("pm", "mp"):
            sign = PM if self.advance().text == "pm" else -PM
            return sign * _need_expr(self.unary(), "\\pm")
        return self.power()

    def power(self):
        base = self.postfix()
        if self.at_op("^"):
            self.advance()
            self.enter()
            exp = _need_expr(self.argument(), "^")
            self.leave()
            base = safe_pow(_need_expr(base, "^"), exp)
            while self.at_op("!"):
                self.advance()
                base = safe_factorial(base)
        return base

    def postfix(self):
        value = self.primary()
        while True:
            if self.at_op("!"):
                self.advance()
                value = safe_factorial(_need_expr(value, "!"))
            elif self.at_op("_"):
                self.advance()
                value = self.subscript(value)
            elif self.at_op("'"):
                raise ParseError("primes are not supported")
            else:
                return value

    def subscript(self, base):
        tok = self.tok
        if tok.kind == "op" and tok.text == "{":
            sub = self.argument(allow_sign=False)
            raw = self.text[tok.end : self.tokens[self.i - 1].start]  # between the braces
        else:
            raw = tok.text[0] if tok.kind == "num" else tok.text
            sub = self.argument(allow_sign=False)
        raw = re.sub(r"\s+", "", raw)
        if isinstance(base, sympy.Integer) and isinstance(sub, sympy.Integer):
            digits, radix = str(base), int(sub)
            if 2 <= radix <= 36:
                try:
                    return sympy.Integer(int(digits, radix))
                except ValueError as e:
                    raise ParseError(f"{digits} is not a base-{radix} number") from e
            raise ParseError(f"bad base {radix}")
        if isinstance(base, sympy.Symbol):
            return sympy.Symbol(f"{base.name}_{{{raw}}}")
        raise ParseError("subscript on a non-symbol")

    def argument(self, allow_sign: bool = True):
        """A braced group, or a single character/command (LaTeX's one-token argument); ``x^-1`` is
        read as ``x^{-1}`` when ``allow_sign``."""
        if self.at_op("{"):
            self.advance()
            self.enter()
            value = self.answer()
            self.leave()
            self.expect_op("}")
            return value
        tok = self.tok
        if tok.kind == "num" and len(tok.text) > 1:
            # x^23 is x^2 * 3 in LaTeX: split the number token after its first character.
            first = tok.text[0]
            rest = tok.text[1:]
            self.tokens[self.i] = Token("num", rest, tok.start + 1, tok.end)
            if first == ".":
                raise ParseError("bad one-character argument")
            return sympy.Integer(int(first))
        if tok.kind in ("num", "letter", "cmd"):
            return self.primary()
        if tok.kind == "op" and tok.text == "-" and allow_sign:
            self.advance()
            return -_need_expr(self.argument(), "-")
        raise ParseError(f"expected an argument at {tok.start}")

    def group_value(self):
        value = self.argument()
        return _need_expr(value, "argument")

    def primary(self):
        self.enter()
        try:
            return self._primary()
        finally:
            self.leave()

    def _primary(self):
        tok = self.tok
        if tok.kind == "num":
            self.advance()
            return _number(tok.text)
        if tok.kind == "letter":
            self.advance()
            if tok.text in _FUNCTION_LETTERS and self.at_inverse():  # f^{-1}(x): the inverse function
                self.i += len(_INVERSE)
                args = self.bracketed()
                args = args.items if isinstance(args, Items) else (args,)
                return sympy.Function(f"{tok.text}^{{-1}}")(*[_need_expr(a, "function argument") for a in args])
            if tok.text in _FUNCTION_LETTERS and self.at_op("(") and self.tok.start == tok.end:
                args = self.bracketed()
                args = args.items if isinstance(args, Items) else (args,)
                return sympy.Function(tok.text)(*[_need_expr(a, "function argument") for a in args])
            if tok.text == "e" and not self.at_op("_"):
                return sympy.E
            return sympy.Symbol(tok.text)
        if tok.kind == "word":
            if tok.text in _CONNECTOR_WORDS:
                raise ParseError(f"unexpected {tok.text!r}")
            self.advance()
            return Word(tok.text)
        if tok.kind == "op":
            if tok.text in "([":
                return self.bracketed()
            if tok.text == "{":
                self.advance()
                value = self.answer() if not self.at_op("}") else Items(ItemsKind.SET, ())
                self.expect_op("}")
                return value  # {1,3} is a TeX group: the list 1, 3 (a set is written \\{1,3\\})
            if tok.text == "|":
                self.advance()
                value = _need_expr(self.sum(), "|..|")
                self.expect_op("|")
                return sympy.Abs(value)
        if tok.kind == "sym":
            if tok.text == "\\{":
                self.advance()
                items = () if self.at("sym", "\\}") else self._items_of(self.answer())
                if not self.at("sym", "\\}"):
                    raise ParseError("unclosed \\{")
                self.advance()
                return Items(ItemsKind.SET, items, "{}")
            if tok.text == "\\|":
                self.advance()
                value = _need_expr(self.sum(), "norm")
                if not self.at("sym", "\\|"):
                    raise ParseError("unclosed \\|")
                self.advance()
                return sympy.Abs(value)
        if tok.kind == "cmd":
            return self.command()
        if tok.kind == "begin":
            return self.environment()
        raise ParseError(f"unexpected {tok.text!r} at {tok.start}")

    @staticmethod
    def _items_of(value) -> tuple:
        if isinstance(value, Items) and value.kind is ItemsKind.LIST:
            return value.items
        return (value,)

    def bracketed(self):
        opening = self.advance().text
        if self.at_op(")") and opening == "(":
            raise ParseError("empty parentheses")
        inner = self.answer()
        if not self.at_op(")", "]"):
            raise ParseError(f"unclosed {opening!r}")
        closing = self.advance().text
        items = self._items_of(inner)
        if len(items) == 1:
            if opening + closing in ("()", "[]"):
                return items[0]
            raise ParseError(f"{opening}..{closing} around one value")
        if len(items) == 2 and opening + closing != "()":
            return Interval(
                _need_expr(items[0], "interval"), _need_expr(items[1], "interval"), opening == "(", closing == ")"
            )
        return Items(ItemsKind.TUPLE, items, opening + closing)

    def command(self):
        name = self.advance().text
        if name == "frac":
            num = self.group_value()
            den = self.group_value()
            return _div(num, den)
        if name == "sqrt":
            index = None
            if self.at_op("["):
                self.advance()
                index = _need_expr(self.answer(), "root index")
                self.expect_op("]")
            arg = self.group_value()
            return safe_pow(arg, sympy.Integer(1) / index) if index is not None else sympy.sqrt(arg)
        if name == "binom":
            return safe_binomial(self.group_value(), self.group_value())
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name == "emptyset":
            return Items(ItemsKind.SET, (), "{}")
        if name == "ldots":
            return ELLIPSIS
        if name in ("boxed", "fbox"):
            return self.argument()
        if name in _FUNCTIONS:
            return self.function(name)
        if name in _MULTI_ARG:
            args = self.bracketed()
            args = args.items if isinstance(args, Items) else (args,)
            return _MULTI_ARG[name](*[_need_expr(a, name) for a in args])
        if name in ("sum", "prod"):
            return self.big_operator(name)
        if name in _DECORATIONS:
            start = self.tok.start
            self.argument(allow_sign=False)
            raw = re.sub(r"\s+", "", self.text[start : self.tokens[self.i - 1].end]).strip("{}")
            if name == "mathbb" and raw == "R":  # the real line, as the interval it is
                return Interval(-sympy.oo, sympy.oo, True, True)
            return sympy.Symbol(f"\\{name}{{{raw}}}")
        if name in _RELOPS or name in _SETOPS or name in ("cdot", "times", "div", "pm", "mp"):
            raise ParseError(f"unexpected \\{name}")
        if name in (
            "int",
            "iint",
            "oint",
            "lim",
            "partial",
            "nabla",
            "mathrm",
            "text",
            "begin",
            "end",
            "left",
            "right",
            "color",
            "textcolor",
            "label",
            "tag",
            "hline",
            "cline",
        ):
            raise ParseError(f"\\{name} is not supported")
        return sympy.Symbol(name)  # Greek letters and other named symbols (\alpha, \theta, ...)

    def function(self, name: str):
        func = _FUNCTIONS[name]
        base = None
        power = None
        for _ in range(2):
            if name in ("log", "lg") and self.at_op("_") and base is None:
                self.advance()
                base = self.group_value()
            elif self.at_op("^") and power is None:
                self.advance()
                power = self.group_value()
        if self.at_op("("):
            arg = self.bracketed()
        elif self.at_op("{"):
            arg = self.argument()
        else:
            # \sin 2x, \sin b \cos a: the factors up to the next operator or function.
            arg = self.power()
            while self.starts_implicit_factor() and not (
                self.tok.kind == "cmd" and (self.tok.text in _FUNCTIONS or self.tok.text in _MULTI_ARG)
            ):
                arg = _mul(arg, self.power())
        arg = _need_expr(arg, f"\\{name}")
        if name == "lg" and base is None:
            base = sympy.Integer(10)
        value = func(arg, base) if base is not None else func(arg)
        if power is not None:
            if power == -1 and name in ("sin", "cos", "tan"):
                value = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan}[name](arg)
            else:
                value = safe_pow(value, power)
        return value

    def big_operator(self, name: str):
        lower = upper = None
        for _ in range(2):
            if self.at_op("_") and lower is None:
                self.advance()
                lower = self.argument()
            elif self.at_op("^") and upper is None:
                self.advance()
                upper = self.argument()
        if not (
            isinstance(lower, Relation)
            and lower.ops == ("=",)
            and isinstance(lower.parts[0], sympy.Symbol)
            and upper is not None
        ):
            raise ParseError(f"\\{name} needs _{{k=a}}^{{b}}")
        body = _need_expr(self.term(), f"\\{name}")
        limits = (lower.parts[0], _need_expr(lower.parts[1], "limit"), _need_expr(upper, "limit"))
        return (sympy.Sum if name == "sum" else sympy.Product)(body, limits)

    def environment(self):
        env = self.advance().text
        if env not in _MATRIX_ENVS:
            raise ParseError(f"environment {env!r} is not supported")
        if env == "array" and self.at_op("{"):  # the column specification {cc|c}
            while not self.at_op("}"):
                if self.at("eof"):
                    raise ParseError("unclosed array specification")
                self.advance()
            self.advance()
        rows: list[list] = [[]]
        while not self.at("end"):
            if self.at("eof"):
                raise ParseError(f"unclosed {env}")
            if self.at("cellsep"):
                self.advance()
                continue
            if self.at("rowsep"):
                self.advance()
                rows.append([])
                continue
            rows[-1].append(_need_expr(self.relation(), "matrix entry"))
        if self.advance().text != env:
            raise ParseError(f"\\begin{{{env}}} closed by another environment")
        rows = [r for r in rows if r]
        if not rows or len({len(r) for r in rows}) != 1:
            raise ParseError("ragged or empty matrix")
        return sympy.ImmutableMatrix(rows)


def _number(text: str):
    digits = len(text.replace(".", "").lstrip("0"))
    if digits > MAX_LITERAL_DIGITS:
        raise GuardError(f"number literal over {MAX_LITERAL_DIGITS} digits")
    if "." in text:
        # Keep the literal exact (25.10 is 251/10) and remember it was written as a decimal by
        # giving it a Float twin only where the comparison needs it (see equivalence).
        return sympy.Float(text, max(15, digits + 2))
    return sympy.Integer(int(text))


def _mul(left, right):
    left = _need_expr(left, "product")
    right = _need_expr(right, "product")
    return left * right


def _div(num, den):
    num = _need_expr(num, "quotient")
    den = _need_expr(den, "quotient")
    if isinstance(den, sympy.MatrixBase):
        raise ParseError("division by a matrix")
    if den == 0:
        return sympy.zoo
    return num / den


def parse_answer(text: str):
    """Parses a normalised answer into SymPy objects and ``answer`` nodes.

    Raises ParseError (not an answer we understand) or GuardError (too large to evaluate)."""
    if not text.strip():
        raise ParseError("empty answer")
    try:
        return _Parser(text).parse()
    except RecursionError as e:
        raise GuardError("answer nested too deeply") from e
    except (TypeError, AttributeError, sympy.SympifyError) as e:
        raise ParseError(f"cannot build the answer: {e}") from e
