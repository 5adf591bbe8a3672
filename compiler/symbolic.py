"""Symbolic tensor dimensions for open input sizes (and the batch dimension).

A dimension is an `int` or a `Sym`. A `Sym` is kept in one normal form,

    Sym(base, a, b, d)  =  floor((a·base + b) / d)

where `base` is a variable name ("N", "H", "W") or another `Sym`. Every size
rule of a ConvNet layer is affine followed by a floor division, so this form
is closed under what shape inference needs:

    floor((a·x + b)/d) + c       = floor((a·x + b + c·d)/d)
    floor((floor(y/d) + b)/q)    = floor((y + b·d)/(d·q))
    floor((g·a·x + b)/(g·d))     = floor((a·x + floor(b/g))/d)    (g = gcd(a, d))

the last with g = d giving floor((k·d·x + b)/d) = k·x + floor(b/d). So a
form without nesting has gcd(a, d) = 1, and then equal forms are equal
functions. Multiplying a floored form (d > 1) nests it as the base of a new
form. Equality is structural on the normal form; `probably_equal` also
compares values at sample sizes for the rare nested forms that normalise
differently. Sizes of different variables (H and W, or two inputs' own
sizes) are never known to be equal: each grows with its own variable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard, Union

from netc.errors import InternalError

Dim = Union[int, "Sym"]

SAMPLE_SIZES = (1, 2, 3, 5, 7, 8, 13, 16, 31, 32, 61, 64, 97, 128, 224, 227, 255, 256, 500, 512)


@dataclass(frozen=True, repr=False)
class Sym:
    base: str | Sym
    a: int = 1
    b: int = 0
    d: int = 1

    @staticmethod
    def var(name: str) -> Sym:
        return Sym(name)

    @staticmethod
    def make(base: str | Sym, a: int, b: int, d: int) -> Dim:
        if d < 0:
            a, b, d = -a, -b, -d
        if a == 0:
            return b // d
        # floor((g·a·x + b)/(g·d)) = floor((a·x + floor(b/g))/d): no multiple of g·d
        # lies strictly between g·a·x + g·floor(b/g) and g·a·x + b
        g = math.gcd(a, d)
        a, b, d = a // g, b // g, d // g
        if isinstance(base, Sym) and (base.d == 1 or a == 1):
            # a·(a'·x + b') + b = (a·a')·x + (a·b' + b)            (d' = 1)
            # floor((floor(y/d') + b)/d) = floor((y + b·d')/(d'·d))  (a = 1)
            return Sym.make(base.base, a * base.a, a * base.b + b * base.d, base.d * d)
        return Sym(base, a, b, d)

    def evaluate(self, env: dict[str, int]) -> int:
        inner = env[self.base] if isinstance(self.base, str) else self.base.evaluate(env)
        return (self.a * inner + self.b) // self.d

    def variables(self) -> set[str]:
        return {self.base} if isinstance(self.base, str) else self.base.variables()

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        inner = self.base if isinstance(self.base, str) else f"({self.base})"
        text = inner if self.a == 1 else f"{self.a}*{inner}"
        if self.b:
            text += f"{'+' if self.b > 0 else '-'}{abs(self.b)}"
        if self.d != 1:
            text = f"({text})//{self.d}" if (self.a != 1 or self.b) else f"{text}//{self.d}"
        return text


def add(x: Dim, c: int) -> Dim:
    """x + c"""
    if isinstance(x, int):
        return x + c
    return Sym.make(x.base, x.a, x.b + c * x.d, x.d)


def mul(x: Dim, m: int) -> Dim:
    """x · m"""
    if isinstance(x, int):
        return x * m
    if x.d == 1:
        return Sym.make(x.base, x.a * m, x.b * m, 1)
    return Sym.make(x, m, 0, 1)


def floordiv(x: Dim, q: int) -> Dim:
    """floor(x / q) for q > 0"""
    if isinstance(x, int):
        return x // q
    return Sym.make(x.base, x.a, x.b, x.d * q)


def ceildiv(x: Dim, q: int) -> Dim:
    """ceil(x / q) = floor((x + q - 1) / q) for q > 0"""
    return floordiv(add(x, q - 1), q)


def evaluate(x: Dim, env: dict[str, int]) -> int:
    return x if isinstance(x, int) else x.evaluate(env)


def variables(x: Dim) -> set[str]:
    return set() if isinstance(x, int) else x.variables()


def is_static(x: Dim) -> TypeGuard[int]:
    return isinstance(x, int)


def static(x: Dim) -> int:
    """x where the caller knows it is fixed: a channel or feature count (the description
    fixes an input's, every op computes its own from attributes), or a size of a shape
    already checked static."""
    if not isinstance(x, int):
        raise InternalError(f"size {x} is open where a fixed size is needed")
    return x


def probably_equal(x: Dim, y: Dim) -> bool:
    """True when x and y are the same size for every input size we sample.

    Only forms of one variable are compared by samples: floor((a·x + b)/d) with
    a > 0 is unbounded in x, so it cannot equal a constant or a form of another
    variable for every size, though it may at every sample (H and H_b at H = H_b).
    """
    if x == y:
        return True
    names = variables(x) | variables(y)
    if len(names) != 1 or variables(x) != variables(y):
        return False
    return all(
        evaluate(x, env) == evaluate(y, env)
        for size in SAMPLE_SIZES
        for env in [dict.fromkeys(names, size)]
    )


def fmt(x: Dim) -> str:
    return str(x)
