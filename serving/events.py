"""Structured log lines: one per model lifecycle event, one per request at debug level.

A line is `key=value` pairs (logfmt), the event first, so log tools can parse it:

    event=load model=digits version=1 seconds=0.12
    event=failure model=digits action=reload reason="... cannot load ..."
    event=request model=digits version=1 code=OK ms=0.84 queue_ms=0.05 infer_ms=0.61

Lifecycle events (`log_event`) go to the `netc.serving.events` logger, at info (a
failure at warning); request lines (`log_request`) to `netc.serving.requests`, at
debug. `netc serve --log-level` picks what reaches stderr (`configure`).
"""

from __future__ import annotations

import logging
import sys
from typing import IO

EVENTS = logging.getLogger("netc.serving.events")
REQUESTS = logging.getLogger("netc.serving.requests")
LEVELS = ("debug", "info", "warning", "error")


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") or "0"
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def format_event(event: str, **fields: object) -> str:
    """`event=EVENT key=value ...`, in the order given; None values are left out and a
    value with spaces, quotes or '=' is quoted."""
    pairs = [("event", event), *((k, v) for k, v in fields.items() if v is not None)]
    return " ".join(f"{key}={_value(value)}" for key, value in pairs)


def log_event(event: str, **fields: object) -> None:
    """One lifecycle line: `load`, `unload`, `reload` (at info) or `failure` (at
    warning, with a `reason`), e.g. `log_event("load", model="digits", version="1",
    seconds=0.12)`."""
    level = logging.WARNING if event == "failure" else logging.INFO
    if EVENTS.isEnabledFor(level):
        EVENTS.log(level, format_event(event, **fields))


def requests_logged() -> bool:
    """Whether request lines are wanted (checked before building one)."""
    return REQUESTS.isEnabledFor(logging.DEBUG)


def log_request(
    model: str,
    version: str,
    code: str,
    total_ns: int,
    queue_ns: int | None = None,
    infer_ns: int | None = None,
) -> None:
    """One request's line: its model version, gRPC status name and times in ms."""
    REQUESTS.debug(
        format_event(
            "request",
            model=model,
            version=version,
            code=code,
            ms=total_ns / 1e6,
            queue_ms=None if queue_ns is None else queue_ns / 1e6,
            infer_ms=None if infer_ns is None else infer_ns / 1e6,
        )
    )


def configure(level: str = "warning", stream: IO[str] | None = None) -> None:
    """Send netc's log lines at `level` and above to `stream` (stderr), as bare lines:
    the server's own words, as before, and the events' key=value pairs."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, found '{level}'")
    logger = logging.getLogger("netc")
    for handler in [h for h in logger.handlers if getattr(h, "netc_events", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.netc_events = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
