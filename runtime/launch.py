"""`netc train --nproc N`: the same command in N processes on this machine.

torchrun's own launcher runs in this process (as `torchrun --standalone` would),
so a failure comes back as an exception, not as torchrun's report. Each rank
writes its final message (a user error, an internal error) to a file instead
of stderr; the launcher prints each distinct message once and exits 2 for a
user error, 1 for anything else. The ranks' progress and epoch lines still go
straight to the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from netc.console import RANK_ERRORS_ENV
from netc.errors import render


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set variables the ranks inherit, and put back what was there."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _launcher_silenced() -> Iterator[None]:
    """torchrun's agent logs every worker failure with its own report; the ranks'
    messages say what went wrong."""
    logger = logging.getLogger("torch.distributed")
    handler, propagate = logging.NullHandler(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def run_local(nproc: int, argv: Sequence[str]) -> int:
    """Run `netc ARGV` in `nproc` processes (DDP ranks 0..nproc-1); the exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone picks
        max_restarts=0,
    )
    # as torchrun does: N processes share the cores, so each runs one thread unless told
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="netc-ranks-") as folder:
        with _environ(**{RANK_ERRORS_ENV: folder, "OMP_NUM_THREADS": threads}):
            try:
                with _launcher_silenced():
                    elastic_launch(config, sys.executable)("-m", "netc", *argv)
            except ChildFailedError as failed:
                return _report(failed, Path(folder))
            except SignalException:
                print("interrupted", file=sys.stderr)
                return 130
    return 0


def _report(failed, folder: Path) -> int:
    """Each rank's distinct final message once, in rank order; 2 when every message is a
    user error, else 1."""
    said = []
    for path in sorted(folder.glob("rank*.json"), key=lambda p: int(p.stem[4:])):
        try:
            said.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not said:  # a rank died without a word: a signal, the out-of-memory killer
        for rank, failure in sorted(failed.failures.items()):
            how = (
                f"signal {-failure.exitcode}"
                if failure.exitcode < 0
                else f"exit status {failure.exitcode}"
            )
            said.append({"code": 1, "text": render(f"training process {rank} ended with {how}")})
    texts = list(dict.fromkeys(entry["text"] for entry in said))
    print("\n".join(texts), file=sys.stderr)
    return 2 if all(entry["code"] == 2 for entry in said) else 1
