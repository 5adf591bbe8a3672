"""`netc inspect MODEL.onnx`: an exported model's intermediate outputs and conv weights.

Any node output becomes readable by listing it among the graph's outputs;
onnxruntime then returns it beside the model's own. netc's export names each
node and its output after the description's layer, so `--layer conv2` means
the same layer as on the run. Pictures get the model's own preprocessing from
its model card (`netc.model_card`: resize, mean/std). Receptive fields,
gradients and history are not in an ONNX file: those flags need the run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from netc.errors import UserError, did_you_mean
from netc.model_card import ModelCard, Preprocessing
from netc.runtime.inspect import feature_maps, filters, tiles
from netc.runtime.inspect.source import read_picture

NEEDS_RUN = ("receptive_field", "top_activations", "class_map", "curves", "report")


@dataclass
class OnnxModel:
    path: Path
    proto: onnx.ModelProto
    preprocessing: Preprocessing

    @property
    def name(self) -> str:
        return self.proto.graph.name or self.path.stem

    @property
    def input(self) -> onnx.ValueInfoProto:
        initializers = {i.name for i in self.proto.graph.initializer}
        return next(i for i in self.proto.graph.input if i.name not in initializers)

    @property
    def channels(self) -> int:
        dims = self.input.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            return int(dims[1].dim_value)
        return self.preprocessing.channels or 3

    def outputs(self) -> list[tuple[str, str, str]]:
        """(output name, node name, op type) of every node's first output."""
        return [(n.output[0], n.name, n.op_type) for n in self.proto.graph.node if n.output]


def load(path: Path) -> OnnxModel:
    if not path.is_file():
        raise UserError(f"no ONNX file {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise UserError(f"{path} is not a readable ONNX model ({exc})") from None
    return OnnxModel(path, proto, ModelCard.from_model(proto).preprocessing or Preprocessing())


def _resolve(model: OnnxModel, layer: str) -> str:
    """A layer name (node or output name) → the output name to read."""
    for output, node, _ in model.outputs():
        if layer in (output, node):
            return output
    names = [node for _, node, _ in model.outputs()]
    hint = did_you_mean(layer, names)
    raise UserError(
        f"--layer {layer}: {model.path} has no node '{layer}'"
        + (f"\n  hint: {hint}" if hint else "\n  hint: netc inspect MODEL.onnx lists its nodes")
    )


def intermediate(model: OnnxModel, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The named node outputs for input x, from onnxruntime."""
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    values = session.run(names, {model.input.name: x})
    return dict(zip(names, values))


def prepare(model: OnnxModel, picture: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """(shown (C, H, W) at the model's size, the model's input (1, C, H, W))."""
    pre = model.preprocessing
    dims = model.input.type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]]
    size = pre.resize_to if None in fixed else tuple(d for d in fixed if d is not None)
    shown = picture[None]
    if size and all(isinstance(d, int) and d > 0 for d in size):
        if tuple(shown.shape[2:]) != tuple(size):
            shown = F.interpolate(shown, size=tuple(size), mode="bilinear", align_corners=False)
    x = shown.clone()
    try:
        normalisation = pre.normalisation(shown.shape[1])
    except ValueError as exc:
        raise UserError(f"{model.path}: {exc}") from None
    mean, std = normalisation
    low, high = pre.value_range  # as the server prepares it (serving/images/prepare.py)
    if (low, high) != (0.0, 1.0):
        x = x * (high - low) + low
    if mean is not None:
        x = x - torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    if std is not None:
        x = x / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return shown[0].clamp(0, 1), x.numpy().astype(np.float32)


def _list(model: OnnxModel) -> None:
    print(f"{model.name} ({model.path}); node outputs (--layer NAME):")
    for output, node, op in model.outputs():
        print(f"  {node:<24} {op:<20} -> {output}")
    print("hint: --image FILE (feature maps of every Conv, or --layer), --filters [LAYER]")


def _filters(model: OnnxModel, layer: str | None, folder: Path) -> tiles.Grid:
    weights = {i.name: i for i in model.proto.graph.initializer}
    convs = [n for n in model.proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        raise UserError(f"--filters: {model.path} has no Conv node")
    node = (
        convs[0] if not layer else next((n for n in convs if layer in (n.name, n.output[0])), None)
    )
    if node is None or node.input[1] not in weights:
        raise UserError(
            f"--filters {layer}: not a Conv node with constant weights in {model.path}"
            f"\n  hint: Conv nodes: {', '.join(n.name for n in convs)}"
        )
    weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
    if node.op_type == "ConvTranspose":
        weight = weight.transpose(1, 0, 2, 3)
    grid, what, columns = filters.tiles_for(weight)
    title = f"{model.name} · {node.name} weights {list(weight.shape)} (out, in, kH, kW): {what}"
    return tiles.save_grid(
        folder / feature_maps.file_name("filters", node.name), grid, title, columns
    )


def run(args: argparse.Namespace) -> int:
    """The `netc inspect MODEL.onnx` command."""
    model = load(Path(args.source))
    asked = [flag for flag in NEEDS_RUN if getattr(args, flag)]
    if asked:
        flag = "--" + asked[0].replace("_", "-")
        raise UserError(
            f"{flag} needs the run directory: an ONNX model carries no receptive "
            "fields, gradients or training history\n"
            f"  hint: netc inspect RUN_DIR {flag} ... (the folder netc train --out wrote)"
        )
    if args.data:
        raise UserError("--data: pictures for an ONNX model come from --image FILE")
    if not (args.image or args.layer or args.filters is not None):
        _list(model)
        return 0
    folder = args.out or model.path.with_name(f"{model.path.stem}_inspect")
    if args.filters is not None:
        grid = _filters(model, args.filters or None, folder)
        print(f"wrote {grid.path} ({grid.tiles} tiles)")
    if args.layer and not args.image:
        raise UserError("--layer shows a picture's feature maps: give --image FILE")
    if args.image:
        picture = read_picture(args.image[0], model.channels)
        shown, x = prepare(model, picture)
        convs = [o for o, _, op in model.outputs() if op in ("Conv", "ConvTranspose")]
        names = [_resolve(model, layer) for layer in args.layer] or convs
        values = intermediate(model, x, names)
        for name in names:
            output = values[name]
            if output.ndim != 4:
                raise UserError(
                    f"--layer {name}: its output {list(output.shape[1:])} is not a "
                    "feature map (C, H, W)"
                )
            grid = feature_maps.draw(
                model.name, name, output[0], shown, args.image[0].name, folder, args.max_channels
            )
            print(f"wrote {grid.path} ({grid.tiles - 1} channels)")
    return 0
