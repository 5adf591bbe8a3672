"""What every op definition provides, and the error its rules raise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netc.compiler.ops.attrs import Attr
from netc.compiler.symbolic import Dim

Shape = tuple[Dim, ...]
Attrs = dict[str, Any]


class ShapeError(ValueError):
    """A size rule failed; lowering adds the layer name and location.

    `attr` names the attribute at fault, if one is: the error then points at its
    value in the description rather than at the layer's name.
    """

    def __init__(
        self,
        message: str,
        *,
        expected: str | None = None,
        found: str | None = None,
        hint: str | None = None,
        attr: str | None = None,
    ) -> None:
        self.message, self.expected, self.found, self.hint = message, expected, found, hint
        self.attr = attr
        super().__init__(message)


def no_params(attrs: Attrs, inputs: list[Shape]) -> dict[str, tuple[int, ...]]:
    return {}


def no_macs(attrs: Attrs, inputs: list[Shape], output: Shape) -> int:
    return 0


def keep_attrs(attrs: Attrs) -> Attrs:
    return attrs


@dataclass(frozen=True)
class OpDef:
    """One op of the closed set.

    - `infer(attrs, input_shapes) -> output shape`, raising ShapeError.
    - `params`/`buffers(attrs, input_shapes) -> {name: shape}`: learned tensors
      and running statistics, in the order PyTorch and ONNX see them.
    - `macs(attrs, input_shapes, output_shape)`: multiply-accumulates for one
      sample, on static shapes (torchvision counts conv and fc only).
    - `rf`: how it moves the receptive field: 'window' (attrs kernel, stride,
      dilation, padding), 'pointwise', 'transpose', 'upsample', 'global',
      'merge', 'crop', 'flatten', 'dense'.
    - `normalize(attrs) -> attrs`: defaults that depend on other attributes.
    """

    name: str
    doc: str
    attrs: dict[str, Attr]
    infer: Callable[[Attrs, list[Shape]], Shape]
    rf: str
    min_inputs: int = 1
    max_inputs: int | None = 1
    params: Callable[[Attrs, list[Shape]], dict[str, tuple[int, ...]]] = no_params
    buffers: Callable[[Attrs, list[Shape]], dict[str, tuple[int, ...]]] = no_params
    macs: Callable[[Attrs, list[Shape], Shape], int] = no_macs
    normalize: Callable[[Attrs], Attrs] = keep_attrs
    tags: frozenset[str] = field(default_factory=frozenset)


def require_rank(shape: Shape, rank: int, what: str) -> None:
    if len(shape) != rank:
        kinds = {2: "a vector (N, F)", 4: "a feature map (N, C, H, W)"}
        raise ShapeError(
            f"{what} needs {kinds.get(rank, f'rank {rank}')} input",
            expected=kinds.get(rank, f"rank {rank}"),
            found=f"shape {format_shape(shape)}",
            hint="add a flatten layer before fc" if rank == 2 else None,
        )


def format_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
