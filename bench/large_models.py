"""Large ONNX models for timing the optimizer itself, built in code (random weights).

VGG-19 with BatchNormalization (143.7 M parameters, ~575 MB) and an FCN-8s on
a VGG-16 backbone with BN (~535 MB), both at batch 1, 3x224x224 fixed, laid
out as torch.onnx exports them (Conv → BatchNormalization → Relu, MaxPool,
Flatten → Gemm, Dropout in the classifier; ConvTranspose upsampling and Add
skips in the FCN). Built with onnx.helper so that no download and no torch
export is needed: a few seconds each. `ir3=True` gives the IR 3 layout of
Caffe2-converted model-zoo files: every initializer also listed as a graph
input, ir_version 3, opset 9.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
VGG19 += [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        array = self.rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(np.sqrt(2.0 / fan_in))
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def vector(self, name: str, size: int, low: float, high: float) -> str:
        array = self.rng.uniform(low, high, size).astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn_relu(self, x: str, cin: int, cout: int, prefix: str) -> str:
        w = self.weight(f"{prefix}.weight", (cout, cin, 3, 3), cin * 9)
        b = self.vector(f"{prefix}.bias", cout, -0.1, 0.1)
        y = self.node("Conv", [x, w, b], f"{prefix}/Conv", kernel_shape=[3, 3], pads=[1] * 4)
        bn = [
            self.vector(f"{prefix}.bn.{p}", cout, lo, hi)
            for p, lo, hi in (("weight", 0.5, 1.5), ("bias", -0.2, 0.2), ("mean", -0.5, 0.5))
        ]
        bn.append(self.vector(f"{prefix}.bn.var", cout, 0.5, 2.0))
        y = self.node("BatchNormalization", [y, *bn], f"{prefix}/BatchNormalization")
        return self.node("Relu", [y], f"{prefix}/Relu")

    def features(self, x: str, layout: list, taps: tuple[int, ...] = ()) -> tuple[str, list[str]]:
        """The VGG feature stack; the outputs of the pools numbered in `taps` (1-based)."""
        cin, pools, tapped = 3, 0, []
        for index, item in enumerate(layout):
            if item == "M":
                pools += 1
                x = self.node(
                    "MaxPool", [x], f"features.{index}/MaxPool", kernel_shape=[2, 2], strides=[2, 2]
                )
                if pools in taps:
                    tapped.append(x)
            else:
                x = self.conv_bn_relu(x, cin, int(item), f"features.{index}")
                cin = int(item)
        return x, tapped

    def model(self, name: str, x: str, y: str, out_shape: list[int], ir3: bool) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 224, 224])]
        if ir3:
            inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits
            ]
        graph = helper.make_graph(
            self.nodes,
            name,
            inputs,
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)],
            initializer=self.inits,
        )
        opset = 9 if ir3 else 17
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 3 if ir3 else 8
        return model


def vgg19_bn(seed: int = 0, *, ir3: bool = False) -> onnx.ModelProto:
    """torchvision's vgg19_bn layout: 16 Conv-BN-Relu, 5 MaxPool, 3 Gemm; 1000 classes."""
    b = _Builder(seed)
    x, _ = b.features("input", VGG19)
    x = b.node("Flatten", [x], "Flatten")
    for index, (cin, cout) in enumerate(((512 * 49, 4096), (4096, 4096), (4096, 1000))):
        w = b.weight(f"classifier.{index}.weight", (cout, cin), cin)
        bias = b.vector(f"classifier.{index}.bias", cout, -0.1, 0.1)
        x = b.node("Gemm", [x, w, bias], f"classifier.{index}/Gemm", transB=1)
        if index < 2:
            x = b.node("Relu", [x], f"classifier.{index}/Relu")
            if not ir3:  # Dropout-12's outputs differ; opset 9's has a mask output
                x = b.node("Dropout", [x], f"classifier.{index}/Dropout")
    return b.model("vgg19_bn", "input", x, [1, 1000], ir3)


def fcn8s_bn(seed: int = 0, *, ir3: bool = False, classes: int = 21) -> onnx.ModelProto:
    """FCN-8s on VGG-16 with BN: fc6 as a 7x7 conv (512→4096), fc7 1x1 (4096→4096),
    scores at 1/32, 1/16 and 1/8 upsampled by ConvTranspose and added, then 8x up."""
    b = _Builder(seed)
    x, (pool3, pool4) = b.features("input", VGG16, taps=(3, 4))
    for name, cin, cout, k in (("fc6", 512, 4096, 7), ("fc7", 4096, 4096, 1)):
        w = b.weight(f"{name}.weight", (cout, cin, k, k), cin * k * k)
        bias = b.vector(f"{name}.bias", cout, -0.1, 0.1)
        x = b.node("Conv", [x, w, bias], f"{name}/Conv", kernel_shape=[k, k], pads=[k // 2] * 4)
        x = b.node("Relu", [x], f"{name}/Relu")

    def score(src: str, cin: int, name: str) -> str:
        w = b.weight(f"{name}.weight", (classes, cin, 1, 1), cin)
        bias = b.vector(f"{name}.bias", classes, -0.1, 0.1)
        return b.node("Conv", [src, w, bias], f"{name}/Conv", kernel_shape=[1, 1])

    def up(src: str, factor: int, name: str) -> str:
        k = 2 * factor
        w = b.weight(f"{name}.weight", (classes, classes, k, k), classes * k * k)
        return b.node(
            "ConvTranspose",
            [src, w],
            f"{name}/ConvTranspose",
            kernel_shape=[k, k],
            strides=[factor, factor],
            pads=[factor // 2] * 4,
        )

    x = up(score(x, 4096, "score_fr"), 2, "upscore2")
    x = b.node("Add", [x, score(pool4, 512, "score_pool4")], "fuse_pool4/Add")
    x = up(x, 2, "upscore_pool4")
    x = b.node("Add", [x, score(pool3, 256, "score_pool3")], "fuse_pool3/Add")
    x = up(x, 8, "upscore8")
    return b.model("fcn8s_bn", "input", x, [1, classes, 224, 224], ir3)
