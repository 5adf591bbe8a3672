"""Makes `nets` (this folder's small hand-made networks) importable; the `lenet` fixture."""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def lenet():
    from nets import lenet5

    return lenet5()
