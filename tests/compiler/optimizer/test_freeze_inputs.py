"""IR 3 models (initializers also listed as graph inputs): folded only on request.

IR 3 files, such as every Caffe2-converted model-zoo file, list each initializer
as a graph input too, which lets a caller override it at run time; so by
default no fold may read them. `--freeze-initializer-inputs` drops them from
the inputs and raises the IR version to 4, where that layout is valid.
"""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from builders import ops, run
from helpers import assert_fp32_close
from onnx import numpy_helper

from netc.cli import main
from netc.compiler.optimizer.api import optimize_file, optimize_model


def ir3_conv_bn(opset: int = 9, seed: int = 0, width: int = 4) -> onnx.ModelProto:
    """Conv → BN → Relu → Conv → BN, every initializer also a graph input, IR 3."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    x = "data"
    for index, (cin, cout) in enumerate(((3, width), (width, 5))):
        p = f"l{index}"
        arrays[f"{p}_w"] = rng.standard_normal((cout, cin, 3, 3))
        arrays[f"{p}_b"] = rng.standard_normal(cout)
        arrays[f"{p}_s"] = rng.uniform(0.5, 2.0, cout) * rng.choice([-1.0, 1.0], cout)
        arrays[f"{p}_beta"] = rng.standard_normal(cout)
        arrays[f"{p}_mean"] = rng.standard_normal(cout)
        arrays[f"{p}_var"] = rng.uniform(0.2, 3.0, cout)
        params = [f"{p}_{k}" for k in ("s", "beta", "mean", "var")]
        nodes.append(oh.make_node("Conv", [x, f"{p}_w", f"{p}_b"], [f"{p}_c"], pads=[1] * 4))
        nodes.append(oh.make_node("BatchNormalization", [f"{p}_c", *params], [f"{p}_y"]))
        x = f"{p}_y"
        if index == 0:
            nodes.append(oh.make_node("Relu", [x], ["r0"]))
            x = "r0"
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    inputs = [oh.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [oh.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    outputs = [oh.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 5, 8, 8])]
    graph = oh.make_graph(nodes, "ir3", inputs, outputs, initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("opset", [8, 9])
def test_freeze_folds_every_bn_and_the_result_is_valid_ir4(opset):
    model = ir3_conv_bn(opset)
    result = optimize_model(model, freeze_initializer_inputs=True)
    optimized = result.model
    assert ops(optimized) == {"Conv": 2, "Relu": 1}
    assert [i.name for i in optimized.graph.input] == ["data"]
    assert optimized.ir_version == 4
    onnx.checker.check_model(optimized, full_check=True)
    feeds = {"data": np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert_fp32_close(run(optimized, feeds)[0], run(model, feeds)[0])
    assert result.verification is not None and result.verification.ok
    assert len(result.frozen_inputs) == 12
    assert "12 initializers are no longer graph inputs" in result.report()
    assert "IR version 3 → 4" in result.report()
    assert model.ir_version == 3 and len(model.graph.input) == 13  # the input is unchanged


def test_without_the_flag_nothing_is_folded_and_the_refusal_names_the_flag():
    model = ir3_conv_bn()
    result = optimize_model(model)
    assert ops(result.model)["BatchNormalization"] == 2
    assert result.model.ir_version == 3 and len(result.model.graph.input) == 13
    refusals = [r for report in result.reports for r in report.refusals]
    assert any(
        "'l0_s' is an initializer that is also a graph input, so it can change at run time" in r
        and "--freeze-initializer-inputs" in r
        for r in refusals
    )
    assert "12 initializers are also graph inputs" in result.report()


def test_freeze_keeps_a_newer_ir_version_and_leaves_models_without_such_inputs_alone():
    model = ir3_conv_bn()
    model.ir_version = 7
    assert optimize_model(model, freeze_initializer_inputs=True).model.ir_version == 7
    plain = ir3_conv_bn()
    del plain.graph.input[1:]
    plain.ir_version = 8
    result = optimize_model(plain, freeze_initializer_inputs=True)
    assert result.frozen_inputs == [] and "no longer graph inputs" not in result.report()
    assert ops(result.model) == {"Conv": 2, "Relu": 1}


def test_optimize_file_takes_the_keyword(tmp_path):
    src, dst = tmp_path / "ir3.onnx", tmp_path / "out.onnx"
    onnx.save(ir3_conv_bn(), src)
    optimize_file(src, dst, freeze_initializer_inputs=True, verify=False)
    written = onnx.load(dst)
    assert ops(written)["BatchNormalization"] == 0 and written.ir_version == 4


def test_cli_flag(tmp_path, capsys):
    src, dst = tmp_path / "ir3.onnx", tmp_path / "out.onnx"
    onnx.save(ir3_conv_bn(), src)
    assert main(["optimize", str(src), "-o", str(dst)]) == 0
    text = capsys.readouterr().out
    assert "BatchNormalization 2 → 2" in text and "--freeze-initializer-inputs" in text
    assert main(["optimize", str(src), "-o", str(dst), "--freeze-initializer-inputs"]) == 0
    text = capsys.readouterr().out
    assert "BatchNormalization 2 → 0" in text and "verified: outputs match" in text
    assert "IR version 3 → 4" in text
    onnx.checker.check_model(onnx.load(dst), full_check=True)


def test_cli_refuses_the_flag_with_reduced_precision(tmp_path, capsys):
    src = tmp_path / "ir3.onnx"
    onnx.save(ir3_conv_bn(), src)
    argv = ["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--freeze-initializer-inputs"]
    assert main([*argv, "--precision", "fp16"]) != 0
    err = capsys.readouterr().err
    assert "--freeze-initializer-inputs goes with --precision fp32" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("freeze", [False, True])
def test_large_ir3_weights_lent_to_onnxruntime_verify_either_way(freeze, tmp_path):
    """Weights of 1 KiB and more reach the verifying sessions by reference, also when
    they are graph inputs too (width 16: 1.7 and 2.8 KiB conv weights)."""
    src, dst = tmp_path / "ir3.onnx", tmp_path / "out.onnx"
    model = ir3_conv_bn(width=16)
    onnx.save(model, src)
    result = optimize_file(src, dst, freeze_initializer_inputs=freeze)
    assert result.verification is not None and result.verification.ok
    assert ops(onnx.load(dst))["BatchNormalization"] == (0 if freeze else 2)
