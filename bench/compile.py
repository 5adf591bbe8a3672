"""How long compiling each zoo network takes (parse, expand, shapes, analysis).

Baseline, in the same process: what a PyTorch user does to get the same
shapes, building the equivalent nn.Module (tests/reference/torch_zoo.py) and
propagating shapes through it on the meta device (no real arithmetic). The
ratio column is netc / baseline; below 1 means netc is faster.

    .venv/bin/python bench/compile.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import netc
from netc.compiler import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))
import torch_zoo

SIZES = {"lenet5": (1, 32, 32)}


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def torch_shapes(name: str, shape: tuple[int, ...]) -> None:
    with torch.device("meta"):
        module = torch_zoo.build(name).eval()
        module(torch.empty(1, *shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'network':<12} {'layers':>6} {'netc best':>10} {'netc p50':>9} "
        f"{'torch meta':>11} {'ratio':>6}"
    )
    worst = 0.0
    for name in zoo.names():
        shape = SIZES.get(name, (3, 224, 224))

        def load(n=name, s=shape):
            return netc.load(n, input_shape=s)

        layers = len(load().graph.nodes)
        best, median = best_of(args.repeat, load)
        base, _ = best_of(args.repeat, lambda n=name, s=shape: torch_shapes(n, s))
        worst = max(worst, median)
        print(
            f"{name:<12} {layers:>6} {best * 1e3:>8.1f}ms {median * 1e3:>7.1f}ms "
            f"{base * 1e3:>9.1f}ms {best / base:>6.2f}"
        )
    print(f"\nslowest median compile: {worst * 1e3:.1f} ms (target: well under 1 s)")


if __name__ == "__main__":
    main()
