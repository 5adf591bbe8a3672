"""The model repository: `REPO/<model>/<version>/model.onnx` (+ `REPO/<model>/config.yaml`).

The layout is defined here alone: the server reads it, and `netc export
--repository` writes into it (`next_version_path`). A version folder is a
number ("01" serves as version "1"); a model name is letters, digits, '_',
'-' and '.', starting with a letter or digit.

Every model loads at start and is warmed up before the server reports ready.
A model that fails to load is UNAVAILABLE with its reason, and the others are
served regardless. `load(name)` (re)reads a model from disk, swapping in the
new versions only once they are ready; `unload(name)` stops serving it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from netc.errors import UserError, did_you_mean
from netc.serving.config import load_config
from netc.serving.errors import ModelNotFound, ModelUnavailable, clip
from netc.serving.events import log_event
from netc.serving.model import ServedModel

MODEL_FILE = "model.onnx"
VERSION = re.compile(r"[0-9]+")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
UNLOADED = "unloaded"


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING
    reason: str = ""


def _versions(folder: Path, policy) -> list[tuple[str, str]]:
    """(version, folder name) of each version the policy selects, oldest first. A version
    is its number ("01" serves as version "1"), as clients ask for it."""
    found = sorted(
        (int(p.name), p.name)
        for p in folder.iterdir()
        if p.is_dir() and VERSION.fullmatch(p.name) and (p / MODEL_FILE).is_file()
    )
    if policy == "latest":
        found = found[-1:]
    elif policy != "all":
        found = [(number, name) for number, name in found if number in policy]
    return [(str(number), name) for number, name in found]


def next_version_path(repository: Path, name: str) -> Path:
    """REPO/NAME/<highest version + 1>/model.onnx, where a new version of `name` goes."""
    if not MODEL_NAME.fullmatch(name):
        raise UserError(f"model name '{name}' must be letters, digits, '_', '-', '.'")
    folder = Path(repository) / name
    versions = (
        [int(p.name) for p in folder.iterdir() if VERSION.fullmatch(p.name)]
        if folder.is_dir()
        else []
    )
    return folder / str(max(versions, default=0) + 1) / MODEL_FILE


class ModelRepository:
    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"model repository {root} is not a directory")
        self.root = root
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.latest: dict[str, ServedModel] = {}  # each model's newest version, per request
        self.states: dict[str, IndexEntry] = {}
        self.load_failures: dict[str, int] = {}  # failed loads and reloads, per model (metrics)
        self.loading = 0
        # one load or unload of a model at a time, in arrival order: the last request wins
        self.locks: dict[str, asyncio.Lock] = {}
        # called after every load/unload (the server keeps grpc.health.v1 in step)
        self.on_change: list[Callable[[], Awaitable[None]]] = []

    async def _changed(self) -> None:
        for listener in self.on_change:
            await listener()

    def names(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    async def load_all(self) -> None:
        for name in self.names():  # listed once: each is a folder of the repository
            await self._load_locked(name, self.root / name)

    def _folder(self, name: str) -> Path:
        """The model's folder: only a top-level folder of the repository is a model, so a
        name never reaches a path elsewhere ('../x', '/tmp/x', './x', 'x/1')."""
        names = self.names()
        if name not in names:
            hint = did_you_mean(name, names) if len(name) <= 100 else ""
            raise ModelNotFound(
                f"no model '{clip(name, 100)}' in the repository {self.root}"
                + (f" ({hint})" if hint else "")
            )
        return self.root / name

    def _lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> None:
        """(Re)load every version the model's policy selects; keep serving the old ones
        until the new ones are warmed up."""
        await self._load_locked(name, self._folder(name))

    async def _load_locked(self, name: str, folder: Path) -> None:
        async with self._lock(name):
            try:
                await self._load(name, folder)
            finally:
                await self._changed()

    async def _load(self, name: str, folder: Path) -> None:
        self.loading += 1
        self.states[name] = IndexEntry(name, "", "LOADING")
        loaded: dict[str, ServedModel] = {}
        started = time.perf_counter()
        action = "reload" if name in self.models else "load"
        try:
            config = load_config(folder)
            versions = _versions(folder, config.version_policy)
            if not versions:
                wanted = config.version_policy
                which = (
                    f"versions {', '.join(map(str, wanted))} (its version_policy)"
                    if isinstance(wanted, tuple)
                    else "version"
                )
                raise UserError(f"model '{name}': no {which} folder with {MODEL_FILE} in {folder}")
            for version, subfolder in versions:
                model = await asyncio.to_thread(
                    ServedModel, name, version, folder / subfolder / MODEL_FILE, config
                )
                await asyncio.to_thread(model.warm_up)
                model.start()
                loaded[version] = model
        except Exception as exc:  # never left LOADING: a failure is the model's state
            if isinstance(exc, UserError):
                reason = str(exc)
            else:
                logging.getLogger("netc.serving").exception("loading model %s", name)
                reason = f"internal error: {type(exc).__name__}: {exc}"
            for model in loaded.values():  # versions started before the failure
                await model.close()
            log_event("failure", model=name, action=action, reason=reason)
            self.load_failures[name] = self.load_failures.get(name, 0) + 1
            if name in self.models:  # a failed reload: the versions already loaded serve on
                reason = f"reload failed, still serving the loaded versions: {reason}"
                self.states[name] = IndexEntry(name, self.latest[name].version, "READY", reason)
            else:
                self.states[name] = IndexEntry(name, "", "UNAVAILABLE", reason)
            return
        finally:
            self.loading -= 1
        old = self.models.get(name, {})
        self.models[name] = loaded
        newest = max(loaded, key=int)
        self.latest[name] = loaded[newest]
        self.states[name] = IndexEntry(name, newest, "READY")
        for model in old.values():
            await model.close()
        seconds = time.perf_counter() - started
        log_event(action, model=name, version=",".join(sorted(loaded, key=int)), seconds=seconds)

    async def unload(self, name: str) -> None:
        if name not in self.models and name not in self.states:
            raise ModelNotFound(f"no model '{clip(name, 100)}' is loaded")
        async with self._lock(name):  # after a load in progress, not under it
            self.latest.pop(name, None)
            versions = self.models.pop(name, {})
            for model in versions.values():
                await model.close()
            if versions:
                log_event("unload", model=name)
            self.states[name] = IndexEntry(name, "", "UNAVAILABLE", UNLOADED)
        await self._changed()

    async def close(self) -> None:
        self.latest.clear()
        for name in list(self.models):
            for model in self.models.pop(name).values():
                await model.close()

    def ready(self) -> bool:
        """Every model the server should serve is loaded (an explicit unload does not count)."""
        return self.loading == 0 and all(
            e.state == "READY" or e.reason == UNLOADED for e in self.states.values()
        )

    def index(self) -> list[IndexEntry]:
        entries = []
        for name in sorted(set(self.names()) | set(self.states)):
            if name in self.models:
                state = self.states.get(name)
                reason = state.reason if state is not None and state.state == "READY" else ""
                entries += [
                    IndexEntry(name, v, "READY", reason) for v in sorted(self.models[name], key=int)
                ]
            else:
                entries.append(
                    self.states.get(name, IndexEntry(name, "", "UNAVAILABLE", "not loaded"))
                )
        return entries

    def get(self, name: str, version: str = "") -> ServedModel:
        """The model version to run; NOT_FOUND / UNAVAILABLE errors say what exists."""
        if not version and (model := self.latest.get(name)) is not None:
            return model
        versions = self.models.get(name)
        if versions is None:
            if name in self.states:
                state = self.states[name]
                raise ModelUnavailable(
                    f"model '{name}' is {state.state.lower()}"
                    + (f": {state.reason}" if state.reason else "")
                )
            hint = did_you_mean(name, self.models)
            known = ", ".join(sorted(self.models)) or "(none)"
            raise ModelNotFound(
                f"unknown model '{name}'; the repository serves {known}"
                + (f" ({hint})" if hint else "")
            )
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; loaded versions: "
                f"{', '.join(sorted(versions, key=int))}"
            )
        return versions[version]
