"""The pipeline as a whole: order, flags, failures, and nets exported from plain PyTorch.

ResNet-18 (tests/reference/torch_zoo.py) and a MobileNet-style net (depthwise
separable convs with BN + ReLU6, a ConvTranspose + BN decoder, Linear +
BatchNorm1d) are exported with the TorchScript exporter, which keeps
BatchNormalization nodes. Every BN must fold, the result must verify at two
spatial sizes, and netc must never leave more BN nodes than onnxoptimizer's
fuse_bn_into_conv or onnxruntime's own optimizer.
"""

import io
import warnings

import onnx
import onnx_ir as ir
import onnxoptimizer
import onnxruntime as ort
import pytest
import torch
import torch_zoo
from builders import GraphBuilder, ops, optimize
from torch import nn

from netc.compiler.optimizer.api import optimize_model
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.pipeline import PIPELINE, flags, run_pipeline, selected
from netc.errors import InternalError, UserError

# --- The list itself ----------------------------------------------------------------------


def test_pipeline_reads_like_a_table_of_contents():
    names = [p.name for p in PIPELINE]
    assert len(set(names)) == len(names)
    assert names.index("identity_elimination") < names.index("conv_bn_fusion")
    assert names.index("dropout_removal") < names.index("conv_bn_fusion")
    assert names[-2:] == ["dead_node_removal", "duplicate_initializer_removal"]


class Flagged(OptimizerPass):
    name = "flagged"
    flag = "experimental"

    def call(self, model):
        self.note("ran")
        return ir.passes.PassResult(model, False)


class Broken(OptimizerPass):
    name = "broken"

    def call(self, model):
        raise ValueError("boom")


def test_flagged_passes_run_only_when_enabled():
    passes = [PIPELINE[0], Flagged]
    assert flags(passes) == ["experimental"]
    assert Flagged not in selected(passes=passes)
    assert Flagged in selected({"experimental"}, passes)
    with pytest.raises(UserError, match=r"unknown optimizer flag 'experimentl'.*did you mean"):
        selected({"experimentl"}, passes)


def test_a_failing_pass_is_named_with_the_passes_before_it():
    g = GraphBuilder()
    model = ir.from_proto(g.build(g.node("Relu", [g.input("x", [1])])))
    passes = [PIPELINE[0], PIPELINE[1], Broken]
    with pytest.raises(InternalError, match=r"pass broken failed after \[identity_elimination, "):
        run_pipeline(model, passes=passes)


def test_one_report_per_pass_with_node_counts():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 6, 6])
    y = g.node("Dropout", [g.bn(g.conv(x, 3, 4), 4)])
    model = g.build(g.node("Identity", [g.node("Relu", [y])]))
    optimized, reports = optimize(model)
    assert [r.name for r in reports] == [p.name for p in PIPELINE if p.flag is None]
    assert sum(r.nodes_before - r.nodes_after for r in reports) == 3
    assert ops(optimized) == {"Conv": 1, "Relu": 1}


# --- Plain-PyTorch nets -------------------------------------------------------------------


class MobileNetish(nn.Module):
    """Depthwise separable blocks (BN + ReLU6), a grouped ConvTranspose + BN decoder with a
    segmentation head, and a Linear + BatchNorm1d classifier."""

    def __init__(self) -> None:
        super().__init__()

        def separable(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU6(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU6(),
            )

        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(separable(16, 32, 1), separable(32, 64, 2))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 2, stride=2, groups=2),
            nn.BatchNorm2d(32, eps=1e-3),
            nn.ReLU(),
        )
        self.seg = nn.Conv2d(32, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
        )

    def forward(self, x):
        features = self.blocks(self.stem(x))
        return self.head(torch.flatten(self.pool(features), 1)), self.seg(self.up(features))


def export(module: nn.Module, opset: int | None = None) -> onnx.ModelProto:
    """TorchScript export that keeps BatchNormalization; open batch, height and width."""
    torch.manual_seed(0)
    for layer in module.modules():  # statistics far from the defaults, so folds are tested
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.running_mean.normal_(0, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.normal_(0, 0.5)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            module.eval(),
            torch.randn(2, 3, 64, 64),
            buffer,
            dynamo=False,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=["image"],
            dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}},
            **({"opset_version": opset} if opset else {}),
        )
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def resnet18():
    return export(torch_zoo.build("resnet18", num_classes=10))


@pytest.fixture(scope="module", params=[9, None], ids=["opset9", "opset-default"])
def mobilenet(request):
    return export(MobileNetish(), request.param)


def checked_after_every_pass(pass_, model):
    """The verifier tests run after each pass: a valid ONNX graph, outputs still named."""
    onnx.checker.check_model(ir.to_proto(model))


def bn_count(model: onnx.ModelProto) -> int:
    return ops(model)["BatchNormalization"]


def onnxoptimizer_bn(model):
    fused = onnxoptimizer.optimize(model, ["eliminate_identity", "fuse_bn_into_conv"])
    return min(bn_count(onnxoptimizer.optimize(model, ["fuse_bn_into_conv"])), bn_count(fused))


def onnxruntime_bn(model, tmp_path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return bn_count(onnx.load(tmp_path / "ort.onnx"))


def test_resnet18_every_bn_fused_and_verified(resnet18, tmp_path):
    assert bn_count(resnet18) == 20
    optimized, _ = optimize(resnet18, after_each=checked_after_every_pass)
    assert bn_count(optimized) == 0
    result = optimize_model(resnet18)  # verifies at 64x64 and 96x96
    assert result.ops_after["BatchNormalization"] == 0 and result.verification.ok
    assert len(result.verification.input_shapes) == 2
    assert result.ops_after["Conv"] == 20 and result.ops_after["Identity"] == 0
    assert bn_count(optimized) <= onnxoptimizer_bn(resnet18)
    assert bn_count(optimized) <= onnxruntime_bn(resnet18, tmp_path)


def test_mobilenet_style_every_bn_fused_and_verified(mobilenet, tmp_path):
    assert bn_count(mobilenet) == 7  # 5 after convs, 1 after the ConvTranspose, 1 after Gemm
    optimized, _ = optimize(mobilenet, after_each=checked_after_every_pass)
    result = optimize_model(mobilenet)
    assert result.verification.ok and len(result.verification.input_shapes) == 2
    assert bn_count(optimized) == 0 and result.ops_after["BatchNormalization"] == 0
    fusion = next(r for r in result.reports if r.name == "conv_bn_fusion")
    assert any(note.endswith("→ ConvTranspose") for note in fusion.notes)
    assert any(note.endswith("→ Gemm") for note in fusion.notes)
    assert bn_count(optimized) <= onnxoptimizer_bn(mobilenet)
    assert bn_count(optimized) <= onnxruntime_bn(mobilenet, tmp_path)


def test_shape_inference_leaves_the_types_inside_subgraphs_alone():
    # Inference (for MAC counts and the folding passes) once retyped a branch's sequence
    # as a tensor, and the optimized If no longer loaded.
    import numpy as np
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    seq = oh.make_sequence_type_proto(oh.make_tensor_type_proto(TensorProto.FLOAT, [5]))
    opt = oh.make_optional_type_proto(seq)
    value = numpy_helper.from_array(np.arange(5, dtype=np.float32), "v")
    else_body = oh.make_graph(
        [
            oh.make_node("Constant", [], ["x"], value=value),
            oh.make_node("SequenceConstruct", ["x"], ["else_seq"]),
            oh.make_node("Optional", ["else_seq"], ["else_opt"]),
        ],
        "else_body",
        [],
        [oh.make_value_info("else_opt", opt)],
    )
    then_body = oh.make_graph(
        [oh.make_node("Optional", [], ["none"], type=seq)],
        "then_body",
        [],
        [oh.make_value_info("none", opt)],
    )
    graph = oh.make_graph(
        [oh.make_node("If", ["cond"], ["out"], then_branch=then_body, else_branch=else_body)],
        "if",
        [oh.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [oh.make_value_info("out", opt)],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    model.ir_version = 8
    result = optimize_model(model, name="if")  # raises if the optimized model does not run
    assert result.verification.ok
