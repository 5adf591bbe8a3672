"""Reading one training setting: `name` or `{type: name, option: value, ...}`.

The loss, optimizer and schedule settings share one shape. `parse_typed` splits
a setting into its type and an `Options` reader whose typed getters check each
value and raise `ConfigError` with the dotted key ('training.optimizer.lr'), the
expected and found values, and a did-you-mean hint for misspelled names. When
the setting came from a description file (a `LocMap`), errors carry its
file:line:column.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Literal, overload

from netc.errors import ConfigError, SourceLoc, describe, did_you_mean


def _loc(mapping: Any, name: str | None = None) -> SourceLoc | None:
    """Where a description file put `mapping` (or its value `name`), when it says."""
    if name is not None and hasattr(mapping, "value_loc"):
        return mapping.value_loc(name)
    return getattr(mapping, "loc", None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_hint(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return None
        # PyYAML follows YAML 1.1, where a float needs a dot: `1e-3` is read as text.
        return "YAML reads '1e-3' as text: write 1.0e-3"
    return None


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "any"


class Options:
    """Typed, checked reads of one setting's options; `key` is the setting's dotted path."""

    def __init__(self, values: Mapping[str, Any], key: str) -> None:
        self.values, self.key = values, key

    def _error(self, name: str, message: str, **details: Any) -> ConfigError:
        return ConfigError(f"{self.key}.{name}", message, loc=_loc(self.values, name), **details)

    @overload
    def number(
        self,
        name: str,
        default: float,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        integer: Literal[False] = False,
    ) -> float: ...

    @overload
    def number(
        self,
        name: str,
        default: int,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        integer: Literal[True],
    ) -> int: ...

    @overload
    def number(
        self,
        name: str,
        default: None,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        integer: Literal[False] = False,
    ) -> float | None: ...

    @overload
    def number(
        self,
        name: str,
        default: None,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        integer: Literal[True],
    ) -> int | None: ...

    def number(
        self,
        name: str,
        default: float | None,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        integer: bool = False,
    ) -> float | None:
        """A finite number in the given interval (an int when `integer`); `default` when unset."""
        value = self.values.get(name, default)
        if value is None and default is None:
            return None
        return self._checked(name, value, low, high, low_open, high_open, integer)

    def _checked(
        self,
        name: str,
        value: Any,
        low: float | None,
        high: float | None,
        low_open: bool,
        high_open: bool,
        integer: bool,
    ) -> float:
        """`value` if it is a finite number in the interval (an int when `integer`)."""
        kind = "an integer" if integer else "a number"
        if not _is_number(value) or (integer and not float(value).is_integer()):
            raise self._error(
                name,
                f"must be {kind}",
                expected=kind,
                found=describe(value),
                hint=_number_hint(value),
            )
        if not math.isfinite(value):
            raise self._error(name, "must be finite", expected=kind, found=describe(value))
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise self._error(
                name,
                "out of range",
                expected=_interval(low, high, low_open, high_open),
                found=describe(value),
            )
        return int(value) if integer else float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.values.get(name, default)
        if not isinstance(value, bool):
            raise self._error(
                name, "must be true or false", expected="true or false", found=describe(value)
            )
        return value

    @overload
    def numbers(
        self,
        name: str,
        default: list[float],
        *,
        length: int,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> list[float]: ...

    @overload
    def numbers(
        self,
        name: str,
        default: None,
        *,
        length: int,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> list[float] | None: ...

    def numbers(
        self,
        name: str,
        default: list[float] | None,
        *,
        length: int,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> list[float] | None:
        """A list of `length` numbers (none null), each in the interval; `default` when unset."""
        value = self.values.get(name, default)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise self._error(
                name,
                f"must be a list of {length} numbers",
                expected=f"a list of {length} numbers",
                found=describe(value),
            )
        if len(value) != length:
            raise self._error(
                name,
                f"must have {length} entries",
                expected=f"{length} entries",
                found=f"{len(value)} entries",
            )
        items = Options({f"{name}[{i}]": v for i, v in enumerate(value)}, self.key)
        return [
            items._checked(f"{name}[{i}]", v, low, high, low_open, high_open, False)
            for i, v in enumerate(value)
        ]


def parse_typed(
    config: Any, key: str, *, types: Mapping[str, Collection[str]], default: str, what: str
) -> tuple[str, Options]:
    """Split a setting into its type and options; `types` maps each type to its option names.

    A setting is `None` (the default type), a type name, or a mapping with an
    optional `type` (the default when absent) and that type's options.
    """
    if config is None:
        return default, Options({}, key)
    values: Mapping[str, Any]
    if isinstance(config, str):
        kind, values, type_key = config, {}, key
    elif isinstance(config, Mapping):
        kind, values, type_key = config.get("type", default), config, f"{key}.type"
    else:
        raise ConfigError(
            key,
            f"must be a {what} name or a mapping",
            expected="a name or {type: name, ...}",
            found=describe(config),
            loc=_loc(config),
        )
    if not isinstance(kind, str) or kind not in types:
        hint = did_you_mean(str(kind), types) or did_you_mean(str(kind).lower(), types)
        raise ConfigError(
            type_key,
            f"unknown {what}",
            expected=" or ".join(types),
            found=describe(kind),
            hint=hint,
            loc=_loc(config, "type") if isinstance(config, Mapping) else None,
        )
    allowed = types[kind]
    for name in values:
        if name != "type" and name not in allowed:
            expected = f"one of {', '.join(sorted(allowed))}" if allowed else "no options"
            raise ConfigError(
                f"{key}.{name}",
                f"unknown option for {what} '{kind}'",
                expected=expected,
                found=f"'{name}'",
                hint=did_you_mean(str(name), allowed),
                loc=config.key_loc(name) if hasattr(config, "key_loc") else None,
            )
    return kind, Options(values, key)
