"""One offline HTML page with every inspection of a run: `netc inspect RUN --report DIR`.

DIR/index.html and the PNGs it shows, side by side; the page refers to
nothing outside DIR (no scripts, fonts or style sheets from the network), so
it opens from a file, an archive or a CI artefact as it is. Sections that need
pictures say how to get them when none were given.
"""

from __future__ import annotations

import html
from pathlib import Path

from netc.compiler.analysis import field_json
from netc.errors import UserError
from netc.fileio import write_atomic
from netc.runtime.inspect import curves, feature_maps, fields, filters, gradcam, top_activations
from netc.runtime.inspect.activations import conv_layers, spatial_layers
from netc.runtime.inspect.source import Batch, Model

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 2em;
  border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.meta { color: #555; margin-top: 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child, td:nth-child(2), th:nth-child(2) { text-align: left; }
.note { color: #777; font-style: italic; }
"""
FEATURE_CHANNELS = 16


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _image(path: Path, alt: str) -> str:
    return f'<p><img src="{html.escape(path.name)}" alt="{html.escape(alt)}"></p>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _number(value) -> str:
    return "" if value is None else f"{value:,}"


def _layer_table(model: Model) -> str:
    rows = [
        "<tr><th>layer</th><th>op</th><th>output</th><th>params</th><th>MACs</th>"
        "<th>receptive field</th><th>stride</th><th>offset</th></tr>"
    ]
    for layer in model.analysis.layers:
        field = field_json(layer.field)
        size = "whole input" if field["whole_input"] else "x".join(map(str, field["size"]))
        cells = [
            layer.name,
            layer.op,
            "x".join(str(d) for d in layer.shape[1:]),
            _number(layer.params),
            _number(layer.macs),
            size,
            "x".join(map(str, field["stride"])),
            ", ".join(map(str, field["offset"])),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _summary(model: Model) -> str:
    a = model.analysis
    parts = [model.task, f"{a.params:,} parameters"]
    if a.macs is not None:
        parts.append(f"{a.macs:,} multiply-accumulates")
    if model.history:
        last = model.history[-1]
        parts.append(f"{len(model.history)} epochs")
        parts += [
            f"{key} {last[key]:.4g}"
            for key in ("val_accuracy", "val_mean_iou", "val_loss")
            if isinstance(last.get(key), (int, float))
        ]
    if model.labels:
        shown = ", ".join(model.labels[:12]) + (", ..." if len(model.labels) > 12 else "")
        parts.append(f"classes: {shown}")
    return " · ".join(parts)


def _last_map_layer(model: Model) -> str | None:
    convs = [name for name in conv_layers(model) if name in spatial_layers(model)]
    return convs[-1] if convs else None


def _picture_sections(
    model: Model, pictures: Batch | None, pool: Batch | None, folder: Path
) -> str:
    if pictures is None:
        hint = "give --image FILE or --data DATASET to see feature maps, receptive fields, "
        return _section("Pictures", _note(hint + "top activations and class maps"))
    out = []
    maps = [
        _image(
            feature_maps.save(model, pictures, name, folder, max_channels=FEATURE_CHANNELS).path,
            f"feature maps of {name}",
        )
        for name in conv_layers(model)
        if name in spatial_layers(model)
    ]
    out.append(_section(f"Feature maps of {pictures.names[0]}", "\n".join(maps)))
    last = _last_map_layer(model)
    if last is not None:
        grid = fields.save(model, pictures, last, folder)
        out.append(_section(f"Receptive field of a {last} unit", _image(grid.path, "field")))
        if pool is not None:
            grid = top_activations.save(model, pool, last, folder)
            out.append(_section(f"What excites {last}", _image(grid.path, "top activations")))
        else:
            out.append(
                _section(
                    f"What excites {last}",
                    _note("give --data DATASET to find the pictures that excite each channel most"),
                )
            )
    if model.task in ("classification", "segmentation"):
        grid = gradcam.save(model, pictures, folder)
        out.append(_section("Class maps (Grad-CAM)", _image(grid.path, "class maps")))
    return "".join(out)


def write(model: Model, folder: Path, pictures: Batch | None, pool: Batch | None) -> Path:
    """DIR/index.html and its PNGs; returns the page's path. `pictures`' first one is
    shown to the network; `pool` (many pictures) is searched for top activations."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--report {folder}: exists and is not a folder")
    name = html.escape(model.graph.name)
    body = [f"<h1>{name}</h1>", f'<p class="meta">{html.escape(_summary(model))}</p>']
    if model.history:
        path = curves.save(model.history, folder / "curves.png", model.graph.name)
        body.append(_section("Training", _image(path, "training curves")))
    else:
        body.append(_section("Training", _note("no metrics.jsonl: the run has no history")))
    body.append(_section("Layers", _layer_table(model)))
    if conv_layers(model):
        grid = filters.save(model, None, folder)
        body.append(_section("First-layer filters", _image(grid.path, "filters")))
    body.append(_picture_sections(model, pictures, pool, folder))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{name} · netc inspect</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f'\n<p class="meta">netc inspect {html.escape(str(model.path))}</p>\n</body>\n</html>\n'
    )
    index = folder / "index.html"
    write_atomic(index, page.encode("utf-8"))
    return index
