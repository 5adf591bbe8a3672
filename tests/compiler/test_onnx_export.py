"""ONNX export: valid models that compute what the PyTorch module computes.

For every zoo net: `onnx.checker.check_model(full_check=True)` passes and
onnxruntime (its optimizations off) agrees with the module built from the
same IR, on seeded random inputs with non-trivial BN statistics; open-size
nets are checked at two input sizes.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_fp32_close

import netc
from netc.compiler import zoo
from netc.compiler.onnx_export import export_onnx, metadata_for
from netc.runtime.module import build_module

SIZES = {  # small inputs keep the suite fast; open-size nets get two
    "lenet5": [(1, 32, 32)],
    "tinyseg": [(3, 48, 64), (3, 32, 36)],
    "fcn8s": [(3, 40, 52), (3, 64, 33)],
    "fcn32s": [(3, 40, 52), (3, 29, 47)],
    "sppnet": [(3, 100, 120), (3, 67, 90)],
}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _module_with_statistics(graph):
    module = build_module(graph, seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.uniform_(-0.5, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    return module


@pytest.mark.parametrize("name", zoo.names())
def test_export_matches_the_pytorch_module(name):
    shapes = SIZES.get(name, [(3, 64, 64) if name.startswith("vgg") else (3, 96, 96)])
    fixed = name not in SIZES or name == "lenet5"
    # Fixed-size nets are compiled at the test size (AlexNet's 6x6 adaptive pool
    # then needs uneven bins, which exercises that path too).
    net = netc.load(name, input_shape=shapes[0] if fixed else None)
    module = _module_with_statistics(net.graph)
    model = export_onnx(net.graph, module.state_dict())
    onnx.checker.check_model(model, full_check=True)
    session = _session(model)
    for shape in shapes:
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = module(x).numpy()
        (actual,) = session.run(None, {"image": x.numpy()})
        # fp32, same arithmetic in a different library: summation-order noise only, which
        # grows with the logits' magnitude in deep nets (tests/helpers.py says why).
        assert_fp32_close(actual, expected, what=f"{name} at {shape}")


def test_names_batch_and_open_sizes():
    net = netc.load("tinyseg")
    model = export_onnx(net.graph, build_module(net.graph).state_dict())
    names = {node.name for node in model.graph.node}
    assert {"stage1.0.conv", "stage1.0.bn", "classifier", "upsample"} <= names
    assert "stage1.0.conv.weight" in {init.name for init in model.graph.initializer}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    assert [n.op_type for n in model.graph.node].count("BatchNormalization") == 5


def test_dropout_is_gone_and_metadata_is_written():
    net = netc.load("alexnet")
    meta = metadata_for(
        "classification",
        ["a", "b"],
        {"mean": [0.5], "std": [0.25]},
        net.graph.inputs["image"].shape,
    )
    model = export_onnx(net.graph, build_module(net.graph).state_dict(), card=meta)
    assert "Dropout" not in {n.op_type for n in model.graph.node}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["netc.task"] == "classification"
    assert json.loads(props["netc.labels"]) == ["a", "b"]
    pre = json.loads(props["netc.preprocessing"])
    assert pre["mean"] == [0.5] and pre["input_size"] == [224, 224] and pre["layout"] == "NCHW"
    assert len(props["netc.description_sha256"]) == 64


def test_adaptive_pool_with_uneven_bins_matches_pytorch():
    net = netc.load_string("""
name: uneven
inputs: {image: [2, null, null]}
layers:
  - {name: pool, op: adaptive_avg_pool, output: [3, 5]}
  - {name: maxp, op: adaptive_max_pool, inputs: image, output: 4}
  - {name: flat1, op: flatten, inputs: pool}
  - {name: flat2, op: flatten, inputs: maxp}
  - {name: joined, op: concat, inputs: [flat1, flat2]}
""")
    model = export_onnx(net.graph, {})
    session = _session(model)
    for h, w in ((7, 11), (10, 10), (5, 13)):
        x = np.random.default_rng(h).standard_normal((1, 2, h, w)).astype(np.float32)
        t = torch.from_numpy(x)
        expected = torch.cat(
            [
                torch.nn.functional.adaptive_avg_pool2d(t, (3, 5)).flatten(1),
                torch.nn.functional.adaptive_max_pool2d(t, 4).flatten(1),
            ],
            1,
        )
        (actual,) = session.run(None, {"image": x})
        assert_fp32_close(actual, expected, what=f"{h}x{w}")
