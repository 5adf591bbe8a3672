"""What the ONNX optimizer buys in onnxruntime, against the raw export and onnxoptimizer.

For resnet18, googlenet and densenet121 from the zoo (random weights, random
BN statistics; batch 1, 3x224x224) it times, in one process and in
alternating rounds:
  raw          netc's export, BatchNormalization kept
  netc         `netc optimize` (default pipeline)
  netc+flags   with every flagged fold enabled (shows which folds pay)
  onnxoptimizer  onnxoptimizer's fuse_bn_into_conv
each with onnxruntime's graph optimizations off and at ORT_ENABLE_ALL.
Then it counts BatchNormalization nodes left by netc, onnxoptimizer and
onnxruntime's own optimizer (its saved optimized model), also on plain-PyTorch
ResNet-18 and MobileNet-style exports, and times optimizing resnet50.

`--int8` instead measures reduced precision: for lenet5, resnet18,
googlenet and densenet121 (random weights, calibrated on 16 random inputs)
the int8 model's time as a ratio to the fp32-optimized model's, both at
ORT_ENABLE_ALL, at 1 and 2 intra-op threads and batch 1 and 8, interleaved;
then the accuracy of trained runs before and after (lenet5 on digits,
tinyseg on shapes, each calibration method) on their validation splits.
`--provider cuda` runs the latency rows on the CUDA provider and adds fp16.

    .venv/bin/python bench/optimize.py [--runs 30]
    .venv/bin/python bench/optimize.py --peers [--runs 20] [--peer-models timm/ghostnet_100,...]
        (netc beside onnxslim and onnx-simplifier on timm models and the zoo: optimize_peers.py)
    .venv/bin/python bench/optimize.py --int8 [--runs 20] [--runs-dir bench/runs]
        [--provider cpu|cuda] [--models lenet5,resnet18,googlenet,densenet121]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxoptimizer
import onnxruntime as ort
import torch

import netc
from netc.compiler.onnx_export import export_onnx
from netc.compiler.optimizer.api import optimize_model
from netc.compiler.optimizer.pipeline import flags
from netc.runtime.module import build_module

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reference"))
sys.path.insert(0, str(ROOT / "tests" / "compiler" / "optimizer"))
import torch_zoo  # noqa: E402

LEVELS = {
    "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def zoo_export(name: str) -> onnx.ModelProto:
    net = netc.load(name)
    module = build_module(net.graph, seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.normal_(0, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
    return export_onnx(net.graph, module.state_dict())


def torch_export(module: torch.nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            torch.randn(1, 3, 224, 224),
            buffer,
            dynamo=False,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=["image"],
        )
    return onnx.load_from_string(buffer.getvalue())


def bn_count(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "BatchNormalization" for node in model.graph.node)


def ort_own_bn(model: onnx.ModelProto) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "ort.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return bn_count(onnx.load(options.optimized_model_filepath))


THREADS = 1  # one intra-op thread: the other core absorbs machine noise


def set_threads(count: int) -> None:
    global THREADS
    THREADS = count


def session(model: onnx.ModelProto, level, providers=("CPUExecutionProvider",)):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3  # unused-initializer warnings of the unoptimized variants
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))


def latency(
    sessions: dict[str, ort.InferenceSession], runs: int, x: np.ndarray | None = None
) -> dict[str, float]:
    """Median ms per variant, variants interleaved so machine noise hits all alike."""
    if x is None:
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {
        name: {
            s.get_inputs()[0].name: x.astype(np.float16)
            if s.get_inputs()[0].type == "tensor(float16)"
            else x
        }
        for name, s in sessions.items()
    }
    for name, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


INT8_MODELS = ("lenet5", "resnet18", "googlenet", "densenet121")
ACCURACY_RUNS = (("lenet5", "digits"), ("tinyseg", "shapes"))


def int8_latency(models: list[str], runs: int, provider: str) -> None:
    """int8 (and on CUDA fp16) time / fp32 time, ORT_ENABLE_ALL, threads 1 and 2, batch 1
    and 8; each row's variants interleaved."""
    from netc.compiler.optimizer.fp16 import to_fp16
    from netc.compiler.optimizer.quantize import quantize

    cuda = provider == "cuda"
    providers = (
        ("CUDAExecutionProvider", "CPUExecutionProvider") if cuda else ("CPUExecutionProvider",)
    )
    print(
        f"onnxruntime {ort.__version__} on {providers[0]}; ORT_ENABLE_ALL; median of {runs} "
        "interleaved runs (ms); ratio = reduced / fp32 (below 1 is faster)\n"
    )
    head = f"{'model':<12} {'threads':>7} {'batch':>5} {'fp32':>9} {'int8':>9} {'int8/fp32':>9}"
    print(head + (f" {'fp16':>9} {'fp16/fp32':>9}" if cuda else ""))
    rng = np.random.default_rng(0)
    for name in models:
        fp32 = optimize_model(zoo_export(name), name=name, verify=False).model
        shape = next(iter(netc.load(name).graph.inputs.values())).shape[1:]
        calibration = rng.standard_normal((16, *shape)).astype(np.float32)
        variants = {"fp32": fp32, "int8": quantize(fp32, calibration)[0]}
        if cuda:
            variants["fp16"] = to_fp16(fp32)[0]
        for threads in (1, 2):
            set_threads(threads)
            for batch in (1, 8):
                x = rng.standard_normal((batch, *shape)).astype(np.float32)
                sessions = {k: session(m, LEVELS["ALL"], providers) for k, m in variants.items()}
                ms = latency(sessions, runs if batch == 1 else max(3, runs // 4), x)
                row = (
                    f"{name:<12} {threads:>7} {batch:>5} {ms['fp32']:>9.3f} {ms['int8']:>9.3f} "
                    f"{ms['int8'] / ms['fp32']:>9.3f}"
                )
                if cuda:
                    row += f" {ms['fp16']:>9.3f} {ms['fp16'] / ms['fp32']:>9.3f}"
                print(row, flush=True)


def int8_accuracy(runs_dir: Path) -> None:
    """Trained runs (trained into `runs_dir` when missing) quantized with each calibration
    method, judged on their own validation splits."""
    from netc.compiler.optimizer.precision import PrecisionOptions, reduce_precision_model
    from netc.compiler.optimizer.quantize import METHODS
    from netc.runtime.export import export_model
    from netc.runtime.train import train

    print(
        f"\n{'run':<18} {'calibration':<11} {'metric':<9} {'fp32':>8} {'int8':>8} "
        f"{'drop (pt)':>9} {'top-1 agree':>11}"
    )
    for net, data in ACCURACY_RUNS:
        run = runs_dir / net
        if not (run / "best.pt").exists():
            train(net, data, run, quiet=True)
        model = export_model(str(run)).model
        for method in METHODS:
            options = PrecisionOptions("int8", calibrate=data, method=method, measure_speed=False)
            gate = reduce_precision_model(model, options, name=net).gate
            print(
                f"{net + ' / ' + data:<18} {method:<11} {gate.metric:<9} "
                f"{100 * gate.before:>7.2f}% {100 * gate.after:>7.2f}% {gate.drop:>9.2f} "
                f"{100 * gate.agreement:>10.2f}%",
                flush=True,
            )
        print(f"  ({gate.held_out})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--int8", action="store_true", help="the reduced-precision rows")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", default=",".join(INT8_MODELS))
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "bench" / "runs")
    parser.add_argument("--no-accuracy", action="store_true", help="--int8: latency rows only")
    parser.add_argument(
        "--peers", action="store_true", help="timm and zoo models beside onnxslim and onnxsim"
    )
    parser.add_argument("--peer-models", help="--peers: only these (timm/NAME or zoo/NAME)")
    args = parser.parse_args()
    if args.peers:
        import optimize_peers

        set_threads(args.threads)
        optimize_peers.run(args.runs, session, latency, LEVELS, zoo_export, args.peer_models)
        return
    if args.int8:
        int8_latency(args.models.split(","), args.runs, args.provider)
        if not args.no_accuracy:
            int8_accuracy(args.runs_dir)
        return
    set_threads(args.threads)
    print(
        f"onnxruntime {ort.__version__}, intra-op threads {THREADS}; batch 1, 3x224x224; "
        f"median of {args.runs} interleaved runs (ms)\n"
    )
    header = (
        f"{'model':<12} {'ORT opt':<7} {'raw':>7} {'netc':>7} {'netc+flags':>10} "
        f"{'onnxopt':>8} {'netc/raw':>8} {'netc/onnxopt':>12}"
    )
    print(header)
    macs_lines = []
    for name in ("resnet18", "googlenet", "densenet121"):
        raw = zoo_export(name)
        result = optimize_model(raw, name=name)
        flagged = optimize_model(raw, name=name, enable=flags()).model
        variants = {
            "raw": raw,
            "netc": result.model,
            "netc+flags": flagged,
            "onnxopt": onnxoptimizer.optimize(raw, ["fuse_bn_into_conv"]),
        }
        macs_lines.append(
            f"{name}: netc saved {result.macs_saved:,} MACs; BN nodes raw "
            f"{bn_count(raw)}, netc {bn_count(result.model)}, onnxoptimizer "
            f"{bn_count(variants['onnxopt'])}, onnxruntime {ort_own_bn(raw)}"
        )
        for level_name, level in LEVELS.items():
            ms = latency({k: session(m, level) for k, m in variants.items()}, args.runs)
            print(
                f"{name:<12} {level_name:<7} {ms['raw']:>7.2f} {ms['netc']:>7.2f} "
                f"{ms['netc+flags']:>10.2f} {ms['onnxopt']:>8.2f} "
                f"{ms['netc'] / ms['raw']:>8.3f} {ms['netc'] / ms['onnxopt']:>12.3f}"
            )
    print()
    print("\n".join(macs_lines))
    from test_pipeline import MobileNetish

    for label, module in (
        ("pytorch resnet18", torch_zoo.build("resnet18")),
        ("pytorch mobilenet-style", MobileNetish()),
    ):
        torch.manual_seed(0)
        model = torch_export(module)
        fused = optimize_model(model, name=label).model
        print(
            f"{label}: BN nodes raw {bn_count(model)}, netc {bn_count(fused)}, onnxoptimizer "
            f"{bn_count(onnxoptimizer.optimize(model, ['fuse_bn_into_conv']))}, "
            f"onnxruntime {ort_own_bn(model)}"
        )
    resnet50 = zoo_export("resnet50")
    start = time.perf_counter()
    optimize_model(resnet50, name="resnet50")
    print(
        f"\noptimizing resnet50 (with verification): {time.perf_counter() - start:.2f} s "
        "(target < 2 s)"
    )


if __name__ == "__main__":
    main()
