"""`netc inspect RUN_OR_ONNX ...`: pictures of what a network computes.

Each flag writes one PNG into --out (default RUN_DIR/inspect/, or
MODEL_inspect/ beside an ONNX file) and prints its path; with no flag the
command lists the layers it can show. Heavy imports (torch, matplotlib) wait
until the command runs, so `netc --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netc.errors import UserError

PICTURE_LIMIT = 500


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="pictures of a network: feature maps, filters, receptive fields, class maps",
        description="Draw what a trained network computes, as PNG files: feature maps of a "
        "picture, conv filters, the receptive field of a unit (from the analysis, checked by "
        "a gradient probe), the pictures that excite a channel most cropped at its receptive "
        "field, Grad-CAM class maps and training curves; --report puts them all in one "
        "offline HTML page. An exported ONNX model shows its intermediate outputs.",
    )
    p.add_argument("source", metavar="RUN_OR_ONNX", help="a run directory, checkpoint or .onnx")
    p.add_argument("--out", type=Path, metavar="DIR", help="where the PNGs go")
    p.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a PNG/JPEG picture to show the network (repeat for several)",
    )
    p.add_argument(
        "--data",
        metavar="DATASET",
        help="pictures from a data set (digits, shapes, a folder, a .npz): the run's "
        "validation split when it has one",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=PICTURE_LIMIT,
        metavar="N",
        help=f"at most N pictures from --data (default {PICTURE_LIMIT})",
    )
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="NAME",
        help="feature maps of this layer for the first picture (repeat; default "
        "with --image: every conv layer)",
    )
    p.add_argument(
        "--max-channels",
        type=int,
        default=64,
        metavar="N",
        help="channels per feature-map picture: a layer with more shows its N most active "
        "(default 64)",
    )
    p.add_argument(
        "--filters",
        nargs="?",
        const="",
        metavar="LAYER",
        help="a conv layer's weights (default: the first conv)",
    )
    p.add_argument(
        "--receptive-field",
        metavar="LAYER",
        help="the picture with the receptive field of one of LAYER's units",
    )
    p.add_argument(
        "--position",
        metavar="I,J",
        help="the unit for --receptive-field (default: the map's centre)",
    )
    p.add_argument(
        "--top-activations",
        metavar="LAYER",
        help="per channel, the pictures that excite it most, cropped to the field",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=8,
        metavar="N",
        help="channels for --top-activations (default: the first 8)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=8,
        metavar="K",
        help="pictures per channel for --top-activations (default 8)",
    )
    p.add_argument(
        "--class-map",
        action="store_true",
        help="Grad-CAM: where the picture makes the network see its top classes",
    )
    p.add_argument(
        "--class",
        dest="target",
        metavar="LABEL",
        help="the class for --class-map (a label or an index; default: the top 3)",
    )
    p.add_argument(
        "--cam-layer",
        metavar="LAYER",
        help="the layer Grad-CAM explains (default: the last conv or activation)",
    )
    p.add_argument("--curves", action="store_true", help="training curves from metrics.jsonl")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="everything above in DIR/index.html, viewable offline",
    )
    p.set_defaults(run=run)


def _positive(args: argparse.Namespace) -> None:
    for flag in ("limit", "max_channels", "channels", "top"):
        value = getattr(args, flag)
        if value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, found {value}")


def _actions(args: argparse.Namespace) -> bool:
    return bool(
        args.image
        or args.layer
        or args.filters is not None
        or args.receptive_field
        or args.top_activations
        or args.class_map
        or args.curves
        or args.report
    )


def run(args: argparse.Namespace) -> int:
    _positive(args)
    source = Path(args.source)
    if source.suffix.lower() == ".onnx":
        from netc.runtime.inspect import onnx_outputs

        return onnx_outputs.run(args)
    from netc.runtime.inspect.source import load_run

    if not source.exists():
        raise UserError(
            f"no run folder, checkpoint or ONNX file '{source}'\n"
            "  hint: netc inspect takes what netc train --out wrote, or netc export's .onnx"
        )
    model = load_run(source)
    if not _actions(args):
        _list_layers(model)
        return 0
    folder = args.out or (source if source.is_dir() else source.parent) / "inspect"
    if args.report is not None:
        from netc.runtime.inspect import report

        pictures = _pictures(model, args, needed=False)
        pool = _pictures(model, args, needed=False, many=True) if args.data else None
        if pool is None and args.image and len(args.image) > 1:
            pool = pictures
        path = report.write(model, args.report, pictures, pool)
        print(f"wrote {path}")
        return 0
    for path, what in _draw(model, args, folder):
        print(f"wrote {path} ({what})")
    return 0


def _pictures(model, args: argparse.Namespace, *, needed: bool, many: bool = False):
    """The pictures the flags show: --image files, else --data's; None when neither."""
    from netc.runtime.inspect import source

    if args.data and (many or not args.image):
        return source.pictures_from_data(model, args.data, args.limit)
    if args.image:
        return source.pictures_from_files(model, args.image)
    if needed:
        raise UserError(
            "this needs pictures to show the network: give --image FILE or "
            "--data DATASET (e.g. --data digits)"
        )
    return None


def _draw(model, args: argparse.Namespace, folder: Path):
    """Yield (path, description) for each picture the flags ask for, as it is written."""
    from netc.runtime.inspect import (
        curves,
        feature_maps,
        fields,
        filters,
        gradcam,
        top_activations,
    )
    from netc.runtime.inspect.activations import map_layers

    if args.curves:
        yield curves.save(model.history, folder / "curves.png", model.graph.name), "curves"
    if args.filters is not None:
        grid = filters.save(model, args.filters or None, folder)
        yield grid.path, f"{grid.tiles} tiles"
    layers = args.layer or (map_layers(model) if args.image else [])
    for layer in layers:
        grid = feature_maps.save(
            model,
            _pictures(model, args, needed=True),
            layer,
            folder,
            max_channels=args.max_channels,
        )
        total = next(item.shape[1] for item in model.analysis.layers if item.name == layer)
        shown = grid.tiles - 1
        yield (
            grid.path,
            (
                f"{shown} channels"
                if shown == total
                else f"the {shown} most active of {total} channels"
            ),
        )
    if args.receptive_field:
        pictures = _pictures(model, args, needed=True)
        grid = fields.save(model, pictures, args.receptive_field, folder, args.position)
        yield grid.path, "receptive field"
    if args.top_activations:
        pictures = _pictures(model, args, needed=True, many=True)
        grid = top_activations.save(
            model, pictures, args.top_activations, folder, channels=args.channels, k=args.top
        )
        yield grid.path, f"{grid.rows} channels x {grid.columns} pictures"
    if args.class_map:
        pictures = _pictures(model, args, needed=True)
        grid = gradcam.save(model, pictures, folder, layer=args.cam_layer, target=args.target)
        yield grid.path, f"{grid.tiles - 1} class maps"


def _list_layers(model) -> None:
    from netc.compiler.analysis import field_json

    print(f"{model.graph.name} ({model.task}); layers with pictures:")
    for layer in model.analysis.layers:
        field = field_json(layer.field)
        size = "whole input" if field["whole_input"] else "x".join(map(str, field["size"]))
        shape = "x".join(str(d) for d in layer.shape[1:])
        print(f"  {layer.name:<20} {layer.op:<12} {shape:<14} field {size}")
    print(
        "hint: --image FILE (feature maps), --filters, --receptive-field LAYER, "
        "--top-activations LAYER --data DATASET, --class-map, --curves, --report DIR"
    )
