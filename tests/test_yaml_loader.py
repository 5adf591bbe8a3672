"""The located YAML loader: locations on every value, and a cap on what aliases repeat."""

import pytest

from netc import yaml_loader
from netc.errors import SpecError
from netc.yaml_loader import load_located


def test_values_carry_their_line_and_column():
    data = load_located("name: x\nlayers:\n  - {name: a, op: relu}\n", "f.yaml")
    assert data.key_locs["layers"].line == 2
    assert data["layers"].item_locs[0].line == 3 and data["layers"][0]["op"] == "relu"


def test_only_values_repeated_through_aliases_count_against_the_cap(monkeypatch):
    monkeypatch.setattr(yaml_loader, "MAX_VALUES", 10)
    long = "[" + ", ".join(str(i) for i in range(50)) + "]"
    assert len(load_located(f"a: {long}\n", "f.yaml")["a"]) == 50  # no alias: no limit
    assert len(load_located("a: &a [1, 2, 3]\nb: *a\n", "f.yaml")["b"]) == 3  # 4 repeats
    with pytest.raises(SpecError, match="YAML aliases repeat more than 10 values") as error:
        load_located(f"a: &a {long}\nb: *a\n", "f.yaml")
    assert error.value.loc.file == "f.yaml" and error.value.loc.line == 1  # in the anchor


def test_empty_document_is_refused_unless_allowed():
    with pytest.raises(SpecError, match="the description is empty"):
        load_located("# nothing yet\n", "f.yaml")
    assert load_located("# nothing yet\n", "f.yaml", allow_empty=True) is None
