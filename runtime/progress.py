"""A one-line progress bar on stderr (only when it is a terminal) and epoch lines."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, prefix: str, enabled: bool = True) -> None:
        self.total, self.prefix = total, prefix
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def update(self, done: int, **values: float) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < 0.1 and done < self.total):
            return
        self.last_draw = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        stats = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
        sys.stderr.write(
            f"\r{self.prefix} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done}/{self.total}  {stats}  {now - self.start:.1f}s\033[K"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
