"""IR + weights → ONNX.

Node names and output tensor names are the description's layer names, and
initializers carry the PyTorch parameter names (`layer1.0.conv1.weight`), so
a user reading the graph in Netron finds their layers. The batch dimension is
symbolic (`N`), and so are H and W when the description leaves them open.

BatchNormalization stays its own node (the optimizer fuses it, visibly);
dropout is the identity at inference and is dropped. ONNX has no adaptive
pooling: it becomes a plain pool when the size divides evenly, else explicit
bins (Slice + Reduce*), computed from the runtime shape when H and W are open.

Metadata (`metadata_props`) is the model card a server reads
(`netc.model_card`): task, labels, preprocessing (mean, std, layout, input
size, value range), the description's name and hash. Open output sizes are
written as `Sym` prints them, which the card's `size_rule` reads back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from netc.compiler.ir import Graph, Node
from netc.errors import InternalError
from netc.model_card import ModelCard, Preprocessing

OPSET = 17
IR_VERSION = 9


@dataclass
class _Builder:
    """Accumulates nodes and initializers; names every helper tensor uniquely."""

    weights: Mapping[str, np.ndarray]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    counter: int = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}/{self.counter}"

    def const(self, base: str, value: Any, dtype: Any = np.int64) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, key: str) -> str:
        if key not in self.weights:
            raise InternalError(f"export: no weight '{key}' in the state dict")
        if key not in self.used:
            self.used.add(key)
            array = np.ascontiguousarray(self.weights[key], dtype=np.float32)
            self.initializers.append(numpy_helper.from_array(array, key))
        return key

    def step(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        """A helper node (not one of the user's layers), named fresh from `base`."""
        return self.add(op, inputs, self.fresh(base), self.fresh(f"{base}/{op}"), **attrs)

    def add(self, op: str, inputs: list[str], output: str, name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def _pads(node: Node) -> list[int]:
    top, left, bottom, right = node.attrs["padding"]
    return [top, left, bottom, right]


def _conv(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    a = node.attrs
    inputs = [ins[0], b.weight(f"{node.name}.weight")]
    if a["bias"]:
        inputs.append(b.weight(f"{node.name}.bias"))
    op = "Conv" if node.op == "conv" else "ConvTranspose"
    extra = {"output_padding": list(a["output_padding"])} if node.op == "conv_transpose" else {}
    b.add(
        op,
        inputs,
        out,
        node.name,
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        pads=_pads(node),
        dilations=list(a["dilation"]),
        group=a["groups"],
        **extra,
    )


def _pool(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    a = node.attrs
    common = dict(
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        pads=_pads(node),
        ceil_mode=int(a["ceil_mode"]),
    )
    if node.op == "max_pool":
        b.add("MaxPool", ins, out, node.name, **common)
    else:
        b.add(
            "AveragePool",
            ins,
            out,
            node.name,
            count_include_pad=int(a["count_include_pad"]),
            **common,
        )


def _batch_norm(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    a = node.attrs
    channels = shapes[0][1]
    if a["affine"]:
        scale, bias = b.weight(f"{node.name}.weight"), b.weight(f"{node.name}.bias")
    else:
        scale = b.const(f"{node.name}.ones", np.ones(channels), np.float32)
        bias = b.const(f"{node.name}.zeros", np.zeros(channels), np.float32)
    b.add(
        "BatchNormalization",
        [
            ins[0],
            scale,
            bias,
            b.weight(f"{node.name}.running_mean"),
            b.weight(f"{node.name}.running_var"),
        ],
        out,
        node.name,
        epsilon=a["eps"],
        momentum=1.0 - a["momentum"],
    )


def _fc(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    inputs = [ins[0], b.weight(f"{node.name}.weight")]
    if node.attrs["bias"]:
        inputs.append(b.weight(f"{node.name}.bias"))
    b.add("Gemm", inputs, out, node.name, transB=1)


def _crop(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    oh, ow = node.attrs["offset"]
    ref = shapes[1]
    starts = b.const(f"{node.name}.starts", [oh, ow])
    axes = b.const(f"{node.name}.axes", [2, 3])
    if all(isinstance(d, int) for d in ref[2:]):
        ends = b.const(f"{node.name}.ends", [oh + ref[2], ow + ref[3]])
    else:  # ends = offset + reference's runtime H, W
        shape = b.step("Shape", [ins[1]], f"{node.name}.ref_shape", start=2, end=4)
        ends = b.step("Add", [shape, starts], f"{node.name}.ends")
    b.add("Slice", [ins[0], starts, ends, axes], out, node.name)


def _upsample(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    a = node.attrs
    if a["mode"] == "nearest":
        modes = dict(
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"
        )
    else:
        transform = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
        modes = dict(mode="linear", coordinate_transformation_mode=transform)
    if a["size"] is not None:
        shape = b.step("Shape", [ins[0]], f"{node.name}.nc", start=0, end=2)
        sizes = b.step(
            "Concat",
            [shape, b.const(f"{node.name}.hw", list(a["size"]))],
            f"{node.name}.sizes",
            axis=0,
        )
        b.add("Resize", [ins[0], "", "", sizes], out, node.name, **modes)
    else:
        scales = b.const(f"{node.name}.scales", [1.0, 1.0, *a["scale"]], np.float32)
        b.add("Resize", [ins[0], "", scales], out, node.name, **modes)


def _add(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    b.add("Add" if len(ins) == 2 else "Sum", ins, out, node.name)


_SIMPLE = {  # op → (ONNX op, attribute builder)
    "global_avg_pool": ("GlobalAveragePool", lambda a: {}),
    "global_max_pool": ("GlobalMaxPool", lambda a: {}),
    "lrn": (
        "LRN",
        lambda a: {"size": a["size"], "alpha": a["alpha"], "beta": a["beta"], "bias": a["k"]},
    ),
    "relu": ("Relu", lambda a: {}),
    "leaky_relu": ("LeakyRelu", lambda a: {"alpha": a["slope"]}),
    "sigmoid": ("Sigmoid", lambda a: {}),
    "tanh": ("Tanh", lambda a: {}),
    "softmax": ("Softmax", lambda a: {"axis": a["axis"]}),
    "flatten": ("Flatten", lambda a: {"axis": 1}),
    "concat": ("Concat", lambda a: {"axis": a["axis"]}),
}


def _emit(b: _Builder, node: Node, ins: list[str], out: str, shapes) -> None:
    from netc.compiler.onnx_adaptive import emit_adaptive, emit_spp

    if node.op in _SIMPLE:
        op, attrs = _SIMPLE[node.op]
        b.add(op, ins, out, node.name, **attrs(node.attrs))
        return
    emitters = {
        "conv": _conv,
        "conv_transpose": _conv,
        "max_pool": _pool,
        "avg_pool": _pool,
        "batch_norm": _batch_norm,
        "fc": _fc,
        "crop": _crop,
        "upsample": _upsample,
        "add": _add,
        "adaptive_avg_pool": emit_adaptive,
        "adaptive_max_pool": emit_adaptive,
        "spp": emit_spp,
    }
    if node.op not in emitters:
        raise InternalError(f"export: no ONNX lowering for op '{node.op}' (node '{node.name}')")
    emitters[node.op](b, node, ins, out, shapes)


def _value_info(name: str, shape) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _whiten(b: _Builder, name: str, pca: np.ndarray, pca_mean: np.ndarray | None) -> str:
    """ZCA whitening baked in front of the network: reshape((flat(x) - m) @ Pᵀ, shape(x))."""
    flat = b.step("Flatten", [name], "whiten.flat", axis=1)
    if pca_mean is not None:
        mean = b.const("whiten.mean", pca_mean, np.float32)
        flat = b.step("Sub", [flat, mean], "whiten.centred")
    matrix = b.const("whiten.matrix", np.asarray(pca).T, np.float32)
    projected = b.step("MatMul", [flat, matrix], "whiten.projected")
    shape = b.step("Shape", [name], "whiten.shape")
    return b.add("Reshape", [projected, shape], "whitened", "whiten/reshape")


def export_onnx(
    graph: Graph,
    weights: Mapping[str, Any],
    *,
    card: ModelCard | None = None,
    whitening: tuple[Any, Any] | None = None,
) -> onnx.ModelProto:
    """The ONNX model of `graph` with `weights` (a state dict: tensors or arrays).

    `card` (`metadata_for`) goes into the metadata, with the network's name, the
    hash of its description and, when the card has none, the graph's task.

    `whitening` = (matrix, mean) bakes a training-time ZCA whitening into the
    graph, so clients send mean/std-normalised images as for any other model.
    """
    arrays = {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in weights.items()
    }
    b = _Builder(arrays)
    output_of = {source: out for out, source in graph.outputs.items()}
    tensor = {name: name for name in graph.inputs}  # IR value → ONNX tensor name
    if whitening is not None:
        first = next(iter(graph.inputs))
        tensor[first] = _whiten(b, first, *whitening)
    shapes = {name: item.shape for name, item in graph.inputs.items()}
    for node in graph.nodes:
        ins = [tensor[s] for s in node.inputs]
        shapes[node.name] = node.shape
        if node.op == "dropout" and node.name not in output_of:
            tensor[node.name] = ins[0]  # identity at inference
            continue
        out = output_of.get(node.name, node.name)
        if node.op == "dropout":
            b.add("Identity", ins, out, node.name)
        else:
            _emit(b, node, ins, out, [shapes[s] for s in node.inputs])
        tensor[node.name] = out
    onnx_graph = helper.make_graph(
        b.nodes,
        graph.name,
        [_value_info(name, item.shape) for name, item in graph.inputs.items()],
        [_value_info(out, graph.node(source).shape) for out, source in graph.outputs.items()],
        initializer=b.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="netc",
        ir_version=IR_VERSION,
    )
    model.doc_string = f"{graph.name}: exported by netc from {graph.file or 'a description'}"
    card = card or ModelCard()
    card = replace(
        card,
        task=card.task or graph.task,
        network=graph.name,
        description_sha256=hashlib.sha256(graph.source.encode()).hexdigest(),
    )
    helper.set_model_props(model, card.to_props())
    return model


def metadata_for(
    task: str, labels: list[str] | None, preprocessing: dict | None, input_shape
) -> ModelCard:
    """The model card a server reads: the task, labels and how to prepare an image, from
    training's preprocessing (mean, std, resize_to) and the graph's input shape."""
    pre = preprocessing or {}
    mean, std, resize_to = (pre.get(key) for key in ("mean", "std", "resize_to"))
    return ModelCard(
        task=task,
        labels=None if labels is None else tuple(labels),
        preprocessing=Preprocessing(
            mean=None if mean is None else tuple(mean),
            std=None if std is None else tuple(std),
            input_size=tuple(d if isinstance(d, int) else None for d in input_shape[2:]),
            resize_to=None if resize_to is None else tuple(resize_to),
            channels=input_shape[1],
        ),
    )
