"""Attribute kinds: validate a raw description value and normalise it.

Each kind is a function `raw -> normalised value` that raises `AttrTypeError`
with what it expected; the caller adds the file location and layer name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netc.errors import describe

REQUIRED = object()


class AttrTypeError(ValueError):
    def __init__(self, expected: str, found: Any, hint: str | None = None) -> None:
        self.expected = expected
        self.found = describe(found)
        self.hint = hint
        super().__init__(f"expected {expected}, found {self.found}")


@dataclass(frozen=True)
class Attr:
    kind: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_at_least(low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not _is_int(value) or value < low:
            raise AttrTypeError(f"an integer >= {low}", value)
        return value

    return check


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def pair(low: int) -> Callable[[Any], tuple[int, int]]:
    """An int or an [h, w] pair of ints >= low, as (h, w)."""

    def check(value: Any) -> tuple[int, int]:
        if _is_int(value) and value >= low:
            return (value, value)
        if (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and len(value) == 2
            and all(_is_int(v) and v >= low for v in value)
        ):
            return (value[0], value[1])
        raise AttrTypeError(f"an integer >= {low} or an [h, w] pair of them", value)

    return check


positive_pair = pair(1)
non_negative_pair = pair(0)


def conv_padding(value: Any) -> Any:
    """'same', 'valid', an int or an [h, w] pair (resolved later against the kernel)."""
    if value in ("same", "valid"):
        return value
    try:
        return non_negative_pair(value)
    except AttrTypeError:
        raise AttrTypeError("'same', 'valid', an integer >= 0 or an [h, w] pair", value) from None


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise AttrTypeError("true or false", value)
    return value


def number(low: float | None = None, high: float | None = None) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)  # .nan passes every comparison below
        if ok and low is not None and value < low:
            ok = False
        if ok and high is not None and value > high:
            ok = False
        if not ok:
            bounds = f" in [{low}, {high}]" if low is not None and high is not None else ""
            bounds = bounds or (f" >= {low}" if low is not None else "")
            raise AttrTypeError(f"a number{bounds}", value)
        return float(value)

    return check


def drop_probability(value: Any) -> float:
    """Dropout's p: the probability of zeroing an element. 1.0 would zero every one
    (and scale the rest by 1/0), so the range is [0, 1)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and 0 <= value < 1):
        raise AttrTypeError(
            "a drop probability in [0, 1)",
            value,
            hint="p is the probability of dropping a unit (PyTorch's convention); the "
            "dropout paper and CS231n's p is the keep probability, 1 - this p",
        )
    return float(value)


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise AttrTypeError("one of " + ", ".join(f"'{c}'" for c in choices), value)
        return value

    return check


def positive_int_list(value: Any) -> tuple[int, ...]:
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and value
        and all(_is_int(v) and v >= 1 for v in value)
    ):
        return tuple(value)
    raise AttrTypeError("a non-empty list of integers >= 1", value)


def crop_offset(value: Any) -> Any:
    if value == "auto":
        return value
    try:
        return non_negative_pair(value)
    except AttrTypeError:
        raise AttrTypeError("'auto', an integer >= 0 or an [h, w] pair", value) from None


def any_int(value: Any) -> int:
    if not _is_int(value):
        raise AttrTypeError("an integer", value)
    return value


def optional(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return None if value is None else kind(value)

    return check
