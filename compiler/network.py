"""The compiler's public entry point: a description in, a graph and its analysis out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from netc.compiler import zoo
from netc.compiler.analysis import Analysis, analyze
from netc.compiler.expand import expand
from netc.compiler.ir import Graph
from netc.compiler.lower import lower
from netc.compiler.spec import InputSpec, NetworkSpec, parse_network
from netc.errors import SpecError, UserError, did_you_mean
from netc.yaml_loader import load_located


@dataclass(frozen=True)
class Network:
    """A compiled description: its spec, IR graph and analysis."""

    spec: NetworkSpec
    graph: Graph
    analysis: Analysis

    @property
    def name(self) -> str:
        return self.graph.name


def load(
    source: str | Path,
    *,
    input_shape: tuple[Any, ...] | None = None,
    params: dict[str, Any] | None = None,
) -> Network:
    """Compile a description file path or zoo name.

    `input_shape` (C, H, W) replaces the first input's shape; `params`
    overrides network parameters (`num_classes=10`).
    """
    path = Path(source)
    try:
        exists, is_file, is_dir = path.exists(), path.is_file(), path.is_dir()
    except OSError as exc:  # a name longer than the file system allows, ...
        raise UserError(f"{str(source)[:200]}: {exc.strerror or exc}") from None
    # a description's suffix or a folder in the name make it a path; only a bare name may
    # be a zoo name (a zoo hint for runs/lenet would be a wrong answer)
    if path.suffix in (".yaml", ".yml") or exists or path.name != str(source):
        if not is_file:
            problem = (
                "is a directory, not a network file"
                if is_dir
                else "not a regular file"
                if exists
                else "no such file"
            )
            raise UserError(f"{source}: {problem}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read network file {source}: {exc}") from None
        return load_string(text, file=str(source), input_shape=input_shape, params=params)
    try:
        text = zoo.read(str(source))
    except KeyError:
        hint = did_you_mean(str(source), zoo.names())
        raise UserError(
            f"'{source}' is neither a network file nor a zoo network"
            + (f"\n  hint: {hint}" if hint else "\n  hint: `netc zoo` lists the built-in networks")
        ) from None
    return load_string(text, file=f"zoo:{source}", input_shape=input_shape, params=params)


def load_string(
    text: str,
    *,
    file: str = "<string>",
    input_shape: tuple[Any, ...] | None = None,
    params: dict[str, Any] | None = None,
) -> Network:
    """Compile a description given as YAML text."""
    spec = parse_network(load_located(text, file), file)
    if input_shape is not None:
        spec = _with_input_shape(spec, input_shape)
    graph = lower(spec, expand(spec, params), source=text)
    return Network(spec=spec, graph=graph, analysis=analyze(graph))


def _with_input_shape(spec: NetworkSpec, shape: tuple[Any, ...]) -> NetworkSpec:
    first = spec.inputs[0]
    if len(shape) != len(first.dims):
        raise SpecError(
            f"--input-shape for input '{first.name}' has the wrong rank",
            expected=f"{len(first.dims)} sizes",
            found=f"{len(shape)}: {list(shape)}",
        )
    dims = tuple(d if d is not None else default for d, default in zip(shape, (None, "H", "W")))
    return replace(spec, inputs=[InputSpec(first.name, dims, first.loc), *spec.inputs[1:]])
