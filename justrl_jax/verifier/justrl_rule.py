"""JustRL's evaluation rule (``grade_answer_verl`` in thunlp/JustRL ``evals/utils.py``), restated.

The paper's table was graded by this rule and, where it says no, by a model judge (see
``justrl_jax.evaluation.judge``). The rule, as the released code decides it:

1. **The answer** is the content of the *last* ``\\boxed`` in the whole response (thinking
   included), read by brace matching from that ``\\boxed``. When that last ``\\boxed`` is not
   directly followed by ``{`` (``\\boxed 5``) or its braces never close, there is no answer: an
   earlier, complete box does not count. ``\\fbox`` never counts: the released code looks for it
   only when the response has no ``\\boxed`` at all, and it only looks when there is one.
   A gold that contains ``\\boxed`` is read the same way; an empty gold is never matched.
2. **Hendrycks' MATH normalisation** of both (``mathd``): drop an enclosing ``\\text{}``, line
   breaks, ``\\!``, ``\\left``/``\\right``, degrees, ``\\$``, ``\\%``, units after ``\\text{ ``,
   a short ``k =`` prefix and spaces; ``tfrac``/``dfrac`` -> ``frac``; ``\\frac12`` ->
   ``\\frac{1}{2}``; ``\\sqrt3`` -> ``\\sqrt{3}``; ``0.5`` -> ``\\frac{1}{2}``; ``a/b`` of two
   integers -> ``\\frac{a}{b}``. Equal strings are correct.
3. **Otherwise the SymPy comparison** (from PRM800K's grader): a second normalisation
   (``_normalize_sympy``: units and words dropped, LaTeX rendered to plain text as pylatexenc
   does, braces dropped, lower case, integers canonical). Equal strings are correct. Tuples and
   intervals (brackets at both ends, no brackets inside) are compared item by item and must have
   the same brackets and length. Two plain fractions ``a/b`` must be equal as strings (an
   unreduced fraction does not match the reduced gold); an integer never matches a non-integer
   string; anything else is correct when SymPy simplifies ``(gold) - (answer)`` to 0, tried
   only when the expression has at most two distinct letters and no ``^{``, ``^(``, ``^n^`` or
   multi-digit exponent.

**Safety.** The released rule calls ``sympy.parse_expr`` (which runs ``eval``) on model text. We
never eval, sympify or parse_expr model text: :func:`parse_plain` is a small recursive-descent
parser of the normalised plain-math string that builds the same SymPy objects that
``parse_expr`` with implicit multiplication would build for the inputs that can reach it
(numbers, letters, ``+ - * / ^ !``, parentheses, implicit products, ``sqrt(..)``, ``ln(..)``,
``pi``, ``oo``), and refuses everything else (which the released rule could only have decided
by evaluating Python). ``sympy.simplify`` can still take long on odd input, so the ``Verifier``
runs this mode in its worker pool under the usual deadline (a timeout scores as incorrect).

**Where the released behaviour is not reproduced** (documented, and rare in graded answers):

* pylatexenc's LaTeX-to-text renders hundreds of macros; :func:`latex_to_text` covers fractions,
  roots, Greek letters, the common operators and relations, spacing, escapes, accents, matrices
  (``[ a b; c d ]``) and text-like macros, and renders any other macro as nothing (as pylatexenc
  does for unknown ones). It keeps ``\\mathbf``/``\\mathbb``/``\\mathcal`` letters plain
  (pylatexenc maps them to styled Unicode letters) and expects no ``$`` (the rule removes them
  first; pylatexenc spaces math mode differently). On all 1,446 golds of MATH-500, OlympiadBench
  and Minerva both normalisations equal the released ones (tests/test_verifier_justrl.py).
* In the SymPy step, names other than ``pi``, ``oo``, ``sqrt(..)`` and ``ln(..)`` that SymPy would
  resolve to objects (``nan``, ``zoo``, ``re``, ``im``, ``li``, ``ff``, ``rf``), Python literals
  (hexadecimal, complex ``2j``) and comparisons of containers are refused: the answer is not
  correct by this step. The released rule marks such pairs correct only in contrived cases.
* SymPy's ``simplify`` time is bounded by the pool's deadline (none in the released rule).
"""

from __future__ import annotations

import re
import unicodedata

# --- 1. the answer: the last \boxed ---------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` of ``text``; None when the last ``\\boxed`` has no
    directly following brace group or its braces never close."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                whole = text[start : i + 1]
                prefix = "\\boxed{"
                return whole[len(prefix) : -1] if whole.startswith(prefix) else None
    return None


def extract_answer(text: str) -> str | None:
    """The rule's answer of a response (or a boxed gold): None without ``\\boxed``."""
    return last_boxed(text) if "\\boxed" in text else None


# --- 2. Hendrycks' MATH normalisation ---------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"^\\text\{(?P<text>.+?)\}$")


class _Unchanged(Exception):
    """The released normaliser raised on this input; it then returns the input unchanged."""


def _fix_fracs(string: str) -> str:
    parts = string.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part:
            raise _Unchanged  # "\\frac" at the end: the released code indexes past the end
        if part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return string
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(string: str) -> str:
    pieces = string.split("/")
    if len(pieces) != 2:
        return string
    try:
        a, b = int(pieces[0]), int(pieces[1])
    except ValueError:
        return string
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " not in string:
        return string
    parts = string.split("\\text{ ")
    if len(parts) != 2:
        raise _Unchanged
    return parts[0]


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    parts = string.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if not part:
            raise _Unchanged
        out += "\\sqrt" + part if part[0] == "{" else "\\sqrt{" + part[0] + "}" + part[1:]
    return out


def _strip_string(string: str) -> str:
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    sides = string.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 3" -> "3"
        string = sides[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def mathd_normalize(answer: str | None) -> str | None:
    """Hendrycks' MATH answer normalisation, as the released rule applies it."""
    if answer is None:
        return None
    answer = answer.strip()
    m = _TEXT_WRAPPER.search(answer)
    if m is not None:
        answer = m.group("text").strip()
    try:
        return _strip_string(answer)
    except _Unchanged:
        return answer


# --- 3a. LaTeX rendered as plain text (the subset of pylatexenc the rule meets) ---------------------

_GREEK = (
    "alpha beta gamma delta zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau upsilon chi psi omega"
).split()
_UNICODE_NAME = {"lambda": "lamda"}  # Unicode spells it without the b
_SYMBOLS = {
    **{g: unicodedata.lookup(f"GREEK SMALL LETTER {_UNICODE_NAME.get(g, g).upper()}") for g in _GREEK},
    **{g.capitalize(): unicodedata.lookup(f"GREEK CAPITAL LETTER {_UNICODE_NAME.get(g, g).upper()}") for g in _GREEK},
    "epsilon": "\u03f5",
    "varepsilon": "\u03b5",
    "vartheta": "\u03d1",
    "varpi": "\u03d6",
    "phi": "\u03d5",
    "varphi": "\u03c6",
    "Phi": "\u03a6",
    "infty": "\u221e",
    "cup": "\u222a",
    "cap": "\u2229",
    "cdot": "\u00b7",
    "times": "\u00d7",
    "div": "\u00f7",
    "pm": "\u00b1",
    "mp": "\u2213",
    "le": "\u2264",
    "leq": "\u2264",
    "ge": "\u2265",
    "geq": "\u2265",
    "neq": "\u2260",
    "approx": "\u2248",
    "equiv": "\u2261",
    "sim": "\u223c",
    "in": "\u2208",
    "notin": "\u2209",
    "subset": "\u2282",
    "subseteq": "\u2286",
    "to": "\u2192",
    "rightarrow": "\u2192",
    "leftarrow": "\u2190",
    "Rightarrow": "\u21d2",
    "Leftrightarrow": "\u21d4",
    "circ": "\u2218",
    "angle": "\u2220",
    "ldots": "\u2026",
    "dots": "\u2026",
    "cdots": "\u22ef",
    "vdots": "\u22ee",
    "perp": "\u22a5",
    "parallel": "\u2225",
    "emptyset": "\u2205",
    "varnothing": "\u2205",
    "forall": "\u2200",
    "exists": "\u2203",
    "setminus": "\u2216",
    "mid": "|",
    "vert": "|",
    "Vert": "\u2016",
    "nabla": "\u2207",
    "partial": "\u2202",
    "sum": "\u2211",
    "prod": "\u220f",
    "int": "\u222b",
    "ell": "\u2113",
    "lfloor": "\u230a",
    "rfloor": "\u230b",
    "lceil": "\u2308",
    "rceil": "\u2309",
    "langle": "\u27e8",
    "rangle": "\u27e9",
    "prime": "'",
    "backslash": "\\",
    "quad": "  ",
    "qquad": "    ",
    "geqslant": "\u2a7e",
    "leqslant": "\u2a7d",
    "odot": "\u2299",
    "hbar": "\u0127",
    "ast": "\u2217",
    "star": "\u22c6",
    "wedge": "\u2227",
    "vee": "\u2228",
    "bigcup": "\u22c3",
    "textdegree": "\u00b0",
    # pylatexenc knows these function names (and renders sec, csc, cot, gcd, lcm, det, deg as nothing)
    **{f: f for f in "ln log sin cos tan exp lim max min arcsin arccos arctan sinh cosh tanh".split()},
}
_ACCENTS = {"dot": "\u0307", "ddot": "\u0308", "hat": "\u0302", "vec": "\u20d7", "bar": "\u0305", "tilde": "\u0303"}
_BRACKET_ENVIRONMENTS = {"pmatrix", "bmatrix", "smallmatrix", "array"}  # rendered "[ a b; c d ]"
_ESCAPES = {",": " ", ";": " ", ":": " ", " ": " ", "!": "", "\\": "\n", "{": "{", "}": "}"}
_ESCAPES.update({c: c for c in "%$_&#"})
_DISCARD_WITH_ARG = {"mbox"}
_SPECIALS = (("---", "\u2014"), ("--", "\u2013"), ("''", "\u201d"), ("``", "\u201c"), ("~", "\u00a0"), ("&", "   "))


class _LatexReader:
    """Renders LaTeX as pylatexenc's ``latex_to_text`` would, for the macros listed above."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def render(self, stop_at_brace: bool = False) -> str:
        out = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "}" and stop_at_brace:
                return "".join(out)
            if char == "{":
                self.pos += 1
                out.append(self.render(stop_at_brace=True))
                self.pos += 1  # the closing brace (or the end of an unclosed group)
            elif char == "\\":
                out.append(self._macro())
            else:
                for special, repl in _SPECIALS:
                    if text.startswith(special, self.pos):
                        out.append(repl)
                        self.pos += len(special)
                        break
                else:
                    out.append(char)
                    self.pos += 1
        return "".join(out)

    def _macro(self) -> str:
        text = self.text
        self.pos += 1
        if self.pos >= len(text):
            return ""
        if not text[self.pos].isalpha():
            char = text[self.pos]
            self.pos += 1
            return _ESCAPES.get(char, "")
        end = self.pos
        while end < len(text) and text[end].isalpha():
            end += 1
        name, self.pos = text[self.pos : end], end
        if name in ("frac", "nicefrac"):
            return f"{self._argument()}/{self._argument()}"
        if name == "sqrt":
            self._optional()
            return f"\u221a({self._argument()})"
        if name in _DISCARD_WITH_ARG:
            self._argument()
            return ""
        if name in _ACCENTS:  # a combining mark after each character, as pylatexenc writes them
            return "".join(unicodedata.normalize("NFC", c + _ACCENTS[name]) for c in self._argument())
        if name == "begin":
            return self._environment(self._argument())
        if name == "end":
            self._argument()
            return ""
        self._skip_space_after_word()
        return _SYMBOLS.get(name, "")

    def _environment(self, env: str) -> str:
        """A matrix-like environment as ``[ a b; c d ]``; any other renders its content (its ``\\end``
        is read as nothing)."""
        if env not in _BRACKET_ENVIRONMENTS:
            return ""
        if env == "array":
            self._argument()  # the column specification
        end = self.text.find("\\end{" + env + "}", self.pos)
        body = self.text[self.pos : end if end >= 0 else len(self.text)]
        self.pos = len(self.text) if end < 0 else end + len("\\end{" + env + "}")
        rows = [[_LatexReader(cell).render().strip() for cell in row.split("&")] for row in body.split("\\\\")]
        return "[ " + "; ".join(" ".join(cells) for cells in rows) + " ]"

    def _skip_space_after_word(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\n":
            self.pos += 1

    def _argument(self) -> str:
        """A macro's mandatory argument: a brace group, a macro, or one character."""
        self._skip_space_after_word()
        if self.pos >= len(self.text):
            return ""
        char = self.text[self.pos]
        if char == "{":
            self.pos += 1
            content = self.render(stop_at_brace=True)
            self.pos += 1
            return content
        if char == "\\":
            return self._macro()
        self.pos += 1
        return char

    def _optional(self) -> None:
        self._skip_space_after_word()
        if self.pos < len(self.text) and self.text[self.pos] == "[":
            close = self.text.find("]", self.pos)
            self.pos = len(self.text) if close < 0 else close + 1


def latex_to_text(expr: str) -> str:
    """The rule's ``_parse_latex``: fractions spaced for mixed numbers, LaTeX rendered as text, then
    the parser's characters replaced by the names the SymPy step reads."""
    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    expr = _LatexReader(expr).render()
    for char, repl in (("\u221a", "sqrt"), ("\u03c0", "pi"), ("\u221e", "inf"), ("\u222a", "U")):
        expr = expr.replace(char, repl)
    return expr.replace("\u00b7", "*").replace("\u00d7", "*").strip()


# --- 3b. the SymPy step's normalisation and comparison ----------------------------------------------

_UNITS = "degree cm centimeter meter mile second minute hour day week month year foot feet inch yard".split()
_UNIT_PATTERNS = [re.compile(f"{unit}(es)?(s)? *(\\^[0-9]+)?") for unit in _UNITS]
_COMMA_THOUSANDS = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_MIXED_NUMBER = re.compile("([0-9]) +([0-9])")
_FRACTION = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_BAD_EXPONENTS = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
_TUPLE_CHARS = "()[]"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _strip_thousands_commas(expr: str) -> str:
    while True:
        following = _COMMA_THOUSANDS.sub("\\1\\3\\4", expr)
        if following == expr:
            return expr
        expr = following


def _str_is_int(text: str) -> bool:
    try:
        return _is_int(float(_strip_thousands_commas(text)))
    except ValueError:
        return False


def _normalize_sympy(expr: str) -> str:
    """The SymPy step's normalisation (PRM800K's ``_normalize``)."""
    m = _TEXT_WRAPPER.search(expr)
    if m is not None:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for pattern in _UNIT_PATTERNS:
        expr = pattern.sub("", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(",\\\\! *", "", expr)
    if _is_float(expr) and _is_int(float(expr)):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        expr = latex_to_text(expr)
    expr = re.sub("- *", "-", expr)
    expr = _MIXED_NUMBER.sub("\\1+\\2", expr)  # "7 3/4" -> "7+3/4"
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def _may_compare(expr: str) -> bool:
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2 or "^{" in expr or "^(" in expr:
        return False
    return not any(p.search(expr) for p in _BAD_EXPONENTS)


def _split_tuple(expr: str) -> list[str]:
    expr = _strip_thousands_commas(expr)
    if not expr:
        return []
    inner = expr[1:-1]
    if len(expr) > 2 and expr[0] in _TUPLE_CHARS and expr[-1] in _TUPLE_CHARS:
        if all(c not in inner for c in _TUPLE_CHARS):
            return [e.strip() for e in inner.split(",")]
    return [expr]


def equal_under_sympy(gold: str, answer: str) -> bool:
    """``simplify((gold) - (answer)) == 0`` on safely parsed input (False when refused)."""
    expr = f"({gold})-({answer})"
    if not _may_compare(expr):
        return False
    from justrl_jax.verifier.justrl_parse import RefusedError, parse_plain

    try:
        diff = parse_plain(expr.replace("^", "**"))
    except RefusedError:
        return False
    import sympy

    try:
        return sympy.simplify(diff) == 0
    except Exception:  # the released rule treats any SymPy failure as "not equal"
        return False


def grade_sympy(answer: str, gold: str) -> bool:
    """The rule's second stage on the extracted answer and the gold."""
    gold_n, answer_n = _normalize_sympy(gold), _normalize_sympy(answer)
    if gold_n == answer_n:
        return True
    if not answer_n:
        return False
    gold_items, answer_items = _split_tuple(gold_n), _split_tuple(answer_n)
    if len(gold_items) > 1 and (gold_n[0] != answer_n[0] or gold_n[-1] != answer_n[-1]):
        return False
    if len(gold_items) != len(answer_items):
        return False
    for g, a in zip(gold_items, answer_items, strict=True):
        if _FRACTION.search(g) and _FRACTION.search(a):
            ok = g == a  # an unreduced fraction must not match the reduced gold
        elif _str_is_int(g) != _str_is_int(a):
            ok = False  # an integer gold needs an integer answer
        else:
            ok = equal_under_sympy(g, a)
        if not ok:
            return False
    return True


def justrl_grade(response: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) of one response under JustRL's rule.

    Example::

        justrl_grade("<think>... \\\\boxed{3}</think> so \\\\boxed{\\\\frac{1}{2}}", "0.5")   # (True, "\\\\frac{1}{2}")
        justrl_grade("\\\\boxed{3} and \\\\boxed 4", "3")                            # (False, None)
    """
    answer = extract_answer(response)
    return grade_extracted(answer, gold), answer


def grade_extracted(answer: str | None, gold: str) -> bool:
    """The rule on an already extracted answer (None: no answer)."""
    if not gold:
        return False
    if "\\boxed" in gold:
        gold = extract_answer(gold)
        if gold is None:
            return False
    if answer is None:
        return False
    if mathd_normalize(answer) == mathd_normalize(gold):
        return True
    return grade_sympy(answer, gold)


def prepare_justrl(response: str, gold: str):
    """The caller's part in the ``Verifier``: the answer (the last box), and the verdict when no
    SymPy is needed (no answer, no gold); else the pool's task key ``(answer, gold)``."""
    from justrl_jax.verifier.robust import Prepared
    from justrl_jax.verifier.verdict import VerdictStatus

    answer = extract_answer(response)
    if answer is None:
        return Prepared(None, "", gold, VerdictStatus.NO_ANSWER)
    if not gold or ("\\boxed" in gold and extract_answer(gold) is None):
        return Prepared(answer, answer, gold, VerdictStatus.OK, correct=False)
    return Prepared(answer, answer, gold)
