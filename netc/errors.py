"""Error kinds shared by every part of netc.

User mistakes (a bad network file, a bad request, bad data) are `UserError`s:
the CLI prints their message and exits with status 2, the server maps them to
gRPC status codes. Anything else escaping netc is our own bug (`InternalError`
or an unexpected exception) and exits with status 1.

Messages are written without an "error: " label. `render` adds it, in this one
place, where a person reads them on a terminal (`netc.cli`); a gRPC client
receives the message as it is (`serving.errors.failure`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SourceLoc:
    """A position in a description file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class NetcError(Exception):
    """Base of every error netc raises on purpose."""


class UserError(NetcError):
    """Something the user gave us is wrong; the message says what and where.

    A mistake with a place in a file keeps it apart, in `loc`: `str(error)` is
    `file:line:col: message`, and `render` puts its label between the two.
    """

    def __init__(self, message: str, *, loc: SourceLoc | None = None) -> None:
        self.loc = loc
        self.detail = message  # the message without its place
        super().__init__(f"{loc}: {message}" if loc is not None else message)


class InternalError(NetcError):
    """An invariant of netc itself failed: a bug, not a user mistake."""


class SpecError(UserError):
    """A mistake in a network description.

    Reads `file:line:col: layer 'x': message (expected E, found F)` and a hint line.
    """

    def __init__(
        self,
        message: str,
        *,
        loc: SourceLoc | None = None,
        layer: str | None = None,
        expected: str | None = None,
        found: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.layer = layer
        self.expected = expected
        self.found = found
        self.hint = hint
        parts = [f"layer '{layer}': " if layer else "", message]
        if expected is not None or found is not None:
            details = []
            if expected is not None:
                details.append(f"expected {expected}")
            if found is not None:
                details.append(f"found {found}")
            parts.append(f" ({', '.join(details)})")
        if hint:
            parts.append(f"\n  hint: {hint}")
        super().__init__("".join(parts), loc=loc)


def render(error: UserError | str) -> str:
    """A user's mistake as the terminal shows it: `error: message`, or
    `file:line:col: error: message` when it has a place. A str is a message without one."""
    if isinstance(error, str):
        return f"error: {error}"
    if error.loc is None:
        return f"error: {error.detail}"
    return f"{error.loc}: error: {error.detail}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def describe(value: Any) -> str:
    """How a raw YAML value reads in an error message (cut short: a value repeated
    through aliases could otherwise make a message of gigabytes)."""
    if isinstance(value, bool):
        text = f"boolean {str(value).lower()}"
    elif isinstance(value, int):
        digits = len(str(value)) if abs(value) < 10**4000 else None
        text = f"integer {value}" if digits and digits <= 40 else "an integer of many digits"
    elif isinstance(value, float):
        text = f"number {value}"
    elif isinstance(value, str):
        text = f"string '{value[:200]}'" + ("…" if len(value) > 200 else "")
    elif value is None:
        text = "nothing (null)"
    elif isinstance(value, list):
        shown = ", ".join(_short(item) for item in value[:20])
        text = f"list [{shown}{', …' if len(value) > 20 else ''}]"
    elif isinstance(value, dict):
        keys = [str(key) for key in list(value)[:20]]
        text = f"mapping {{{', '.join(keys)}{', …' if len(value) > 20 else ''}}}"
    else:
        text = repr(value)[:200]
    return text if len(text) <= MAX_DESCRIBED else text[:MAX_DESCRIBED] + "…"


MAX_DESCRIBED = 300


def _short(item: Any) -> str:
    if isinstance(item, (list, dict)):
        return "[…]" if isinstance(item, list) else "{…}"
    return repr(item) if not isinstance(item, str) else f"'{item[:40]}'"


class ConfigError(UserError):
    """A bad training setting; `key` is its dotted path, e.g. 'training.optimizer.lr'."""

    def __init__(
        self,
        key: str,
        message: str,
        *,
        expected: str | None = None,
        found: str | None = None,
        hint: str | None = None,
        loc: SourceLoc | None = None,
    ) -> None:
        self.key, self.hint = key, hint
        text = f"{key}: {message}"
        details = [f"expected {expected}" if expected else "", f"found {found}" if found else ""]
        details = [d for d in details if d]
        if details:
            text += f" ({', '.join(details)})"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text, loc=loc)


class DataError(UserError):
    """A data set that cannot be used: the message names the file or value at fault."""
