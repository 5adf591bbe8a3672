"""Fold constant Mul/Div/Add/Sub into the linear layer next to them, and merge their chains."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes.conv_bn import _FOLDS, Affine, read_batch_norm
from netc.compiler.optimizer.passes.inferred import Dims, infer_dims
from netc.compiler.optimizer.rewrite import (
    NameScope,
    bypass,
    constant,
    is_float,
    label,
    pair_label,
    set_constant_input,
    sole_reader_problem,
)

_OPS = ("Mul", "Div", "Add", "Sub")
_LAYERS = ("Conv", "ConvTranspose", "Gemm", "Add")  # Add: the bias of a MatMul+Add pair


class AffineFolding(OptimizerPass):
    """Fold elementwise constant arithmetic into the linear layers around it.

    An elementwise node E(x, c) with c constant is, per element, the affine
    map x·s + t: Mul s = c, Div s = 1/c, Add t = c, Sub t = −c (with the
    constant second; c − x is s = −1, t = c).
    1. After a layer that is linear per output channel (Conv, ConvTranspose,
       Gemm, MatMul+Add): when c varies only along the channel axis (axis 1)
       of the layer's output, E(layer(x)) = layer'(x), with the weights
       scaled per output channel and the bias b' = b·s + t: the algebra of
       ConvBatchNormFusion's cases 1-4, whose code does it.
    2. Before a Conv: Conv(x·s + t, W, b) = Conv(x, W·s over the input-channel
       axis, b + W·t) when s and t vary only along x's axis 1, where (W·t)[o]
       sums o's weights times t over its group's input channels. Zero padding
       commutes with the scaling (0·s = 0), so with t = 0 any padding is
       fine; a shift before a padded conv is refused, since the padded zeros
       would not get the +t.
    3. Chains: E₂(E₁(x, c₁), c₂) = x·(s₁s₂) + (t₁s₂ + t₂), a chain of n ≥ 2
       such nodes becomes one node when the result is a pure scale or shift,
       else Mul then Add; only when that makes the chain shorter.
    4. After an inference BatchNormalization that stays (its input is not a
       conv: DenseNet's BN after a Concat, Caffe2's BN → Mul → Add):
       E(BN(x)) = BN'(x) with γ' = γ·s and β' = β·s + t, for c per channel.
    Kept: the Mul by ½ that completes a Gelu (x·(1 + erf(x/√2))·½, or its
    tanh form), so that onnxruntime still fuses the pattern into one op.
    Preconditions, refused with the reason: c is a float constant that does
    not broadcast x to a larger shape (its rank at most x's, each dim 1 or
    x's); the layer's output (the elementwise output in case 2) feeds only
    the other node and is not a graph output.
    """

    name = "affine_folding"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.dims = infer_dims(model)
        names = NameScope(graph)
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        modified = False
        for node in list(graph):
            if node.graph is None or node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
                continue
            side = _affine_side(node)
            if side is None:
                if _completes_gelu(node):
                    self.refuse(
                        f"{label(node, with_op=True)} kept: it completes a Gelu pattern, "
                        "which onnxruntime fuses into one op"
                    )
                continue
            index, affine_arrays = side
            x = node.inputs[index]
            producer = x.producer() if x is not None else None
            if producer is not None and producer.op_type in _LAYERS and producer.domain == "":
                if self._fold_after(graph, node, producer, x, affine_arrays, names):  # Case 1
                    modified = True
                    continue
            if producer is not None and producer.op_type == "BatchNormalization":
                if self._fold_into_bn(graph, node, producer, x, affine_arrays, names, opset):
                    modified = True  # Case 4
        # Case 2 runs last to first, so that in x·s + t → Conv the shift folds first and
        # the scale then meets the conv.
        for node in reversed(list(graph)):
            if node.graph is None or node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
                continue
            side = _affine_side(node)
            if side is not None:
                index, affine_arrays = side
                modified |= self._fold_before(graph, node, node.inputs[index], affine_arrays, names)
        modified |= self._merge_chains(graph, names)  # Case 3
        return ir.passes.PassResult(model, modified)

    # Case 1 ------------------------------------------------------------------------------

    def _fold_after(self, graph, node, layer, x, arrays, names) -> bool:
        scale, shift = arrays
        what = f"{label(node, with_op=True)} after {label(layer, with_op=True)}"
        if layer.op_type == "Add" and not _is_matmul_add(layer):
            return False
        channels = _channels(layer)
        if channels is None:
            self.refuse(f"{what} not folded: the layer's channel count is unknown")
            return False
        rank = _out_rank(layer)
        per_channel = _per_channel(scale, shift, channels, rank)
        if isinstance(per_channel, str):
            self.refuse(f"{what} not folded: {per_channel}")
            return False
        problem = sole_reader_problem(x, node)
        if problem is not None:
            self.refuse(f"{what} not folded: {problem}")
            return False
        problem = _FOLDS[layer.op_type](graph, layer, node, per_channel, names)
        if problem is None:
            problem = bypass(graph, node, x)
        if problem is not None:
            self.refuse(f"{what} not folded: {problem}")
            return False
        self.note(f"{pair_label(layer, node)} → {layer.op_type}")
        return True

    # Case 4 ------------------------------------------------------------------------------

    def _fold_into_bn(self, graph, node, bn, x, arrays, names, opset) -> bool:
        what = f"{label(node, with_op=True)} after {label(bn, with_op=True)}"
        if isinstance(read_batch_norm(bn, bn.version or opset), str):
            return False  # not an inference BN; ConvBatchNormFusion has said why
        gamma, beta = constant(bn.inputs[1]), constant(bn.inputs[2])
        assert not isinstance(gamma, str) and not isinstance(beta, str)  # read_batch_norm did
        dims = self.dims.get(x)
        rank = len(dims) if dims is not None else None
        scale, shift = arrays
        if rank is None and (scale.size > 1 or shift.size > 1):
            self.refuse(f"{what} not folded: the rank of the BN's output is unknown")
            return False
        per_channel = _per_channel(scale, shift, gamma.size, rank or max(scale.ndim, 2))
        if isinstance(per_channel, str):
            self.refuse(f"{what} not folded: {per_channel}")
            return False
        problem = sole_reader_problem(x, node)
        if problem is not None:
            self.refuse(f"{what} not folded: {problem}")
            return False
        new_gamma = gamma.astype(np.float64) * per_channel.scale
        new_beta = beta.astype(np.float64) * per_channel.scale + per_channel.shift
        set_constant_input(graph, bn, 1, new_gamma.astype(gamma.dtype), names, f"{label(bn)}.scale")
        set_constant_input(graph, bn, 2, new_beta.astype(beta.dtype), names, f"{label(bn)}.bias")
        problem = bypass(graph, node, x)
        if problem is not None:  # cannot happen: x feeds only this node and is no graph output
            raise AssertionError(problem)
        self.note(f"{pair_label(bn, node)} → BatchNormalization")
        return True

    # Case 2 ------------------------------------------------------------------------------

    def _fold_before(self, graph, node, x, arrays, names) -> bool:
        y = node.outputs[0]
        readers = list(y.consumers())
        if len(readers) != 1 or readers[0].op_type != "Conv" or readers[0].domain != "":
            return False
        conv = readers[0]
        what = f"{label(node, with_op=True)} before {label(conv, with_op=True)}"
        if conv.inputs[0] is not y:
            return False
        scale, shift = arrays
        if np.any(shift != 0) and _pads_input(conv):
            self.refuse(f"{what} not folded: a shift before a padded conv would miss the zeros")
            return False
        problem = sole_reader_problem(y, conv)
        if problem is not None:
            self.refuse(f"{what} not folded: {problem}")
            return False
        weight = constant(conv.inputs[1] if len(conv.inputs) > 1 else None)
        if isinstance(weight, str) or not is_float(conv.inputs[1]):
            self.refuse(f"{what} not folded: the conv weight is not a float constant")
            return False
        group = conv.attributes.get_int("group", 1)
        cin = weight.shape[1] * group
        per_channel = _per_channel(scale, shift, cin, weight.ndim)
        if isinstance(per_channel, str):
            self.refuse(f"{what} not folded: {per_channel}")
            return False
        x_dims = self.dims.get(x)
        if max(scale.size, shift.size) > 1 and (
            x_dims is None or len(x_dims) < 2 or x_dims[1] != cin
        ):
            # x of one channel times a per-channel s is broadcast to cin channels: the
            # conv could not read x itself
            self.refuse(f"{what} not folded: the input's channel count is not known to be {cin}")
            return False
        # Input channel c of group g = c // (Cin/g) is column c % (Cin/g) of that group's rows.
        cout = weight.shape[0]
        grouped = weight.astype(np.float64).reshape(group, cout // group, *weight.shape[1:])
        factor = per_channel.scale.reshape(group, 1, cin // group, *(1,) * (weight.ndim - 2))
        scaled = (grouped * factor).reshape(weight.shape).astype(weight.dtype)
        if np.any(per_channel.shift != 0):
            # W·(x + t) = W·x + W·t: t is constant over the image, so W·t adds to the bias
            # of output o the sum of o's weights times t over o's group's input channels.
            bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
            bias = np.zeros(cout) if bias_value is None else constant(bias_value)
            if isinstance(bias, str):
                self.refuse(f"{what} not folded: the conv bias is not a constant: {bias}")
                return False
            per_group = grouped.reshape(group, cout // group, cin // group, -1)
            shift_g = per_channel.shift.reshape(group, cin // group)
            added = np.einsum("gock,gc->go", per_group, shift_g).reshape(cout)
            new_bias = (bias.astype(np.float64) + added).astype(weight.dtype)
            set_constant_input(graph, conv, 2, new_bias, names, f"{label(conv)}.bias")
        set_constant_input(graph, conv, 1, scaled, names, f"{label(conv)}.weight")
        problem = bypass(graph, node, x)
        if problem is not None:  # cannot happen: y feeds only the conv and is no graph output
            raise AssertionError(problem)
        self.note(f"{pair_label(node, conv)} → Conv")
        return True

    # Case 3 ------------------------------------------------------------------------------

    def _merge_chains(self, graph: ir.Graph, names: NameScope) -> bool:
        modified = False
        for node in list(graph):
            if node.graph is None or node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
                continue
            if _affine_side(node) is None:
                continue
            chain = self._chain_ending_at(node)
            if len(chain) < 2:
                continue
            modified |= self._merge(graph, chain, names)
        return modified

    def _chain_ending_at(self, last: ir.Node) -> list[ir.Node]:
        """The longest run of affine nodes ending at `last`, first to last, whose inner
        outputs feed only the next node; only when `last` ends it (nothing affine after)."""
        for reader in last.outputs[0].consumers():
            if reader.op_type in _OPS and _affine_side(reader) is not None:
                if sole_reader_problem(last.outputs[0], reader) is None:
                    return []  # the chain goes on; it is merged from its last node
        chain = [last]
        while True:
            side = _affine_side(chain[0])
            assert side is not None
            x = chain[0].inputs[side[0]]
            before = x.producer() if x is not None else None
            if (
                x is None
                or before is None
                or before.op_type not in _OPS
                or before.domain not in ("", "ai.onnx")
                or _affine_side(before) is None
                or sole_reader_problem(x, chain[0]) is not None
            ):
                return chain
            chain.insert(0, before)

    def _merge(self, graph: ir.Graph, chain: list[ir.Node], names: NameScope) -> bool:
        first_side = _affine_side(chain[0])
        assert first_side is not None
        x = chain[0].inputs[first_side[0]]
        assert x is not None
        dims = self.dims.get(x)
        scale: np.ndarray = np.ones(())
        shift: np.ndarray = np.zeros(())
        what = f"{label(chain[0], with_op=True)} … {label(chain[-1], with_op=True)}"
        for node in chain:
            side = _affine_side(node)
            assert side is not None
            s, t = side[1]
            if not _fits(s, dims) or not _fits(t, dims):
                self.refuse(f"{what} not merged: a constant may broadcast the input larger")
                return False
            scale, shift = scale * s, shift * s + t
        need_mul, need_add = bool(np.any(scale != 1)), bool(np.any(shift != 0))
        if need_mul + need_add >= len(chain):
            return False
        dtype = x.dtype.numpy() if x.dtype is not None else np.float32
        last = chain[-1]
        out = last.outputs[0]
        current = x
        new_nodes = []
        for op, data, wanted in (("Mul", scale, need_mul), ("Add", shift, need_add)):
            if not wanted:
                continue
            node = ir.Node("", op, [current, None], name=f"{last.name or 'affine'}_{op.lower()}")
            set_constant_input(
                graph, node, 1, np.asarray(data, dtype=dtype), names, f"{label(last)}.{op.lower()}"
            )
            new_nodes.append(node)
            current = node.outputs[0]
        if not new_nodes:
            problem = bypass(graph, last, x)
            if problem is not None:
                self.refuse(f"{what} not merged: {problem}")
                return False
        else:
            graph.insert_after(last, new_nodes)
            current.shape, current.type = out.shape, out.type
            out.replace_all_uses_with(current, replace_graph_outputs=True)
            name, out.name = out.name, None
            current.name = name
            graph.remove(last, safe=True)
        for node in reversed(chain[:-1]):
            graph.remove(node, safe=True)
        kept = " then ".join(n.op_type for n in new_nodes) or "nothing"
        self.note(f"{what}: {len(chain)} elementwise nodes → {kept}")
        return True


def _affine_side(node: ir.Node) -> tuple[int, tuple[np.ndarray, np.ndarray]] | None:
    """(index of the variable input, (scale, shift) in float64) when `node` is x·s + t with
    a float constant, else None."""
    if len(node.inputs) != 2 or len(node.outputs) != 1 or _completes_gelu(node):
        return None
    a, b = (constant(v) for v in node.inputs)
    if isinstance(a, str) == isinstance(b, str):
        return None  # both variable, or both constant (constant folding's job)
    index = 1 if isinstance(b, str) else 0
    c = a if index == 1 else b
    assert not isinstance(c, str)
    if c.dtype.kind != "f":
        return None
    c = c.astype(np.float64)
    op = node.op_type
    if op == "Mul":
        return index, (c, np.zeros(()))
    if op == "Add":
        return index, (np.ones(()), c)
    if op == "Div":
        if index == 1 or np.any(c == 0):
            return None  # c / x is not affine in x; x / 0 keeps its infinities
        return index, (1.0 / c, np.zeros(()))
    if op == "Sub":
        return index, ((np.ones(()), -c) if index == 0 else (-np.ones(()), c))
    return None


def _pads_input(conv: ir.Node) -> bool:
    """The conv reads padding around its input (explicit pads, or auto_pad SAME_*)."""
    auto_pad = conv.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    return auto_pad == "NOTSET" and any(conv.attributes.get_ints("pads", []))


def _completes_gelu(node: ir.Node) -> bool:
    """True for the Mul by ½ that ends x·(1 + erf(x/√2))·½ (or the tanh form): folded
    away, it would leave a pattern onnxruntime no longer fuses into one Gelu op."""
    if node.op_type != "Mul":
        return False
    for value in node.inputs:
        product = value.producer() if value is not None else None
        if product is None or product.op_type != "Mul":
            continue
        for factor in product.inputs:
            one_plus = factor.producer() if factor is not None else None
            if one_plus is None or one_plus.op_type != "Add":
                continue
            for term in one_plus.inputs:
                inner = term.producer() if term is not None else None
                if inner is not None and inner.op_type in ("Erf", "Tanh"):
                    return True
    return False


def _is_matmul_add(add: ir.Node) -> bool:
    for value in add.inputs:
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type == "MatMul":
            return True
    return False


def _channels(layer: ir.Node) -> int | None:
    """The output channel count of a layer, from its weight."""
    if layer.op_type == "Add":
        for value in layer.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.op_type == "MatMul":
                weight = constant(producer.inputs[1])
                return None if isinstance(weight, str) or weight.ndim != 2 else weight.shape[1]
        return None
    weight = constant(layer.inputs[1] if len(layer.inputs) > 1 else None)
    if isinstance(weight, str) or weight.ndim < 2:
        return None
    if layer.op_type == "Conv":
        return int(weight.shape[0])
    if layer.op_type == "ConvTranspose":
        return int(weight.shape[1]) * layer.attributes.get_int("group", 1)
    return int(weight.shape[0] if layer.attributes.get_int("transB", 0) else weight.shape[1])


def _out_rank(layer: ir.Node) -> int:
    if layer.op_type in ("Conv", "ConvTranspose"):
        weight = constant(layer.inputs[1])
        assert not isinstance(weight, str)
        return int(weight.ndim)
    return 2  # Gemm; MatMul+Add is folded only with a 2-D input (checked by its fold)


def _per_channel(scale, shift, channels: int, rank: int) -> Affine | str:
    """The per-channel affine map when scale and shift vary only along axis 1 of a
    rank-`rank` tensor with `channels` channels, else why not."""
    out = []
    for data in (scale, shift):
        if data.ndim > rank:
            return f"the constant of shape {list(data.shape)} has more dims than the tensor"
        full = data.reshape((1,) * (rank - data.ndim) + data.shape)
        if any(d != 1 for i, d in enumerate(full.shape) if i != 1) or full.shape[1] not in (
            1,
            channels,
        ):
            return f"the constant of shape {list(data.shape)} is not one value per channel"
        out.append(np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float64))
    return Affine(scale=out[0], shift=out[1])


def _fits(data: np.ndarray, dims: Dims | None) -> bool:
    """`data` broadcast against a tensor of `dims` leaves the tensor's shape unchanged."""
    if data.ndim == 0:
        return True
    if dims is None or data.ndim > len(dims):
        return False
    tail = dims[len(dims) - data.ndim :]
    return all(d == 1 or d == t for d, t in zip(data.shape, tail))
