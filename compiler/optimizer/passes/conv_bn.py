"""Fold inference-mode BatchNormalization into the conv or fc layer before it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.rewrite import (
    NameScope,
    bypass,
    constant,
    label,
    pair_label,
    set_constant_input,
    sole_reader_problem,
)
from netc.errors import InternalError

# BatchNormalization versions whose inference semantics we know: 7 has `spatial`,
# 9 drops it, 14 adds `training_mode`, 15 lets γ/β and μ/var have different float
# types. Older versions (is_test, consumed_inputs) and future ones are refused.
KNOWN_BN_VERSIONS = (7, 9, 14, 15)


@dataclass(frozen=True)
class Affine:
    """BN(x) = scale·x + shift per channel, in float64: scale = γ/σ, shift = β − μ·γ/σ."""

    scale: np.ndarray
    shift: np.ndarray


class ConvBatchNormFusion(OptimizerPass):
    """Fold each inference-mode BatchNormalization into the layer that feeds it.

    BN(x) = γ·(x − μ)/σ + β with σ = sqrt(var + ε), i.e. scale·x + shift per
    channel c (axis 1) with scale = γ/σ and shift = β − μ·scale. A layer that
    is linear per output channel absorbs it:

    1. Conv, W (Cout, Cin/g, k...): W' = W·scale on axis 0 (any group count,
       depthwise included), b' = (b − μ)·scale + β = b·scale + shift, with
       b = 0 (and a bias input added) when the conv has none.
    2. ConvTranspose, W (Cin, Cout/g, k...): output channel o = i·Cout/g + j
       of group i is column j of that group's rows, so W viewed as
       (g, Cin/g, Cout/g, k...) is scaled by scale viewed as (g, 1, Cout/g);
       b' as in case 1.
    3. Gemm, Y = α·op(A)·op(B) + β_g·C with op(B) = B (transB=0, B is
       (K, N)) or Bᵀ (transB=1, B is (N, K)): scale B on its N axis (1 or
       0), C' = β_g·C·scale + shift (C = 0 when absent), then β_g = 1.
    4. MatMul(A, W) → Add(b), A 2-D, W (K, N): W' = W·scale on axis 1,
       b' = b·scale + shift. BN normalises axis 1, the feature axis only
       because the MatMul output is 2-D; an A of unknown rank is refused.
    5. MatMul(A, W) alone, A 2-D: W' = W·scale and the BN becomes Add(shift).

    Arithmetic is in float64; results are cast to the weight's dtype (fp16
    models fold in float64, then round once).

    Preconditions, each refused with its reason when it fails:
    - BN is version 7, 9, 14 or 15 (spatial = 1) in inference mode:
      training_mode = 0 and no output besides Y (extra outputs mean
      training: Y then uses the batch's statistics);
    - γ, β, μ, var, the weights and the bias are constants: initializers
      that are not also graph inputs, or Constant nodes (through Identity);
    - the layer's output feeds only this BN and is not a graph output (any
      other reader would see rescaled values), and nothing sits between them
      (a ReLU or a pool does not commute with the rescale in general);
    - float tensors, and parameter shapes that match the channel count.
    A chain Conv-BN-Conv-BN fuses both pairs: every BN is visited once.
    """

    name = "conv_bn_fusion"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        names = NameScope(graph)
        modified = False
        for bn in [n for n in graph if n.op_type == "BatchNormalization" and n.domain == ""]:
            affine = read_batch_norm(bn, bn.version or opset)
            layer = affine if isinstance(affine, str) else _fold(graph, bn, affine, names)
            if isinstance(layer, str):
                self.refuse(f"{label(bn, with_op=True)} not fused: {layer}")
                continue
            modified = True
            self.macs_saved += shapes.numel(bn.outputs[0]) or 0
            kind = "MatMul+Add" if layer.op_type in ("Add", "MatMul") else layer.op_type
            self.note(f"{pair_label(_first_layer(layer), bn)} → {kind}")
        return ir.passes.PassResult(model, modified)


def read_batch_norm(bn: ir.Node, version: int) -> Affine | str:
    """The BN's per-channel affine map, or why it is not a fixed one."""
    try:
        since = onnx.defs.get_schema("BatchNormalization", version).since_version
    except onnx.defs.SchemaError:
        return f"there is no BatchNormalization in opset {version}"
    if since not in KNOWN_BN_VERSIONS:
        return f"BatchNormalization-{since} (opset {version}) is not a version netc knows"
    attrs = bn.attributes
    if attrs.get_int("spatial", 1) != 1:
        return "spatial=0 (statistics per position, not per channel)"
    if attrs.get_int("training_mode", 0) != 0:
        return "it is in training mode (training_mode=1)"
    extra = [out.name for out in bn.outputs[1:] if out.name]
    if extra:
        return f"it has training outputs ({', '.join(extra)}): it normalises with batch statistics"
    if len(bn.inputs) < 5 or any(v is None for v in bn.inputs[:5]):
        return "it lacks one of its five inputs"
    params = []
    for role, value in zip(("scale", "bias", "mean", "var"), bn.inputs[1:5]):
        data = constant(value)
        if isinstance(data, str):
            return f"its {role} is not a constant: {data}"
        if not _is_float(data):
            return f"its {role} has dtype {data.dtype}, not a float type"
        params.append(np.asarray(data, dtype=np.float64))
    gamma, beta, mean, var = params
    if not (gamma.ndim == 1 and gamma.shape == beta.shape == mean.shape == var.shape):
        return f"parameter shapes {[p.shape for p in params]} are not all (C,)"
    epsilon = attrs.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + np.float64(epsilon))
    return Affine(scale=scale, shift=beta - mean * scale)


def _fold(graph: ir.Graph, bn: ir.Node, affine: Affine, names: NameScope) -> ir.Node | str:
    """Fold `bn` into its producer; the layer it went into, else why not (nothing changed then)."""
    source = bn.inputs[0]
    assert source is not None  # read_batch_norm has checked all five inputs
    layer = source.producer()
    if layer is None:
        return f"its input {source.name!r} is not computed by a layer"
    fold = _FOLDS.get(layer.op_type) if layer.domain == "" else None
    if fold is None:
        return _between(layer)
    problem = sole_reader_problem(source, bn)
    if problem is not None:
        return problem
    problem = fold(graph, layer, bn, affine, names)
    if problem is not None:
        return problem
    if layer.op_type == "MatMul":  # case 5 replaced the BN itself
        return layer
    if bypass(graph, bn, source) is not None:  # checked above: source is no graph output
        raise InternalError(f"{label(bn, with_op=True)}: weights folded but BN not removable")
    return layer


def _fold_conv(graph, conv, bn, affine, names) -> str | None:
    # Cases 1 and 2: W' = W·scale per output channel, b' = b·scale + shift.
    read = _weight_and_bias(conv, bias_index=2)
    if isinstance(read, str):
        return read
    dtype, weight, bias = read
    channels = affine.scale.size
    if conv.op_type == "Conv":
        if weight.ndim < 3 or weight.shape[0] != channels:
            return f"weight shape {weight.shape} does not have {channels} output channels on axis 0"
        scaled = weight * affine.scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    else:
        groups = conv.attributes.get_int("group", 1)
        if groups < 1:
            return f"ConvTranspose group={groups}"
        per_group = weight.shape[1] if weight.ndim >= 3 else -1
        if per_group * groups != channels or weight.shape[0] % groups:
            return (
                f"ConvTranspose weight shape {weight.shape} with group={groups} does not "
                f"have {channels} output channels"
            )
        # Case 2: (Cin, Cout/g, k...) → (g, Cin/g, Cout/g, k...), scaled per (group, column).
        grouped = weight.reshape((groups, -1, per_group, *weight.shape[2:]))
        factor = affine.scale.reshape((groups, 1, per_group) + (1,) * (weight.ndim - 2))
        scaled = (grouped * factor).reshape(weight.shape)
    if bias is None:
        bias = np.zeros(channels)
    if bias.shape != (channels,):
        return f"bias shape {bias.shape} is not ({channels},)"
    set_constant_input(graph, conv, 1, scaled.astype(dtype), names, _hint(conv, "weight"))
    new_bias = (bias * affine.scale + affine.shift).astype(dtype)
    set_constant_input(graph, conv, 2, new_bias, names, _hint(conv, "bias"))
    return None


def _fold_gemm(graph, gemm, bn, affine, names) -> str | None:
    # Case 3: scale op(B) per output column, C' = β_g·C·scale + shift, β_g = 1.
    read = _weight_and_bias(gemm, bias_index=2)
    if isinstance(read, str):
        return read
    dtype, weight, bias = read
    trans_b = gemm.attributes.get_int("transB", 0)
    channels = affine.scale.size
    if weight.ndim != 2 or weight.shape[0 if trans_b else 1] != channels:
        return f"B shape {weight.shape} (transB={trans_b}) does not have {channels} columns"
    axis_shape = (-1, 1) if trans_b else (1, -1)
    beta = gemm.attributes.get_float("beta", 1.0)
    bias = np.zeros(channels) if bias is None else bias * beta
    try:
        new_bias = bias * affine.scale + affine.shift
    except ValueError:
        return f"C shape {bias.shape} does not broadcast to ({channels},)"
    scaled = weight * affine.scale.reshape(axis_shape)
    set_constant_input(graph, gemm, 1, scaled.astype(dtype), names, _hint(gemm, "weight"))
    set_constant_input(graph, gemm, 2, new_bias.astype(dtype), names, _hint(gemm, "bias"))
    gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return None


def _fold_matmul_add(graph, add, bn, affine, names) -> str | None:
    # Case 4: MatMul(A, W) → Add(b) → BN: W' = W·scale, b' = b·scale + shift.
    sides = [(i, v.producer()) for i, v in enumerate(add.inputs[:2]) if v is not None]
    matmuls = [
        (i, n) for i, n in sides if n is not None and n.op_type == "MatMul" and n.domain == ""
    ]
    if len(add.inputs) != 2 or len(matmuls) != 1:
        return _between(add)
    index, matmul = matmuls[0]
    problem = sole_reader_problem(matmul.outputs[0], add)
    if problem is not None:
        return problem
    read = _matmul_weight(matmul, affine)
    if isinstance(read, str):
        return read
    weight, dtype = read
    bias = constant(add.inputs[1 - index])
    if isinstance(bias, str):
        return f"the Add's other input is not a constant: {bias}"
    bias = np.asarray(bias, dtype=np.float64)
    channels = affine.scale.size
    if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1) or bias.size not in (1, channels):
        return f"the Add's constant of shape {bias.shape} is not a per-feature bias"
    set_constant_input(graph, matmul, 1, weight.astype(dtype), names, _hint(matmul, "weight"))
    new_bias = (bias * affine.scale + affine.shift).astype(dtype)
    set_constant_input(graph, add, 1 - index, new_bias, names, _hint(matmul, "bias"))
    return None


def _fold_matmul(graph, matmul, bn, affine, names) -> str | None:
    # Case 5: MatMul(A, W) → BN becomes MatMul(A, W·scale) → Add(shift).
    read = _matmul_weight(matmul, affine)
    if isinstance(read, str):
        return read
    weight, dtype = read
    set_constant_input(graph, matmul, 1, weight.astype(dtype), names, _hint(matmul, "weight"))
    add = ir.Node("", "Add", [matmul.outputs[0], None], name=bn.name)
    set_constant_input(graph, add, 1, affine.shift.astype(dtype), names, _hint(matmul, "bias"))
    graph.insert_after(bn, add)
    result, added = bn.outputs[0], add.outputs[0]
    added.shape, added.type = result.shape, result.type
    result.replace_all_uses_with(added, replace_graph_outputs=True)
    graph.remove(bn, safe=True)
    name, result.name = result.name, None
    added.name = name
    return None


def _matmul_weight(matmul: ir.Node, affine: Affine) -> tuple[np.ndarray, np.dtype] | str:
    """(W·scale in float64, W's dtype) for a MatMul with a 2-D output (A is (M, K)), or why not."""
    if shapes.rank(matmul.inputs[0]) != 2:
        rank = shapes.rank(matmul.inputs[0])
        return (
            f"the MatMul input has {'unknown rank' if rank is None else f'rank {rank}'}; "
            "only with a 2-D input is BatchNormalization's axis 1 the feature axis"
        )
    weight = constant(matmul.inputs[1])
    if isinstance(weight, str):
        return f"the MatMul weight is not a constant: {weight}"
    if not _is_float(weight):
        return f"the MatMul weight has dtype {weight.dtype}"
    if weight.ndim != 2 or weight.shape[1] != affine.scale.size:
        return f"MatMul weight shape {weight.shape} does not have {affine.scale.size} columns"
    return weight.astype(np.float64) * affine.scale.reshape(1, -1), weight.dtype


def _weight_and_bias(layer: ir.Node, bias_index: int):
    """(dtype, W, b) from a layer's inputs 1 and `bias_index`, W and b in float64 (the fold's
    precision) and b None when absent; or a str saying why they are not usable constants."""
    weight = constant(layer.inputs[1] if len(layer.inputs) > 1 else None)
    if isinstance(weight, str):
        return f"the weight of {label(layer, with_op=True)} is not a constant: {weight}"
    if not _is_float(weight):
        return f"the weight of {label(layer, with_op=True)} has dtype {weight.dtype}"
    bias_value = layer.inputs[bias_index] if len(layer.inputs) > bias_index else None
    bias = None if bias_value is None else constant(bias_value)
    if isinstance(bias, str):
        return f"the bias is not a constant: {bias}"
    return (
        weight.dtype,
        weight.astype(np.float64),
        (None if bias is None else bias.astype(np.float64)),
    )


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" or array.dtype.name == "bfloat16"


def _hint(layer: ir.Node, role: str) -> str:
    return f"{label(layer)}.{role}"


def _first_layer(layer: ir.Node) -> ir.Node:
    """The MatMul of a MatMul+Add pair (for labels), else the layer itself."""
    if layer.op_type == "Add":
        for value in layer.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.op_type == "MatMul":
                return producer
    return layer


def _between(node: ir.Node) -> str:
    """The refusal for a BN whose producer cannot absorb it, naming what sits in between."""
    text = f"its input comes from {label(node, with_op=True)}"
    for value in node.inputs[:1]:
        before = value.producer() if value is not None else None
        if before is not None and before.op_type in _FOLDS:
            return (
                f"{text}, which sits between {label(before, with_op=True)} and it "
                "(only a Conv, ConvTranspose, Gemm or MatMul(+Add) directly before it folds)"
            )
    return f"{text} (only a Conv, ConvTranspose, Gemm or MatMul(+Add) directly before it folds)"


_FOLDS = {
    "Conv": _fold_conv,
    "ConvTranspose": _fold_conv,
    "Gemm": _fold_gemm,
    "Add": _fold_matmul_add,
    "MatMul": _fold_matmul,
}
