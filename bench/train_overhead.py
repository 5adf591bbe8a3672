"""A training step of the compiled module vs the same network written by hand.

Both modules get the same weights, batch, loss and optimizer; steps are
timed in alternating rounds in one process so machine noise hits both
alike. Ratio = compiled / hand-written (target: within 1.05).

    .venv/bin/python bench/train_overhead.py [--rounds 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import netc
from netc.runtime.module import build_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))
import torch_zoo

CASES = [  # (zoo name, batch, input shape)
    ("lenet5", 32, (1, 32, 32)),
    ("lenet5", 256, (1, 32, 32)),
    ("tinyseg", 8, (3, 64, 64)),
    ("resnet18", 8, (3, 64, 64)),
    ("googlenet", 4, (3, 96, 96)),
]


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    values = [v for k, v in source.state_dict().items()]
    target.load_state_dict(dict(zip(target.state_dict(), values)))


def step_time(module, x, y, steps: int) -> float:
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        out = module(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'network':<10} {'batch':>5} {'hand ms':>9} {'compiled ms':>12} {'ratio':>6}")
    for name, batch, shape in CASES:
        hand = torch_zoo.build(name).train()
        compiled = build_module(netc.load(name).graph).train()
        copy_weights(hand, compiled)
        x = torch.randn(batch, *shape)
        classes = 10 if name == "lenet5" else (4 if name == "tinyseg" else 1000)
        y = (
            torch.randint(0, classes, (batch, *shape[1:]))
            if name == "tinyseg"
            else torch.randint(0, classes, (batch,))
        )
        step_time(hand, x, y, 2), step_time(compiled, x, y, 2)  # warm-up
        hand_times, compiled_times = [], []
        for _ in range(args.rounds):
            hand_times.append(step_time(hand, x, y, args.steps))
            compiled_times.append(step_time(compiled, x, y, args.steps))
        h, c = statistics.median(hand_times), statistics.median(compiled_times)
        print(f"{name:<10} {batch:>5} {h * 1e3:>9.2f} {c * 1e3:>12.2f} {c / h:>6.3f}")


if __name__ == "__main__":
    main()
