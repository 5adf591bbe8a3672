"""The `netc` command line: output formats, files, exit statuses."""

import json
import subprocess
import sys

from netc.cli import main

LENET = """\
name: tiny
inputs: {image: [1, 8, 8]}
layers:
  - {name: conv, op: conv, channels: 4, kernel: 3}
  - {name: relu, op: relu}
  - {name: flat, op: flatten}
  - {name: fc, op: fc, units: 3}
"""


def test_compile_prints_a_table_with_totals(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(LENET)
    assert main(["compile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "4×6×6" in out
    assert "params      475" in out  # 4·9+4 + 144·3+3
    assert "MACs        1,728" in out  # 4·36·9 + 144·3


def test_compile_json_and_output_file_agree(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(LENET)
    out_file = tmp_path / "graph.json"
    assert main(["compile", str(path), "--json", "-o", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text())
    assert printed["params"] == 475 and printed["macs"] == 1728
    assert [layer["name"] for layer in printed["layers"]] == ["conv", "relu", "flat", "fc"]
    assert printed["layers"][0]["receptive_field"] == {
        "size": [3, 3],
        "stride": [1, 1],
        "offset": [1, 1],
        "whole_input": False,
    }


def test_input_shape_fixes_open_sizes(capsys):
    assert main(["compile", "tinyseg", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] is None
    assert main(["compile", "tinyseg", "--input-shape", "3,64,64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] > 0 and data["layers"][-1]["shape"] == ["N", 4, 64, 64]


def test_set_overrides_a_network_parameter(capsys):
    assert main(["compile", "lenet5", "--set", "num_classes=26", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][-1]["shape"] == ["N", 26]


def test_zoo_lists_networks(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25,557,032" in out


def test_bad_input_shape_is_a_usage_error(capsys):
    result = subprocess.run(
        [sys.executable, "-m", "netc", "compile", "lenet5", "--input-shape", "3,x,224"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "not a shape" in result.stderr and "Traceback" not in result.stderr


def test_missing_file_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "netc", "compile", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "nope.yaml: no such file" in result.stderr and "Traceback" not in result.stderr


def test_write_failures_name_the_path_and_leave_nothing_behind(tmp_path, capsys):
    (tmp_path / "repo").write_text("a file where the repository should be")
    status = main(["export", "lenet5", "--repository", str(tmp_path / "repo"), "--name", "x"])
    err = capsys.readouterr().err
    assert status == 2 and "cannot write" in err and "internal error" not in err
    target = tmp_path / "out"
    target.mkdir()  # -o names a folder, not a file
    assert main(["export", "lenet5", "-o", str(target), "--no-verify"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tmp")) and not list(target.iterdir())


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["export", "lenet5", "-o", str(tmp_path / "m.onnx"), "--no-verify"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644


def test_compile_says_dropout_p_is_the_drop_probability(tmp_path, capsys):
    path = tmp_path / "drop.yaml"
    dropout = "  - {name: drop, op: dropout, p: 0.2}\n"
    path.write_text(LENET.replace("  - {name: fc,", dropout + "  - {name: fc,"))
    assert main(["compile", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("drop "))
    assert "dropout (drop p=0.2)" in row
