"""Checkpoints: everything needed to resume a run or export its model.

A checkpoint is one `torch.save`d dict: model, optimizer and scheduler state,
epoch, best metric, RNG state, the network description's text, labels,
preprocessing and training settings. It is written atomically (temporary
file, then rename), so a crash never leaves a half-written `last.pt`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from netc.errors import UserError
from netc.fileio import write_atomic
from netc.runtime.metrics import upgrade_row

FORMAT = 1


REQUIRED = {"model": dict, "description": str, "params": dict}  # what every reader uses


def save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint file, or the best (else last) one of a run directory."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{path} holds no checkpoint (best.pt or last.pt)")
    if not path.is_file():
        raise UserError(f"no such checkpoint or run directory: {path}")
    try:
        # weights_only: tensors, numbers, strings, lists and dicts, never code (a .pt from
        # elsewhere is a pickle that could run anything on load)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable netc checkpoint ({first})") from None
    return checked(state, path)


def checked(state: Any, path: Path) -> dict[str, Any]:
    """`state`, read from `path`, as a netc checkpoint; UserError when it is not one."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a netc checkpoint (format {FORMAT})")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            found = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise UserError(
                f"{path} is not a complete netc checkpoint: '{key}' is {found}, "
                f"expected a {kind.__name__}"
            )
    if isinstance(state.get("history"), list):  # a run from before the val_ names
        state["history"] = [
            upgrade_row(row) if isinstance(row, dict) else row for row in state["history"]
        ]
    return state
