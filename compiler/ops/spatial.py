"""Size rules shared by sliding-window ops (PyTorch's formulas, exactly)."""

from __future__ import annotations

from netc.compiler import symbolic as sym
from netc.compiler.ops.base import ShapeError
from netc.compiler.symbolic import Dim

AXES = ("height", "width")


def resolve_padding(padding, kernel, dilation, stride) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right).

    'same' pads d·(k-1) in total, the extra pixel of an even kernel at the end
    (PyTorch's rule); it keeps the size only at stride 1.
    """
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ShapeError(
                "padding 'same' needs stride 1",
                found=f"stride {list(stride)}",
                hint="give the padding explicitly, e.g. padding: (kernel - 1) // 2",
                attr="padding",
            )
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    return (padding[0], padding[1], padding[0], padding[1])


def window_out(
    size: Dim,
    kernel: int,
    stride: int,
    dilation: int,
    pad_begin: int,
    pad_end: int,
    ceil_mode: bool,
    axis: str,
) -> Dim:
    """floor-or-ceil((size + pads - d·(k-1) - 1) / s) + 1, checked."""
    span = dilation * (kernel - 1) + 1
    padded = sym.add(size, pad_begin + pad_end)
    # ceil_mode lets the one window hang over the end by up to stride - 1 pixels
    least = span - (stride - 1 if ceil_mode else 0)
    if isinstance(padded, int) and padded < least:
        rule = f"kernel {kernel}, dilation {dilation}" + (
            f", stride {stride} with ceil_mode" if ceil_mode else ""
        )
        raise ShapeError(
            f"kernel is larger than its padded input along the {axis}",
            expected=f"a padded {axis} of at least {least} ({rule})",
            found=f"{padded} (input {size} + padding {pad_begin + pad_end})",
            hint="lower the kernel or stride earlier, or give a larger input",
            attr="kernel",
        )
    reach = sym.add(padded, -span)
    if not ceil_mode:
        return sym.add(sym.floordiv(reach, stride), 1)
    out = sym.add(sym.ceildiv(reach, stride), 1)
    # PyTorch drops a last window that would start inside the end padding.
    if isinstance(out, int):
        return out - 1 if (out - 1) * stride >= sym.evaluate(size, {}) + pad_begin else out
    drops = {
        ((sym.evaluate(out, env) - 1) * stride >= sym.evaluate(size, env) + pad_begin)
        for n in sym.SAMPLE_SIZES
        for env in [dict.fromkeys(sym.variables(size), n)]
    }
    if drops == {False}:
        return out
    raise ShapeError(
        f"ceil_mode with this stride and padding gives an output {axis} that depends on "
        "the input's parity, which an open input size cannot express",
        hint="fix the input size, or use padding 0 or ceil_mode: false",
    )


def check_positive(size: Dim, what: str) -> Dim:
    if isinstance(size, int) and size <= 0:
        raise ShapeError(
            f"{what} would be empty",
            expected="an output size >= 1",
            found=f"{size}",
        )
    return size
