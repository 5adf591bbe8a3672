"""Class maps (Grad-CAM, Selvaraju et al. 2017), placed on the picture by the receptive field.

For a class score y and a layer's maps A_k (k = channels), Grad-CAM is

    cam(i, j) = ReLU( Σ_k α_k · A_k(i, j) ),   α_k = mean over (i, j) of ∂y/∂A_k(i, j)

A segmentation net's score for class c is the sum of its scores over the
pixels it labels c. Map unit (i, j) is drawn where the analysis says it
looks, at input pixel (start_h + i·jump_h, start_w + j·jump_w), by bilinear
interpolation between unit centres; pixels no unit of the map covers (beyond
half a stride from the outermost centres: a layer that sees only part of the
picture) stay 0, rather than stretching the map over the whole picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from netc.compiler.receptive_field import Field
from netc.errors import UserError, did_you_mean
from netc.runtime.inspect import tiles
from netc.runtime.inspect.activations import check_layer, record, spatial_layers
from netc.runtime.inspect.feature_maps import picture_tile
from netc.runtime.inspect.fields import field_of
from netc.runtime.inspect.source import Batch, Model

PANEL = 160
TOP_CLASSES = 3
_MAP_OPS = ("conv", "conv_transpose", "relu", "leaky_relu", "add", "concat", "crop")


def default_layer(model: Model) -> str:
    """The last map-producing layer (conv, activation, merge) that is neither an output nor
    a map of class scores (as many channels as classes: a dense net's classifier)."""
    outputs = set(model.graph.outputs.values())
    spatial = set(spatial_layers(model))
    shapes = {layer.name: layer.shape for layer in model.analysis.layers}
    classes = shapes[_output_layer(model)][1]
    for node in reversed(model.graph.nodes):
        if (
            node.name in spatial
            and node.name not in outputs
            and node.op in _MAP_OPS
            and shapes[node.name][1] != classes
            and not field_of(model, node.name).whole
        ):
            return node.name
    raise UserError(f"--class-map: {model.graph.name} has no layer with a feature map to explain")


def pick_class(model: Model, text: str | None) -> int | None:
    """--class as a label or an index; None means the predicted class."""
    if text is None:
        return None
    labels = model.labels or []
    if text in labels:
        return labels.index(text)
    if text.isdigit() and (not labels or int(text) < len(labels)):
        return int(text)
    hint = did_you_mean(text, labels)
    raise UserError(
        f"--class {text}: not one of the model's classes "
        f"({', '.join(labels) or 'numbered from 0'})" + (f"\n  hint: {hint}" if hint else "")
    )


def _output_layer(model: Model) -> str:
    return next(iter(model.graph.outputs.values()))


def scores(model: Model, inputs: torch.Tensor) -> torch.Tensor:
    """The first output's class scores for one picture: (K,) or (K, H, W)."""
    with torch.no_grad():
        return record(model, inputs[:1], [_output_layer(model)])[_output_layer(model)][0]


def default_classes(model: Model, inputs: torch.Tensor, count: int) -> list[int]:
    """Classification: the top `count` scores. Segmentation: the classes covering most
    pixels, class 0 (background) last."""
    out = scores(model, inputs).float()
    if out.dim() == 1:
        return [int(c) for c in torch.argsort(out, descending=True)[:count]]
    area = torch.bincount(out.argmax(dim=0).flatten(), minlength=out.shape[0])
    order = [int(c) for c in torch.argsort(area, descending=True) if area[c] > 0]
    order = [c for c in order if c != 0] + [c for c in order if c == 0]
    return order[:count]


def class_map(model: Model, inputs: torch.Tensor, layer: str, target: int) -> np.ndarray:
    """Grad-CAM (h, w) of `layer` for class `target` on the first picture, not normalised."""
    out_name = _output_layer(model)
    with torch.enable_grad():  # the weights require grad, so the maps carry a graph
        values = record(model, inputs[:1].detach(), [layer, out_name])
        maps, out = values[layer], values[out_name]
        if not maps.requires_grad:
            raise UserError(
                f"--class-map: the class score does not depend on {layer} (no gradient reaches it)"
            )
        if target >= out.shape[1]:
            raise UserError(f"--class {target}: the model has {out.shape[1]} classes")
        if out.dim() == 2:
            score = out[0, target]
        else:
            chosen = out[0].argmax(dim=0) == target
            score = (out[0, target] * chosen).sum() if chosen.any() else out[0, target].sum()
        (grads,) = torch.autograd.grad(score, maps, allow_unused=True)
    if grads is None:
        return np.zeros(maps.shape[-2:], dtype=np.float32)
    alpha = grads[0].mean(dim=(1, 2))
    cam = torch.relu((alpha[:, None, None] * maps[0]).sum(dim=0))
    return cam.detach().float().numpy()


def _axis(n_map: int, n_picture: int, start: float, jump: float):
    """Indices, weights and coverage of each picture pixel's place on a map axis."""
    u = (np.arange(n_picture, dtype=np.float64) - start) / jump
    covered = (u >= -0.5) & (u <= n_map - 0.5)
    u = np.clip(u, 0, n_map - 1)
    low = np.floor(u).astype(np.intp)
    high = np.minimum(low + 1, n_map - 1)
    return low, high, (u - low), covered


def on_picture(cam: np.ndarray, field: Field, height: int, width: int) -> np.ndarray:
    """A map (h, w) → (height, width) at the pixels its units look at (0 where none)."""
    if field.whole:
        raise UserError("--class-map: the layer sees the whole picture; pick an earlier one")
    (top, bottom, wy, rows), (left, right, wx, columns) = (
        _axis(cam.shape[i], n, float(a.start), float(a.jump))
        for i, (a, n) in enumerate(zip(field.axes(), (height, width)))
    )
    wy, wx = wy[:, None], wx[None, :]
    out = (
        cam[top][:, left] * (1 - wy) * (1 - wx)
        + cam[top][:, right] * (1 - wy) * wx
        + cam[bottom][:, left] * wy * (1 - wx)
        + cam[bottom][:, right] * wy * wx
    )
    return (out * rows[:, None] * columns[None, :]).astype(np.float32)


def save(
    model: Model,
    pictures: Batch,
    folder: Path,
    *,
    layer: str | None = None,
    target: str | None = None,
) -> tiles.Grid:
    """class_map.png: the picture, then one Grad-CAM overlay per class (the top 3, or
    --class), each normalised to its own peak."""
    layer = check_layer(model, layer, "--cam-layer") if layer else default_layer(model)
    chosen = pick_class(model, target)
    classes = [chosen] if chosen is not None else default_classes(model, pictures.inputs, 3)
    height, width = pictures.shown.shape[-2:]
    field = field_of(model, layer)
    out = scores(model, pictures.inputs).float()
    probabilities = torch.softmax(out, dim=0) if out.dim() == 1 else None
    grid = [picture_tile(pictures.shown[0], pictures.names[0])]
    size = ""
    for c in classes:
        raw = class_map(model, pictures.inputs, layer, c)
        size = f"{raw.shape[0]}x{raw.shape[1]}"
        cam = on_picture(raw, field, height, width)
        peak = float(cam.max())
        tile = picture_tile(pictures.shown[0], _class_label(model, c, probabilities))
        tile.overlay = cam / peak if peak > 0 else cam
        grid.append(tile)
    title = f"{model.graph.name} · Grad-CAM at {layer} ({size} map) · {pictures.names[0]}"
    return tiles.save_grid(folder / "class_map.png", grid, title, columns=len(grid), tile=PANEL)


def _class_label(model: Model, c: int, probabilities) -> str:
    name = model.labels[c] if model.labels and c < len(model.labels) else str(c)
    if probabilities is None:
        return f"class {name}"
    return f"class {name} (p {float(probabilities[c]):.2f})"
