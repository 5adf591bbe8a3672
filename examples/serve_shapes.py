"""Serve the trained shapes segmenter and measure its mean IoU through gRPC.

    python examples/serve_shapes.py RUN_DIR REPO OUT_DIR

Exports RUN_DIR (tinyseg trained on `shapes`) into the model repository REPO
as `shapes`, starts `netc serve` on a free loopback port, sends every
held-out picture (the run's own validation split) as a PNG through the
vision service's Segment call, scores the masks against the true ones (mean
IoU, as training computes it), then writes one picture's palette mask and
overlay into OUT_DIR with `netc infer --overlay`, and stops the server.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from serve_digits import free_port, wait_until_serving

from netc.runtime import checkpoint
from netc.runtime.datasets import load_dataset, split
from netc.runtime.metrics import mean_iou
from netc.serving.client import VisionClient


def netc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "netc", *args], check=True)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    pixels = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def main(run_dir: Path, repository: Path, out: Path) -> None:
    netc("export", str(run_dir), "--repository", str(repository), "--name", "shapes")
    state = checkpoint.load(run_dir)
    config = state["config"]
    _, val = split(load_dataset("shapes"), config["val_fraction"], config["seed"])
    classes = len(state["labels"])
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "netc", "serve", "--repository", str(repository),
         "--host", "127.0.0.1", "--port", str(port), "--no-metrics", "--no-http"]
    )  # fmt: skip
    try:
        wait_until_serving(address, server)
        confusion = np.zeros((classes, classes), dtype=np.int64)
        latencies = []
        with VisionClient(address) as client:
            for image, truth in zip(val.images.numpy(), val.targets.numpy()):
                data = png(image)
                start = time.perf_counter()
                mask, _, _ = client.segment(data, "shapes")
                latencies.append((time.perf_counter() - start) * 1e3)
                keep = truth != 255
                index = truth[keep] * classes + mask[keep]
                confusion += np.bincount(index, minlength=classes * classes).reshape(classes, -1)
        trained = max(
            (row.get("val_mean_iou", 0.0) for row in state.get("history", [])), default=None
        )
        print(
            f"\nserved shapes: mean IoU {mean_iou(torch.from_numpy(confusion)):.4f} over "
            f"{len(val)} held-out pictures sent as PNG through gRPC at {address} (training's "
            f"best val_mean_iou {trained:.4f}); latency p50 {statistics.median(latencies):.1f} ms"
        )
        scene = out / "scene.png"
        out.mkdir(parents=True, exist_ok=True)
        scene.write_bytes(png(val.images[0].numpy()))
        netc("infer", "--model", "shapes", "--url", address, "--out", str(out), "--overlay",
             str(scene))  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("server stopped")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
