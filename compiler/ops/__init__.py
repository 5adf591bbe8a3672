"""The closed op set of the netc IR: one `OpDef` per op, registered here by one line."""

from netc.compiler.ops.base import OpDef, ShapeError
from netc.compiler.ops.conv import CONV, CONV_TRANSPOSE
from netc.compiler.ops.pointwise import (
    BATCH_NORM,
    DROPOUT,
    LEAKY_RELU,
    LRN,
    RELU,
    SIGMOID,
    SOFTMAX,
    TANH,
)
from netc.compiler.ops.pool import (
    ADAPTIVE_AVG_POOL,
    ADAPTIVE_MAX_POOL,
    AVG_POOL,
    GLOBAL_AVG_POOL,
    GLOBAL_MAX_POOL,
    MAX_POOL,
    SPP,
)
from netc.compiler.ops.structure import ADD, CONCAT, CROP, FC, FLATTEN, UPSAMPLE

OPS: dict[str, OpDef] = {
    op.name: op
    for op in (
        CONV,
        CONV_TRANSPOSE,
        MAX_POOL,
        AVG_POOL,
        GLOBAL_AVG_POOL,
        GLOBAL_MAX_POOL,
        ADAPTIVE_AVG_POOL,
        ADAPTIVE_MAX_POOL,
        SPP,
        BATCH_NORM,
        LRN,
        RELU,
        LEAKY_RELU,
        SIGMOID,
        TANH,
        SOFTMAX,
        DROPOUT,
        FLATTEN,
        FC,
        CONCAT,
        ADD,
        CROP,
        UPSAMPLE,
    )
}

__all__ = ["OPS", "OpDef", "ShapeError"]
