"""`netc optimize`: the report, exit statuses, and never a half-written output file."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, ops
from test_verify import CorruptBias

from netc.cli import main
from netc.compiler.optimizer import pipeline
from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval
from netc.compiler.optimizer.passes.conv_bn import ConvBatchNormFusion


def small_net(extra_relu_between=False) -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input("image", ["N", 3, "H", "W"])
    y = g.bn(g.conv(x, 3, 4, name="conv1"), 4, name="bn1")
    c = g.conv(g.node("Relu", [y]), 4, 4, name="conv2")
    y = g.bn(g.node("Relu", [c], name="relu2") if extra_relu_between else c, 4, name="bn2")
    return g.build(g.node("Identity", [g.node("Dropout", [y])], name="out"))


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(small_net(), path)
    return path


def test_optimize_writes_a_verified_model_and_reports_each_pass(model_file, tmp_path, capsys):
    out = tmp_path / "net.opt.onnx"
    assert main(["optimize", str(model_file), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv_bn_fusion" in text and "conv1+bn1 → Conv" in text
    assert "BatchNormalization 2 → 0" in text and "MACs saved" in text
    assert "verified: outputs match at input [2, 3, 64, 64] and [2, 3, 96, 96]" in text
    assert ops(onnx.load(out)) == {"Conv": 2, "Relu": 1}


def test_verbose_lists_refusals_with_reasons(tmp_path, capsys):
    src = tmp_path / "net.onnx"
    onnx.save(small_net(extra_relu_between=True), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--verbose"]) == 0
    text = capsys.readouterr().out
    assert "refused: BatchNormalization bn2 not fused: its input comes from Relu relu2" in text


def test_input_shape_and_no_verify(model_file, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model_file), "-o", str(out), "--input-shape", "1,3,32,40"]) == 0
    assert "match at input [1, 3, 32, 40]" in capsys.readouterr().out
    assert main(["optimize", str(model_file), "-o", str(out), "--no-verify"]) == 0
    assert "not verified (--no-verify)" in capsys.readouterr().out


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") <= 2
    return captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"name: tiny\nlayers: []\n", "not an ONNX model"),
        (bytes(range(256)) * 4, "not an ONNX model"),
    ],
    ids=["empty", "yaml", "binary"],
)
def test_not_onnx(tmp_path, capsys, content, message):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    src.write_bytes(content)
    assert message in error_of(["optimize", str(src), "-o", str(out)], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["in.onnx"]  # no output, no temporary


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_file(model_file, tmp_path, capsys, fraction):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: int(len(data) * fraction)])
    out = tmp_path / "out.onnx"
    err = error_of(["optimize", str(model_file), "-o", str(out)], capsys)
    assert str(model_file) in err and ("truncated" in err or "not an ONNX model" in err)
    assert not out.exists()


def test_missing_file(tmp_path, capsys):
    assert "no such file" in error_of(["optimize", str(tmp_path / "nope.onnx"), "-o", "x"], capsys)


def test_external_data_is_refused(tmp_path, capsys):
    src = tmp_path / "ext.onnx"
    onnx.save(small_net(), src, save_as_external_data=True, size_threshold=0)
    err = error_of(["optimize", str(src), "-o", str(tmp_path / "out.onnx")], capsys)
    assert "external data" in err and "save_as_external_data=False" in err


def test_a_model_with_no_inputs(tmp_path, capsys):
    g = GraphBuilder()
    src = tmp_path / "const.onnx"
    onnx.save(g.build(g.node("Relu", [g.param("w", [3])])), src)
    err = error_of(["optimize", str(src), "-o", str(tmp_path / "out.onnx")], capsys)
    assert "has no inputs" in err


def custom_op_net(domain: str) -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    y = g.bn(g.conv(x, 3, 4), 4)
    g.nodes.append(onnx.helper.make_node("Swish", [y], ["swish"], domain=domain))
    graph = onnx.helper.make_graph(
        g.nodes,
        "custom",
        g.inputs,
        [onnx.helper.make_tensor_value_info("swish", 1, [1, 4, 8, 8])],
        initializer=g.initializers,
    )
    opsets = [onnx.helper.make_opsetid("", 15), onnx.helper.make_opsetid("com.example", 1)]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.mark.parametrize("domain", ["com.example", ""])
def test_unknown_op_is_left_alone_but_cannot_be_verified(tmp_path, capsys, domain):
    src, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    onnx.save(custom_op_net(domain), src)
    err = error_of(["optimize", str(src), "-o", str(out)], capsys)
    assert "cannot verify" in err and "--no-verify" in err and not out.exists()
    assert main(["optimize", str(src), "-o", str(out), "--no-verify"]) == 0
    assert ops(onnx.load(out)) == {"Conv": 1, "Swish": 1}


def test_unknown_flag(model_file, tmp_path, capsys):
    err = error_of(
        ["optimize", str(model_file), "-o", str(tmp_path / "o.onnx"), "--enable", "x"], capsys
    )
    assert "unknown optimizer flag 'x'" in err


def test_mismatch_names_the_pass_and_writes_nothing(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "PIPELINE", [ConvBatchNormFusion, CorruptBias, DeadNodeRemoval])
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    err = error_of(["optimize", str(model_file), "-o", str(out)], capsys)
    assert "first wrong after pass corrupt_bias" in err and "nothing was written" in err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model_file.name, out.name])


def test_fp16_model_optimizes_and_verifies(tmp_path, capsys):
    g = GraphBuilder(dtype=np.float16)
    x = g.input("x", [1, 4, 16, 16])
    src = tmp_path / "half.onnx"
    onnx.save(g.build(g.bn(g.conv(x, 4, 8), 8)), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx")]) == 0
    assert "fp16 outputs rtol 0.01" in capsys.readouterr().out


def _with_constant_weight(location: str) -> onnx.ModelProto:
    """conv1's weight comes from a Constant node whose tensor points at an external file."""
    model = small_net()
    graph = model.graph
    weight = next(t for t in graph.initializer if t.name == graph.node[0].input[1])
    stored = onnx.TensorProto()
    stored.CopyFrom(weight)
    stored.ClearField("raw_data")
    stored.data_location = onnx.TensorProto.EXTERNAL
    stored.external_data.add(key="location", value=location)
    graph.initializer.remove(weight)
    constant = onnx.helper.make_node("Constant", [], [weight.name], value=stored)
    graph.node.insert(0, constant)
    return model


@pytest.mark.parametrize("location", ["/etc/passwd", "../weights.bin", "missing.bin"])
def test_external_data_in_a_constant_node_is_refused_too(tmp_path, capsys, location):
    src, out = tmp_path / "const_ext.onnx", tmp_path / "out.onnx"
    onnx.save(_with_constant_weight(location), src)
    for extra in ([], ["--no-verify"]):  # never read, verified or not
        err = error_of(["optimize", str(src), "-o", str(out), *extra], capsys)
        assert "external data" in err and not out.exists()


def test_what_onnx_checker_refuses_is_a_clear_error(tmp_path, capsys):
    model = small_net()
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(onnx.helper.make_attribute("epsilon", 0))  # an INT, not a FLOAT
    src = tmp_path / "bad.onnx"
    onnx.save(model, src)
    err = error_of(["optimize", str(src), "-o", str(tmp_path / "out.onnx")], capsys)
    assert "not a valid ONNX model: Mismatched attribute type" in err and "epsilon" in err

    model = small_net()
    model.graph.initializer.append(model.graph.initializer[0])  # the same name twice
    onnx.save(model, src)
    err = error_of(["optimize", str(src), "-o", str(tmp_path / "out.onnx")], capsys)
    assert "initializer name is not unique" in err


def test_pools_of_opset_9_stay_apart_and_the_model_stays_valid(tmp_path, capsys):
    g = GraphBuilder(opset=9)
    x = g.input("x", [1, 3, 32, 32])
    first = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    src, out = tmp_path / "pools9.onnx", tmp_path / "out.onnx"
    onnx.save(g.build(g.node("MaxPool", [first], kernel_shape=[2, 2], strides=[2, 2])), src)
    assert main(["optimize", str(src), "-o", str(out), "--no-verify"]) == 0
    written = onnx.load(out)
    onnx.checker.check_model(written)  # no ceil_mode, which opset 9 lacks
    assert [n.op_type for n in written.graph.node] == ["MaxPool", "MaxPool"]


def test_a_scalar_bool_input_is_verified(tmp_path, capsys):
    g = GraphBuilder()
    flag = g.input("flag", [], dtype=np.bool_)
    src, out = tmp_path / "flag.onnx", tmp_path / "out.onnx"
    model = g.build(g.node("Not", [flag]))
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.BOOL
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out)]) == 0, capsys.readouterr().err


def test_a_special_file_is_never_replaced(model_file, tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    err = error_of(["optimize", str(model_file), "-o", str(fifo)], capsys)
    assert "exists and is not a regular file" in err
    assert not fifo.is_file() and fifo.exists()


def test_a_model_with_random_output_cannot_be_verified_and_says_why(tmp_path, capsys):
    g = GraphBuilder(opset=15)
    x = g.input("x", [1, 3, 8, 8])
    ratio, training = g.const("ratio", np.float32(0.5)), g.const("training", np.bool_(True))
    src, out = tmp_path / "dropout.onnx", tmp_path / "out.onnx"
    onnx.save(g.build(g.node("Dropout", [x, ratio, training])), src)
    err = error_of(["optimize", str(src), "-o", str(out)], capsys)
    assert "its output is random (Dropout node" in err and "training mode" in err
    assert "bug in netc" not in err and not out.exists()
    assert main(["optimize", str(src), "-o", str(out), "--no-verify"]) == 0


def test_infinite_outputs_and_unused_initializers_leave_stderr_to_netc(tmp_path):
    """x / 0 gives ±inf and NaN, whose comparison warned through numpy ("invalid value
    encountered in subtract"); an unused initializer makes onnxruntime log a warning.
    Neither reaches the user's terminal: stderr of a real `netc optimize` stays empty."""
    g = GraphBuilder(opset=15)
    x = g.input("x", [1, 2, 4, 4])
    g.const("unused", np.zeros(3, np.float32))
    src, out = tmp_path / "inf.onnx", tmp_path / "out.onnx"
    onnx.save(g.build(g.node("Div", [x, g.const("zero", np.zeros(1, np.float32))])), src)
    result = subprocess.run(
        [sys.executable, "-m", "netc", "optimize", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "verified" in result.stdout, result.stderr
    assert result.stderr == ""
