"""Symbolic dimensions: the normal-form rules, rendering, and agreement with int arithmetic."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from netc.compiler import symbolic as sym
from netc.compiler.symbolic import Sym

H = Sym.var("H")
W = Sym.var("W")


# --- the rules, one by one -------------------------------------------------------------------


def test_add_folds_into_the_numerator():
    # floor((a·x + b)/d) + c = floor((a·x + b + c·d)/d)
    assert sym.add(H, 3) == Sym("H", 1, 3, 1)
    assert sym.add(sym.floordiv(H, 2), 1) == sym.floordiv(sym.add(H, 2), 2)
    assert sym.add(sym.add(H, 5), -5) == H


def test_nested_floordiv_divides_once():
    # floor(floor(y/d)/q) = floor(y/(d·q))
    assert sym.floordiv(sym.floordiv(H, 2), 3) == sym.floordiv(H, 6)
    assert sym.floordiv(sym.floordiv(sym.add(H, 1), 2), 2) == Sym("H", 1, 1, 4)


def test_common_factor_cancels():
    # floor((g·a·x + g·b)/(g·d)) = floor((a·x + b)/d)
    assert sym.floordiv(sym.add(sym.mul(H, 2), 2), 4) == sym.floordiv(sym.add(H, 1), 2)
    # floor((g·a·x + b)/(g·d)) = floor((a·x + floor(b/g))/d): a·g·x + b never crosses a
    # multiple of g·d between the two
    assert sym.floordiv(sym.add(sym.mul(H, 2), 1), 4) == sym.floordiv(H, 2)
    assert sym.floordiv(sym.add(sym.mul(H, 2), -1), 4) == sym.floordiv(sym.add(H, -1), 2)


def test_exact_division_leaves_an_affine_form():
    # floor((k·d·x + b)/d) = k·x + floor(b/d)
    assert sym.floordiv(sym.add(sym.mul(H, 6), 7), 3) == sym.add(sym.mul(H, 2), 2)
    assert sym.floordiv(sym.add(sym.mul(H, 2), 1), 2) == H


def test_mul_of_affine_stays_flat_and_of_floored_nests():
    assert sym.mul(sym.add(H, 1), 3) == Sym("H", 3, 3, 1)
    half = sym.floordiv(sym.add(H, 1), 2)
    assert sym.mul(half, 2) == Sym(half, 2, 0, 1)
    # a·(a'·x + b') + b = (a·a')·x + (a·b' + b): nothing nests on an affine base
    assert Sym.make(Sym("H", 2, 1, 1), 3, 1, 2) == Sym("H", 3, 2, 1)


def test_nested_form_with_unit_coefficient_unnests():
    # floor((floor(y/d) + b)/q) = floor((y + b·d)/(d·q)); a no-op wrapper is its base
    half = sym.floordiv(sym.add(H, 1), 2)
    assert sym.mul(half, 1) == half
    assert sym.floordiv(sym.mul(half, 2), 2) == half
    assert sym.floordiv(sym.mul(half, 2), 4) == sym.floordiv(sym.add(H, 1), 4)
    assert sym.add(sym.floordiv(sym.mul(half, 3), 3), 1) == sym.floordiv(sym.add(H, 3), 2)


def test_ceildiv_is_floordiv_of_the_shifted_value():
    assert sym.ceildiv(H, 2) == sym.floordiv(sym.add(H, 1), 2)
    assert sym.ceildiv(sym.mul(H, 4), 2) == sym.mul(H, 2)


def test_zero_coefficient_gives_an_int():
    assert Sym.make("H", 0, 7, 2) == 3
    assert sym.mul(H, 0) == 0


def test_ints_stay_ints():
    assert sym.add(5, 2) == 7
    assert sym.mul(5, 2) == 10
    assert sym.floordiv(7, 2) == 3
    assert sym.ceildiv(7, 2) == 4
    assert sym.is_static(3) and not sym.is_static(H)
    assert sym.variables(3) == set()
    assert sym.variables(sym.mul(sym.floordiv(W, 2), 3)) == {"W"}


def test_rendering():
    assert str(H) == "H"
    assert str(sym.add(H, -3)) == "H-3"
    assert str(sym.mul(H, 2)) == "2*H"
    assert str(sym.add(sym.mul(H, 2), 1)) == "2*H+1"
    assert str(sym.floordiv(H, 2)) == "H//2"
    assert str(sym.floordiv(sym.add(H, 1), 2)) == "(H+1)//2"
    assert str(sym.floordiv(sym.mul(H, 3), 2)) == "(3*H)//2"
    assert str(sym.mul(sym.floordiv(sym.add(H, 1), 2), 3)) == "3*((H+1)//2)"
    assert str(sym.add(sym.mul(sym.floordiv(sym.add(H, 5), 32), 2), 4)) == "2*((H+5)//32)+4"
    assert sym.fmt(7) == "7"


def test_evaluate():
    x = sym.add(sym.mul(sym.floordiv(sym.add(H, 1), 2), 3), 1)  # 3·ceil(H/2) + 1
    assert [sym.evaluate(x, {"H": h}) for h in (1, 2, 3, 4)] == [4, 4, 7, 7]
    assert sym.evaluate(5, {}) == 5


def test_probably_equal():
    half = sym.floordiv(sym.add(H, 1), 2)
    assert sym.probably_equal(half, sym.ceildiv(H, 2))
    assert sym.probably_equal(3, 3) and not sym.probably_equal(3, 4)
    assert not sym.probably_equal(sym.mul(half, 2), sym.add(H, 1))  # differs at even H
    assert not sym.probably_equal(H, sym.add(H, 1))
    assert not sym.probably_equal(H, 5)


def test_sizes_of_different_variables_are_never_equal():
    # equal wherever the variables are (every sample sets them alike), but independent
    assert not sym.probably_equal(Sym.var("H"), Sym.var("H_b"))
    assert not sym.probably_equal(sym.floordiv(H, 2), sym.floordiv(Sym.var("Hb"), 2))
    assert not sym.probably_equal(H, W)
    assert not sym.probably_equal(sym.floordiv(H, 1024), 0)  # 0 at every sample, not for all H


# --- properties: random op sequences against int arithmetic ---------------------------------

STEP = st.one_of(
    st.tuples(st.just("add"), st.integers(-6, 6)),
    st.tuples(st.just("mul"), st.integers(1, 4)),
    st.tuples(st.just("floordiv"), st.integers(1, 5)),
    st.tuples(st.just("ceildiv"), st.integers(1, 5)),
)
INT_OPS = {
    "add": lambda x, c: x + c,
    "mul": lambda x, m: x * m,
    "floordiv": lambda x, q: x // q,
    "ceildiv": lambda x, q: -(-x // q),
}


def _build(steps):
    x = H
    for name, value in steps:
        x = getattr(sym, name)(x, value)
    return x


def _run_int(steps, h):
    for name, value in steps:
        h = INT_OPS[name](h, value)
    return h


def _check_normal_form(x: Sym) -> None:
    assert x.a != 0 and x.d >= 1
    assert math.gcd(x.a, x.d) == 1, f"{x!r}: a and d share a factor"
    if isinstance(x.base, Sym):
        assert x.base.d > 1, f"{x!r}: nests an affine base"
        assert x.a != 1, f"{x!r}: nests with coefficient 1"
        _check_normal_form(x.base)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(steps=st.lists(STEP, max_size=6), sizes=st.lists(st.integers(-40, 600), min_size=8))
def test_symbolic_matches_int_arithmetic(steps, sizes):
    x = _build(steps)
    for h in sizes:
        assert sym.evaluate(x, {"H": h}) == _run_int(steps, h)
    if isinstance(x, Sym):
        _check_normal_form(x)
        assert x.variables() == {"H"}


def _flat(x) -> bool:
    return isinstance(x, Sym) and isinstance(x.base, str)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(first=st.lists(STEP, max_size=5), second=st.lists(STEP, max_size=5))
def test_flat_normal_form_is_unique(first, second):
    """Two flat forms floor((a·H + b)/d) denote the same function iff they are equal.

    With gcd(a, d) = 1 the slope a/d fixes (a, d) and one period of d fixes b, so
    agreement on [-3·d·d', 3·d·d'] is agreement everywhere.
    """
    x, y = _build(first), _build(second)
    if not (_flat(x) and _flat(y)):
        return
    reach = 3 * x.d * y.d + 3
    same = all(x.evaluate({"H": h}) == y.evaluate({"H": h}) for h in range(-reach, reach))
    assert same == (x == y), f"{x!r} vs {y!r}"
    if x == y:
        assert str(x) == str(y)


FORM = st.tuples(st.integers(1, 6), st.integers(-12, 12), st.integers(1, 8))


@settings(derandomize=True, max_examples=400, deadline=None)
@given(first=FORM, second=FORM)
def test_make_normalises_flat_forms_uniquely(first, second):
    x, y = Sym.make("H", *first), Sym.make("H", *second)
    for h in range(-30, 60):
        assert sym.evaluate(x, {"H": h}) == (first[0] * h + first[1]) // first[2]
    if not (_flat(x) and _flat(y)):
        return
    _check_normal_form(x)
    reach = 3 * x.d * y.d + 3
    same = all(x.evaluate({"H": h}) == y.evaluate({"H": h}) for h in range(-reach, reach))
    assert same == (x == y), f"{x!r} vs {y!r}"
