"""Turn a GlobalAveragePool → Flatten → Gemm classifier head into a 1x1 conv
followed by the global pool (the fully convolutional form)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc
from netc.compiler.optimizer.rewrite import NameScope, constant, label, sole_reader_problem


class GapGemmToConv(OptimizerPass):
    """Rewrite Gemm(Flatten(GlobalAveragePool(x)), B, C) as
    Flatten(GlobalAveragePool(Conv1x1(x, W, b))).

    1. With Gemm computing α·A·B' + β·C (B' = Bᵀ when transB=1):
           α·mean_p(x_p)·B' + β·C = mean_p(α·B'ᵀ·x_p + β·C)
       because the average's weights sum to one, so the bias passes through
       it. The conv has W[n, k, 1, 1] = α·B'[k, n] and bias b = β·C.

    Preconditions: Flatten has axis 1; Gemm has transA=0, a constant B and a
    constant C (or none) holding one value per output ([N], [1, N] or a
    scalar), float; x has a known rank; GlobalAveragePool's and Flatten's outputs
    are each read only by the next node and are not graph outputs.

    Behind a flag: the conv now runs on every position, so the head costs
    H·W times the Gemm's MACs (reported as negative savings; resnet18 at
    224: +24.6M MACs, about +1.4% onnxruntime CPU time). What it buys is
    the fully convolutional form: without the final pool the network maps any
    input size to a map of class scores.
    """

    name = "gap_gemm_to_conv"
    flag = "fully_convolutional"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = NameScope(model.graph)
        modified = False
        for gemm in [n for n in model.graph if n.op_type == "Gemm" and n.domain == ""]:
            flattened = gemm.inputs[0]
            flatten = flattened.producer() if flattened is not None else None
            if flatten is None or flatten.op_type != "Flatten" or flatten.domain != "":
                continue
            pooled = flatten.inputs[0]
            gap = pooled.producer() if pooled is not None else None
            if gap is None or gap.op_type != "GlobalAveragePool" or gap.domain != "":
                continue
            params = _conv_params(gap, flatten, gemm)
            if isinstance(params, str):
                self.refuse(f"{label(gemm, with_op=True)} kept after {label(gap)}: {params}")
                continue
            dims = pc.counted_dims(gap.inputs[0])
            _rewrite(model.graph, names, (gap, flatten, gemm), *params)
            modified = True
            text = f"{label(gemm, with_op=True)} → Conv 1x1 ahead of {label(gap)}"
            if dims is not None:
                extra = params[0].shape[0] * params[0].shape[1] * (math.prod(dims) - 1)
                self.macs_saved -= extra
                text += f" (costs {extra:,} more MACs per image)"
            self.note(text)
        return ir.passes.PassResult(model, modified)


def _conv_params(
    gap: ir.Node, flatten: ir.Node, gemm: ir.Node
) -> tuple[np.ndarray, np.ndarray | None] | str:
    """The conv's (weight [N, K], bias [N] or None), or why the head does not qualify."""
    for value, reader in ((gap.outputs[0], flatten), (flatten.outputs[0], gemm)):
        problem = sole_reader_problem(value, reader)
        if problem is not None:
            return problem
    if flatten.attributes.get_int("axis", 1) != 1:
        return "Flatten's axis is not 1"
    rank = shapes.rank(gap.inputs[0])
    if rank is None or rank < 3:
        return "the pooled input's rank is unknown"
    attrs = gemm.attributes
    if attrs.get_int("transA", 0):
        return "Gemm transposes its input (transA=1)"
    weight = constant(gemm.inputs[1])
    if isinstance(weight, str):
        return f"its weight is not a constant: {weight}"
    if weight.ndim != 2 or weight.dtype.kind != "f":
        return f"its weight is {weight.dtype} of shape {list(weight.shape)}, not a float matrix"
    weight = attrs.get_float("alpha", 1.0) * (weight if attrs.get_int("transB", 0) else weight.T)
    if len(gemm.inputs) < 3 or gemm.inputs[2] is None:
        return weight, None
    bias = constant(gemm.inputs[2])
    if isinstance(bias, str):
        return f"its bias is not a constant: {bias}"
    one_row = bias.ndim < 2 or (bias.ndim == 2 and bias.shape[0] == 1)
    if not one_row or bias.size not in (1, len(weight)):
        return f"its bias of shape {list(bias.shape)} is not one value per output"
    bias = attrs.get_float("beta", 1.0) * np.broadcast_to(bias.reshape(-1), (len(weight),))
    return weight, bias.astype(weight.dtype)


def _rewrite(
    graph: ir.Graph,
    names: NameScope,
    head: tuple[ir.Node, ir.Node, ir.Node],
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> None:
    """Replace GAP → Flatten → Gemm (`head`) by Conv → GAP → Flatten."""
    gap, flatten, gemm = head
    source, result = gap.inputs[0], gemm.outputs[0]
    rank = shapes.rank(source)
    assert source is not None and rank is not None  # _conv_params has checked its rank
    spatial = rank - 2
    weight = np.ascontiguousarray(weight.reshape(*weight.shape, *[1] * spatial))
    inputs = [source, _initializer(graph, names, f"{label(gemm)}.conv_weight", weight)]
    if bias is not None:
        inputs.append(_initializer(graph, names, f"{label(gemm)}.conv_bias", bias))
    conv = ir.node("Conv", inputs, {"kernel_shape": [1] * spatial}, name=gemm.name)
    new_gap = ir.Node("", "GlobalAveragePool", conv.outputs, name=gap.name)
    new_flatten = ir.Node(
        "", "Flatten", new_gap.outputs, list(flatten.attributes.values()), name=flatten.name
    )
    conv.outputs[0].name = names.fresh(f"{result.name}_map")
    new_gap.outputs[0].name = names.fresh(f"{result.name}_pooled")
    _annotate(source, spatial, len(weight), conv.outputs[0], new_gap.outputs[0], result.type)
    pc.replace(
        graph, [gap, flatten, gemm], [conv, new_gap, new_flatten], result, new_flatten.outputs[0]
    )


def _annotate(
    source: ir.Value,
    spatial: int,
    classes: int,
    scores: ir.Value,
    pooled: ir.Value,
    type_: ir.TypeProtocol | None,
) -> None:
    """Types and shapes for the new score map and its pooled form."""
    scores.type = pooled.type = type_
    if source.shape is not None:
        scores.shape = ir.Shape([source.shape[0], classes, *source.shape.dims[2:]])
        pooled.shape = ir.Shape([source.shape[0], classes, *[1] * spatial])
    counted = shapes.static_shape(source)
    if counted is not None:
        pc.set_static_shape(scores, (counted[0], classes, *counted[2:]))
        pc.set_static_shape(pooled, (counted[0], classes, *[1] * spatial))


def _initializer(graph: ir.Graph, names: NameScope, base: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(np.ascontiguousarray(array), name=names.fresh(base))
    value = ir.Value(
        name=tensor.name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype)
    )
    value.const_value = tensor
    graph.register_initializer(value)
    return value
