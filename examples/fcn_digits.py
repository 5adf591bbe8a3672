"""The FCN trick: a digits classifier, made fully convolutional, reads a canvas of digits.

    python examples/fcn_digits.py RUN_DIR OUT_DIR

Exports RUN_DIR twice: as the classifier it is (32x32 in, 10 scores out) and
with `--fully-convolutional` (fc layers become convs, so any input size
works). The second runs once on a 32 x W canvas of held-out digits and gives
10 scores for every 32x32 window, 4 pixels apart (the net's stride): the same
scores the classifier gives each window cropped out and run on its own, at a
fraction of the cost, since overlapping windows share their convolutions.
Writes OUT_DIR/fcn_canvas.png: the canvas and what each window sees.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch.nn.functional as F

from netc.runtime import checkpoint
from netc.runtime.datasets import load_dataset, split
from netc.runtime.inspect import tiles
from netc.runtime.inspect.onnx_outputs import load

DIGITS = 10  # on the canvas: the first held-out picture of each class, in order
PITCH = 36  # pixels from one digit to the next: a multiple of the stride 4
CONFIDENT = 0.5  # label smoothing keeps the top probability near 0.9


def export(run_dir: Path, path: Path, *flags: str) -> None:
    command = [sys.executable, "-m", "netc", "export", str(run_dir), "-o", str(path), *flags]
    subprocess.run(command, check=True)


def canvas(run_dir: Path) -> tuple[np.ndarray, list[int]]:
    """(32, W) float in [0, 1]: held-out digits (upsampled as in training) side by side."""
    config = checkpoint.load(run_dir)["config"]
    _, val = split(load_dataset("digits"), config["val_fraction"], config["seed"])
    picks = [int(np.flatnonzero(val.targets.numpy() == digit)[0]) for digit in range(DIGITS)]
    images = F.interpolate(val.images[picks], size=(32, 32), mode="bilinear", align_corners=False)
    width = PITCH * DIGITS + 4
    out = np.zeros((32, width), dtype=np.float32)
    for k, image in enumerate(images.numpy()):
        out[:, 4 + PITCH * k : 4 + PITCH * k + 32] = image[0]
    return out, [int(val.targets[i]) for i in picks]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def best_time(run, repeats: int = 5) -> float:
    """The fastest of a few runs, in seconds (the first run above warmed the session up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def draw(picture: np.ndarray, probabilities: np.ndarray, truth: list[int], path: Path) -> None:
    width = 960
    figure = tiles.new_figure(width, 340)
    top = figure.add_axes((0.04, 0.55, 0.92, 0.34))
    top.imshow(picture, cmap="gray", vmin=0, vmax=1, aspect="auto")
    top.set_xticks([4 + PITCH * k + 16 for k in range(DIGITS)], [str(t) for t in truth])
    top.set_yticks([])
    top.set_title(
        f"a 32x{picture.shape[1]} canvas of held-out digits (their labels below them)", fontsize=10
    )
    bottom = figure.add_axes((0.04, 0.16, 0.92, 0.28))
    positions = probabilities.shape[1]
    bottom.imshow(
        probabilities,
        cmap="viridis",
        vmin=0,
        vmax=1,
        aspect="auto",
        extent=(15.5 - 2, 15.5 + 4 * (positions - 1) + 2, 9.5, -0.5),
        interpolation="nearest",
    )
    bottom.set_xlim(-0.5, picture.shape[1] - 0.5)
    bottom.set_yticks(range(10))
    bottom.tick_params(labelsize=7)
    bottom.set_ylabel("class", fontsize=8)
    bottom.set_xlabel(
        "the centre of each 32x32 window (stride 4): its probability for each class", fontsize=8
    )
    tiles.save_figure(figure, path)


def main(run_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    classifier, dense = out / "digits.onnx", out / "digits_fcn.onnx"
    export(run_dir, classifier)
    export(run_dir, dense, "--fully-convolutional")
    picture, truth = canvas(run_dir)
    pre = load(dense).preprocessing
    x = ((picture - pre.mean[0]) / pre.std[0])[None, None].astype(np.float32)

    fcn = session(dense)
    (scores,) = fcn.run(None, {fcn.get_inputs()[0].name: x})
    one_pass = best_time(lambda: fcn.run(None, {fcn.get_inputs()[0].name: x}))
    scores = scores[0, :, 0, :]  # (10, windows)
    windows = scores.shape[1]

    plain = session(classifier)
    crops = np.stack([x[0, :, :, 4 * j : 4 * j + 32] for j in range(windows)])

    def one_by_one_runs():
        return [plain.run(None, {plain.get_inputs()[0].name: crop[None]})[0] for crop in crops]

    separate = np.concatenate(one_by_one_runs())
    one_by_one = best_time(one_by_one_runs)
    difference = float(np.abs(separate.T - scores).max())

    probabilities = softmax(scores, axis=0)
    best, confidence = probabilities.argmax(axis=0), probabilities.max(axis=0)
    strip = "".join(str(c) if p >= CONFIDENT else "." for c, p in zip(best, confidence))
    read = [int(best[(4 + PITCH * k) // 4]) for k in range(DIGITS)]
    draw(picture, probabilities, truth, out / "fcn_canvas.png")
    print(
        f"\nFCN trick: one pass over a 32x{picture.shape[1]} canvas gives {windows} windows' "
        f"scores in {one_pass * 1e3:.2f} ms ({windows} separate 32x32 runs: "
        f"{one_by_one * 1e3:.2f} ms, best of 5 each); largest difference from the separate runs "
        f"{difference:.1g}\n  windows with p >= {CONFIDENT}: {strip}\n"
        f"  digits on the canvas: {' '.join(map(str, truth))}; read at their windows: "
        f"{' '.join(map(str, read))} ({sum(a == b for a, b in zip(read, truth))}/{DIGITS})\n"
        f"  wrote {out / 'fcn_canvas.png'}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
