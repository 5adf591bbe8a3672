"""Turn a GlobalAveragePool → Flatten → Gemm classifier head into a 1x1 conv
followed by the global pool (the fully convolutional form)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc


class GapGemmToConvPass(OptimizerPass):
    """Rewrite Gemm(Flatten(GlobalAveragePool(x)), B, C) as
    Flatten(GlobalAveragePool(Conv1x1(x, W, b))).

    1. With Gemm computing α·A·B' + β·C (B' = Bᵀ when transB=1):
           α·mean_p(x_p)·B' + β·C = mean_p(α·B'ᵀ·x_p + β·C)
       because the average's weights sum to one, so the bias passes through
       it. The conv has W[n, k, 1, 1] = α·B'[k, n] and bias b = β·C.

    Preconditions: Flatten has axis 1; Gemm has transA=0, a constant B and a
    constant C (or none) holding one value per output ([N], [1, N] or a
    scalar); x has a known rank; GlobalAveragePool's and Flatten's outputs
    are each read only by the next node and are not graph outputs.

    Behind a flag: the conv now runs on every position, so the head costs
    H·W times the Gemm's MACs (reported as negative savings). What it buys is
    the fully convolutional form: without the final pool the network maps any
    input size to a map of class scores.
    """

    name = "gap-gemm-to-conv"
    flag = "fully-convolutional"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for gemm in list(model.graph):
            if gemm.op_type != "Gemm" or gemm.domain != "":
                continue
            flatten = gemm.inputs[0].producer()
            if flatten is None or flatten.op_type != "Flatten" or flatten.domain != "":
                continue
            gap = flatten.inputs[0].producer()
            if gap is None or gap.op_type != "GlobalAveragePool" or gap.domain != "":
                continue
            modified |= self._try_rewrite(model.graph, gap, flatten, gemm)
        return ir.passes.PassResult(model, modified)

    def _try_rewrite(self, graph: ir.Graph, gap: ir.Node, flatten: ir.Node, gemm: ir.Node) -> bool:
        label = f"{pc.node_label(gap)} → {pc.node_label(flatten)} → {pc.node_label(gemm)}"
        conv_params = _conv_params(gap, flatten, gemm)
        if isinstance(conv_params, str):
            self.refuse(f"kept {label}: {conv_params}")
            return False
        weight, bias = conv_params
        source = gap.inputs[0]
        dims = pc.counted_dims(source)
        conv = _conv_node(graph, gemm, source, weight, bias)
        new_gap = ir.Node("", "GlobalAveragePool", conv.outputs, name=gap.name)
        new_gap.outputs[0].name = pc.unique_value_name(graph, f"{gap.outputs[0].name}_scores")
        new_flatten = ir.Node(
            "", "Flatten", new_gap.outputs, list(flatten.attributes.values()), name=flatten.name
        )
        for value in (*conv.outputs, *new_gap.outputs, *new_flatten.outputs):
            value.type = gemm.outputs[0].type
        spatial = shapes.rank(source) - 2
        if source.shape is not None:
            batch, classes = source.shape[0], weight.shape[0]
            conv.outputs[0].shape = ir.Shape([batch, classes, *source.shape.dims[2:]])
            new_gap.outputs[0].shape = ir.Shape([batch, classes, *[1] * spatial])
        counted = shapes.static_shape(source)
        if counted is not None:
            pc.set_static_shape(conv.outputs[0], (counted[0], len(weight), *counted[2:]))
            pc.set_static_shape(new_gap.outputs[0], (counted[0], len(weight), *[1] * spatial))
            pc.set_static_shape(new_flatten.outputs[0], (counted[0], len(weight)))
        ir.convenience.replace_nodes_and_values(
            graph,
            gemm,
            [gap, flatten, gemm],
            [conv, new_gap, new_flatten],
            [gemm.outputs[0]],
            [new_flatten.outputs[0]],
        )
        text = f"rewrote {label} as Conv 1x1 → GlobalAveragePool → Flatten"
        if dims is not None:
            extra = weight.shape[0] * weight.shape[1] * (math.prod(dims) - 1)
            self.macs_saved -= extra
            text += f" (costs {extra:,} more MACs at batch 1)"
        self.note(text)
        return True


def _conv_params(
    gap: ir.Node, flatten: ir.Node, gemm: ir.Node
) -> tuple[np.ndarray, np.ndarray | None] | str:
    """The conv's (weight, bias) arrays, or why the head does not qualify."""
    for value in (gap.outputs[0], flatten.outputs[0]):
        consumer = pc.sole_consumer(value)
        if isinstance(consumer, str):
            return consumer
    if flatten.attributes.get_int("axis", 1) != 1:
        return "Flatten axis is not 1"
    rank = shapes.rank(gap.inputs[0])
    if rank is None or rank < 3:
        return "the pooled input's rank is unknown"
    attrs = gemm.attributes
    if attrs.get_int("transA", 0):
        return "Gemm transposes its input (transA=1)"
    weight = pc.const_array(gemm.inputs[1])
    if weight is None:
        return "Gemm weight is not a constant"
    if not attrs.get_int("transB", 0):
        weight = weight.T
    weight = attrs.get_float("alpha", 1.0) * weight  # [N, K]
    if len(gemm.inputs) < 3 or gemm.inputs[2] is None:
        return weight, None
    bias = pc.const_array(gemm.inputs[2])
    if bias is None:
        return "Gemm bias is not a constant"
    if (
        bias.ndim > 2
        or (bias.ndim == 2 and bias.shape[0] != 1)
        or bias.size not in (1, len(weight))
    ):
        return f"Gemm bias of shape {list(bias.shape)} is not one value per output"
    bias = attrs.get_float("beta", 1.0) * np.broadcast_to(bias.reshape(-1), (len(weight),))
    return weight, bias.astype(weight.dtype)


def _conv_node(
    graph: ir.Graph,
    gemm: ir.Node,
    source: ir.Value,
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> ir.Node:
    """A 1x1 Conv over `source` with fresh initializers for `weight` and `bias`."""
    spatial = shapes.rank(source) - 2
    weight = np.ascontiguousarray(weight.reshape(*weight.shape, *([1] * spatial)))
    inputs = [source, _initializer(graph, f"{gemm.name}_conv_weight", weight)]
    if bias is not None:
        inputs.append(_initializer(graph, f"{gemm.name}_conv_bias", np.ascontiguousarray(bias)))
    conv = ir.node("Conv", inputs, {"kernel_shape": [1] * spatial}, name=gemm.name)
    conv.outputs[0].name = pc.unique_value_name(graph, f"{gemm.outputs[0].name}_map")
    return conv


def _initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    name = pc.unique_value_name(graph, base.strip("/").replace("/", "_"))
    tensor = ir.tensor(array, name=name)
    value = ir.Value(
        name=name,
        shape=tensor.shape,
        type=ir.TensorType(tensor.dtype),
        const_value=tensor,
    )
    graph.register_initializer(value)
    return value
