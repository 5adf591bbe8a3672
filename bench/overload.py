"""Goodput under a retry storm: issue 11's scenario, paced refusals against unpaced.

resnet18 (exported by netc, random weights) served with `max_queue_size: 16`, once
per `refusals_per_second` value, each by its own `netc serve`; for each, in rounds:
2 clients sending back to back (the unloaded rate), then 64 clients that retry the
moment they are refused. Printed: answers a second with 2 and with 64 clients, their
ratio (the issue asks >= 90 %), and refusals a second.

    .venv/bin/python bench/overload.py [--clients 64] [--queue 16] [--paces 50,0]
                                       [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from soak import Tally, clients, request

PY = sys.executable


def serve(root: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [PY, "-m", "netc", "serve", "--repository", str(root), "--host", "127.0.0.1",
         "--port", "0", "--no-metrics", "--no-http"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert server.stderr is not None
    for line in server.stderr:
        if match := re.search(r"netc serving gRPC on ([\d.]+:\d+)", line):
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return server, match.group(1)
    sys.exit("netc serve did not start")


def phase(address: str, data: bytes, count: int, seconds: float) -> tuple[float, float]:
    """(answers a second, refusals a second) of `count` clients, after a 1 s start."""
    tally, stop = Tally(), threading.Event()
    threads = clients(address, data, count, tally, stop)
    time.sleep(1.0)
    answered, sent, began = tally.codes["OK"], sum(tally.codes.values()), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    ok = tally.codes["OK"] - answered
    refused = sum(tally.codes.values()) - sent - ok
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    if tally.failures:
        print("  failed:", tally.failures[:3])
    return ok / elapsed, refused / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--paces", default="50,0", help="refusals_per_second values")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="netc-overload-"))
    subprocess.run(
        [PY, "-m", "netc", "export", "resnet18", "--repository", str(root / "model"),
         "--name", "resnet18", "--no-verify"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    data = request("resnet18", "image", [1, 3, 224, 224])
    print(f"| refusals_per_second | round | 2 clients /s | {args.clients} clients /s | ratio "
          "| refused /s |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for pace in (int(p) for p in args.paces.split(",")):
        config = root / "model" / "resnet18" / "config.yaml"
        config.write_text(
            f"dynamic_batching: {{max_queue_size: {args.queue}, refusals_per_second: {pace}}}\n"
        )
        server, address = serve(root / "model")
        try:
            for round_ in range(args.rounds):
                alone, _ = phase(address, data, 2, args.seconds)
                storm, refused = phase(address, data, args.clients, args.seconds)
                print(f"| {pace} | {round_ + 1} | {alone:.1f} | {storm:.1f} | "
                      f"{storm / alone:.0%} | {refused:.0f} |", flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
