"""Image files through a netc server: what `netc infer` does, for Python callers too.

```python
from netc.serving.client import VisionClient
from netc.serving.infer import classify_files, find_model, segment_files

with VisionClient("localhost:8001") as client:
    print(find_model(client, "fcn8s").task)  # "segmentation", or a UserError saying why not
    for path, labels in classify_files(client, ["cat.png", "dog.jpg"], "resnet18", top_k=3):
        print(path, labels[0])  # (label, class index, probability), best first
    for done in segment_files(client, ["street.jpg"], "fcn8s", "masks", overlay=True):
        print(done.mask_file, done.classes())  # masks/street_mask.png [("road", 1, 5021), ...]
```

`classify_files` and `segment_files` read every file before their first request (a
file that cannot be read is a `UserError` naming it) and yield each file's result as
its answer arrives; pass `ImageFile`s from `read_files` to read them earlier. Mask
files are palette PNGs (`netc.serving.images.masks`; `read_mask` reads one back).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from netc.errors import UserError, did_you_mean
from netc.fileio import write_atomic
from netc.serving.client import ModelEntry, RequestFailed, VisionClient
from netc.serving.images.decode import decode_encoded
from netc.serving.images.masks import mask_png, overlay_png

FILES_PER_REQUEST = 32
BYTES_PER_REQUEST = 32 << 20  # well inside the server's default 128 MiB message limit


@dataclass(frozen=True)
class ImageFile:
    """A picture file's path and contents, read ahead of the requests that send it."""

    path: Path
    data: bytes


FileLike = Union[str, Path, ImageFile]


def read_files(paths: Iterable[str | Path | ImageFile]) -> list[ImageFile]:
    """Every file read, in order; a UserError names the first that cannot be."""
    files = []
    for path in paths:
        if isinstance(path, ImageFile):
            files.append(path)
            continue
        try:
            files.append(ImageFile(Path(path), Path(path).read_bytes()))
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return files


def find_model(client: VisionClient, name: str, version: str = "") -> ModelEntry:
    """The model `name` as the server serves it (`version`, or its latest when "").

    A UserError otherwise, saying which versions it serves, why the server's repository
    has the model but does not serve it (a load error, an unload), or which models it
    serves, with a 'did you mean'.
    """
    served = client.models()
    entry = next(
        (m for m in reversed(served) if m.name == name and version in ("", m.version)), None
    )
    if entry is not None:
        return entry
    versions = sorted((m.version for m in served if m.name == name), key=int)
    if versions:  # the model is there, the version is not
        raise UserError(
            f"the server at {client.url} has no version {version} of "
            f"'{name}'; it serves version{'s' * (len(versions) > 1)} " + ", ".join(versions)
        )
    _not_ready(client, name)
    names = sorted({m.name for m in served})
    hint = did_you_mean(name, names)
    raise UserError(
        f"the server at {client.url} has no model '{name}'"
        + (f" version {version}" if version else "")
        + f"; it serves {', '.join(names) or 'none'}"
        + (f" ({hint})" if hint else "")
    )


def _not_ready(client: VisionClient, name: str) -> None:
    """Say why the server does not serve the model when its repository has it (a load
    error, an unload): it would otherwise look absent. A server without Triton's
    RepositoryIndex is left to the caller's message."""
    try:
        states = client.states()
    except RequestFailed:
        return
    state = next((s for s in states if s.name == name and s.state != "READY"), None)
    if state is not None:
        raise UserError(
            f"the server at {client.url}: model '{name}' is {state.state}"
            + (f": {state.reason}" if state.reason else "")
        )


def request_chunks(contents: Sequence[bytes]) -> list[range]:
    """Files per Classify request: at most 32, and at most 32 MiB unless one file is larger."""
    chunks, start, size = [], 0, 0
    for i, data in enumerate(contents):
        if i > start and (i - start >= FILES_PER_REQUEST or size + len(data) > BYTES_PER_REQUEST):
            chunks.append(range(start, i))
            start, size = i, 0
        size += len(data)
    if contents:
        chunks.append(range(start, len(contents)))
    return chunks


def classify_files(
    client: VisionClient,
    files: Sequence[FileLike],
    model: str,
    top_k: int = 5,
    *,
    version: str = "",
) -> Iterator[tuple[Path, list[tuple[str, int, float]]]]:
    """Per file, in order: (its path, the top_k (label, class index, probability), best
    first), sent in requests of at most 32 files and 32 MiB."""
    pictures = read_files(files)
    for chunk in request_chunks([p.data for p in pictures]):
        results = client.classify([pictures[i].data for i in chunk], model, top_k, version=version)
        for i, labels in zip(chunk, results):
            yield pictures[i].path, labels


@dataclass(frozen=True)
class SegmentedFile:
    """What `segment_files` wrote for one picture, and the mask it holds."""

    image: Path  # the picture segmented
    mask_file: Path  # <out>/<stem>_mask.png
    overlay_file: Path | None  # <out>/<stem>_overlay.png, with overlay=True
    mask: np.ndarray  # class indices, uint8 (H, W): the picture's size
    labels: list[str]  # class names, index = pixel value

    def classes(self) -> list[tuple[str, int, int]]:
        """(name, class index, pixels) of every class in the mask, most pixels first; a
        class the labels do not name is its index."""
        counts = np.bincount(self.mask.ravel(), minlength=len(self.labels))
        return [
            (self.labels[i] if i < len(self.labels) else str(i), int(i), int(counts[i]))
            for i in np.argsort(-counts, kind="stable")
            if counts[i]
        ]


def mask_names(paths: Sequence[Path]) -> list[str]:
    """`<stem>_mask.png` for each image; stems that repeat (a/x.png, b/x.jpg) are numbered
    so that no mask overwrites another."""
    names, used = [], set()
    for path in paths:
        name, n = f"{path.stem}_mask.png", 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}_mask.png"
        used.add(name)
        names.append(name)
    return names


def segment_files(
    client: VisionClient,
    files: Sequence[FileLike],
    model: str,
    out: str | Path = ".",
    *,
    overlay: bool = False,
    version: str = "",
) -> Iterator[SegmentedFile]:
    """Segment each file, one request each, writing `out/<stem>_mask.png` (a palette PNG
    of class indices, class names in its `netc.labels` text) and, with `overlay`,
    `out/<stem>_overlay.png` (the picture tinted by class); yields what it wrote."""
    pictures = read_files(files)
    for file, name in zip(pictures, mask_names([p.path for p in pictures])):
        mask, labels, _ = client.segment(file.data, model, version=version)
        target = Path(out) / name
        write_atomic(target, mask_png(mask, labels))
        tinted = None
        if overlay:
            tinted = Path(out) / (name.removesuffix("_mask.png") + "_overlay.png")
            picture = decode_encoded(file.data, max_pixels=mask.size)
            write_atomic(tinted, overlay_png(picture, mask))
        yield SegmentedFile(file.path, target, tinted, mask, labels)
