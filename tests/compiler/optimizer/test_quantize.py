"""`netc optimize --precision int8 --calibrate DATASET`: quantization behind an accuracy gate.

A small digits classifier is trained once (a few seconds); the gate's figures
are compared with the run's own, and a deliberately fragile copy of it (one
conv channel whose activations are a huge outlier) must fail the gate, be
named, and pass once kept in float.
"""

import json

import numpy as np
import onnx
import pytest
from builders import GraphBuilder
from onnx import numpy_helper

from netc.cli import main
from netc.compiler.optimizer import accuracy
from netc.compiler.optimizer.calibration import Samples
from netc.compiler.optimizer.layer_errors import channel_sqnr, fake_quantize
from netc.compiler.optimizer.precision import PrecisionOptions, reduce_precision_file
from netc.compiler.optimizer.quantize import float_region, layer_of
from netc.runtime import checkpoint
from netc.runtime.train import train

DIGITS_NET = """\
name: tiny_digits
params: {num_classes: 10}
inputs: {image: [1, 8, 8]}
layers:
  - {name: conv1, op: conv, channels: 8, kernel: 3, padding: 1}
  - {name: bn1, op: batch_norm}
  - {name: relu1, op: relu}
  - {name: conv2, op: conv, channels: 16, kernel: 3, padding: 1}
  - {name: relu2, op: relu}
  - {name: pool, op: max_pool, kernel: 2}
  - {name: flatten, op: flatten}
  - {name: fc, op: fc, units: $num_classes}
training: {epochs: 3, batch_size: 32}
"""
OUTLIER = 1e4  # an activation this large sets the tensor's scale: 1e4/255 ≈ 39 per step


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(run folder, its ONNX export, the fp32-optimized export)."""
    root = tmp_path_factory.mktemp("int8")
    spec = root / "net.yaml"
    spec.write_text(DIGITS_NET)
    train(str(spec), "digits", root / "run", quiet=True)
    assert main(["export", str(root / "run"), "-o", str(root / "model.onnx")]) == 0
    assert main(["optimize", str(root / "model.onnx"), "-o", str(root / "fp32.onnx")]) == 0
    return root / "run", root / "model.onnx", root / "fp32.onnx"


@pytest.fixture(scope="module")
def fragile(digits, tmp_path_factory):
    """The optimized digits model with one more conv1 channel: zero weights, bias OUTLIER,
    which conv2 ignores (zero weights), so the fp32 model computes exactly what it did."""
    model = onnx.load(digits[2])
    stored = {t.name: t for t in model.graph.initializer}
    conv1, conv2 = (
        next(n for n in model.graph.node if n.name == name) for name in ("conv1", "conv2")
    )
    w1, b1, w2 = (numpy_helper.to_array(stored[v]) for v in (*conv1.input[1:3], conv2.input[1]))
    changed = {
        conv1.input[1]: np.concatenate([w1, np.zeros_like(w1[:1])]),
        conv1.input[2]: np.append(b1, np.float32(OUTLIER)),
        conv2.input[1]: np.concatenate([w2, np.zeros_like(w2[:, :1])], axis=1),
    }
    for name, array in changed.items():
        stored[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    path = tmp_path_factory.mktemp("fragile") / "fragile.onnx"
    onnx.save(model, path)
    return path


def test_trained_digits_run_quantizes_within_the_gate(digits, tmp_path):
    run, model, _ = digits
    out = tmp_path / "int8.onnx"
    result = reduce_precision_file(model, out, PrecisionOptions("int8", calibrate="digits"))
    gate = result.gate
    assert gate.ok and gate.drop <= accuracy.MAX_DROP
    # The held-out images are the run's validation split: fp32 scores what training measured
    # (up to one image whose top two logits tie differently in PyTorch and onnxruntime).
    held_out = int(gate.held_out.split()[0])
    best = checkpoint.load(run)["best_metric"]
    assert abs(gate.before - best) <= 1 / held_out + 1e-9
    quantized = onnx.load(out)
    ops = {node.op_type for node in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    props = {p.key: p.value for p in quantized.metadata_props}
    assert props["netc.precision"] == "int8" and props["netc.task"] == "classification"
    assert json.loads(props["netc.quantization"])["calibration"] == "minmax"
    assert len(out.read_bytes()) < model.stat().st_size
    text = result.report()
    for part in ("size", "KiB", "speed: int8 takes", "interleaved", "accuracy gate: accuracy"):
        assert part in text


def test_cli_report(digits, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    argv = ["optimize", str(digits[1]), "-o", str(out), "--precision", "int8"]
    assert main([*argv, "--calibrate", "digits", "--calibration-method", "percentile"]) == 0
    text = capsys.readouterr().out
    assert "fp32 pipeline:" in text and "conv1+bn1 → Conv" in text
    assert "calibrated on 256 digits training-split images (percentile)" in text
    assert "held-out digits images (validation split 0.15, seed 0)" in text


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_fragile_model_fails_the_gate_names_the_layer_and_writes_nothing(fragile, capsys):
    out = fragile.parent / "int8.onnx"
    argv = ["optimize", str(fragile), "-o", str(out), "--precision", "int8", "--calibrate"]
    err = error_of([*argv, "digits"], capsys)
    assert "loses too much accuracy, so nothing was written" in err
    worst = err.split("healthy): ")[1].split(",")[0]
    assert worst.startswith("conv1 ") and "--keep-float conv1," in err
    assert sorted(p.name for p in fragile.parent.iterdir()) == ["fragile.onnx"]  # no temporary


def test_fragile_model_passes_with_conv1_kept_in_float(fragile, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    argv = ["optimize", str(fragile), "-o", str(out), "--precision", "int8"]
    assert main([*argv, "--calibrate", "digits", "--keep-float", "conv1"]) == 0
    text = capsys.readouterr().out
    assert "kept in float: conv1; with them, what passes their output on or reads it: " in text
    model = onnx.load(out)
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv1.output[0] not in quantized and "relu1" not in quantized
    assert json.loads({p.key: p.value for p in model.metadata_props}["netc.quantization"])[
        "float"
    ] == ["conv1", "relu1", "conv2"]


def test_max_drop_lets_a_bigger_loss_through(fragile, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    argv = ["optimize", str(fragile), "-o", str(out), "--precision", "int8"]
    assert main([*argv, "--calibrate", "digits", "--max-drop", "100"]) == 0
    assert "allowed 100" in capsys.readouterr().out and out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--precision int8 needs --calibrate DATASET"),
        (["--calibrate", "shapes"], "a classification model, shapes a segmentation data set"),
        (["--calibrate", "nowhere"], "no data set 'nowhere'"),
        (["--calibrate", "digits", "--keep-float", "conv3"], "names no layer 'conv3'"),
        (["--calibrate", "digits", "--no-verify"], "drop --no-verify"),
        (["--calibrate", "digits", "--max-drop", "-1"], "--max-drop -1: expected 0 to 100"),
    ],
    ids=["no-data", "wrong-task", "no-such-data", "unknown-layer", "no-verify", "max-drop"],
)
def test_user_errors(digits, tmp_path, capsys, extra, message):
    out = tmp_path / "int8.onnx"
    err = error_of(
        ["optimize", str(digits[2]), "-o", str(out), "--precision", "int8", *extra], capsys
    )
    assert message in err
    assert not out.exists()


def test_int8_flags_need_int8(digits, tmp_path, capsys):
    argv = ["optimize", str(digits[2]), "-o", str(tmp_path / "o.onnx"), "--calibrate", "digits"]
    assert "--calibrate need --precision int8" in error_of(argv, capsys)


def test_export_quantizes_a_run_on_its_validation_split(digits, tmp_path, capsys):
    run = digits[0]
    out = tmp_path / "int8.onnx"
    assert (
        main(["export", str(run), "-o", str(out), "--precision", "int8", "--calibrate", "digits"])
        == 0
    )
    text = capsys.readouterr().out
    assert "onnxruntime matches PyTorch" in text and "accuracy gate: accuracy" in text
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["netc.precision"] == "int8"
    assert json.loads(props["netc.validation_split"]) == {"val_fraction": 0.15, "seed": 0}


# --- the parts, on hand-made data ------------------------------------------------------


def test_one_outlier_shows_per_channel_not_tensor_wide():
    """Channel 0 holds one huge value; the others, of order 1, round to zero at its scale."""
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((4, 3, 5, 5))).astype(np.float32)
    x[0, 0, 0, 0] = OUTLIER
    scale, zero_point = np.float32(OUTLIER / 255), np.uint8(0)
    assert np.all(fake_quantize(x[:, 1:], scale, zero_point) == 0)
    tensor_wide = 10 * np.log10(
        np.sum(x**2.0) / np.sum((fake_quantize(x, scale, zero_point) - x) ** 2.0)
    )
    assert tensor_wide > 30  # the whole tensor looks healthy ...
    assert channel_sqnr(x, scale, zero_point) == pytest.approx(
        0.0, abs=1e-9
    )  # ... its channels not
    fine = np.float32(x[:, 1:].max() / 255)
    assert channel_sqnr(x[:, 1:], fine, zero_point) > 30


def chain() -> onnx.ModelProto:
    """conv1 → relu → pool → conv2 → add(conv2, pool) → conv3."""
    g = GraphBuilder()
    x = g.input("image", ["N", 3, 8, 8])
    pool = g.node(
        "MaxPool",
        [g.node("Relu", [g.conv(x, 3, 4, name="conv1")], name="relu")],
        name="pool",
        kernel_shape=[2, 2],
        strides=[2, 2],
    )
    added = g.node("Add", [g.conv(pool, 4, 4, name="conv2"), pool], name="add")
    return g.build(g.conv(added, 4, 2, name="conv3"))


def test_keep_float_region_follows_values_passed_on_unchanged():
    model = chain()
    assert float_region(model, ["conv1"], "m") == {"conv1", "relu", "pool", "conv2", "add"}
    assert float_region(model, ["conv2"], "m") == {"conv2", "add"}
    assert float_region(model, ["pool"], "m") == {"pool", "conv2", "add"}  # a tensor's name
    assert float_region(model, ["image"], "m") == {"conv1"}


def test_layer_of_walks_back_through_pass_through_ops():
    model = chain()
    assert layer_of(model, "pool") == "conv1"
    assert layer_of(model, "add") == "add"
    assert layer_of(model, "image") == "image"


def test_segmentation_metric_is_mean_iou_without_ignored_pixels():
    truth = np.array([[[0, 0], [1, 255]]])
    samples = Samples(
        "x", np.zeros(1), np.zeros(1), truth, "segmentation", ["a", "b"], "d", (0.1, 0)
    )
    # class 0: TP 1, FP 0, FN 1 → 1/2; class 1: TP 1, FP 1, FN 0 → 1/2; the 255 pixel ignored
    picked = np.array([[[0, 1], [1, 0]]])
    assert accuracy.metric(picked, samples) == pytest.approx(0.5)


# --- served ----------------------------------------------------------------------------


def test_the_server_runs_int8_and_reports_the_precision(digits, tmp_path, capsys):
    """Exported int8 into a repository beside the fp32 export: served like any other model,
    ModelConfig's parameters and the vision service's ListModels say which is which."""
    triton = pytest.importorskip("tritonclient.grpc")
    from netc.serving.client import VisionClient
    from netc.serving.server import BackgroundServer, ServerOptions

    run, repo = digits[0], tmp_path / "repo"
    where = ["--repository", str(repo), "--name"]
    assert main(["export", str(run), *where, "fp32"]) == 0
    int8 = ["--precision", "int8", "--calibrate", "digits"]
    assert main(["export", str(run), *where, "int8", *int8]) == 0
    capsys.readouterr()
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    expected = accuracy.session((repo / "int8" / "1" / "model.onnx").read_bytes()).run(
        None, {"image": x}
    )[0]
    server = BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    try:
        with triton.InferenceServerClient(server.address) as client:
            for name in ("fp32", "int8"):
                config = client.get_model_config(name).config
                assert config.parameters["precision"].string_value == name
            tensor = triton.InferInput("image", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            scores = client.infer("int8", [tensor]).as_numpy("fc")
        assert np.array_equal(scores.argmax(1), expected.argmax(1))
        with VisionClient(server.address) as vision:
            assert {m.name: m.precision for m in vision.models()} == {
                "fp32": "fp32",
                "int8": "int8",
            }
    finally:
        server.stop()
