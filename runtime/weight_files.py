"""Read the tensors of a weights file, whatever wrote it, into one flat name → tensor dict.

- a run directory, or a netc checkpoint (`.pt` written by `netc train`): its `model`;
- a PyTorch file (`.pth`, `.pt`, `.bin`, ...), read by `torch.load(weights_only=True)`:
  a state_dict, or one under `state_dict`, `model` or `state_dict_ema` (timm's and
  most training scripts' checkpoints);
- `.safetensors`: every tensor in it;
- `.onnx`: the graph's initializers (netc's and torch.onnx's carry the state_dict's names).

`weights_only=True` because a `.pth` from elsewhere is a pickle that could run
anything on load. The `module.` prefix DDP adds and the `_orig_mod.` prefix of
`torch.compile` are taken off when every key has it. Names are not mapped to
netc's here: that is `netc.runtime.weight_layouts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netc.errors import UserError
from netc.runtime import checkpoint

NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
"""Where training scripts keep the weights inside a larger checkpoint dict, in the order tried."""

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class WeightFile:
    """The tensors of a file, by name, and what kind of file they came from."""

    path: Path
    kind: str  # "netc checkpoint", "PyTorch state_dict", "safetensors", "ONNX initializers"
    tensors: dict[str, torch.Tensor]


def read_weights(source: str | Path) -> WeightFile:
    """The named tensors of `source` (see the module docstring); UserError naming the file
    when it cannot be read or holds no tensors."""
    path = Path(source)
    if path.is_dir():
        return WeightFile(path, "netc checkpoint", checkpoint.load(path)["model"])
    if not path.is_file():
        raise UserError(f"no such weights file or run directory: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = _read_safetensors(path)
        kind = "safetensors"
    elif suffix == ".onnx":
        tensors = _read_onnx(path)
        kind = "ONNX initializers"
    else:
        loaded = _torch_load(path)
        if isinstance(loaded, dict) and loaded.get("format") == checkpoint.FORMAT:
            return WeightFile(path, "netc checkpoint", checkpoint.checked(loaded, path)["model"])
        tensors, kind = _state_dict(loaded, path), "PyTorch state_dict"
    if not tensors:
        raise UserError(f"{path} holds no tensors ({kind})")
    return WeightFile(path, kind, _unwrapped(tensors))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path} is not a PyTorch weights file torch.load can read with "
            f"weights_only=True ({_first_line(exc)})\n"
            "  hint: save plain tensors (torch.save(model.state_dict(), path)), "
            "or a .safetensors or .onnx file"
        ) from None


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded PyTorch file: the dict itself, or the first nested one."""
    if _is_state_dict(loaded):
        return dict(loaded)
    if isinstance(loaded, dict):
        for key in NESTED_KEYS:
            if _is_state_dict(loaded.get(key)):
                return dict(loaded[key])
        keys = ", ".join(repr(k) for k in list(loaded)[:8]) + (", ..." if len(loaded) > 8 else "")
        raise UserError(
            f"{path} is a dict without a state_dict in it (its keys: {keys}; looked for a "
            f"dict of tensors at the top or under {', '.join(NESTED_KEYS)})"
        )
    raise UserError(
        f"{path} holds a {type(loaded).__name__}, not a state_dict (a dict of name → tensor)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a readable .safetensors file ({_first_line(exc)})"
        ) from None


def _read_onnx(path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, missing external data, ...
        raise UserError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
    tensors = {}
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype.kind == "f":  # fp16 exports load into the fp32 module
            array = array.astype(np.float32)
        tensors[initializer.name] = torch.from_numpy(np.array(array))
    return tensors


def _unwrapped(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the prefix DDP (`module.`) or torch.compile (`_orig_mod.`) put on every key."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in tensors):
                tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
                changed = True
    return tensors
