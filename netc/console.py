"""What commands say on stderr besides their results: notes, warnings and last words.

Results go to stdout; everything a person should read while a command runs, or
why it stopped, goes to stderr through these, so `--quiet` and the ranks of
`netc train --nproc N` (netc.runtime.launch) are handled in one place.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RANK_ERRORS_ENV = "NETC_RANK_ERRORS"  # set for the ranks: where their final messages go


def say(message: str, quiet: bool = False) -> None:
    """A note or warning on stderr, unless `quiet`."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def final_message(text: str, code: int) -> None:
    """How a command's last words leave: to stderr, or, in a rank started by
    `netc.runtime.launch.run_local`, to its launcher."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        print(text, file=sys.stderr)
        return
    rank = os.environ.get("RANK", "0")
    try:
        Path(folder, f"rank{rank}.json").write_text(json.dumps({"code": code, "text": text}))
    except OSError:  # the launcher is gone; say it here rather than not at all
        print(text, file=sys.stderr)
