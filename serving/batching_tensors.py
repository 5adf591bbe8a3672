"""A batch's tensors: requests' inputs merged along the batch dimension, the model's
outputs split back into each request's share, and what an input weighs in bytes.

Plain functions over name → array dicts, apart from the queue (serving/batcher.py).
They hold for every dtype the server decodes, object arrays of strings (BYTES) too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

Tensors = dict[str, np.ndarray]


class CheckedRequest(NamedTuple):
    """A request's inputs once checked against its model, as the batcher takes them:
    every way a request is decoded (`ServedModel.checked`, `ServedModel.check`,
    `serving.tensors.common_request`) ends in one of these."""

    inputs: Tensors
    batch: int  # rows along the batch dimension (1 for a model that does not batch)
    key: tuple  # requests with equal keys can share a batch: (input name, item dims) pairs


def merge(requests: Sequence[Tensors]) -> Tensors:
    """Each input of `requests` concatenated along the batch dimension, in order. The
    requests share a batching key: the same input names, non-batch dims and dtypes."""
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split(outputs: Tensors, sizes: Sequence[int]) -> list[Tensors]:
    """`outputs` of a merged batch cut into one dict per request, request i getting the
    next `sizes[i]` rows of every output (views, not copies)."""
    results, offset = [], 0
    for size in sizes:
        end = offset + size
        results.append({name: value[offset:end] for name, value in outputs.items()})
        offset = end
    return results


def array_nbytes(array: np.ndarray) -> int:
    """What an input holds: for strings (an object array) the text too, not only the
    pointers, so the queue's byte bound counts a megabyte string as a megabyte."""
    if array.dtype != np.object_:
        return array.nbytes
    return array.nbytes + sum(len(item) for item in array.flat)
