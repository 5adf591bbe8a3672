"""netc optimize's own time and memory on 500 MB models, beside onnxslim's; IR 3 rows.

Builds (random weights, in code, see bench/large_models.py) a VGG-19 with BN
(575 MB) and an FCN-8s with BN (538 MB), then in one process, in alternating
rounds, times file to file:
  netc --no-verify   optimize_file(verify=False)
  netc               optimize_file (verified in onnxruntime)
  onnxslim           onnxslim.slim(src, dst)   (optional: pip install onnxslim)
and prints medians, the ratio to onnxslim, and verified / no-verify. Then one
child process per tool and model gives its peak RSS (VmHWM). `--profile`
also prints netc's cProfile by stage. The IR 3 rows take the same models in
the IR 3 layout (initializers also graph inputs) with and without
--freeze-initializer-inputs: BatchNormalization left, IR version, and checker.

    .venv/bin/python bench/optimize_large.py [--rounds 5] [--profile] [--models vgg19,fcn8s]
    PYTHONPATH=OLD_CHECKOUT .venv/bin/python bench/optimize_large.py --no-ir3   # a before
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from netc.compiler.optimizer.api import optimize_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import large_models

BUILDERS = {"vgg19": large_models.vgg19_bn, "fcn8s": large_models.fcn8s_bn}

try:
    import onnxslim
except ImportError:  # optional: the netc rows still print
    onnxslim = None


def tools(src: Path, dst: Path) -> dict[str, Callable[[], object]]:
    runs: dict[str, Callable[[], object]] = {
        "netc --no-verify": lambda: optimize_file(src, dst, verify=False),
        "netc": lambda: optimize_file(src, dst),
    }
    if onnxslim is not None:
        runs["onnxslim"] = lambda: _quiet(lambda: onnxslim.slim(str(src), str(dst)))
    return runs


def _quiet(run: Callable[[], object]) -> object:
    with contextlib.redirect_stdout(io.StringIO()):
        return run()


def timings(src: Path, dst: Path, rounds: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {}
    for round_ in range(rounds):
        order = list(tools(src, dst).items())
        if round_ % 2:
            order.reverse()  # alternate who goes first: the page cache and other jobs
        for label, run in order:
            start = time.perf_counter()
            run()
            seconds.setdefault(label, []).append(time.perf_counter() - start)
    return seconds


PEAK = """
import sys, contextlib, io
sys.path.insert(0, {bench!r})
src, dst, tool = {src!r}, {dst!r}, {tool!r}
if tool == "onnxslim":
    import onnxslim
    with contextlib.redirect_stdout(io.StringIO()):
        onnxslim.slim(src, dst)
else:
    from netc.compiler.optimizer.api import optimize_file
    optimize_file(src, dst, verify=tool == "netc")
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


PEAK_TOOL = {"netc --no-verify": "no-verify", "netc": "netc", "onnxslim": "onnxslim"}


def peak_mib(src: Path, dst: Path, tool: str) -> float:
    code = PEAK.format(bench=str(Path(__file__).parent), src=str(src), dst=str(dst), tool=tool)
    # run from bench/: `python -c` puts the working folder first on sys.path, and the repo
    # root's netc/ would shadow a PYTHONPATH checkout
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    )
    return int(out.stdout.split()[-1]) / 1024


def profile(src: Path, dst: Path, verify: bool) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    optimize_file(src, dst, verify=verify)
    profiler.disable()
    print(f"\n--- cProfile, netc optimize {'(verified)' if verify else '--no-verify'} ---")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(
        r"api.py|model_bytes|verify.py|pipeline.py|checker|onnxruntime|write|read|FromString"
    )


def ir3_rows(folder: Path, name: str) -> None:
    src = folder / f"{name}_ir3.onnx"
    onnx.save(BUILDERS[name](ir3=True), src)
    size = src.stat().st_size / 2**20
    for freeze in (False, True):
        dst = folder / f"{name}_ir3.opt.onnx"
        start = time.perf_counter()
        result = optimize_file(src, dst, freeze_initializer_inputs=freeze)
        seconds = time.perf_counter() - start
        try:
            onnx.checker.check_model(str(dst))
            checked = "passes"
        except onnx.checker.ValidationError as exc:
            checked = f"fails: {str(exc).splitlines()[0][:60]}"
        written = onnx.load(dst, load_external_data=False)
        flag = "--freeze-initializer-inputs" if freeze else "(default)"
        print(
            f"| {name} IR 3 ({size:.0f} MiB) | {flag} | "
            f"{result.ops_before['BatchNormalization']} → {result.ops_after['BatchNormalization']}"
            f" | {written.ir_version} | {len(written.graph.input)} | {checked} | {seconds:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="vgg19,fcn8s")
    parser.add_argument("--profile", action="store_true", help="print netc's cProfile too")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory runs")
    parser.add_argument(
        "--no-ir3", action="store_true", help="skip the IR 3 rows (a netc before the flag)"
    )
    args = parser.parse_args()
    names = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("| model | size | tool | median s | runs | × onnxslim | peak RSS MiB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in names:
            src, dst = folder / f"{name}.onnx", folder / f"{name}.opt.onnx"
            onnx.save(BUILDERS[name](), src)
            size = src.stat().st_size / 2**20
            seconds = timings(src, dst, args.rounds)
            medians = {label: statistics.median(runs) for label, runs in seconds.items()}
            for label, runs in seconds.items():
                ratio = (
                    f"{medians[label] / medians['onnxslim']:.2f}" if "onnxslim" in medians else "-"
                )
                peak = "-" if args.no_peak else f"{peak_mib(src, dst, PEAK_TOOL[label]):.0f}"
                shown = ", ".join(f"{s:.2f}" for s in runs)
                print(
                    f"| {name} | {size:.0f} MiB | {label} | {medians[label]:.2f} | {shown} "
                    f"| {ratio} | {peak} |"
                )
            print(
                f"| {name} | | verified / no-verify | "
                f"{medians['netc'] / medians['netc --no-verify']:.2f} | | | |"
            )
            if args.profile:
                profile(src, dst, verify=False)
                profile(src, dst, verify=True)
            src.unlink()
        if args.no_ir3:
            return
        print(
            "\n| model | flag | BatchNormalization | IR version | graph inputs | onnx.checker | s |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in names:
            ir3_rows(folder, name)


if __name__ == "__main__":
    main()
