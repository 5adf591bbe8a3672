"""Error messages carry no "error: " label; `render` adds it, after a mistake's place."""

import io
import pathlib
import re
import tokenize

import pytest

from netc.cli import main
from netc.errors import ConfigError, SourceLoc, SpecError, UserError, render

LOC = SourceLoc("net.yaml", 7, 50)


def test_a_message_without_a_place():
    error = UserError("no run folder 'runs/x'\n  hint: train first")
    assert str(error) == "no run folder 'runs/x'\n  hint: train first"
    assert render(error) == "error: no run folder 'runs/x'\n  hint: train first"
    assert render("the input nests too deeply") == "error: the input nests too deeply"


def test_a_place_comes_before_the_label():
    error = UserError("unknown setting 'lables'", loc=LOC)
    assert str(error) == "net.yaml:7:50: unknown setting 'lables'"
    assert render(error) == "net.yaml:7:50: error: unknown setting 'lables'"


def test_spec_and_config_errors_render_as_before():
    spec = SpecError(
        "unknown input 'conv_1'", loc=LOC, layer="conv2", expected="a layer", found="'conv_1'"
    )
    assert render(spec) == (
        "net.yaml:7:50: error: layer 'conv2': unknown input 'conv_1' "
        "(expected a layer, found 'conv_1')"
    )
    config = ConfigError("training.lr", "must be positive", found="-1", hint="try 0.01", loc=LOC)
    assert str(config) == (
        "net.yaml:7:50: training.lr: must be positive (found -1)\n  hint: try 0.01"
    )
    assert render(config).startswith("net.yaml:7:50: error: training.lr: must be positive")


def test_the_cli_labels_every_user_error(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main(["optimize", str(missing), "-o", str(tmp_path / "out.onnx")]) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such file\n"


def _labelled_messages(path: pathlib.Path) -> list[str]:
    """Lines of `path` where a string that starts with 'error: ' is an exception's message."""
    found, calls = [], []
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    for before, token in zip([None, *tokens], tokens):
        if token.type == tokenize.OP and token.string in "([{":
            calls.append(before.string if before and before.type == tokenize.NAME else "")
        elif token.type == tokenize.OP and token.string in ")]}":
            calls.pop()
        elif token.type == tokenize.STRING and calls and calls[-1].endswith(("Error", "Failed")):
            body = re.sub(r"^[a-zA-Z]*(\"\"\"|'''|\"|')", "", token.string)
            if body.startswith("error: "):
                found.append(f"{path}:{token.start[0]}")
    return found


@pytest.mark.parametrize("folder", ["compiler", "runtime", "serving", "netc"])
def test_no_message_carries_the_label_itself(folder):
    root = pathlib.Path(__file__).parent.parent / folder
    files = [p for p in root.rglob("*.py") if "generated" not in p.parts]
    assert files
    labelled = [line for path in files for line in _labelled_messages(path)]
    assert not labelled, f"the CLI adds 'error: ' (netc.errors.render); drop it at {labelled}"
