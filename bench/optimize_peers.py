"""netc's optimizer beside onnxslim and onnx-simplifier on timm models and netc's zoo (issue 17).

Run through `bench/optimize.py --peers`. Each model is exported with
torch.onnx's TorchScript exporter at opset 17 with BatchNormalization kept
(TrainingMode.PRESERVE, no exporter constant folding; random weights and BN
statistics, batch 1, 3x224x224; NAME@open rows leave batch, height and
width open), then optimized by netc (verified), onnxslim
and onnx-simplifier. Per model it prints node counts, the foldable
constant/shape nodes and the BatchNormalization nodes each leaves, and the
latency of each result as a ratio to the raw export's at ORT_DISABLE_ALL and
ORT_ENABLE_ALL, all variants interleaved in one process. The `raw#2` column
is a second session of the raw model: its ratio to raw is the noise floor.

timm, onnxslim and onnxsim are optional bench dependencies; a peer that is
not installed is left out of the table. timm imports torchvision, which does
not import with the pinned torch, so `torchvision_standin` stands in for it.
"""

from __future__ import annotations

import importlib.util
import io
import time
import warnings
from collections import Counter
from collections.abc import Callable

import onnx
import torch

TIMM_MODELS = (
    "resnet18",
    "mobilenetv2_100",
    "efficientnet_b0",
    "ghostnet_100",
    "convnext_atto",
    "regnetx_002",
)
# also exported with batch, height and width open, where shapes are symbolic
OPEN_SIZE_MODELS = ("ghostnet_100", "convnext_atto")
ZOO_MODELS = ("resnet18", "googlenet", "densenet121", "resnet50")
SHAPE_OPS = {"Shape", "Size"}


def timm_export(name: str, open_sizes: bool = False) -> onnx.ModelProto:
    """A timm model, random weights and BN statistics, exported with BN kept; with
    `open_sizes` the batch, height and width of the input are left open."""
    import torchvision_standin

    torchvision_standin.install()
    import timm

    torch.manual_seed(0)
    module = timm.create_model(name, pretrained=False).eval()
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.normal_(0, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            torch.randn(1, 3, 224, 224),
            buffer,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["image"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}} if open_sizes else None,
        )
    return onnx.load_from_string(buffer.getvalue())


def peers() -> dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]]:
    """The installed peer optimizers, by column name."""
    found: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {}
    try:
        import onnxslim

        found["onnxslim"] = lambda m: onnxslim.slim(m)
    except ImportError:
        pass
    try:
        import onnxsim

        found["onnxsim"] = lambda m: onnxsim.simplify(m)[0]
    except ImportError:
        pass
    return found


def foldable_left(model: onnx.ModelProto) -> int:
    """Nodes whose value is known before run time: Constant nodes, nodes whose inputs are
    all constants, and Shape/Size of a tensor whose dims are all fixed."""
    inferred = onnx.shape_inference.infer_shapes(model)
    static = set()
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            static.add(info.name)
    graph_inputs = {i.name for i in model.graph.input}
    constants = {t.name for t in model.graph.initializer} - graph_inputs
    count = 0
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        known = node.op_type == "Constant" or (
            inputs and all(i in constants for i in inputs) and node.op_type not in ("Identity",)
        )
        known = known or (node.op_type in SHAPE_OPS and node.input[0] in static)
        if known:
            count += 1
            constants.update(node.output)
    return count


def ort_all_nodes(model: onnx.ModelProto) -> int:
    """Nodes in onnxruntime's own saved model at ORT_ENABLE_ALL: a noise-free check that
    a rewrite cost the runtime none of its fusions (more nodes than raw's would say so)."""
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "ort.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return len(onnx.load(options.optimized_model_filepath).graph.node)


def bn_left(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "BatchNormalization" for node in model.graph.node)


def compare(
    rows: list[tuple[str, onnx.ModelProto]],
    runs: int,
    session: Callable,
    latency: Callable,
    levels: dict,
) -> None:
    """Print the node table, then the latency ratio table, for (label, raw model) rows."""
    from netc.compiler.optimizer.api import optimize_model

    tools = peers()
    names = ["netc", *tools]
    missing = {"onnxslim", "onnxsim"} - set(tools)
    if missing:
        print(f"(not installed, left out: {', '.join(sorted(missing))})")
    header = f"{'model':<24} {'raw':>5} " + " ".join(f"{n:>9}" for n in names)
    print("nodes (foldable constant/shape nodes left, BatchNormalization left)")
    print(
        header
        + "   seconds to optimize: "
        + " / ".join(names)
        + "   nodes after ORT_ENABLE_ALL: "
        + " / ".join(["raw", *names])
    )
    variants_per_row = []
    for label, raw in rows:
        variants: dict[str, onnx.ModelProto] = {"raw": raw}
        seconds = []
        start = time.perf_counter()
        variants["netc"] = optimize_model(raw, name=label).model
        seconds.append(time.perf_counter() - start)
        for name, tool in tools.items():
            start = time.perf_counter()
            variants[name] = tool(raw)
            seconds.append(time.perf_counter() - start)
        variants_per_row.append((label, variants))
        cells = " ".join(
            f"{len(variants[n].graph.node):>4}({foldable_left(variants[n])},{bn_left(variants[n])})"
            for n in names
        )
        times = " / ".join(f"{s:.1f}" for s in seconds)
        ort_nodes = " / ".join(str(ort_all_nodes(variants[n])) for n in ["raw", *names])
        print(f"{label:<24} {len(raw.graph.node):>5} {cells}   {times}   {ort_nodes}", flush=True)
    if runs <= 0:
        return  # --runs 0: the node table only
    print(f"\nlatency / raw's, median of {runs} interleaved runs; raw#2 = a second raw session")
    cols = ["raw#2", *names]
    print(f"{'model':<24} {'ORT opt':<7} {'raw ms':>7} " + " ".join(f"{c:>9}" for c in cols))
    for label, variants in variants_per_row:
        for level_name, level in levels.items():
            sessions = {k: session(m, level) for k, m in variants.items()}
            sessions["raw#2"] = session(variants["raw"], level)
            ms = latency(sessions, runs)
            ratios = " ".join(f"{ms[c] / ms['raw']:>9.3f}" for c in cols)
            print(f"{label:<24} {level_name:<7} {ms['raw']:>7.2f} {ratios}", flush=True)


def run(runs: int, session, latency, levels, zoo_export, models: str | None = None) -> None:
    """The --peers table: timm models (when timm is installed) and netc's zoo."""
    rows: list[tuple[str, onnx.ModelProto]] = []
    wanted = set(models.split(",")) if models else None
    have_timm = importlib.util.find_spec("timm") is not None
    if not have_timm:
        print("(timm is not installed: netc's zoo only; see bench/README.md)")
    for name in TIMM_MODELS if have_timm else ():
        if wanted is None or f"timm/{name}" in wanted or name in wanted:
            rows.append((f"timm/{name}", timm_export(name)))
    for name in OPEN_SIZE_MODELS if have_timm else ():
        if wanted is None or f"timm/{name}@open" in wanted:
            rows.append((f"timm/{name}@open", timm_export(name, open_sizes=True)))
    for name in ZOO_MODELS:
        if wanted is None or f"zoo/{name}" in wanted:
            rows.append((f"zoo/{name}", zoo_export(name)))
    counts = Counter(label.split("/")[0] for label, _ in rows)
    print(f"{counts['timm']} timm and {counts['zoo']} zoo models; opset 17, BN kept, batch 1\n")
    compare(rows, runs, session, latency, levels)
