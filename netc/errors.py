"""Error kinds shared by every part of netc.

User mistakes (a bad network file, a bad request, bad data) are `UserError`s:
the CLI prints their message and exits with status 2, the server maps them to
gRPC status codes. Anything else escaping netc is our own bug (`InternalError`
or an unexpected exception) and exits with status 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


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
    """Something the user gave us is wrong; the message says what and where."""


class InternalError(NetcError):
    """An invariant of netc itself failed: a bug, not a user mistake."""


class SpecError(UserError):
    """A mistake in a network description.

    Rendered as `file:line:col: layer 'x': message (expected E, found F); hint`.
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
        self.loc = loc
        self.layer = layer
        self.expected = expected
        self.found = found
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        parts = []
        if self.loc is not None:
            parts.append(f"{self.loc}: ")
        parts.append("error: ")
        if self.layer:
            parts.append(f"layer '{self.layer}': ")
        parts.append(self.message)
        if self.expected is not None or self.found is not None:
            details = []
            if self.expected is not None:
                details.append(f"expected {self.expected}")
            if self.found is not None:
                details.append(f"found {self.found}")
            parts.append(f" ({', '.join(details)})")
        if self.hint:
            parts.append(f"\n  hint: {self.hint}")
        return "".join(parts)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


class ConfigError(UserError):
    """A bad training setting; `key` is its dotted path, e.g. 'training.optimizer.lr'."""

    def __init__(
        self,
        key: str,
        message: str,
        *,
        expected: str | None = None,
        found: str | None = None,
        loc: SourceLoc | None = None,
    ) -> None:
        self.key, self.loc = key, loc
        text = f"{loc}: " if loc else ""
        text += f"error: {key}: {message}"
        details = [f"expected {expected}" if expected else "", f"found {found}" if found else ""]
        details = [d for d in details if d]
        if details:
            text += f" ({', '.join(details)})"
        super().__init__(text)


class DataError(UserError):
    """A data set that cannot be used: the message names the file or value at fault."""
