"""Human and JSON renderings of a compiled network's analysis."""

from __future__ import annotations

from fractions import Fraction

from netc.compiler.analysis import LayerStats, field_json, minimum_input_size
from netc.compiler.network import Network

COLUMNS = ("layer", "op", "output", "params", "MACs", "RF", "stride", "offset")


def _shape(layer: LayerStats) -> str:
    return "×".join(str(d) for d in layer.shape[1:])


def _num(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    try:
        return f"{float(value):g}"
    except OverflowError:  # strides that multiply past a float: its order of magnitude
        digits = len(str(abs(value.numerator))) - len(str(value.denominator))
        return f"~1e{digits}"


def _pair(values: list[str]) -> str:
    return values[0] if values[0] == values[1] else "×".join(values)


def _op_label(op: str, attrs: dict) -> str:
    if op == "dropout":  # the lecture's p keeps a unit, ours drops it: say which
        return f"dropout (drop p={attrs['p']:g})"
    return op


def _row(layer: LayerStats, attrs: dict) -> tuple[str, ...]:
    axes = layer.field.axes()
    return (
        layer.name,
        _op_label(layer.op, attrs),
        _shape(layer),
        f"{layer.params:,}" if layer.params else "",
        "?" if layer.macs is None else (f"{layer.macs:,}" if layer.macs else ""),
        "all" if layer.field.whole else _pair([_num(a.size) for a in axes]),
        _pair([_num(a.jump) for a in axes]),
        _pair([_num(a.start) for a in axes]),
    )


def human(value: int | None, unit: str = "") -> str:
    if value is None:
        return "depends on input size"
    for threshold, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
        if value >= threshold:
            return f"{value:,} ({value / threshold:.3f} {suffix}{unit})"
    return f"{value:,}"


def table(network: Network) -> str:
    """A per-layer table and totals, as `netc compile` prints it."""
    analysis, graph = network.analysis, network.graph
    attrs = {node.name: node.attrs for node in graph.nodes}
    rows = [COLUMNS] + [_row(layer, attrs[layer.name]) for layer in analysis.layers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = {3, 4}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    inputs = ", ".join(
        f"{name} {'×'.join(str(d) for d in item.shape[1:])}" for name, item in graph.inputs.items()
    )
    outputs = ", ".join(
        f"{name} ({stats.name}: {_shape(stats)})" for name, stats in analysis.outputs.items()
    )
    frozen = analysis.params - analysis.trainable_params
    memory = analysis.activation_bytes
    smallest = minimum_input_size(graph)
    if smallest is not None:
        inputs += f" (smallest valid H×W: {smallest[0]}×{smallest[1]})"
    lines += [
        "",
        f"network     {graph.name} ({graph.task}, {len(graph.nodes)} layers)",
        f"inputs      {inputs}",
        f"outputs     {outputs}",
        f"params      {human(analysis.params)}" + (f", {frozen:,} frozen" if frozen else ""),
        f"MACs        {human(analysis.macs)}",
        "activations "
        + (
            f"{memory / 2**20:.1f} MiB per sample (fp32)"
            if memory is not None
            else "depends on input size"
        ),
    ]
    return "\n".join(lines)


def to_json(network: Network) -> dict:
    """The analysis as JSON-ready data, with top-level `params` and `macs`."""
    analysis, graph = network.analysis, network.graph
    return {
        "name": graph.name,
        "task": graph.task,
        "inputs": {
            name: [d if isinstance(d, int) else str(d) for d in item.shape]
            for name, item in graph.inputs.items()
        },
        "outputs": {name: stats.name for name, stats in analysis.outputs.items()},
        "params": analysis.params,
        "trainable_params": analysis.trainable_params,
        "macs": analysis.macs,
        "activation_bytes": analysis.activation_bytes,
        "min_input_size": _pair_or_none(minimum_input_size(graph)),
        "output_receptive_fields": {
            name: field_json(stats.field) for name, stats in analysis.outputs.items()
        },
        "layers": [layer.to_json() for layer in analysis.layers],
    }


def _pair_or_none(value: tuple[int, int] | None) -> list[int] | None:
    return list(value) if value is not None else None
