"""Test-suite set-up: shared helpers importable as `helpers` and `torch_zoo`."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for folder in (_TESTS, _TESTS / "reference"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
