"""`netc export`: from a run to a verified ONNX file with its labels and preprocessing."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import FP32_ATOL, assert_fp32_close, fp32_scale, open_classifier

from netc.cli import main
from netc.compiler.network import load_string
from netc.runtime import checkpoint
from netc.runtime.module import build_module
from netc.runtime.preprocess import Preprocessing
from netc.runtime.train import train

TINY = """\
name: tiny_digits
params: {num_classes: 10}
inputs: {image: [1, 8, 8]}
layers:
  - {name: conv1, op: conv, channels: 8, kernel: 3, padding: 1}
  - {name: bn1, op: batch_norm}
  - {name: relu1, op: relu}
  - {name: pool1, op: max_pool, kernel: 2}
  - {name: flatten, op: flatten}
  - {name: drop, op: dropout, p: 0.2}
  - {name: fc, op: fc, units: $num_classes}
training: {epochs: 1, batch_size: 64}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    train(str(spec), "digits", root / "plain", quiet=True)
    train(str(spec), "digits", root / "whitened", overrides={"pca_whitening": True}, quiet=True)
    return root


def _props(model):
    return {p.key: p.value for p in model.metadata_props}


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.mark.parametrize("run", ["plain", "whitened"])
def test_exported_run_matches_the_trained_module(runs, tmp_path, run, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(runs / run), "-o", str(out)]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    model = onnx.load(out)
    props = _props(model)
    assert json.loads(props["netc.labels"]) == [str(i) for i in range(10)]
    pre = json.loads(props["netc.preprocessing"])
    assert "pca" not in pre and len(pre["mean"]) == 1 and pre["input_size"] == [8, 8]
    state = checkpoint.load(runs / run / "last.pt")
    module = build_module(load_string(state["description"]).graph)
    module.load_state_dict(state["model"])
    module.eval()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    preprocessing = Preprocessing.from_dict(state["preprocessing"])
    server_side = (images - pre["mean"][0]) / pre["std"][0]  # what a server does from metadata
    with torch.no_grad():
        expected = module(preprocessing.apply(images)).numpy()
    # ZCA in the graph vs in torch: a 64x64 matmul in another order, fp32 noise only;
    # the whitening matrix's large entries make that noise larger than the output's
    # magnitude alone says, hence 10x the usual atol for the whitened run.
    assert_fp32_close(
        _run(out, server_side.numpy()), expected, atol=1e-4 if run == "whitened" else 1e-5
    )


def test_repository_versions_count_up(runs, tmp_path):
    repo = tmp_path / "repo"
    for _ in range(2):
        assert (
            main(["export", str(runs / "plain"), "--repository", str(repo), "--name", "digits"])
            == 0
        )
    assert sorted(p.name for p in (repo / "digits").iterdir()) == [
        "1",
        "2",
        "config.pbtxt",  # Triton's, written with the first version (serving/triton_config.py)
        "labels.txt",
    ]
    assert (repo / "digits" / "2" / "model.onnx").stat().st_size > 1000


def test_fully_convolutional_export_of_a_run(runs, tmp_path):
    out = tmp_path / "dense.onnx"
    assert main(["export", str(runs / "plain"), "--fully-convolutional", "-o", str(out)]) == 0
    model = onnx.load(out)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, "H", "W"]
    assert _props(model)["netc.fully_convolutional_from"] == "classification"
    scores = _run(out, np.zeros((1, 1, 16, 12), np.float32))
    assert scores.shape == (1, 10, 5, 3)  # stride 2 windows of 8x8


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere.pt", "-o", "x.onnx"], "no such checkpoint"),
        (["lenet5", "--repository", "repo"], "--repository needs --name"),
        (["tinyseg", "--fully-convolutional", "-o", "x.onnx"], "fully convolutional already"),
    ],
)
def test_bad_exports_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_exported_model_scores_the_recorded_validation_accuracy(runs, tmp_path):
    """What serving computes (metadata preprocessing + ONNX) is what training measured."""
    out = tmp_path / "model.onnx"
    assert main(["export", str(runs / "plain" / "last.pt"), "-o", str(out)]) == 0
    state = checkpoint.load(runs / "plain" / "last.pt")
    from netc.runtime.datasets import load_dataset, resize, split

    data = resize(load_dataset("digits"), (8, 8))
    _, val = split(data, state["config"]["val_fraction"], state["config"]["seed"])
    pre = json.loads(_props(onnx.load(out))["netc.preprocessing"])
    mean = np.array(pre["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.array(pre["std"], np.float32).reshape(1, -1, 1, 1)
    scores = _run(out, ((val.images.numpy() - mean) / std).astype(np.float32))
    accuracy = float((scores.argmax(1) == val.targets.numpy()).mean())
    # Exactly the same, except where fp32 noise could swap a near-tie of the top two
    # scores between onnxruntime and PyTorch (tests/helpers.py: noise <= 1e-5·scale).
    top2 = np.sort(scores, axis=1)[:, -2:]
    ties = int((top2[:, 1] - top2[:, 0] <= 2 * FP32_ATOL * fp32_scale(scores)).sum())
    assert accuracy == pytest.approx(
        state["history"][-1]["val_accuracy"], abs=ties / len(scores) + 1e-9
    )


OPEN_TINY = open_classifier("opentiny", channels=1, kernel=3)


def test_an_open_size_net_trained_at_one_size_is_served_at_it(tmp_path):
    """Training resized every image to `input_size`; the ONNX metadata tells the server to
    do the same, although the network would run at any size."""
    from netc.serving.config import ModelConfig
    from netc.serving.images.prepare import image_input, prepare
    from netc.serving.model import ServedModel

    spec = tmp_path / "opentiny.yaml"
    spec.write_text(OPEN_TINY)
    train(str(spec), "digits", tmp_path / "run", overrides={"input_size": [16, 16]}, quiet=True)
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")]) == 0
    meta = json.loads(_props(onnx.load(tmp_path / "m.onnx"))["netc.preprocessing"])
    assert meta["input_size"] == [None, None] and meta["resize_to"] == [16, 16]
    info = ServedModel("opentiny", "1", tmp_path / "m.onnx", ModelConfig()).info
    assert image_input(info).size == (16, 16)
    prepared = prepare(np.zeros((1, 8, 8), np.float32), info)
    assert prepared.tensor.shape == (1, 1, 16, 16) and prepared.original == (8, 8)


def test_pca_whitening_of_an_open_size_net_exports_at_its_training_size(tmp_path):
    spec = tmp_path / "opentiny.yaml"
    spec.write_text(OPEN_TINY)
    overrides = {"input_size": [16, 16], "pca_whitening": True}
    train(str(spec), "digits", tmp_path / "run", overrides=overrides, quiet=True)
    # verification runs at 16x16 only: the whitening matrix is for 1·16·16 values
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")]) == 0
    x = np.random.default_rng(0).random((1, 1, 16, 16), dtype=np.float32)
    assert _run(tmp_path / "m.onnx", x).shape == (1, 10)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            "1,16,16",
            "'fc.weight' is [10, 128] there, and the network at this input size needs [10, 512]",
        ),
        ("3,8,8", "'conv1.weight' is"),
    ],
)
def test_an_input_shape_the_trained_weights_cannot_take_is_named(
    runs, tmp_path, capsys, shape, message
):
    out = tmp_path / "x.onnx"
    assert main(["export", str(runs / "plain"), "-o", str(out), "--input-shape", shape]) == 2
    err = capsys.readouterr().err
    assert message in err and "the trained network takes 1,8,8" in err and "Traceback" not in err
    assert not out.exists()


def test_a_check_too_large_for_memory_asks_for_no_verify(tmp_path, capsys):
    out = tmp_path / "x.onnx"
    args = ["export", "tinyseg", "-o", str(out), "--input-shape", "3,100000,100000"]
    assert main(args) == 2
    assert "--no-verify" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--no-verify"]) == 0 and out.exists()


class _Payload:
    """A pickle that would run code on load."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"format": 1}, "'model' is missing, expected a dict"),
        ({"format": 1, "model": {}, "description": 123, "params": {}}, "'description' is a int"),
        ({"format": 1, "payload": _Payload()}, "not a readable netc checkpoint"),
    ],
    ids=["no weights", "description not text", "code in the pickle"],
)
def test_a_malformed_checkpoint_is_refused_without_running_it(tmp_path, capsys, content, message):
    import torch

    path = tmp_path / "bad.pt"
    torch.save(content, path)
    assert main(["export", str(path), "-o", str(tmp_path / "x.onnx")]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "code ran" not in captured.out + captured.err


def test_set_is_refused_for_a_trained_run(runs, tmp_path, capsys):
    args = ["export", str(runs / "plain"), "-o", str(tmp_path / "x.onnx"), "--set", "num_classes=3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--set changes a description's parameters" in err and "trained with no --set" in err


def test_a_checkpoint_whose_labels_do_not_fit_its_network_is_refused(runs, tmp_path, capsys):
    import torch

    state = checkpoint.load(runs / "plain")
    state["labels"] = ["cat", "dog"]
    torch.save(state, tmp_path / "odd.pt")
    assert main(["export", str(tmp_path / "odd.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "names 2 classes, but the network's output has 10" in capsys.readouterr().err


def _run_folder(path):
    path.mkdir(parents=True)
    (path / "best.pt").write_bytes(b"")  # a run folder is a folder holding a checkpoint


@pytest.mark.parametrize(
    "source, says",
    [
        ("runs/lenet", ["no run folder 'runs/lenet'", "did you mean 'runs/lenet5_run'?"]),
        ("runs/xyz", ["no run folder 'runs/xyz'", "the run folders in runs are lenet5_run"]),
        ("gone/lenet", ["no run folder 'gone/lenet'", "gone does not exist either"]),
        ("lenet", ["neither a run folder", "the zoo network 'lenet5' (untrained weights)"]),
        ("lenet5_rn", ["did you mean the run folder 'lenet5_run', or the zoo network 'lenet5'"]),
    ],
)
def test_a_missing_run_folder_is_not_taken_for_a_zoo_name(
    tmp_path, monkeypatch, capsys, source, says
):
    """`runs/lenet` once answered "did you mean 'lenet5'?", which exports random weights."""
    monkeypatch.chdir(tmp_path)
    _run_folder(tmp_path / "runs" / "lenet5_run")
    _run_folder(tmp_path / "lenet5_run")
    assert main(["export", source, "-o", "x.onnx", "--no-verify"]) == 2
    err = capsys.readouterr().err
    for text in says:
        assert text in err, err
    if "/" in source:
        assert "zoo" not in err, err
    assert "Traceback" not in err and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("source", ["lenet5", "tiny.yaml"])
def test_exporting_untrained_weights_warns_in_one_line(tmp_path, monkeypatch, capsys, source):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["export", source, "-o", "x.onnx", "--no-verify"]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"warning: exporting untrained, randomly initialised weights for '{source}'; "
        "pass a run folder to export trained weights\n"
    )


def test_a_trained_run_exports_without_a_warning(runs, tmp_path, capsys):
    assert main(["export", str(runs / "plain"), "-o", str(tmp_path / "x.onnx")]) == 0
    assert "warning" not in capsys.readouterr().err
