"""The model repository: `REPO/<model>/<version>/model.onnx` (+ `REPO/<model>/config.yaml`).

The layout is defined here alone: the server reads it, and `netc export
--repository` writes into it (`next_version_path`). A version folder is a
number ("01" serves as version "1"); a model name is letters, digits, '_',
'-' and '.', starting with a letter or digit.

A model's life (tests/serving/test_lifecycle.py):
1. A version counts once its model file is complete: `netc export --repository`
   writes beside it and renames (netc.fileio.write_atomic), and `--poll` loads a
   model only once its files stood still for one poll (serving/server.py).
2. load: the new versions load and warm up while the old ones serve; the swap is
   one assignment, so a request finds the old version or the new, never neither.
   Requests queued on the old versions finish there; the old ones close after their
   last request (`_retire`).
3. A load that fails keeps the versions already serving, and says so: `load` raises
   with the reason, the index carries it, the log has it. Under the `latest` policy
   a model not serving yet falls back to the newest version that loads.
4. unload: stop serving, let queued requests finish, close, and give the freed
   memory back to the system (`trim_memory`).

Clients read model names and paths inside the repository, never the server's own
path (`_public`); the server's log has the whole story.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from netc.errors import UserError, did_you_mean
from netc.serving.config import ModelConfig, load_config
from netc.serving.errors import ModelNotFound, ModelUnavailable, clip
from netc.serving.events import log_event
from netc.serving.model import ServedModel

MODEL_FILE = "model.onnx"
VERSION = re.compile(r"[0-9]+")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
UNLOADED = "unloaded"
RETIRE_DRAIN_S = 60.0  # a replaced version's queued requests may finish for this long
QUIET_S = 0.25  # stopping, gRPC stops once no request was refused for this long

log = logging.getLogger("netc.serving")


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING
    reason: str = ""


def _versions(folder: Path, policy) -> list[tuple[str, str]]:
    """(version, folder name) of each version the policy selects, oldest first; every
    version for `latest`, which takes the newest that loads. A version is its number
    ("01" serves as version "1"), as clients ask for it."""
    found = sorted(
        (int(p.name), p.name)
        for p in folder.iterdir()
        if p.is_dir() and VERSION.fullmatch(p.name) and (p / MODEL_FILE).is_file()
    )
    if policy not in ("latest", "all"):
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


def _model_folder_files(root: Path) -> list[str]:
    """What makes `root` look like one model's folder rather than a repository: a model
    file of its own, or version folders holding one."""
    found = [MODEL_FILE] if (root / MODEL_FILE).is_file() else []
    found += sorted(
        f"{p.name}/{MODEL_FILE}"
        for p in root.iterdir()
        if p.is_dir() and VERSION.fullmatch(p.name) and (p / MODEL_FILE).is_file()
    )
    return found


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_memory() -> None:
    """Give memory freed by closed sessions back to the system. glibc keeps freed arenas
    for reuse, and an onnxruntime session's are large: resnet18's server grew 31 MiB with
    each load/unload cycle until malloc_trim(0) brought it back (issue 11)."""
    gc.collect()  # what still holds a closed session holds it in a reference cycle
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


async def _close(models: list[ServedModel], drain_s: float | None = None) -> None:
    """Close the models (their queued requests finish first, for up to `drain_s`), forget
    them, and give their memory back. The list is emptied: nothing here holds them on."""
    await asyncio.gather(*(m.close() if drain_s is None else m.close(drain_s) for m in models))
    models.clear()
    trim_memory()


class ModelRepository:
    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"model repository {root} is not a directory")
        if found := _model_folder_files(root):
            parent = root.parent if root.name else root.absolute().parent
            raise UserError(
                f"{root} is one model's folder (it holds {', '.join(found[:3])}), not a "
                f"repository of models; serve the folder above it: --repository {parent}"
            )
        self.root = root
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.latest: dict[str, ServedModel] = {}  # each model's newest version, per request
        self.states: dict[str, IndexEntry] = {}
        self.load_failures: dict[str, int] = {}  # failed loads and reloads, per model (metrics)
        self.loading: set[str] = set()  # models with a load in progress
        self.stopping = False  # the server is shutting down: not ready, requests refused
        self.refused_at = -math.inf  # time.monotonic() of the last request refused so
        self.retiring: set[asyncio.Task] = set()  # replaced versions finishing their requests
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
        names = self.names()
        if not names:
            log.warning(
                "warning: the model repository %s holds no models (expected "
                "%s/<model>/<version>/%s); serving none until one is added",
                self.root,
                self.root,
                MODEL_FILE,
            )
        for name in names:  # listed once: each is a folder of the repository
            await self._load_locked(name, self.root / name, None)

    def _public(self, text: str) -> str:
        """`text` as a client may read it: paths inside the repository relative to it, the
        server's own path never."""
        absolute = {str(self.root.resolve()), str(self.root.absolute())}
        for root in sorted(absolute, key=len, reverse=True):
            text = text.replace(root + os.sep, "").replace(root, "the repository")
        return text.replace(str(self.root) + os.sep, "")

    def folder(self, name: str) -> Path:
        """The model's folder: only a top-level folder of the repository is a model, so a
        name never reaches a path elsewhere ('../x', '/tmp/x', './x', 'x/1')."""
        names = self.names()
        if name not in names:
            hint = did_you_mean(name, names) if len(name) <= 100 else ""
            raise ModelNotFound(
                f"no model '{clip(name, 100)}' in the repository" + (f" ({hint})" if hint else "")
            )
        return self.root / name

    def _lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str, config: ModelConfig | None = None) -> None:
        """(Re)load every version the model's policy selects, with `config` instead of its
        config.yaml when given; the old versions serve until the new ones are warmed up.
        A failure raises ModelUnavailable with the reason (the versions already loaded
        serve on; the index says so too)."""
        failed = await self._load_locked(name, self.folder(name), config)
        if failed:
            raise ModelUnavailable(failed)

    async def _load_locked(self, name: str, folder: Path, config: ModelConfig | None) -> str:
        async with self._lock(name):
            try:
                return await self._load(name, folder, config)
            finally:
                await self._changed()

    async def _load(self, name: str, folder: Path, override: ModelConfig | None) -> str:
        """Load and swap in the model's versions; "" or, for the client, why not."""
        serving = self.models.get(name)
        if serving is None:
            self.states[name] = IndexEntry(name, "", "LOADING")
        self.loading.add(name)
        started = time.perf_counter()
        try:
            config = override if override is not None else load_config(folder)
            loaded, failed = await self._load_versions(name, folder, config, serving is None)
        except Exception as exc:  # never left LOADING: a failure is the model's state
            loaded, failed = {}, self._reason(name, exc)
        finally:
            self.loading.discard(name)
        action = "reload" if serving else "load"
        if failed:  # the log has the server's paths, clients do not
            log_event("failure", model=name, action=action, reason=failed)
            self.load_failures[name] = self.load_failures.get(name, 0) + 1
            failed = self._public(failed)
        if not loaded:
            if serving:
                reason = f"reload failed, still serving the loaded versions: {failed}"
                self.states[name] = IndexEntry(name, self.latest[name].version, "READY", reason)
                return f"model '{name}': {reason}"
            self.states[name] = IndexEntry(name, "", "UNAVAILABLE", failed)
            return f"model '{name}' is unavailable: {failed}"
        newest = max(loaded, key=int)
        self.states[name] = IndexEntry(name, newest, "READY", failed)
        self._swap(name, loaded)
        seconds = time.perf_counter() - started
        log_event(action, model=name, version=",".join(sorted(loaded, key=int)), seconds=seconds)
        return f"model '{name}': {failed}" if failed else ""

    async def _load_versions(
        self, name: str, folder: Path, config: ModelConfig, fall_back: bool
    ) -> tuple[dict[str, ServedModel], str]:
        """The started versions, and why the one asked for is not among them (or "").
        `latest` takes the newest version; one that fails falls back to the next newest
        when `fall_back` (the model serves nothing yet)."""
        policy = config.version_policy
        versions = _versions(folder, policy)
        if not versions:
            which = (
                f"versions {', '.join(map(str, policy))} (its version_policy)"
                if isinstance(policy, tuple)
                else "version"
            )
            raise UserError(f"model '{name}': no {which} folder with {MODEL_FILE} in {name}/")
        if policy != "latest":
            loaded: dict[str, ServedModel] = {}
            try:
                for version, subfolder in versions:
                    loaded[version] = await self._start(name, version, folder / subfolder, config)
            except BaseException:
                for model in loaded.values():  # versions started before the failure
                    await model.close()
                raise
            return loaded, ""
        failures: list[str] = []
        for version, subfolder in reversed(versions):
            try:
                model = await self._start(name, version, folder / subfolder, config)
            except Exception as exc:  # the newest that loads serves
                failures.append(self._reason(name, exc))
                if fall_back:
                    continue
                return {}, failures[0]
            if not failures:
                return {version: model}, ""
            newest = versions[-1][0]
            return {version: model}, (
                f"version {newest} does not load, serving version {version}, the newest "
                f"that does: {failures[0]}"
            )
        return {}, failures[0]

    async def _start(
        self, name: str, version: str, folder: Path, config: ModelConfig
    ) -> ServedModel:
        model = await asyncio.to_thread(ServedModel, name, version, folder / MODEL_FILE, config)
        await asyncio.to_thread(model.warm_up)
        model.start()
        return model

    def _reason(self, name: str, exc: Exception) -> str:
        """Why a load failed (an unexpected exception logged with its traceback)."""
        if isinstance(exc, UserError):
            return str(exc)
        log.error("loading model %s", name, exc_info=exc)
        return f"internal error: {type(exc).__name__}: {exc}"

    def _swap(self, name: str, loaded: dict[str, ServedModel]) -> None:
        """Serve `loaded` from now on; the versions it replaces finish their requests."""
        old = self.models.get(name, {})
        self.models[name] = loaded
        self.latest[name] = loaded[max(loaded, key=int)]
        for model in old.values():
            self._retire(model)

    def _retire(self, model: ServedModel) -> None:
        """Close a replaced version once its queued requests are answered, in the background:
        the next load need not wait for them."""

        task = asyncio.create_task(_close([model], RETIRE_DRAIN_S))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def unload(self, name: str) -> None:
        if name not in self.models and name not in self.states:
            raise ModelNotFound(f"no model '{clip(name, 100)}' is loaded")
        async with self._lock(name):  # after a load in progress, not under it
            self.latest.pop(name, None)
            versions = list(self.models.pop(name, {}).values())
            if versions:
                await _close(versions)
                log_event("unload", model=name)
            self.states[name] = IndexEntry(name, "", "UNAVAILABLE", UNLOADED)
        await self._changed()

    async def drain(self, deadline: float) -> None:
        """Wait until no model has had a request queued or running, and no request was
        refused, for `QUIET_S` (a client whose answer just came may be sending its next
        request: refused here, it reads UNAVAILABLE), or until the event loop's clock reads
        `deadline`. The server is stopping: no request joins a queue now."""
        loop = asyncio.get_running_loop()
        busy_at = time.monotonic()
        while loop.time() < deadline:
            now = time.monotonic()
            if any(m.busy() for versions in self.models.values() for m in versions.values()):
                busy_at = now
            if now - max(busy_at, self.refused_at) >= QUIET_S:
                return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Close every model (their queued requests finish first) and what is retiring."""
        self.latest.clear()
        versions = [m for name in list(self.models) for m in self.models.pop(name).values()]
        await asyncio.gather(_close(versions), *self.retiring)

    def ready(self) -> bool:
        """Every model the server should serve is served: one being reloaded serves on its
        loaded versions; one loading for the first time, or that failed to, is not ready (an
        explicit unload does not count). False once the server is stopping."""
        if self.stopping:
            return False
        return all(
            name in self.models or entry.reason == UNLOADED for name, entry in self.states.items()
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
        if self.stopping:
            self.refused_at = time.monotonic()
            raise ModelUnavailable("the server is shutting down; send the request elsewhere")
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
            # Triton's words: clients match on "Request for unknown model"
            raise ModelNotFound(
                f"Request for unknown model: '{name}' is not found; the repository serves "
                f"{known}" + (f" ({hint})" if hint else "")
            )
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; loaded versions: "
                f"{', '.join(sorted(versions, key=int))}"
            )
        return versions[version]
