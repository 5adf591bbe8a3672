"""Test-suite set-up: shared helpers importable as `helpers` and `torch_zoo`, and the
`netc` logger as each test found it."""

import logging
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for folder in (_TESTS, _TESTS / "reference"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(autouse=True)
def _netc_logger_restored():
    """A test that runs `netc serve` in-process (netc.cli.main) has it configure logging:
    a handler on the stderr pytest captured for that test, closed after it, and the
    `netc` logger's level. Put both back, so later tests' log lines neither go to a
    closed stream nor miss caplog."""
    logger = logging.getLogger("netc")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
