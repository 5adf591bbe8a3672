"""Built-in network descriptions, shipped as YAML files beside this module."""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """The zoo's network names, sorted."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".yaml")
    )


def read(name: str) -> str:
    """The description text of zoo network `name` (KeyError if there is none)."""
    if name not in names():
        raise KeyError(name)
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
