"""`netc export`: a trained run (or a description) → a verified ONNX file.

The source is a run directory or checkpoint (its stored description, weights,
labels and preprocessing), or a description/zoo name, exported with freshly
initialised weights. A missing source that looks like a path is a missing run
folder, never a zoo name: a hint towards a zoo net would export random weights.
Before anything is written, onnxruntime runs the model and must agree with the
PyTorch module (rtol 1e-4, atol 1e-5).
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from netc.compiler import symbolic as sym
from netc.compiler import zoo
from netc.compiler.analysis import analyze, minimum_input_size
from netc.compiler.ir import Graph
from netc.compiler.ir_passes.fc_to_conv import to_fully_convolutional
from netc.compiler.network import load, load_string
from netc.compiler.onnx_export import export_onnx, metadata_for
from netc.compiler.pixel_input import pixel_input_model
from netc.console import say
from netc.errors import UserError
from netc.fileio import write_atomic
from netc.runtime import checkpoint
from netc.runtime.config import parse_normalize
from netc.runtime.finetune import fills_every_tensor, module_with_weights
from netc.runtime.module import build_module
from netc.runtime.preprocess import whiten

RTOL, ATOL = 1e-4, 1e-5
OPEN_SIZE = 64  # the smallest spatial size used to check open-size models
MAX_CHECK_VALUES = 1 << 28  # input values the PyTorch check may use (1 GiB of floats)
CHECKPOINTS = ("best.pt", "last.pt")  # what makes a folder a run folder
DESCRIPTION_SUFFIXES = (".yaml", ".yml")
LISTED_ENTRIES = 10_000  # entries of a folder looked at for run folders to suggest


@dataclass
class ExportResult:
    model: onnx.ModelProto
    graph: Graph
    trained: bool
    max_error: float | None


def _is_checkpoint(source: str) -> bool:
    path = Path(source)
    return path.is_dir() or path.suffix == ".pt"


def _run_folders(folder: Path) -> list[str]:
    """Names of the run folders in `folder` (those holding a checkpoint), sorted."""
    try:
        entries = list(itertools.islice(folder.iterdir(), LISTED_ENTRIES))
        return sorted(p.name for p in entries if any((p / name).is_file() for name in CHECKPOINTS))
    except OSError:  # unreadable: no suggestions, the message itself still stands
        return []


def _missing_run(source: str) -> UserError:
    """A path that does not exist: name it as the run folder it was meant to be, with
    run folders beside it that it may have meant."""
    path = Path(source)
    parent = path.parent
    runs = _run_folders(parent) if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, runs, n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(f"'{parent / name}'" for name in close) + "?"
    elif runs:
        shown = ", ".join(runs[:10]) + (", ..." if len(runs) > 10 else "")
        hint = f"the run folders in {parent} are {shown}"
    elif parent.is_dir():
        hint = f"{parent} holds no run folder (a folder with {' or '.join(CHECKPOINTS)})"
    else:
        hint = f"{parent} does not exist either"
    return UserError(f"no run folder '{source}'\n  hint: {hint}")


def _unknown_name(source: str) -> UserError:
    """A bare name that is nothing here: the run folders and zoo nets it may have meant,
    each said for what it is (a zoo net exports untrained weights)."""
    run = difflib.get_close_matches(source, _run_folders(Path(".")), n=1, cutoff=0.6)
    net = difflib.get_close_matches(source, zoo.names(), n=1, cutoff=0.6)
    options = [f"the run folder '{name}'" for name in run] + [
        f"the zoo network '{name}' (untrained weights)" for name in net
    ]
    hint = (
        "did you mean " + ", or ".join(options) + "?"
        if options
        else "give a run folder (trained weights), a network file or a zoo name (`netc zoo`)"
    )
    return UserError(
        f"'{source}' is neither a run folder, a network file nor a zoo network\n  hint: {hint}"
    )


def _check_source(source: str) -> None:
    """Refuse a source that names nothing, before a zoo name's hint can stand in for it."""
    path = Path(source)
    try:
        if path.exists():
            return
    except OSError:
        return  # a name the file system refuses: load() says why
    if path.suffix in (*DESCRIPTION_SUFFIXES, ".pt"):
        return  # a missing description or checkpoint file: load() says no such file
    if "/" in source or path.name != source:  # a path: its last part is not all of it
        raise _missing_run(source)
    if source not in zoo.names():
        raise _unknown_name(source)


def _from_source(
    source: str,
    params: dict[str, Any],
    input_shape,
    weights_file: str | None = None,
    weights_layout: str | None = None,
    quiet: bool = False,
) -> tuple[Graph, dict, dict]:
    """The graph, its weights (for a description: `weights_file`'s, else fresh ones) and
    the checkpoint's extra state ({} for a description)."""
    _check_source(source)
    if _is_checkpoint(source):
        if params:
            raise UserError(
                f"--set changes a description's parameters; {source} holds a trained "
                f"network whose weights fix them (it was trained with {state_params(source)})"
            )
        state = checkpoint.load(Path(source))
        net = load_string(
            state["description"],
            file=state["description_file"],
            params=state["params"],
            input_shape=input_shape,
        )
        if input_shape is not None:
            _check_weights_fit(net.graph, state, source, input_shape)
        return net.graph, state["model"], state
    net = load(source, params=params, input_shape=input_shape)
    # a description's own `training.normalize: {mean, std}` (a pretrained net's) goes in
    # the model card, so that a server prepares pictures as the weights expect
    training = net.spec.training
    normalize = parse_normalize(training.get("normalize", True) if training else True)
    extra = {"preprocessing": normalize} if isinstance(normalize, dict) else {}
    if weights_file is not None:
        return net.graph, _with_weights(net.graph, weights_file, weights_layout, quiet), extra
    return net.graph, build_module(net.graph, seed=0).state_dict(), extra


def _with_weights(
    graph: Graph, weights: str, layout: str | None, quiet: bool
) -> dict[str, torch.Tensor]:
    """The description's module with the weights of `weights` loaded by layer name."""
    module, report = module_with_weights(graph, weights, layout, "--weights")
    for line in report.lines():
        say(f"weights {weights}: {line}", quiet)
    return module.state_dict()


def state_params(source: str) -> str:
    try:
        params = checkpoint.load(Path(source)).get("params") or {}
    except UserError:
        return "its own parameters"
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "no --set"


def _check_weights_fit(graph: Graph, state: dict, source: str, input_shape) -> None:
    """An --input-shape can change a trained layer's weight shape (an fc layer after a
    different spatial size, a conv over other channels): say which layer, not torch's
    size-mismatch dump."""
    with torch.device("meta"):  # shapes only: nothing allocated
        wanted = build_module(graph).state_dict()
    for key, tensor in wanted.items():
        stored = state["model"].get(key)
        if stored is not None and tuple(stored.shape) != tuple(tensor.shape):
            shape = ",".join("?" if d is None else str(d) for d in input_shape)
            trained = load_string(  # the size it was trained at, for the hint
                state["description"], file=state["description_file"], params=state["params"]
            ).graph
            dims = next(iter(trained.inputs.values())).shape[1:]
            at = ",".join(str(d) if sym.is_static(d) else "?" for d in dims)
            raise UserError(
                f"--input-shape {shape} does not fit the weights trained in {source}: "
                f"'{key}' is {list(stored.shape)} there, and the network at this input size "
                f"needs {list(tensor.shape)}\n  hint: the trained network takes {at}; drop "
                "--input-shape, or keep its channels and a size its layers accept"
            )


def _sample_shapes(graph: Graph, size: list[int] | None = None) -> list[tuple[int, ...]]:
    """Two valid input sizes for an open-size model (at least OPEN_SIZE, then a bit more);
    only `size` when given (PCA whitening holds for the training size alone)."""
    shape = next(iter(graph.inputs.values())).shape
    if all(sym.is_static(d) for d in shape[1:]):
        return [(2, *(sym.static(d) for d in shape[1:]))]
    channels = sym.static(shape[1])
    if size is not None:
        return [(2, channels, *size)]
    low_h, low_w = minimum_input_size(graph) or (1, 1)
    h, w = max(low_h, OPEN_SIZE), max(low_w, OPEN_SIZE)
    return [(2, channels, h, w), (2, channels, h + 37, w + 21)]


def check_against_torch(
    model: onnx.ModelProto,
    graph: Graph,
    weights: dict,
    whitening: tuple[Any, Any] | None = None,
    size: list[int] | None = None,
) -> float:
    """Largest |onnxruntime - PyTorch| over seeded inputs; UserError beyond tolerance."""
    with torch.device("meta"):  # every weight is given: no initialisation to pay for
        module = build_module(graph)
    module = module.to_empty(device="cpu") if fills_every_tensor(module) else build_module(graph)
    module.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    module.eval()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors reach the user as netc's message, not ort's log
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for shape in _sample_shapes(graph, size):
        if math.prod(shape) > MAX_CHECK_VALUES:
            raise UserError(
                f"checking the export against PyTorch would run it on an input of "
                f"{list(shape)}, too large for this machine's memory\n  hint: add --no-verify, "
                "or export at a smaller --input-shape"
            )
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = module(_whitened(x, whitening))
        expected = list(expected.values()) if isinstance(expected, dict) else [expected]
        actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        for name, got, want in zip(graph.outputs, actual, expected):
            want = want.numpy()
            error = np.abs(got - want)
            worst = max(worst, float(error.max()))
            if not np.all(error <= ATOL + RTOL * np.abs(want)):
                raise UserError(
                    f"exported model disagrees with PyTorch on output "
                    f"'{name}' at input {list(shape)}: max error "
                    f"{float(error.max()):.3g} (rtol {RTOL}, atol {ATOL}); "
                    "nothing was written"
                )
    return worst


def _whitened(x: torch.Tensor, whitening: tuple[Any, Any] | None) -> torch.Tensor:
    if whitening is None:
        return x
    matrix, mean = whitening
    return whiten(
        x,
        torch.as_tensor(matrix, dtype=torch.float32),
        None if mean is None else torch.as_tensor(mean, dtype=torch.float32),
    )


def export_model(
    source: str,
    *,
    fully_convolutional: bool = False,
    input_shape=None,
    params: dict[str, Any] | None = None,
    verify: bool = True,
    weights_file: str | None = None,
    weights_layout: str | None = None,
    quiet: bool = False,
    pixel_input: bool = False,
) -> ExportResult:
    """`source` as a verified ONNX model; `weights_file` (for a description) gives its
    weights, read in `weights_layout` (None: detected). `pixel_input`: the model takes raw
    pixels 0..255, its preprocessing in the graph (`compiler.pixel_input`)."""
    if weights_file is not None and _is_checkpoint(source):
        raise UserError(
            f"--weights loads weights into a description; {source} is a run or checkpoint "
            "that holds its own\n  hint: export it without --weights, or give the network's "
            "description (or zoo name) with --weights"
        )
    graph, weights, state = _from_source(
        source, params or {}, input_shape, weights_file, weights_layout, quiet
    )
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    if fully_convolutional:
        graph, weights = to_fully_convolutional(graph, weights)
    labels = state.get("labels")
    classes = _output_classes(graph)
    if labels is not None and classes is not None and len(labels) != classes:
        raise UserError(
            f"{source} names {len(labels)} classes, but the network's output has "
            f"{classes}: the checkpoint does not belong to this network"
        )
    preprocessing = dict(state.get("preprocessing") or {})
    whitening = None
    if preprocessing.get("pca") is not None:
        whitening = (
            np.asarray(preprocessing.pop("pca")),
            None
            if preprocessing.get("pca_mean") is None
            else np.asarray(preprocessing["pca_mean"]),
        )
    preprocessing.pop("pca", None)
    preprocessing.pop("pca_mean", None)
    trained_at = (state.get("config") or {}).get("input_size")
    open_size = not all(isinstance(d, int) for d in next(iter(graph.inputs.values())).shape[2:])
    if trained_at and open_size and not fully_convolutional:
        # Training resized every image to this size; serving must too, though the network
        # itself would take any size.
        preprocessing["resize_to"] = [int(d) for d in trained_at]
    card = metadata_for(
        graph.task if not fully_convolutional else "segmentation",
        labels,
        preprocessing,
        next(iter(graph.inputs.values())).shape,
    )
    if fully_convolutional:
        card = replace(card, fully_convolutional_from=graph.task)
    config = state.get("config") or {}
    if "val_fraction" in config and "seed" in config:  # the images it never trained on
        card = replace(card, validation_split=(config["val_fraction"], config["seed"]))
    field = next(iter(analyze(graph).outputs.values())).field
    if not field.whole:  # where output pixel (i, j) looks: input (start + i·stride, ...)
        height, width = field.axes()
        card = replace(
            card,
            output_stride=(float(height.jump), float(width.jump)),
            output_offset=(float(height.start), float(width.start)),
        )
    model = export_onnx(graph, weights, card=card, whitening=whitening)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"the exported model does not pass onnx.checker: {exc}") from None
    size = preprocessing.get("resize_to") if whitening is not None else None
    worst = check_against_torch(model, graph, weights, whitening, size) if verify else None
    if pixel_input:  # after the PyTorch check, which runs the model as PyTorch takes it
        model = pixel_input_model(model, _sample_shapes(graph, size) if verify else ())
    return ExportResult(model, graph, "model" in state or weights_file is not None, worst)


def _output_classes(graph: Graph) -> int | None:
    """The channel count of a classifier's or dense predictor's output, when fixed."""
    if graph.task not in ("classification", "segmentation"):
        return None
    shape = next(iter(analyze(graph).outputs.values())).shape
    return shape[1] if len(shape) > 1 and sym.is_static(shape[1]) else None


def write_model(model: onnx.ModelProto, path: Path) -> int:
    data = model.SerializeToString()
    write_atomic(path, data)
    return len(data)
