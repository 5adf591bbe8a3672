"""Shared test helpers: one numeric comparison with tolerances at the call site."""

from __future__ import annotations

import numpy as np


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(actual, expected, *, rtol: float, atol: float, what: str = "values") -> None:
    """Elementwise |actual - expected| <= atol + rtol·|expected|, with a useful message."""
    actual, expected = _as_array(actual), _as_array(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    bad = error > bound
    if bad.any():
        worst = np.unravel_index(np.argmax(error - bound), error.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ beyond rtol={rtol}, "
            f"atol={atol}; worst at {worst}: {actual[worst]} vs {expected[worst]}"
        )


def open_classifier(name: str, channels: int, kernel: int) -> str:
    """A classifier whose input H and W are open: conv, ReLU, global pool, fc (10 classes
    when trained on digits, 5 otherwise)."""
    return f"""\
name: {name}
task: classification
inputs:
  image: [{channels}, null, null]
layers:
  - {{name: conv, op: conv, channels: 4, kernel: {kernel}}}
  - {{name: relu, op: relu}}
  - {{name: pool, op: adaptive_avg_pool, output: 1}}
  - {{name: flatten, op: flatten}}
  - {{name: fc, op: fc, units: {10 if channels == 1 else 5}}}
training: {{epochs: 1, batch_size: 64}}
"""
