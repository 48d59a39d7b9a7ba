"""Cheap string normalisation of an answer span, before any parsing.

Applied identically to the prediction and the gold, so that equal strings afterwards mean equal
answers (the first, free step of the equivalence cascade, and the cache key). It only removes
notation that never changes a value: spacing, ``\\left``/``\\right``, ``^\\circ``, ``%``, currency,
a trailing period, ``\\dfrac``/``\\tfrac``, ``\\frac12``/``\\sqrt2`` shorthand, ``\\text{}`` wrappers,
a short list of units and any ``\\mathrm{}``/``\\text{}`` unit after a number, markdown bold,
thousands separators (``1,\\!000`` and ``1{,}000`` always, plain commas and spaces only when the gold
is one number), and canonical integers/decimals (``025``, ``+25``, ``25.0`` -> ``25``). Some
notations are rewritten into the plain form of the same value: mixed numbers (``2\\frac{1}{3}``,
``7 3/4``) when they are the whole answer, repeating decimals (``0.\\overline{3}``) and scientific
notation (``1.5e3``).

Every pattern here is linear (no nested quantifiers), and the input is already capped at
``max_answer_chars`` by the caller, so normalisation time is bounded.
"""

from __future__ import annotations

import re

# Commands that a doubly escaped answer ("\\frac{1}{2}", JSON written twice) may contain.
KNOWN_COMMANDS = frozenset(
    """
frac dfrac tfrac cfrac sqrt left right pi cdot times div le leq ge geq ne neq lt gt infty cup cap
setminus text mathrm textnormal textbf mbox boxed fbox in notin pm mp sin cos tan sec csc cot arcsin
arccos arctan sinh cosh tanh log ln exp lg binom dbinom tbinom approx sum prod begin end ldots dots
cdots quad qquad emptyset varnothing circ degree alpha beta gamma delta epsilon varepsilon zeta eta
theta vartheta iota kappa lambda mu nu xi omicron rho sigma tau upsilon phi varphi chi psi omega
Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega overline vec hat bar tilde mathbf
overrightarrow operatorname displaystyle max min gcd lcm mod pmod
""".split()
)

_UNICODE = {
    "\u2212": "-",
    "\u2013": "-",
    "\u00d7": "\\times ",
    "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ",
    "\u00f7": "\\div ",
    "\u221a": "\\sqrt",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u00b1": "\\pm ",
    "\u222a": "\\cup ",
    "\u2229": "\\cap ",
    "\u2208": "\\in ",
    "\u00b2": "^2",
    "\u00b3": "^3",
    "\u00b0": "",
    "\u20ac": "",
    "\u00a3": "",
    "\u00a5": "",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u2032": "'",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

_DOUBLE_ESCAPED = re.compile(r"(?<!\\)\\\\([A-Za-z]+)")
_SIZING = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)"
    r"(?![A-Za-z])\s*(\.)?"
)
_NOISE = re.compile(r"\\(?:displaystyle|textstyle|limits|nolimits|mathstrut|strut)(?![A-Za-z])")
_SPACING = re.compile(
    r"\\(?:quad|qquad|enspace|thinspace|medspace|thickspace|hspace\s*\{[^{}]*\})"
    r"(?![A-Za-z])|(?<!\\)\\[,;: ]|~"
)
_NEGATIVE_SPACE = re.compile(r"(?<!\\)\\!")  # "1,\!000": removed, not a space
# "1,\!000", "11,\! 111": a comma with a negative space after it is LaTeX's thousands separator.
_THOUSANDS_NEGATIVE_SPACE = re.compile(r"(?<=[0-9]),\s*\\!\s*(?=[0-9]{3}(?![0-9]))")
_FRAC_ALIASES = re.compile(r"\\(?:dfrac|tfrac|cfrac)(?![A-Za-z])")
_BINOM_ALIASES = re.compile(r"\\(?:dbinom|tbinom)(?![A-Za-z])")
_DEGREES = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])"
    r"|\\degree(?![A-Za-z])|\^\s*\{\s*\\text\s*\{\s*o\s*\}\s*\}"
)
_RELATION_ALIASES = (
    (re.compile(r"\\(?:leqslant|leq|le)(?![A-Za-z])|<="), "\\le "),
    (re.compile(r"\\(?:geqslant|geq|ge)(?![A-Za-z])|>="), "\\ge "),
    (re.compile(r"\\(?:neq|ne)(?![A-Za-z])|!="), "\\ne "),
    (re.compile(r"\\(?:dots|cdots|ldots)(?![A-Za-z])|\.\.\.|\u2026"), "\\ldots "),
    (re.compile(r"\\(?:varnothing)(?![A-Za-z])"), "\\emptyset "),
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
)
_TEXT_COMMAND = re.compile(
    r"\\(?:text|textnormal|textbf|textit|textrm|mathrm|mathit|mbox|rm|operatorname)"
    r"\s*\{"
)
_SHORT_FRAC = (
    (re.compile(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*([0-9A-Za-z])\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])"), r"\\frac\1{\2}"),
    (re.compile(r"\\sqrt\s*([0-9A-Za-z])"), r"\\sqrt{\1}"),
)
UNITS = frozenset(
    """
cm mm km m meter meters metre metres kilometer kilometers mile miles ft foot feet inch inches in yd yard
yards g kg gram grams kilogram kilograms lb lbs pound pounds oz ounce ounces l liter liters litre litres
ml s sec second seconds min minute minutes h hr hrs hour hours day days week weeks month months year
years unit units sq square cubic dollar dollars cent cents yuan euro euros rupees degree degrees deg rad
radian radians mph kmh percent percentage pct people students ways points cookies apples marbles times
""".split()
)
_CONNECTORS = frozenset({"and", "or"})
# A unit after a number: "35 cm", "1,000.99m\u00b2" (a one-letter unit only right after a digit).
_TRAILING_UNIT = re.compile(
    r"(?<=[0-9}.)\s])\s*(?:\\text\s*\{\s*)?(?P<unit>[A-Za-z]+)(?:\s*\})?"
    r"(?:\s*\^\s*\{?[23]\}?)?\s*$"
)
_TRAILING_TEXT = re.compile(
    r"\\(?:text|textnormal|textbf|textit|textrm|mathrm|mbox)\s*"
    r"\{\s*(?P<words>[A-Za-z][A-Za-z .]*)\}(?:\s*\^\s*\{?[23]\}?)?\s*$"
)
# "1{,}000" groups thousands; "2{,}5" is a decimal comma (typeset without the comma's space).
# A unit typeset after a number: "300 \\mathrm{~K}", "4.5\\,\\mathrm{m/s}", "9.8\\,\\mathrm{m\\,s^{-2}}" (one level
# of braces inside), with an optional power after it.
_TRAILING_UNIT_COMMAND = re.compile(
    r"(?<=[0-9}])\s*\\(?:mathrm|text|textrm|textnormal|mbox|rm)\s*"
    r"\{(?P<unit>[^{}]{0,60}(?:\{[^{}]{0,20}\}[^{}]{0,60}){0,4})\}(?:\s*\^\s*\{?-?[0-9]\}?)?\s*$"
)
_GROUPED_DIGITS = re.compile(r"(?<=[0-9])\s*\{\s*,\s*\}\s*(?=[0-9]{3}(?![0-9]))")
_DECIMAL_GROUP_COMMA = re.compile(r"(?<=[0-9])\s*\{\s*,\s*\}\s*(?=[0-9])")
# "2\frac{1}{3}", "-3 \frac{3}{4}": a whole number and a proper fraction written as one number.
_MIXED_NUMBER = re.compile(r"([+-]?)([0-9]+)(?:\s*\\frac\{([0-9]+)\}\{([0-9]+)\}|\s+([0-9]+)/([0-9]+))")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_THOUSANDS_COMMA = re.compile(r"[+-]?[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_THOUSANDS_SPACE = re.compile(r"[+-]?[1-9][0-9]{0,2}(?: [0-9]{3})+(?:\.[0-9]+)?")
_DECIMAL_COMMA = re.compile(r"[+-]?[0-9]+,[0-9]+")
# A number standing alone (not inside an identifier such as "x2" or "file_0").
_NUMBER_TOKEN = re.compile(r"(?<![A-Za-z0-9_.,])[0-9]+(?:[.,][0-9]+)*(?![A-Za-z0-9_])")
# A plain word of prose: letters only, delimited by whitespace or punctuation that ends a word.
_WORD = re.compile(r"(?:(?<=\s)|^)[A-Za-z]{3,}(?=[\s.,;:!?]|$)")
MAX_BOX_NESTING = 50


class NestingError(ValueError):
    """An answer nests ``\\boxed``/``\\text`` deeper than the guard allows."""


def _matching_brace(text: str, open_pos: int) -> int:
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == "{" and text[i - 1 : i] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1 : i] != "\\":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _unwrap_whole_box(text: str) -> str:
    for _ in range(MAX_BOX_NESTING + 1):
        m = re.match(r"\\(?:boxed|fbox)\s*\{", text)
        if not m:
            return text
        close = _matching_brace(text, m.end() - 1)
        if close != len(text) - 1:
            return text
        text = text[m.end() : close].strip()
    raise NestingError(f"\\boxed nested deeper than {MAX_BOX_NESTING}")


def _unwrap_text(text: str) -> str:
    """``\\text{word}`` stays (a word token for the parser, ``\\mathrm`` etc. folded into it); any
    other ``\\text{...}`` is replaced by its content."""
    for _ in range(MAX_BOX_NESTING + 1):
        m = _TEXT_COMMAND.search(text)
        if not m:
            return text
        out = []
        pos = 0
        while m:
            close = _matching_brace(text, m.end() - 1)
            if close < 0:
                return text
            inner = text[m.end() : close].strip()
            out.append(text[pos : m.start()])
            if re.fullmatch(r"[A-Za-z]{2,}", inner):
                out.append(f"\\text{{{inner}}}")
            else:
                out.append(f" {inner} ")
            pos = close + 1
            m = _TEXT_COMMAND.search(text, pos)
        out.append(text[pos:])
        new = "".join(out)
        if new == text:
            return text
        text = new
        if not _TEXT_COMMAND.search(re.sub(r"\\text\{[A-Za-z]{2,}\}", "", text)):
            return text
    raise NestingError(f"\\text nested deeper than {MAX_BOX_NESTING}")


def canonical_number(text: str) -> str | None:
    """Canonical form of a plain decimal number (``+025.50`` -> ``25.5``), else None."""
    if not _NUMBER.fullmatch(text):
        return None
    sign = "-" if text.startswith("-") else ""
    body = text.lstrip("+-")
    whole, _, frac = body.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return "0" if out == "0" else sign + out


def single_number(text: str) -> str | None:
    """The canonical number when ``text`` is exactly one number, also written with thousands
    separators (``7,425,000``, ``1 000``) or a decimal comma (``2,74``, ``0,111``); else None."""
    text = text.strip()
    if canonical_number(text) is not None:
        return canonical_number(text)
    if _THOUSANDS_COMMA.fullmatch(text):
        return canonical_number(text.replace(",", ""))
    if _THOUSANDS_SPACE.fullmatch(text):
        return canonical_number(text.replace(" ", ""))
    if _DECIMAL_COMMA.fullmatch(text):
        return canonical_number(text.replace(",", "."))
    return None


def decimal_comma_reading(text: str) -> str | None:
    """``6,8`` may be the list 6, 8 or the decimal 6.8 (``0,111`` too; ``1,000`` is a thousand):
    the decimal reading when ``text`` is that ambiguous, else None."""
    text = text.strip()
    if _DECIMAL_COMMA.fullmatch(text) and not _THOUSANDS_COMMA.fullmatch(text):
        return canonical_number(text.replace(",", "."))
    return None


def is_prose(text: str) -> bool:
    """True when the span still holds plain words (not units, connectors or LaTeX commands)."""
    return any(w.lower() not in UNITS and w.lower() not in _CONNECTORS for w in _WORD.findall(text))


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (used only inside an extracted answer span)."""
    found = _NUMBER_TOKEN.findall(text)
    return found[-1] if found else None


def _strip_unit_command(text: str) -> str:
    """Drops a ``\\mathrm{}``/``\\text{}`` unit that ends an answer after a number (not a connector
    word, and not the whole answer)."""
    m = _TRAILING_UNIT_COMMAND.search(text)
    if m is None or not re.search(r"[A-Za-z]", m.group("unit")) or not text[: m.start()].strip():
        return text
    if m.group("unit").strip(" ~").lower() in _CONNECTORS:
        return text
    return text[: m.start()].rstrip()


def _strip_units(text: str) -> str:
    for _ in range(3):
        m = _TRAILING_TEXT.search(text)
        if m and text[: m.start()].strip() and m.group("words").strip().lower() not in _CONNECTORS:
            text = text[: m.start()].rstrip()
            continue
        m = _TRAILING_UNIT.search(text)
        if m and m.group("unit").lower() in UNITS and text[: m.start()].strip():
            # "5m" may be 5 times m: a one-letter unit needs a space before it or a power after it.
            if len(m.group("unit")) > 1 or m.group()[0].isspace() or "^" in m.group():
                text = text[: m.start()].rstrip()
                continue
        break
    return text


_E_NOTATION = re.compile(r"(?<![A-Za-z0-9_.\\])([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE]([+-]?)([0-9]{1,4})(?![0-9.^_])")


def scientific_notation(text: str) -> str:
    """``4.5e33``, ``1e-5``, ``6.02E+23`` -> ``4.5\\times 10^{33}``, ... : a number, ``e``/``E`` and an
    integer is one number (Minerva writes 58 of its golds so), read before any ``e`` could be
    taken for Euler's number (exponents of at most 4 digits: no big-integer work on
    hostile input); ``e^{-5}`` or ``2e`` (no number or no exponent) are left alone."""
    return _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times 10^{{{'-' if m.group(2) == '-' else ''}{m.group(3)}}}", text)


def thousands_number(text: str) -> str | None:
    """The canonical number when ``text`` is one number grouped by commas (``1,000,000``), else None."""
    text = text.strip()
    return canonical_number(text.replace(",", "")) if _THOUSANDS_COMMA.fullmatch(text) else None


# "0.\\overline{3}", "1.2\\overline{45}": a repeating decimal.
_REPEATING = re.compile(r"(?<![0-9.])([0-9]{0,30})\.([0-9]{0,30})\\overline\{([0-9]{1,30})\}")


def _repeating_decimal(m: re.Match) -> str:
    whole, fixed, repeat = m.group(1) or "0", m.group(2), m.group(3)
    # x = whole.fixed(repeat)...: x * 10^k * (10^r - 1) = (whole fixed repeat) - (whole fixed)
    den = 10 ** len(fixed) * (10 ** len(repeat) - 1)
    num = int(whole + fixed + repeat) - int(whole + fixed)
    return f"\\frac{{{num}}}{{{den}}}"


def _mixed_number(text: str) -> str:
    """``2\\frac{1}{3}`` or ``2 1/3`` -> ``\\frac{7}{3}`` when the whole answer is that one number (a proper
    fraction after a whole number); elsewhere juxtaposition stays a product (``2\\frac{x}{3}``)."""
    m = _MIXED_NUMBER.fullmatch(text)
    if m is None:
        return text
    sign, whole = m.group(1), m.group(2)
    num, den = (m.group(3), m.group(4)) if m.group(3) else (m.group(5), m.group(6))
    if len(whole) + len(den) > 100:  # no big-integer work on hostile input
        return text
    whole, num, den = int(whole), int(num), int(den)
    if not 0 < num < den:
        return text
    return f"{'-' if sign == '-' else ''}\\frac{{{whole * den + num}}}{{{den}}}"


def normalize_answer(text: str, gold_is_number: bool = False) -> str:
    """Normalises an answer span (see the module docstring); ``gold_is_number`` enables the
    thousands-separator and decimal-comma readings of a single number."""
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], text.strip())
    text = scientific_notation(text)
    if not re.search(r"(?<!\\)\\begin", text):  # in a matrix, "\\" before a command is a row break
        text = _DOUBLE_ESCAPED.sub(lambda m: "\\" + m.group(1) if m.group(1) in KNOWN_COMMANDS else m.group(), text)
    text = text.replace("**", "")
    text = _SIZING.sub(" ", text)
    text = _NOISE.sub(" ", text)
    text = _THOUSANDS_NEGATIVE_SPACE.sub("", text)
    text = _NEGATIVE_SPACE.sub("", text)
    text = _SPACING.sub(" ", text)
    text = _FRAC_ALIASES.sub(r"\\frac", text)
    text = _BINOM_ALIASES.sub(r"\\binom", text)
    text = _DEGREES.sub("", text)
    text = text.replace("\\$", "").replace("\\%", "%").replace("$", "")
    text = re.sub(r"\\[()\[\]]", " ", text)
    text = _unwrap_whole_box(text.strip())
    text = _strip_unit_command(text)
    text = text.replace("%", " ")
    text = re.sub(r"\s+", " ", text).strip().rstrip(".,;: ").strip()
    text = _unwrap_text(text)
    for pattern, replacement in _RELATION_ALIASES:
        text = pattern.sub(lambda _, r=replacement: r, text)
    for pattern, replacement in _SHORT_FRAC:
        text = pattern.sub(replacement, text)
    text = _GROUPED_DIGITS.sub("", text)
    text = _DECIMAL_GROUP_COMMA.sub(".", text)
    text = re.sub(r"\s+", " ", text).strip().rstrip(".,;: ").strip()
    text = _strip_units(text)
    if is_prose(text):
        number = last_number(text)
        if number is not None:
            text = number
    text = _REPEATING.sub(_repeating_decimal, text)
    text = _mixed_number(text)
    if gold_is_number:
        number = single_number(text)
        if number is not None:
            return number
    return canonical_number(text) or text
