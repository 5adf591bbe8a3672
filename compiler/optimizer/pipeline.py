"""The optimizer pipeline: the ordered list of passes, and running it with reports."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass, PassReport
from netc.compiler.optimizer.passes.affine_fold import AffineFolding
from netc.compiler.optimizer.passes.cleanup import (
    DeadNodeRemoval,
    DropoutRemoval,
    DuplicateInitializerRemoval,
    IdentityElimination,
)
from netc.compiler.optimizer.passes.constant_fold import ConstantFolding, LargeConstantFolding
from netc.compiler.optimizer.passes.conv_bn import ConvBatchNormFusion
from netc.compiler.optimizer.passes.cse import CommonSubexpressionElimination
from netc.compiler.optimizer.passes.pad_fold import PadFolding
from netc.compiler.optimizer.passes.pool_avg_ahead import AvgPoolAhead
from netc.compiler.optimizer.passes.pool_gap_gemm import GapGemmToConv
from netc.compiler.optimizer.passes.pool_identity import IdentityPoolRemoval
from netc.compiler.optimizer.passes.pool_max_ahead import MaxPoolAhead
from netc.compiler.optimizer.passes.pool_merge import PoolMerge
from netc.compiler.optimizer.passes.redundancy import RedundancyElimination
from netc.compiler.optimizer.passes.shape_fold import ShapeFolding
from netc.compiler.optimizer.shapes import annotate_static_shapes
from netc.errors import InternalError, UserError, did_you_mean

# The table of contents. Order matters: clean-up first, so that Identity chains
# and Dropouts no longer separate a conv from its BN; then shapes and constants
# (shape folding leaves chains of constants that constant folding evaluates, and
# no-op nodes show only once their inputs are constants); folds next (BN before
# the plain Mul/Add folds, which then see a conv with its BN gone); repeated nodes
# are merged after the folds, since a conv whose output two BNs read can fold
# neither; dead code last, since every fold leaves old parameters behind.
PIPELINE: list[type[OptimizerPass]] = [
    IdentityElimination,
    DropoutRemoval,
    ShapeFolding,
    ConstantFolding,
    LargeConstantFolding,  # flag fold_large_constants
    RedundancyElimination,
    ConvBatchNormFusion,
    AffineFolding,
    PadFolding,
    CommonSubexpressionElimination,
    IdentityPoolRemoval,
    PoolMerge,
    AvgPoolAhead,
    MaxPoolAhead,  # flag maxpool_ahead
    GapGemmToConv,  # flag fully_convolutional
    DeadNodeRemoval,
    DuplicateInitializerRemoval,
]


def flags(passes: Sequence[type[OptimizerPass]] | None = None) -> list[str]:
    """The --enable flags the passes understand."""
    return sorted({p.flag for p in (PIPELINE if passes is None else passes) if p.flag})


def selected(
    enable: Collection[str] = frozenset(), passes: Sequence[type[OptimizerPass]] | None = None
) -> list[type[OptimizerPass]]:
    """The passes that run: every pass without a flag, and those whose flag is enabled."""
    passes = PIPELINE if passes is None else passes
    known = flags(passes)
    for flag in enable:
        if flag not in known:
            hint = did_you_mean(flag, known)
            raise UserError(
                f"unknown optimizer flag {flag!r} (known: {', '.join(known) or 'none'})"
                + (f"; {hint}" if hint else "")
            )
    return [p for p in passes if p.flag is None or p.flag in enable]


def run_pipeline(
    model: ir.Model,
    *,
    enable: Collection[str] = frozenset(),
    passes: Sequence[type[OptimizerPass]] | None = None,
    static_input_shapes: Mapping[str, Sequence[int]] | None = None,
    after_each: Callable[[OptimizerPass, ir.Model], None] | None = None,
) -> list[PassReport]:
    """Run the selected passes in order on `model` (in place); one report per pass.

    `static_input_shapes` fixes the input sizes at which MACs saved are
    counted (see `shapes`). `after_each(pass, model)` runs after every pass:
    a verifier in tests, the search for a faulty pass in `api`. A pass that
    raises becomes an InternalError "pass X failed after [A, B]".
    """
    if static_input_shapes:
        annotate_static_shapes(model, static_input_shapes)
    reports: list[PassReport] = []
    for cls in selected(enable, passes):
        instance = cls()
        before = model.graph.num_nodes()
        try:
            result = instance(model)
            if after_each is not None:
                after_each(instance, model)
        except UserError:
            raise
        except Exception as exc:
            done = [r.name for r in reports]
            what = f"{type(exc).__name__}: {exc}"
            raise InternalError(
                f"pass {instance.name} failed after [{', '.join(done)}]: {what}"
            ) from exc
        reports.append(
            PassReport(
                name=instance.name,
                modified=result.modified,
                nodes_before=before,
                nodes_after=model.graph.num_nodes(),
                macs_saved=instance.macs_saved,
                notes=list(instance.notes),
                refusals=list(instance.refusals),
            )
        )
    return reports
