"""Writing files so that readers never see half of one."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from netc.errors import UserError

EMPTY = "the output path is empty"
GIVE_A_NAME = "give a file name, e.g. -o model.onnx"


def output_path(text: str) -> Path:
    """An argparse type for -o: Path('') is Path('.'), so an empty path is refused while it
    is still a string."""
    if not text:
        raise argparse.ArgumentTypeError(f"{EMPTY}: {GIVE_A_NAME}")
    return Path(text)


def check_output(path: str | Path) -> Path:
    """The path a write may replace, or a UserError saying why not (before any work)."""
    if not str(path):
        raise UserError(f"{EMPTY}: {GIVE_A_NAME}")
    if str(path) == ".":  # what Path('') reads as: -o '' arrives here as '.'
        raise UserError(f"{EMPTY} (or '.', the current folder): {GIVE_A_NAME}")
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device, a pipe: never replaced
        raise UserError(f"cannot write {path}: it exists and is not a regular file")
    return path


def write_atomic(
    path: str | Path,
    data: bytes | Iterable[bytes | memoryview],
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Write `data` (bytes, or pieces written one after another: a large model need not
    be joined first) to a temporary file beside `path`, fsync, then rename over it. A failure
    (no permission, no space, a file where a folder should be) is a UserError naming
    the path, and leaves no new empty folder behind. `before_rename()` runs between the
    fsync and the rename; if it raises, nothing is written (a write that waits on a check
    running meanwhile)."""
    path = check_output(path)
    created = _first_missing(path.parent)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp makes the file 0600; give it the mode a plain open() would (or the mode
        # of the file it replaces), so a server running as another user can read it.
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except OSError as exc:
        _clean_up(tmp, path.parent, created)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _clean_up(tmp, path.parent, created)
        raise


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet, if any."""
    missing = None
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing = parent
    return missing


def _clean_up(tmp: str | None, folder: Path, created: Path | None) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    if created is None:
        return
    for made in (folder, *folder.parents):  # the folders this write made, innermost first
        try:
            made.rmdir()  # only if empty
        except OSError:
            return
        if made == created:
            return


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
