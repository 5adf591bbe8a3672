"""netc.fileio.write_atomic: all or nothing, and nothing left behind on failure."""

import os
from pathlib import Path

import onnx
import pytest

from netc.cli import main
from netc.errors import UserError
from netc.fileio import write_atomic


def test_a_write_creates_its_folders_and_replaces_the_file_whole(tmp_path):
    target = tmp_path / "repo" / "m" / "1" / "model.onnx"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # no temporaries


def test_a_failed_write_leaves_no_folder_it_made(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", lambda fd: full(fd, b""))
    target = tmp_path / "repo" / "m" / "1" / "model.onnx"
    (tmp_path / "keep").mkdir()
    with pytest.raises(UserError, match="No space left on device"):
        write_atomic(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]  # repo/, m/ and 1/ gone


def test_an_existing_folder_is_kept_when_a_write_fails(tmp_path, monkeypatch):
    (tmp_path / "repo" / "m").mkdir(parents=True)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(UserError):
        write_atomic(tmp_path / "repo" / "m" / "2" / "model.onnx", b"x")
    assert (tmp_path / "repo" / "m").is_dir() and not (tmp_path / "repo" / "m" / "2").exists()


def test_a_special_file_or_folder_is_never_replaced(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    for name in ("pipe", "dir"):
        with pytest.raises(UserError, match="exists and is not a regular file"):
            write_atomic(tmp_path / name, b"x")


@pytest.mark.parametrize("given", ["", Path("")], ids=["str", "Path"])
def test_an_empty_path_is_named_as_empty(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="the output path is empty"):
        write_atomic(given, b"x")  # Path('') is Path('.'): not "cannot write ."
    assert list(tmp_path.iterdir()) == []


def _relu_model(path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    opsets = [onnx.helper.make_opsetid("", 15)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8), path)


@pytest.mark.parametrize(
    "command",
    [["compile", "lenet5"], ["export", "lenet5", "--no-verify"], ["optimize", "relu.onnx"]],
    ids=["compile", "export", "optimize"],
)
def test_every_command_says_an_empty_output_path_is_empty(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    _relu_model(tmp_path / "relu.onnx")
    try:
        status = main([*command, "-o", ""])
    except SystemExit as exited:  # refused while parsing the arguments
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2
    assert "the output path is empty" in err and "cannot write ." not in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx"]
