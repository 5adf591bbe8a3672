"""`netc optimize --precision fp16`: converted for GPUs, verified on the CPU at fp16's tolerance."""

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, random_feeds, run
from helpers import assert_close, fp32_scale
from onnx import numpy_helper

from netc.cli import main
from netc.compiler.optimizer import verify
from netc.compiler.optimizer.fp16 import check_fp16, to_fp16

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def lrn_net() -> onnx.ModelProto:
    """conv → BN → ReLU → LRN → conv → global pool: LRN is unsafe in fp16."""
    g = GraphBuilder()
    x = g.input("image", ["N", 3, 16, 16])
    y = g.node("Relu", [g.bn(g.conv(x, 3, 8, name="conv1"), 8, name="bn1")], name="relu1")
    y = g.node("LRN", [y], name="lrn", size=5, alpha=1e-4, beta=0.75, bias=2.0)
    y = g.node("GlobalAveragePool", [g.conv(y, 8, 4, name="conv2")], name="gap")
    return g.build(y)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(lrn_net(), path)
    return path


def test_fp16_converts_and_verifies_on_cpu(model_file, tmp_path, capsys):
    out = tmp_path / "net.fp16.onnx"
    assert main(["optimize", str(model_file), "-o", str(out), "--precision", "fp16"]) == 0
    text = capsys.readouterr().out
    assert "conv1+bn1 → Conv" in text  # the fp32 pipeline ran first
    assert "within fp16's tolerance (rtol 0.01, atol 0.01·scale" in text
    assert "on the CPU provider" in text and "fp16 is fast only on a GPU" in text
    assert "kept in fp32 as unsafe in fp16: lrn" in text
    model = onnx.load(out)
    graph = model.graph
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [FLOAT, FLOAT]
    weights = {t.name: t.data_type for t in graph.initializer}
    assert weights["conv1.weight"] == HALF and weights["conv2.weight"] == HALF
    producers = {o: n for n in graph.node for o in n.output}
    lrn = next(n for n in graph.node if n.op_type == "LRN")
    assert producers[lrn.input[0]].op_type == "Cast"  # computed in fp32
    assert {p.key: p.value for p in model.metadata_props}["netc.precision"] == "fp16"
    # what the verifier claimed, checked here on other inputs
    feeds = random_feeds(model, seed=7, N=3)
    (want,), (got,) = run(lrn_net(), feeds), run(model, feeds)
    bound = verify.FP16_ATOL * fp32_scale(want)
    assert_close(got, want, rtol=verify.FP16_RTOL, atol=bound, what="fp16 output")


def test_fp16_checks_at_an_unnamed_input_shape(model_file, tmp_path, capsys):
    # an --input-shape without NAME= is the only input's, for the fp16 check as for fp32's
    out = tmp_path / "net.fp16.onnx"
    argv = ["optimize", str(model_file), "-o", str(out), "--precision", "fp16"]
    assert main([*argv, "--input-shape", "2,3,16,16"]) == 0
    assert "within fp16's tolerance" in capsys.readouterr().out


def test_fp16_io_makes_inputs_and_outputs_half(model_file, tmp_path, capsys):
    out = tmp_path / "net.fp16.onnx"
    argv = ["optimize", str(model_file), "-o", str(out), "--precision", "fp16", "--fp16-io"]
    assert main(argv) == 0
    assert "inputs and outputs fp16" in capsys.readouterr().out
    graph = onnx.load(out).graph
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [HALF, HALF]


def test_a_wrong_conversion_is_caught():
    original = lrn_net()
    half, _ = to_fp16(original)
    for tensor in half.graph.initializer:
        if tensor.name == "conv2.weight":  # one weight off by its own size
            array = numpy_helper.to_array(tensor).copy()
            array.flat[0] += np.float16(1.0) + abs(array.flat[0])
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    check = check_fp16(original.SerializeToString(), half.SerializeToString())
    assert not check.ok and "outputs differ beyond fp16's tolerance" in check.summary()
    assert "output 'gap'" in check.summary()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calibrate", "digits"], "--calibrate is for --precision int8 only"),
        (["--keep-float", "conv1"], "--keep-float is for --precision int8 only"),
        (["--no-verify"], "drop --no-verify"),
    ],
)
def test_fp16_refuses_int8_options(model_file, tmp_path, capsys, extra, message):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model_file), "-o", str(out), "--precision", "fp16", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()
