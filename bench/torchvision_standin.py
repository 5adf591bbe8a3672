"""Just enough of torchvision's API for `import timm` to succeed, for bench/optimize.py.

torchvision does not import with the pinned torch 2.13.0, and timm imports it at
module level (for FrozenBatchNorm2d, its data transforms and datasets) though
creating and exporting a model never calls any of it. `install()` registers
small modules under the torchvision names in sys.modules; everything in them
that the model zoo does not use raises when called, so a bench that needed the
real torchvision would fail loudly instead of computing something else.
"""

from __future__ import annotations

import enum
import sys
import types

import torch


class FrozenBatchNorm2d(torch.nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d: BN with fixed statistics (timm's freeze helpers)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _unavailable(name: str) -> type:
    """A class (timm subclasses some transforms) that raises when anything makes one."""

    def missing(self, *args, **kwargs):
        raise RuntimeError(f"torchvision.{name} is not available (bench/torchvision_standin.py)")

    return type(name.rsplit(".", 1)[-1], (), {"__init__": missing})


class _Module(types.ModuleType):
    """A module whose unknown attributes are classes that raise when instantiated."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _unavailable(f"{self.__name__.removeprefix('torchvision.')}.{attr}")


def install() -> None:
    """Register the stand-in as `torchvision` unless the real one imports."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        pass
    names = (
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.misc",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.datasets",
        "torchvision.utils",
        "torchvision.models",
        "torchvision.models.feature_extraction",
    )
    for name in names:
        module = _Module(name)
        module.__path__ = []  # a package, so submodule imports resolve through sys.modules
        sys.modules[name] = module
    sys.modules["torchvision"].__version__ = "0.0+netc-bench-standin"
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    for name in ("torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules[name].InterpolationMode = InterpolationMode
    for parent, child in (
        ("torchvision", "ops"),
        ("torchvision.ops", "misc"),
        ("torchvision", "transforms"),
        ("torchvision.transforms", "functional"),
        ("torchvision", "datasets"),
        ("torchvision", "utils"),
        ("torchvision", "models"),
        ("torchvision.models", "feature_extraction"),
    ):
        setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])
