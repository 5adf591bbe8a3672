"""model_bytes: initializers found in the file's bytes, the model written in pieces, and
onnxruntime given the weights by reference; all must be exactly what protobuf would do."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from builders import GraphBuilder, ops, random_feeds, run
from helpers import assert_fp32_close
from test_verify import CorruptBias

from netc.compiler.optimizer import pipeline
from netc.compiler.optimizer.api import optimize_file, optimize_model
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.model_bytes import (
    Originals,
    light_model_bytes,
    load_ir,
    model_pieces,
    scan_initializers,
    weightless_ir,
    weightless_proto,
)
from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval
from netc.compiler.optimizer.passes.conv_bn import ConvBatchNormFusion
from netc.compiler.optimizer.pipeline import run_pipeline
from netc.compiler.optimizer.rewrite import constant
from netc.compiler.optimizer.verify import VerificationError, _session
from netc.errors import UserError


def net() -> onnx.ModelProto:
    """conv1+bn1 (folds), conv2 (kept: a Relu between it and bn2), big enough weights
    (16·16·3·3·4 = 9 KiB) to travel outside the model, a small int64 constant."""
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 16, 16])
    y = g.bn(g.conv(x, 3, 16, name="conv1"), 16, name="bn1")
    y = g.node("Relu", [g.conv(y, 16, 16, name="conv2")])
    y = g.bn(y, 16, name="bn2")
    shape = g.const("shape", np.array([0, -1], dtype=np.int64))
    return g.build(g.node("Reshape", [y, shape]))


def test_scan_finds_every_initializer_where_protobuf_put_it():
    model = net()
    data = model.SerializeToString()
    stored = scan_initializers(data)
    assert stored is not None
    assert [t.name for t in stored] == [t.name for t in model.graph.initializer]
    for record, tensor in zip(stored, model.graph.initializer):
        assert record.dims == tuple(tensor.dims) and record.data_type == tensor.data_type
        assert data[record.raw_start : record.raw_end] == tensor.raw_data
        assert onnx.TensorProto.FromString(data[record.start : record.end]) == tensor
        assert record.plain
        np.testing.assert_array_equal(record.array(data), onnx.numpy_helper.to_array(tensor))


def test_scan_gives_up_on_bytes_it_does_not_understand():
    data = net().SerializeToString()
    assert scan_initializers(data[: len(data) // 2]) is None  # truncated
    assert scan_initializers(b"\x0b\x00") is None  # a group: never ONNX
    split = onnx.ModelProto(graph=onnx.GraphProto(name="more")).SerializeToString()
    assert scan_initializers(data + split) is None  # the graph in two fields (merged)


def test_scan_marks_typed_data_tensors_not_plain():
    model = net()
    model.graph.initializer.append(onnx.helper.make_tensor("typed", 1, [2], [1.0, 2.0]))
    stored = scan_initializers(model.SerializeToString())
    assert stored is not None and stored[-1].name == "typed" and not stored[-1].plain


def optimized(model: onnx.ModelProto):
    data = model.SerializeToString()
    ir_model = ir.from_proto(model)
    stored = scan_initializers(data)
    assert stored is not None
    originals = Originals(ir_model, data, stored)
    run_pipeline(ir_model)
    return ir_model, originals, data, stored


def test_pieces_are_the_model_protobuf_would_write():
    model = net()
    ir_model, originals, _, _ = optimized(model)
    pieces = model_pieces(ir_model, originals)
    joined = onnx.ModelProto.FromString(b"".join(pieces))
    assert joined.SerializeToString() == ir.to_proto(ir_model).SerializeToString()
    # conv2's weight is unchanged: written as the file's own record, not re-serialized
    views = [bytes(p) for p in pieces if isinstance(p, memoryview)]
    conv2 = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    assert conv2.SerializeToString() in views
    onnx.checker.check_model(joined, full_check=True)


def test_a_renamed_tensor_is_not_taken_from_the_file():
    model = net()
    ir_model, originals, _, _ = optimized(model)
    value = ir_model.graph.initializers["conv2.weight"]
    ir_model.graph.initializers.pop("conv2.weight")
    value.name = "renamed"
    ir_model.graph.register_initializer(value)
    joined = onnx.ModelProto.FromString(b"".join(model_pieces(ir_model, originals)))
    assert "renamed" in {t.name for t in joined.graph.initializer}
    assert "conv2.weight" not in {t.name for t in joined.graph.initializer}


def test_weightless_sessions_compute_what_the_full_models_compute():
    model = net()
    feeds = random_feeds(model, N=2)
    ir_model, originals, data, stored = optimized(model)
    original_bytes, original_arrays = weightless_proto(model, data, stored)
    assert "conv2.weight" in original_arrays and "shape" not in original_arrays  # small: inline
    assert len(original_bytes) < len(data) // 4
    optimized_bytes, optimized_arrays = weightless_ir(ir_model, originals)
    # the unchanged weight is a view of the file's bytes in both: one copy in memory
    assert np.shares_memory(optimized_arrays["conv2.weight"], original_arrays["conv2.weight"])
    assert not optimized_arrays["conv2.weight"].flags.writeable
    expected = run(model, feeds)[0]
    assert_fp32_close(
        _session((original_bytes, original_arrays), "m").run(None, feeds)[0], expected
    )
    got = _session((optimized_bytes, optimized_arrays), "m").run(None, feeds)[0]
    assert_fp32_close(got, expected)


class CorruptBigWeight(OptimizerPass):
    """Scales conv2's 9 KiB weight by 1.01: an error only the lent arrays can show."""

    name = "corrupt_big_weight"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        value = model.graph.initializers["conv2.weight"]
        assert value.const_value is not None
        value.const_value = ir.tensor(value.const_value.numpy() * np.float32(1.01))
        return ir.passes.PassResult(model, True)


@pytest.mark.parametrize("corrupt", [CorruptBigWeight, CorruptBias])
def test_verification_still_catches_a_changed_weight(corrupt):
    with pytest.raises(VerificationError, match="computes something else"):
        optimize_model(net(), passes=[ConvBatchNormFusion, corrupt])


def test_the_written_file_is_the_result_data(tmp_path):
    src, dst = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(net(), src)
    result = optimize_file(src, dst)
    assert dst.read_bytes() == result.data and result.size == len(result.data)
    assert ops(result.model) == ops(onnx.load(dst))
    assert ops(result.model)["BatchNormalization"] == 1  # bn2 stays behind its Relu


def test_the_light_model_holds_no_large_weights_and_load_ir_puts_them_back():
    model = net()
    data = model.SerializeToString()
    stored = scan_initializers(data)
    assert stored is not None
    light = onnx.ModelProto.FromString(light_model_bytes(data, stored))
    assert len(light.SerializeToString()) < len(data) // 4
    assert [t.name for t in light.graph.initializer] == [t.name for t in model.graph.initializer]
    kept = {t.name: t for t in light.graph.initializer}
    assert not kept["conv2.weight"].raw_data and kept["shape"].raw_data  # small ones stay
    ir_model, _ = load_ir(light, data, stored)
    for tensor in model.graph.initializer:
        value = ir_model.graph.initializers[tensor.name]
        assert value.const_value is not None
        np.testing.assert_array_equal(value.const_value.numpy(), onnx.numpy_helper.to_array(tensor))
    # a pass gets a copy it may change in place, never the file's read-only bytes
    weight = constant(ir_model.graph.initializers["conv2.weight"])
    assert isinstance(weight, np.ndarray) and weight.flags.writeable
    weight *= 0
    again = constant(ir_model.graph.initializers["conv2.weight"])
    assert isinstance(again, np.ndarray) and again.any()


def test_a_file_with_shapeless_outputs_is_checked_whole(tmp_path):
    model = net()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    src, dst = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = optimize_file(src, dst)
    assert result.verification is not None and result.verification.ok
    # and what only onnx's checker finds is still found on the whole model
    conv = model.graph.node[0]
    conv.attribute.append(onnx.helper.make_attribute("strides", 1.5))
    onnx.save(model, src)
    with pytest.raises(UserError, match="not a valid ONNX model"):
        optimize_file(src, dst)


def test_a_large_weight_with_too_few_bytes_is_refused_by_name(tmp_path):
    model = net()
    weight = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    weight.raw_data = weight.raw_data[:-8]  # still over 1 KiB: found by the scan, not parsed
    src = tmp_path / "net.onnx"
    onnx.save(model, src)
    with pytest.raises(UserError, match=r"initializer 'conv2.weight' holds 9208 bytes, its shape"):
        optimize_file(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


# --- the write overlaps the verification; a failed check still writes nothing ------------


@pytest.fixture
def corrupting_pipeline(monkeypatch):
    monkeypatch.setattr(
        pipeline, "PIPELINE", [ConvBatchNormFusion, CorruptBigWeight, DeadNodeRemoval]
    )


def test_a_failed_check_leaves_the_old_file_and_no_trace(tmp_path, corrupting_pipeline):
    src, dst = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(net(), src)
    dst.write_bytes(b"the previous version")
    with pytest.raises(VerificationError):
        optimize_file(src, dst)
    assert dst.read_bytes() == b"the previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "out.onnx"]
    nested = tmp_path / "new" / "folder" / "out.onnx"
    with pytest.raises(VerificationError):
        optimize_file(src, nested)
    assert not (tmp_path / "new").exists()  # the folders the write made are gone too


def test_a_write_that_fails_is_reported_after_a_passing_check(tmp_path):
    src, dst = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(net(), src)
    dst.mkdir()
    with pytest.raises(UserError, match="exists and is not a regular file"):
        optimize_file(src, dst)
    assert dst.is_dir()
