"""Malformed descriptions: each one exits with status 2 and one message that says where.

One case, one file in `malformed/`. `CASES` holds what the message must say: the
`line:column` of the offending token, the layer it names, and text that must appear
(what was expected, what was found, the hint). The expectations live here, not in
golden files, so a reworded message fails only where it loses information.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from netc.cli import main

MALFORMED = Path(__file__).resolve().parent / "malformed"


@dataclass(frozen=True)
class Case:
    line: int | None  # None: the mistake is not in a file (a zoo name)
    column: int | None
    layer: str | None  # the layer the message must name, if the mistake is in one
    says: tuple[str, ...]  # substrings of the message: expected, found, hint
    args: tuple[str, ...] = ()  # extra command-line arguments
    spec: str | None = None  # what to compile instead of malformed/<case>.yaml


CASES: dict[str, Case] = {
    # -- YAML and the document's outer structure ---------------------------------------------
    "empty": Case(1, 1, None, ("the description is empty",)),
    "invalid_yaml": Case(
        6,
        5,
        None,
        (
            "not valid YAML",
            "expected ',' or '}'",
            "while parsing a flow mapping at line 5, column 5",
        ),
    ),
    "duplicate_yaml_key": Case(
        9, 5, None, ("key 'channels' appears twice", "the first 'channels' is at line 7")
    ),
    "yaml_tag": Case(8, 13, None, ("not valid YAML", "found !!int 'three'")),
    "yaml_recursive_alias": Case(4, 9, None, ("alias refers to a collection that contains it",)),
    # ~10^9 values from 13 lines: refused after 100,000 repeats, without hanging or eating memory
    "yaml_alias_bomb": Case(
        4, 14, None, ("YAML aliases repeat more than 100,000 values", "nesting them multiplies")
    ),
    "yaml_merge_key": Case(
        6, 6, None, ("merge keys ('<<') are not supported", "write the keys out")
    ),
    "unknown_top_level_key": Case(
        4,
        1,
        None,
        ("unknown key 'layer'", "expected one of name,", "found 'layer'", "did you mean 'layers'?"),
    ),
    "missing_layers": Case(1, 1, None, ("has no 'layers'", "expected a top-level 'layers' key")),
    "input_open_channels": Case(
        3,
        11,
        None,
        (
            "input 'image' channel count must be fixed",
            "expected an integer >= 1",
            "found nothing (null)",
            "only H and W may be open",
        ),
    ),
    "output_renames_onto_a_layer": Case(
        8,
        9,
        None,
        ("output 'side' gives layer 'side_up' the name of another layer", "e.g. 'side_out'"),
    ),
    "unknown_output": Case(
        8, 11, None, ("unknown output layer 'logit'", "found 'logit'", "did you mean 'logits'?")
    ),
    # -- layers and references ---------------------------------------------------------------
    "layer_missing_name": Case(6, 5, None, ("layer has no name", "expected a 'name' key")),
    "duplicate_layer": Case(
        7, 12, "conv1", ("duplicate layer name 'conv1'", "the first 'conv1' is at line 5")
    ),
    "layer_named_like_input": Case(
        6,
        12,
        "image",
        ("duplicate layer name 'image'", "'image' is already an input of the network"),
    ),
    "unknown_op": Case(
        6,
        9,
        "conv1",
        (
            "unknown op 'cnov'",
            "expected one of conv,",
            "found string 'cnov'",
            "did you mean 'conv'?",
        ),
    ),
    "op_not_a_name": Case(5, 23, "conv1", ("unknown op", "found list ['conv']")),
    "unknown_input": Case(
        9, 23, "merge", ("unknown input 'conv_3_1'", "found 'conv_3_1'", "did you mean 'conv3_1'?")
    ),
    "cycle": Case(
        6,
        12,
        "a",
        (
            "the layers form a cycle",
            "expected a directed acyclic graph",
            "found cycle a -> b -> c -> a",
        ),
    ),
    "repeat_not_integer": Case(
        6,
        73,
        "body",
        (
            "'repeat' must be a positive count",
            "expected an integer from 1 to 100,000",
            "found number 2.5",
        ),
    ),
    # a `when: false` layer is not in the graph, but its own fields are still checked
    "disabled_unknown_op": Case(
        6,
        22,
        "drop",
        ("unknown op 'droput'", "found string 'droput'", "did you mean 'dropout'?"),
    ),
    "disabled_bad_attribute": Case(
        9,
        87,
        "stage1.down",
        ("unknown attribute 'kernal' for op 'conv'", "did you mean 'kernel'?"),
    ),
    # -- parameters and blocks ---------------------------------------------------------------
    "unknown_parameter": Case(
        10,
        31,
        "fc",
        (
            "unknown parameter '$num_clases'",
            "expected one of $num_classes",
            "did you mean 'num_classes'?",
        ),
    ),
    "set_unknown_param": Case(
        3,
        3,
        None,
        (
            "cannot set parameter 'num_clases'",
            "expected one of num_classes",
            "did you mean 'num_classes'?",
        ),
        args=("--set", "num_clases=26"),
    ),
    "block_uses_network_param": Case(
        10,
        42,
        "stage1.conv",
        (
            "unknown parameter '$width'",
            "expected one of $stride",
            "a block sees only its own params: declare 'width' in block 'unit'",
        ),
    ),
    "unknown_block": Case(
        12,
        27,
        "stage1",
        ("unknown block 'basci'", "expected one of basic", "did you mean 'basic'?"),
    ),
    "block_unknown_param": Case(
        12,
        47,
        "stage1",
        (
            "block 'unit' has no parameter 'strides'",
            "expected one of channels, stride",
            "found 'strides'",
            "did you mean 'stride'?",
        ),
    ),
    "block_missing_param": Case(
        12,
        5,
        "stage1",
        (
            "block 'unit' needs parameter 'channels'",
            "found no value",
            "add 'channels: ...' to layer 'stage1'",
        ),
    ),
    "block_cycle": Case(
        7,
        40,
        "net.body.head.again",
        (
            "block 'body' uses itself through 'head'",
            "found cycle body -> head -> body",
        ),
    ),
    "block_input_count": Case(
        13, 42, "joined", ("block 'merge' takes 2 input(s)", "expected 2 (left, right)", "found 3")
    ),
    # -- attributes and init -----------------------------------------------------------------
    "unknown_attribute": Case(
        7,
        43,
        "conv2",
        ("unknown attribute 'kernal' for op 'conv'", "found 'kernal'", "did you mean 'kernel'?"),
    ),
    "kernel_string": Case(
        8,
        13,
        "conv1",
        ("attribute 'kernel'", "expected an integer >= 1 or an [h, w] pair", "found string '3'"),
    ),
    "bias_integer": Case(
        8, 42, "fc1", ("attribute 'bias'", "expected true or false", "found integer 1")
    ),
    "attribute_nan": Case(
        6, 34, "drop", ("attribute 'p'", "expected a drop probability in", "found number nan")
    ),
    # p is the drop probability: 1.0 drops every unit (and scales the rest by 1/0)
    "dropout_p_one": Case(
        6,
        34,
        "drop",
        (
            "attribute 'p'",
            "expected a drop probability in [0, 1)",
            "found number 1.0",
            "the keep probability",
        ),
    ),
    "init_unknown_type": Case(
        10,
        18,
        "conv2",
        ("unknown init type 'gausian'", "found string 'gausian'", "did you mean 'gaussian'?"),
    ),
    # -- shapes ------------------------------------------------------------------------------
    "concat_spatial_mismatch": Case(
        7,
        12,
        "joined",
        (
            "concat inputs disagree",
            "expected (N, 16, 32, 32)",
            "found (N, 16, 30, 30)",
            "all dimensions but the concat axis must match",
        ),
    ),
    "add_channel_mismatch": Case(
        7,
        12,
        "residual",
        (
            "add inputs disagree",
            "expected (N, 16, 32, 32)",
            "found (N, 32, 32, 32)",
            "insert a crop, pool or conv",
        ),
    ),
    # a second input's open sizes are its own: equal only where both name the same sizes
    "add_independent_sizes": Case(
        6,
        12,
        "sum",
        (
            "add inputs' sizes are not known to be equal",
            "input 1's sizes follow H, W and input 2's follow H_b, W_b",
            "expected (N, 3, H, W) (input 1)",
            "found (N, 3, H_b, W_b) (input 2)",
            "give them the same named sizes",
        ),
    ),
    "concat_independent_sizes": Case(
        7,
        12,
        "joined",
        (
            "concat inputs' sizes are not known to be equal",
            "expected (N, 8, Ha, Wa) (input 1)",
            "found (N, 1, Hb, Wb) (input 2)",
        ),
    ),
    "crop_independent_sizes": Case(
        6,
        12,
        "crop",
        (
            "crop window does not fit inside the input along the height",
            "reference height H_reference",
            "found input height H",
            "the reference height follows H_reference, which the input's does not",
        ),
    ),
    "kernel_too_large": Case(
        7,
        51,
        "conv2",
        (
            "kernel is larger than its padded input along the height",
            "expected a padded height of at least 5",
            "found 3 (input 3 + padding 0)",
        ),
    ),
    "conv_transpose_empty": Case(
        6,
        12,
        "up",
        (
            "conv_transpose output height would be empty",
            "expected an output size >= 1",
            "found -22",
        ),
    ),
    "fc_on_feature_map": Case(
        8,
        12,
        "fc1",
        (
            "fc needs a vector (N, F) input",
            "found shape (N, 8, 12, 12)",
            "add a flatten layer before fc",
        ),
    ),
    "flatten_open_size": Case(
        7,
        12,
        "flatten",
        ("flatten needs a fixed size", "found shape (N, 16, H, W)", "global_avg_pool"),
    ),
    "same_padding_stride2": Case(
        6,
        74,
        "conv2",
        ("padding 'same' needs stride 1", "found stride [2, 2]", "give the padding explicitly"),
    ),
    "crop_auto_impossible": Case(
        8,
        12,
        "crop",
        (
            "no offset aligns them",
            "expected the reference's stride 1",
            "found stride 2",
            "upsample the input",
        ),
    ),
    # -- the command line --------------------------------------------------------------------
    "unknown_zoo_name": Case(
        None,
        None,
        None,
        ("'resnt18' is neither a network file nor a zoo network", "did you mean 'resnet18'?"),
        spec="resnt18",
    ),
    # a path is a file that is not there, never a misspelt zoo name
    "missing_path": Case(None, None, None, ("nowhere/lenet: no such file",), spec="nowhere/lenet"),
}


def _spec(name: str) -> str:
    case = CASES[name]
    return case.spec if case.spec is not None else str(MALFORMED / f"{name}.yaml")


def _check_message(name: str, stderr: str) -> None:
    case = CASES[name]
    assert "Traceback" not in stderr
    assert stderr.count("error:") == 1, f"more than one message:\n{stderr}"
    if case.line is not None:
        where = f"{_spec(name)}:{case.line}:{case.column}: error: "
        assert stderr.startswith(where), f"expected it to start with {where!r}:\n{stderr}"
    else:
        assert stderr.startswith("error: "), stderr
    if case.layer is not None:
        assert f"layer '{case.layer}'" in stderr, stderr
    for text in case.says:
        assert text in stderr, f"{text!r} missing from:\n{stderr}"


def test_every_malformed_file_has_a_case():
    files = {path.stem for path in MALFORMED.glob("*.yaml")}
    with_files = {name for name, case in CASES.items() if case.spec is None}
    assert files == with_files


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_description_gives_one_located_message(name, capsys):
    status = main(["compile", _spec(name), *CASES[name].args])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert out == ""
    _check_message(name, err)


@pytest.mark.parametrize("name", ["invalid_yaml", "same_padding_stride2", "unknown_zoo_name"])
def test_real_process_exits_2_without_traceback(name):
    result = subprocess.run(
        [sys.executable, "-m", "netc", "compile", _spec(name), *CASES[name].args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    _check_message(name, result.stderr)


def test_set_value_that_is_not_yaml_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "lenet5", "--set", "num_classes=[1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "Traceback" not in err
