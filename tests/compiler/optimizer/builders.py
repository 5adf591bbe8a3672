"""Tiny ONNX graphs by hand, and running them: what every optimizer test needs.

g = GraphBuilder(opset=15)
x = g.input("x", [1, 3, 8, 8])
y = g.bn(g.conv(x, 3, 4), 4)
model = g.build(y)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from netc.compiler.optimizer.pipeline import run_pipeline


class GraphBuilder:
    """Builds a ModelProto node by node; parameters are seeded random initializers."""

    def __init__(self, opset: int = 15, dtype=np.float32, seed: int = 0) -> None:
        self.opset, self.dtype = opset, np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = Counter()

    @property
    def elem_type(self) -> int:
        return oh.np_dtype_to_tensor_dtype(self.dtype)

    def fresh(self, stem: str) -> str:
        self.count[stem] += 1
        return f"{stem}{self.count[stem]}"

    def input(self, name: str, shape: Sequence[int | str], dtype=None) -> str:
        elem = self.elem_type if dtype is None else oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.inputs.append(oh.make_tensor_value_info(name, elem, list(shape)))
        return name

    def const(self, name: str, array) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def param(self, name: str, shape: Sequence[int], low=None, high=None) -> str:
        if low is None:
            data = self.rng.standard_normal(shape)
        else:
            data = self.rng.uniform(low, high, size=shape)
        return self.const(name, data.astype(self.dtype))

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, name=None, **attrs):
        name = name or self.fresh(op.lower())
        outs = [name if n_out == 1 else f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(oh.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k=3, group=1, bias=True, name=None, **attrs) -> str:
        name = name or self.fresh("conv")
        w = self.param(f"{name}.weight", [cout, cin // group, k, k])
        inputs = [x, w] + ([self.param(f"{name}.bias", [cout])] if bias else [])
        pads = [k // 2] * 4
        return self.node("Conv", inputs, name=name, group=group, pads=pads, **attrs)

    def conv_transpose(self, x, cin, cout, k=2, group=1, bias=True, name=None) -> str:
        name = name or self.fresh("deconv")
        w = self.param(f"{name}.weight", [cin, cout // group, k, k])
        inputs = [x, w] + ([self.param(f"{name}.bias", [cout])] if bias else [])
        return self.node("ConvTranspose", inputs, name=name, group=group, strides=[k, k])

    def bn_params(self, name: str, channels: int) -> list[str]:
        """γ, β, μ, var with values far from the defaults, so a wrong fold shows."""
        return [
            self.const(f"{name}.scale", self._signed(channels)),
            self.param(f"{name}.bias", [channels]),
            self.param(f"{name}.mean", [channels]),
            self.param(f"{name}.var", [channels], 0.2, 3.0),
        ]

    def _signed(self, n: int) -> np.ndarray:
        magnitude = self.rng.uniform(0.5, 2.0, size=n)
        return (magnitude * self.rng.choice([-1.0, 1.0], size=n)).astype(self.dtype)

    def bn(self, x, channels, name=None, n_out=1, params=None, **attrs) -> str:
        name = name or self.fresh("bn")
        params = params or self.bn_params(name, channels)
        out = self.node("BatchNormalization", [x, *params], n_out=n_out, name=name, **attrs)
        return out if n_out == 1 else out[0]

    def build(self, *outputs: str, ir_version: int | None = None) -> onnx.ModelProto:
        graph = oh.make_graph(
            self.nodes,
            "test",
            self.inputs,
            [oh.make_tensor_value_info(o, self.elem_type, None) for o in outputs],
            initializer=self.initializers,
        )
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", self.opset)])
        model.ir_version = ir_version or min(model.ir_version, 8)
        # The checker wants output shapes; keep the inferred ones, drop the rest.
        inferred = onnx.shape_inference.infer_shapes(model)
        del inferred.graph.value_info[:]
        return inferred


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """onnxruntime on the CPU with its own graph optimizations off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def random_feeds(model: onnx.ModelProto, seed: int = 1, **sizes: int) -> dict[str, np.ndarray]:
    """Seeded normal inputs; symbolic dims take their size from `sizes` (default 2)."""
    rng = np.random.default_rng(seed)
    stored = {t.name for t in model.graph.initializer}
    feeds = {}
    for item in model.graph.input:
        if item.name in stored:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, 2)
            for d in item.type.tensor_type.shape.dim
        ]
        dtype = oh.tensor_dtype_to_np_dtype(item.type.tensor_type.elem_type)
        feeds[item.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def optimize(model: onnx.ModelProto, *passes, **kwargs):
    """Run `passes` (default: the whole pipeline) on a copy; (optimized proto, reports)."""
    ir_model = ir.from_proto(model)
    reports = run_pipeline(ir_model, passes=list(passes) or None, **kwargs)
    optimized = ir.to_proto(ir_model)
    onnx.checker.check_model(optimized)
    return optimized, reports


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
