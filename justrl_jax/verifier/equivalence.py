"""Are two parsed answers the same answer? The equivalence cascade, stopping at the first decisive
step for each pair of values:

1. structural equality of the SymPy objects (exact rationals are canonical in SymPy);
2. numbers: exact for integers and fractions; with a relative tolerance only
   (|a-b| <= 1e-6 * max(|a|, |b|)) when either was written as a decimal, so 0 needs an exact 0 and
   1/2004! is not 1/2006!;
3. constants (no symbols): both evaluated to 40 digits; exact answers must agree to 1e-25
   relatively, decimal ones to 1e-6;
4. expressions with symbols: a numeric spot check at fixed irrational points first (a cheap,
   decisive "no" for almost every wrong answer, and no expansion of (x+1)^10000), then
   ``simplify(a - b) == 0`` only when the points cannot decide (undefined functions, sums);
5. structure, recursively: ordered tuples, unordered sets and lists (duplicates ignored), intervals
   with their endpoint types (``(a, b)`` may be a tuple or an open interval), unions of pieces in
   any order, matrices entry by entry;
6. relations: ``x = 5`` and ``f(x) = 5`` mean 5 (a label on the left); ``a = b = 5`` means 5;
   equations compare as lhs - rhs up to a constant factor (checked to be constant), inequalities
   up to a positive factor, ``a < x \\le b`` and ``x \\in S`` as the set they describe.
"""

from __future__ import annotations

import sympy
from sympy.core.function import AppliedUndef

from justrl_jax.verifier.answer import Interval, Items, ItemsKind, Relation, SetOp, Word
from justrl_jax.verifier.latex import ELLIPSIS, PM

APPROX_RTOL = sympy.Float("1e-6")
EXACT_RTOL = sympy.Float("1e-25")
_DIGITS = 40
# Irrational-looking points away from 0, 1 and the usual singularities.
_POINTS = (
    sympy.Float("0.7390851332151606416553120876738734040134", _DIGITS),
    sympy.Float("1.3247179572447460259609088544780973407344", _DIGITS),
    sympy.Float("2.2360679774997896964091736687312762354406", _DIGITS),
    sympy.Float("0.4142135623730950488016887242096980785697", _DIGITS),
    sympy.Float("1.7724538509055160272981674833411451827975", _DIGITS),
)
_MAX_SIMPLIFY_OPS = 300
_MAX_ITEMS = 256
_INEQUALITY_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def equivalent(pred, gold) -> bool:
    """True when the parsed prediction means the parsed gold (see the module docstring)."""
    labelled_p, labelled_g = _labelled(pred), _labelled(gold)
    if labelled_p is not None and labelled_g is not None:
        # "a = 1, b = 2" against "b = 1, a = 2": the labels must match, not just the values.
        return _unordered_by(
            labelled_p, labelled_g, lambda x, y: _equal(x[0], y[0]) and _equal(value_of(x[1]), value_of(y[1]))
        )
    for p in _readings(pred):
        for g in _readings(gold):
            if _equal(p, g):
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Readings: what an answer means as a value.


def _readings(node) -> list:
    approximate = _approximate_parts(node)
    if approximate is not None:
        return [r for part in approximate for r in _readings(part)]
    value = value_of(node)
    return [value] if value == node else [value, node]


def _approximate_parts(node) -> list | None:
    """``x = 1/3 \\approx 0.33``: the exact statement (``x = 1/3``) and the approximate value
    (``0.33``), each a reading of the answer; None when ``node`` has no ``\\approx``."""
    if not (isinstance(node, Relation) and "~" in node.ops and set(node.ops) <= {"=", "~"}):
        return None
    cut = node.ops.index("~")
    exact_ops, exact_parts = node.ops[:cut], node.parts[: cut + 1]
    exact = Relation(exact_ops, exact_parts) if exact_ops else exact_parts[0]
    return [exact, node.parts[-1]]


def _is_constant(value) -> bool:
    return isinstance(value, sympy.Basic) and not isinstance(value, sympy.MatrixBase) and not value.free_symbols


def is_label(node) -> bool:
    """x, a_3, f(x), AB, A:B, (p, q), \\text{Area}: names that an answer may be written after."""
    if isinstance(node, Word):
        return True
    if isinstance(node, Items):
        return node.kind is ItemsKind.TUPLE and all(is_label(i) for i in node.items)
    if not isinstance(node, sympy.Basic) or isinstance(node, sympy.MatrixBase):
        return False
    if isinstance(node, sympy.Symbol):
        return node is not ELLIPSIS
    if isinstance(node, AppliedUndef):
        return True
    if isinstance(node, sympy.Abs):  # |AB|, |\\vec{v}|: a length; |x| = 2 is a condition on x, not x's value
        inner = node.args[0]
        return (isinstance(inner, sympy.Mul) and is_label(inner)) or (
            isinstance(inner, sympy.Symbol) and inner.name.startswith("\\")
        )
    if isinstance(node, sympy.Add):  # m + n, a + b + c: the quantity asked for
        return all(isinstance(a, sympy.Symbol) and a is not ELLIPSIS for a in node.args)
    if isinstance(node, sympy.Mul):
        return all(
            isinstance(a, sympy.Symbol)
            or (isinstance(a, sympy.Pow) and isinstance(a.base, sympy.Symbol) and a.exp in (1, -1))
            for a in node.args
        )
    return False


def value_of(node):
    """The value an answer states: the right-hand side after a label, the set a condition on one
    variable describes, each item's value in a list."""
    if isinstance(node, Items):
        if _assignments_of(node) is not None:
            # "p = 5, q = 2": the values in the order written, (5, 2)
            return Items(ItemsKind.TUPLE, tuple(value_of(v) for _, v in _assignments_of(node)), "()")
        return Items(node.kind, tuple(value_of(i) for i in node.items), node.brackets)
    if not isinstance(node, Relation):
        return node
    ops, parts = node.ops, node.parts
    if all(op == "=" for op in ops):
        if is_label(parts[0]) or len(parts) > 2 or (_is_constant(parts[0]) and _is_constant(parts[-1])):
            return value_of(parts[-1])
        return node
    if ops == ("in",) and is_label(parts[0]):
        return parts[1]
    as_set = _condition_set(node)
    return as_set if as_set is not None else node


def _condition_set(node: Relation):
    """``a < x <= b``, ``x >= 2``, ``1 <= |z| <= 3/2``: the set of the one variable, or None."""
    if not node.ops or any(op not in _INEQUALITY_FLIP for op in node.ops):
        return None
    if not all(isinstance(p, sympy.Basic) and not isinstance(p, sympy.MatrixBase) for p in node.parts):
        return None
    directions = {op[0] for op in node.ops}
    if len(directions) != 1:
        return None
    # Simple forms without solving: label op constant (op label op constant).
    parts, ops = list(node.parts), list(node.ops)
    if ops[0][0] == ">":
        parts, ops = parts[::-1], [_INEQUALITY_FLIP[o] for o in ops[::-1]]
    # |z| is a label of a value but a condition on it is not an interval of z: it is solved below.
    var = [is_label(p) and not isinstance(p, sympy.Abs) for p in parts]
    if len(parts) == 2 and var[0] and _is_constant(parts[1]):
        return Interval(-sympy.oo, parts[1], True, ops[0] == "<")
    if len(parts) == 2 and _is_constant(parts[0]) and var[1]:
        return Interval(parts[0], sympy.oo, ops[0] == "<", True)
    if len(parts) == 3 and var[1] and _is_constant(parts[0]) and _is_constant(parts[2]):
        return Interval(parts[0], parts[2], ops[0] == "<", ops[1] == "<")
    return _solve_condition(parts, ops)


def _solve_condition(parts, ops):
    free = set().union(*(p.free_symbols for p in parts))
    if len(free) != 1 or any(p.has(AppliedUndef, sympy.Sum, sympy.Product, PM) for p in parts):
        return None
    (symbol,) = free
    real = sympy.Symbol(symbol.name, real=True)
    solved = sympy.S.Reals
    relations = {"<": sympy.Lt, "<=": sympy.Le}
    try:
        for left, op, right in zip(parts, ops, parts[1:], strict=False):
            condition = relations[op](left.xreplace({symbol: real}), right.xreplace({symbol: real}))
            solved = solved.intersect(sympy.solve_univariate_inequality(condition, real, relational=False))
    except (NotImplementedError, ValueError, TypeError):
        return None
    return _from_sympy_set(solved)


def _from_sympy_set(value):
    if isinstance(value, sympy.Interval):
        return Interval(value.start, value.end, bool(value.left_open), bool(value.right_open))
    if isinstance(value, sympy.FiniteSet):
        return Items(ItemsKind.SET, tuple(value.args), "{}")
    if isinstance(value, sympy.Union):
        pieces = [_from_sympy_set(a) for a in value.args]
        if any(p is None for p in pieces):
            return None
        out = pieces[0]
        for piece in pieces[1:]:
            out = SetOp("cup", out, piece)
        return out
    if value is sympy.S.Reals:
        return Interval(-sympy.oo, sympy.oo, True, True)
    return None


# ---------------------------------------------------------------------------------------------
# Structural comparison


def _equal(a, b) -> bool:
    if isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic):
        if a.has(PM) or b.has(PM):
            return _values_equal(a, b) or _unordered(_expand_pm(a), _expand_pm(b))
        return _values_equal(a, b)
    if isinstance(a, Word) or isinstance(b, Word):
        return _word(a) is not None and _word(a) == _word(b)
    if isinstance(a, Items) and len(a.items) == 1 and a.kind is not ItemsKind.SET:
        return _equal(a.items[0], b)
    if isinstance(b, Items) and len(b.items) == 1 and b.kind is not ItemsKind.SET:
        return _equal(a, b.items[0])
    if isinstance(a, Items) and isinstance(b, Items):
        return _items_equal(a, b)
    if isinstance(b, sympy.Basic) and b.has(PM) and isinstance(a, Items):
        return _unordered(_expand_pm_items(a.items), _expand_pm(b))
    if isinstance(a, sympy.Basic) and a.has(PM) and isinstance(b, Items):
        return _unordered(_expand_pm(a), _expand_pm_items(b.items))
    if isinstance(a, (Interval, Items, SetOp)) and isinstance(b, (Interval, Items, SetOp)):
        return _sets_equal(a, b)
    if isinstance(a, Relation) and isinstance(b, Relation):
        return _relations_equal(a, b)
    return False


def _word(value) -> str | None:
    if isinstance(value, Word):
        return value.text.casefold()
    if isinstance(value, sympy.Symbol) and value is not ELLIPSIS:
        return value.name.casefold()
    return None


def _expand_pm(value) -> list:
    if isinstance(value, sympy.Basic) and value.has(PM):
        return [value.xreplace({PM: sympy.Integer(1)}), value.xreplace({PM: sympy.Integer(-1)})]
    return [value]


def _expand_pm_items(items) -> list:
    return [v for item in items for v in _expand_pm(item)]


def _dedupe(values: list) -> list:
    out: list = []
    for v in values:
        if not any(v == w for w in out):
            out.append(v)
    return out


def _assignments_of(node: Items) -> list | None:
    """[(label, value), ...] when a list assigns values to at least two different labels
    (``p = 5, q = 2``); None otherwise (``x = 1, x = 2`` lists the roots of one unknown)."""
    pairs = _labelled(node)
    if pairs is None or len(_dedupe([label for label, _ in pairs])) != len(pairs):
        return None
    return pairs


def _labelled(node) -> list | None:
    """[(label, value), ...] when ``node`` lists at least two "label = value" items, else None."""
    if not (isinstance(node, Items) and node.kind is not ItemsKind.TUPLE and len(node.items) > 1):
        return None
    pairs = []
    for item in node.items:
        if not (isinstance(item, Relation) and item.ops == ("=",) and is_label(item.parts[0])):
            return None
        pairs.append((item.parts[0], item.parts[1]))
    return pairs


def _unordered(xs: list, ys: list) -> bool:
    return _unordered_by(xs, ys, _equal)


def _unordered_by(xs: list, ys: list, equal) -> bool:
    xs, ys = _dedupe(xs), _dedupe(ys)
    if len(xs) != len(ys) or len(xs) > _MAX_ITEMS:
        return False
    used = [False] * len(ys)
    for x in xs:
        for j, y in enumerate(ys):
            if not used[j] and equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def _items_equal(a: Items, b: Items) -> bool:
    ordered = any(i is ELLIPSIS for i in a.items + b.items)
    # A tuple against a bare list ("(5, 2)" and "5, 2"): the list is the tuple written without brackets.
    ordered = ordered or {a.kind, b.kind} == {ItemsKind.TUPLE, ItemsKind.LIST}
    if a.kind is ItemsKind.TUPLE or b.kind is ItemsKind.TUPLE or ordered:
        if not (a.kind is b.kind or ordered):
            # (a, b) read as an open interval against a set of pieces is handled by _sets_equal
            return _as_interval(a) is not None and _as_interval(b) is not None and _sets_equal(a, b)
        return len(a.items) == len(b.items) and all(_equal(x, y) for x, y in zip(a.items, b.items, strict=True))
    return _unordered(_expand_pm_items(a.items), _expand_pm_items(b.items))


def _as_interval(node):
    if isinstance(node, Interval):
        return node
    if isinstance(node, Items) and node.kind is ItemsKind.TUPLE and node.brackets == "()" and len(node.items) == 2:
        lo, hi = node.items
        if isinstance(lo, sympy.Basic) and isinstance(hi, sympy.Basic):
            return Interval(lo, hi, True, True)
    return None


def _pieces(node) -> list | None:
    """A union flattened into its pieces (intervals and finite sets)."""
    if isinstance(node, SetOp):
        if node.op != "cup":
            return None
        left, right = _pieces(node.left), _pieces(node.right)
        return None if left is None or right is None else left + right
    interval = _as_interval(node)
    if interval is not None:
        return [interval]
    if isinstance(node, Items) and node.kind is ItemsKind.SET:
        return [node]
    if isinstance(node, Items) and node.kind is ItemsKind.LIST and all(isinstance(i, Interval) for i in node.items):
        return list(node.items)  # "x < -2 or x > 3": the union of the conditions' intervals
    return None


def _sets_equal(a, b) -> bool:
    if isinstance(a, SetOp) and isinstance(b, SetOp) and (a.op != "cup" or b.op != "cup"):
        return a.op == b.op and _equal(a.left, b.left) and _equal(a.right, b.right)
    pa, pb = _pieces(a), _pieces(b)
    if pa is None or pb is None or len(pa) != len(pb):
        return False
    used = [False] * len(pb)
    for x in pa:
        for j, y in enumerate(pb):
            if not used[j] and _piece_equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def _piece_equal(a, b) -> bool:
    if isinstance(a, Interval) and isinstance(b, Interval):
        return (
            a.lo_open == b.lo_open
            and a.hi_open == b.hi_open
            and _values_equal(a.lo, b.lo)
            and _values_equal(a.hi, b.hi)
        )
    if isinstance(a, Items) and isinstance(b, Items):
        return _items_equal(a, b)
    return False


# ---------------------------------------------------------------------------------------------
# Relations


def _difference(relation: Relation):
    left, right = relation.parts
    if not (isinstance(left, sympy.Basic) and isinstance(right, sympy.Basic)):
        return None
    if isinstance(left, sympy.MatrixBase) or isinstance(right, sympy.MatrixBase):
        return None
    return left - right


def _relations_equal(a: Relation, b: Relation) -> bool:
    if len(a.ops) == 1 and len(b.ops) == 1:
        op_a, op_b = a.ops[0], b.ops[0]
        if op_a in ("=", "!=") and op_a == op_b:
            da, db = _difference(a), _difference(b)
            if da is not None and db is not None and _proportional(da, db, positive=False):
                return True
        if op_a in _INEQUALITY_FLIP and op_b in _INEQUALITY_FLIP:
            qa, qb = _positive_part(a), _positive_part(b)
            if qa is not None and qb is not None and qa[1] == qb[1]:
                return _proportional(qa[0], qb[0], positive=True)
        if op_a == op_b == "in":
            return _equal(a.parts[0], b.parts[0]) and _equal(a.parts[1], b.parts[1])
    if a.ops == b.ops and all(_equal(x, y) for x, y in zip(a.parts, b.parts, strict=True)):
        return True
    flipped = tuple(_INEQUALITY_FLIP.get(op, op) for op in reversed(b.ops))
    return a.ops == flipped and all(_equal(x, y) for x, y in zip(a.parts, reversed(b.parts), strict=True))


def _positive_part(relation: Relation):
    """``a < b`` -> (b - a, strict): the quantity the relation says is positive."""
    diff = _difference(relation)
    if diff is None:
        return None
    op = relation.ops[0]
    return (-diff if op[0] == "<" else diff), len(op) == 1


def _proportional(a, b, positive: bool) -> bool:
    """a = c * b for a constant c (c > 0 when ``positive``), checked at points, then symbolically."""
    if is_undefined(a) or is_undefined(b):
        return False
    if a == b:
        return True
    free = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    rtol = APPROX_RTOL if (a.has(sympy.Float) or b.has(sympy.Float)) else EXACT_RTOL
    ratios = []
    for point in _assignments(free):
        va, vb = _evaluate(a, point), _evaluate(b, point)
        if va is None or vb is None or vb == 0:
            continue
        ratios.append(va / vb)
    if len(ratios) >= 2:
        first = ratios[0]
        if first == 0 or not all(_close(r, first, rtol) for r in ratios):
            return False
        return not positive or bool(sympy.re(first) > 0)
    if a.has(sympy.Sum, sympy.Product) or b.has(sympy.Sum, sympy.Product):
        return False
    quotient = _simplify(a / b)
    if quotient is None or quotient.free_symbols or quotient == 0:
        return False
    return not positive or bool(quotient.is_positive)


# ---------------------------------------------------------------------------------------------
# Values


def is_undefined(value) -> bool:
    """Division by zero (``zoo``) or an indeterminate form (``nan``): equal to nothing, not even to
    another undefined value (``1/0`` is not ``5/0``, ``12:00`` is not ``1:00``)."""
    return isinstance(value, sympy.Basic) and value.has(sympy.zoo, sympy.nan)


def _values_equal(a, b) -> bool:
    if is_undefined(a) or is_undefined(b):
        return False
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)) or a.shape != b.shape:
            return False
        return all(_values_equal(x, y) for x, y in zip(a, b, strict=True))
    if a == b:
        return True
    approx = a.has(sympy.Float) or b.has(sympy.Float)
    rtol = APPROX_RTOL if approx else EXACT_RTOL
    if a.is_Number and b.is_Number:
        if not approx or not (a.is_finite and b.is_finite):
            return False
        return _close(a, b, rtol)
    free = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    if not free:
        va, vb = _evaluate(a, {}), _evaluate(b, {})
        if va is not None and vb is not None:
            if not _close(va, vb, rtol):
                return False
            return approx or _difference_vanishes(a, b, max(abs(va), abs(vb)))
        return _simplify_is_zero(a - b)
    if a.has(sympy.Sum, sympy.Product) or b.has(sympy.Sum, sympy.Product):
        return _big_operators_equal(a, b)
    agree = 0
    for point in _assignments(free):
        va, vb = _evaluate(a, point), _evaluate(b, point)
        if va is None or vb is None:
            continue
        if not _close(va, vb, rtol):
            return False
        agree += 1
    if agree >= 3:
        return True
    return _simplify_is_zero(a - b)


def _difference_vanishes(a, b, scale) -> bool:
    """Exact constants that agree to 40 digits: is a - b zero rather than tiny (sqrt(2) + 10^-30)?
    SymPy evaluates the difference with the working precision it needs to resolve cancellation."""
    try:
        diff = (a - b).evalf(_DIGITS + 30)
        return diff == 0 or bool(abs(diff) <= sympy.Float("1e-60") * scale)
    except (ValueError, TypeError, ArithmeticError):
        return True  # the 40-digit agreement stands


def _big_operators_equal(a, b) -> bool:
    """Sums and products: the same limits and equal bodies (SymPy's simplify on unevaluated sums is
    slow and rarely decisive; the index is just a symbol of the bodies here)."""
    if type(a) is not type(b) or not isinstance(a, (sympy.Sum, sympy.Product)):
        return False
    if len(a.limits) != len(b.limits):
        return False
    for (ia, lo_a, hi_a), (ib, lo_b, hi_b) in zip(a.limits, b.limits, strict=True):
        if ia != ib or not (_values_equal(lo_a, lo_b) and _values_equal(hi_a, hi_b)):
            return False
    return _values_equal(a.function, b.function)


def _assignments(symbols: list) -> list[dict]:
    if not symbols:
        return [{}]
    # Points 1 and 3 are negative, so |x| is not x and sqrt(x^2) is not x; the others positive.
    out = []
    for k in range(len(_POINTS)):
        sign = -1 if k in (1, 3) else 1
        out.append({s: sign * _POINTS[(k + 2 * i) % len(_POINTS)] * (1 + i) for i, s in enumerate(symbols)})
    return out


def _evaluate(expr, point: dict):
    """``expr`` at ``point`` as a finite number at 40 digits, or None when it is not one. Sums and
    products are not evaluated (SymPy's numeric summation is slow and needs integer limits)."""
    if expr.has(sympy.Sum, sympy.Product):
        return None
    try:
        value = expr.xreplace(point).evalf(_DIGITS) if point else expr.evalf(_DIGITS)
    except (ValueError, TypeError, ArithmeticError, AttributeError, RecursionError, NotImplementedError):
        return None
    if not value.is_number or value.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    if value.free_symbols or value.has(AppliedUndef):
        return None
    return value


def _close(a, b, rtol) -> bool:
    try:
        diff = abs(sympy.N(a - b, _DIGITS))
        scale = max(abs(sympy.N(a, _DIGITS)), abs(sympy.N(b, _DIGITS)))
        return bool(diff <= rtol * scale)
    except (TypeError, ValueError):
        return False


def _simplify(expr):
    if sympy.count_ops(expr) > _MAX_SIMPLIFY_OPS:
        return None
    try:
        return sympy.simplify(expr)
    except (ValueError, TypeError, NotImplementedError, AttributeError, RecursionError):
        return None


def _simplify_is_zero(diff) -> bool:
    if diff == 0:
        return True
    simplified = _simplify(diff)
    return simplified is not None and simplified == 0
