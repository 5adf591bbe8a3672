"""The `netc` command line: one entry point, one subcommand per job.

Exit status: 0 success, 2 user error (one message on stderr, no traceback),
1 internal failure. NETC_DEBUG=1 shows tracebacks of internal failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from netc.console import final_message, say
from netc.errors import UserError, render
from netc.fileio import check_output, output_path, write_atomic
from netc.limits import MAX_DIM


def _input_shape(text: str) -> tuple[int | None, ...]:
    parts = [p.strip() for p in text.split(",")]
    dims: list[int | None] = []
    for part in parts:
        if part.isdigit() and int(part) > MAX_DIM:
            raise argparse.ArgumentTypeError(
                f"'{text}': {part} is larger than any input size netc takes (at most {MAX_DIM})"
            )
        if part.isdigit() and int(part) > 0:
            dims.append(int(part))
        elif part.upper() in ("H", "W", "?", "-1") and dims:  # the channels must be given
            dims.append(None)
        else:
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a shape: expected C,H,W with positive integers, e.g. 3,224,224"
            )
    return tuple(dims)


def _param(text: str) -> tuple[str, object]:
    from netc.yaml_loader import load_located, plain

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    try:  # the description's own reader: its alias cap, tag and nesting checks
        return key.strip(), plain(load_located(value, f"--set {key.strip()}", allow_empty=True))
    except UserError as exc:
        reason = exc.detail.splitlines()[0]
        raise argparse.ArgumentTypeError(
            f"'{text[:100]}': the value is not valid YAML ({reason}); quote a string, close a list"
        ) from None


def _add_set(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument(
        "--set",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="params",
        help=text,
    )


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="validate a network, infer shapes, print its analysis",
        description="Validate a network description (a file or a zoo name), "
        "infer shapes and print per-layer output shape, parameters, MACs and "
        "receptive field, with totals.",
    )
    p.add_argument("spec", metavar="SPEC_OR_ZOO_NAME")
    p.add_argument(
        "--input-shape",
        type=_input_shape,
        metavar="C,H,W",
        help="replace the first input's shape (fixes open H and W)",
    )
    _add_set(p, "override a network parameter, e.g. num_classes=10")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "-o",
        "--output",
        type=output_path,
        metavar="graph.json",
        help="also write the JSON analysis to this file",
    )
    p.set_defaults(run=_run_compile)


def _run_compile(args: argparse.Namespace) -> int:
    from netc.compiler import summary
    from netc.compiler.network import load

    network = load(args.spec, input_shape=args.input_shape, params=dict(args.params))
    text = json.dumps(summary.to_json(network), indent=2) if args.json or args.output else ""
    if args.output:
        write_atomic(args.output, (text + "\n").encode())
    print(text if args.json else summary.table(network))
    return 0


def _add_zoo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="list the built-in networks")
    p.set_defaults(run=_run_zoo)


def _run_zoo(args: argparse.Namespace) -> int:
    from netc.compiler import zoo
    from netc.compiler.network import load

    rows = []
    for name in zoo.names():
        net = load(name)
        item = next(iter(net.graph.inputs.values()))
        shape = "×".join(str(d) for d in item.shape[1:])
        rows.append(
            (
                name,
                net.graph.task,
                shape,
                f"{net.analysis.params:,}",
                _first_sentence(net.spec.description),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  "
            f"{row[3]:>{widths[3]}}  {row[4]}".rstrip()
        )
    return 0


def _first_sentence(text: str) -> str:
    """A description's title: its text up to the first parenthesis, at most 60 characters."""
    text = " ".join(text.split()).split(" (")[0].split(": ")[0]
    return text if len(text) <= 60 else text[:57].rsplit(" ", 1)[0] + " ..."


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a network on a data set",
        description="Train a network description (a file or a zoo name). "
        "Settings come from its `training:` section; these flags override it.",
    )
    p.add_argument("spec", metavar="SPEC_OR_ZOO_NAME")
    p.add_argument(
        "--data",
        required=True,
        metavar="DATASET",
        help="digits, shapes, an image folder, a segmentation folder or a .npz",
    )
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float, help="learning rate (overrides optimizer.lr)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float, dest="val_fraction")
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch's CPU threads (default: 1 or torch's default, whichever trains faster)",
    )
    _add_set(p, "override a network parameter, e.g. num_classes=10")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument(
        "--init-from",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="start from trained weights, matched by layer name: a run, a netc checkpoint, "
        "a PyTorch state_dict (.pth/.pt), .safetensors or .onnx",
    )
    _add_weights_layout(p)
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train with N processes (DistributedDataParallel through torchrun)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        return _relaunch_distributed(args.nproc, args.argv)
    from netc.runtime.train import train

    overrides = {
        key: getattr(args, key)
        for key in (
            "epochs",
            "batch_size",
            "lr",
            "seed",
            "val_fraction",
            "device",
            "precision",
            "threads",
        )
    }
    result = train(
        args.spec,
        args.data,
        args.out,
        overrides=overrides,
        params=dict(args.params),
        resume=args.resume,
        init_from=args.init_from,
        weights_layout=args.weights_layout,
        quiet=args.quiet,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return 0
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    print(
        f"trained {result.epochs_run} epochs in {result.seconds:.1f}s; best {result.metric} "
        f"{best} at epoch {result.best_epoch}; checkpoints in {result.run_dir}"
    )
    return 0


def _relaunch_distributed(nproc: int, argv: list[str]) -> int:
    """Re-run this command (`argv`, without --nproc) in `nproc` processes on this
    machine (DDP)."""
    from netc.runtime.launch import run_local

    cleaned, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        cleaned.append(item)
    return run_local(nproc, cleaned)


def _add_weights_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights-layout",
        choices=("netc", "torchvision", "timm"),
        help="how the weights file names its layers (default: detected)",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model (or a description) as ONNX",
        description="Export a run directory or checkpoint (or a description, "
        "with fresh weights) to ONNX, checked against PyTorch before writing.",
    )
    p.add_argument("source", metavar="RUN_DIR_OR_SPEC")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", type=output_path, metavar="MODEL.onnx")
    where.add_argument(
        "--repository",
        type=Path,
        metavar="REPO",
        help="write REPO/NAME/<next version>/model.onnx (needs --name)",
    )
    p.add_argument("--name", help="the model's name in the repository")
    p.add_argument(
        "--fully-convolutional",
        action="store_true",
        help="turn fc layers into convs: a dense predictor for any input size",
    )
    p.add_argument(
        "--pixel-input",
        action="store_true",
        help="the model takes raw pixel values 0..255, as Triton's image_client.py sends "
        "them (-s NONE): its scaling and mean/std normalisation go into the graph",
    )
    p.add_argument(
        "--input-shape",
        type=_input_shape,
        metavar="C,H,W",
        help="the declared input size (for a description, or before --fully-convolutional)",
    )
    _add_set(p, "override a network parameter (descriptions only)")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="a description's weights: a netc checkpoint, a PyTorch state_dict (.pth/.pt), "
        ".safetensors or .onnx, matched by layer name",
    )
    _add_weights_layout(p)
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running the model in onnxruntime against PyTorch",
    )
    _add_precision(p)
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from netc.runtime.export import export_model, write_model
    from netc.serving.repository import next_version_path

    if args.repository is not None and not args.name:
        raise UserError("--repository needs --name NAME")
    if args.output is not None:
        check_output(args.output)  # before the export and its check, which take a while
    options = _precision_options(args, verify=True)
    if options is not None:
        from netc.compiler.optimizer.precision import check_options

        check_options(options)
    result = export_model(
        args.source,
        fully_convolutional=args.fully_convolutional,
        input_shape=args.input_shape,
        params=dict(args.params),
        verify=not args.no_verify,
        weights_file=args.weights,
        weights_layout=args.weights_layout,
        pixel_input=args.pixel_input,
    )
    if not result.trained:
        say(
            f"warning: exporting untrained, randomly initialised weights for '{args.source}'; "
            "pass a run folder to export trained weights"
        )
    path = args.output or next_version_path(args.repository, args.name)
    if options is not None:
        return _export_reduced(args, result, options, path)
    if args.repository is not None:
        _write_triton_config(path, result.model.SerializeToString())
    size = write_model(result.model, path)
    check = (
        ""
        if result.max_error is None
        else f"; onnxruntime matches PyTorch (max abs error {result.max_error:.2g})"
    )
    print(
        f"wrote {path} ({result.graph.name}, {len(result.model.graph.node)} nodes, "
        f"{size / 2**20:.1f} MiB){check}"
        + ("; takes pixel values 0..255 (--pixel-input)" if args.pixel_input else "")
    )
    return 0


def _write_triton_config(path: Path, model: bytes) -> None:
    """Beside a version exported into a repository: Triton's config.pbtxt (and labels.txt),
    before the model file, so a server polling the repository finds them with it."""
    from netc.serving.triton_config import export_files

    folder = path.parent.parent
    files, note = export_files(folder, path.parent.name, model)
    for name, text in files.items():
        write_atomic(folder / name, text.encode())
        print(f"wrote {folder / name}")
    if note:
        say(note)


def _export_reduced(args: argparse.Namespace, result, options, path: Path) -> int:
    """--precision int8/fp16: optimize and reduce the export, calibrating on the run's own
    validation split (recorded in the model), and write it only when the checks pass."""
    from netc.compiler.optimizer.precision import reduce_precision_model

    reduced = reduce_precision_model(result.model, options, name=args.source)
    if args.repository is not None:
        _write_triton_config(path, reduced.data)
    write_atomic(path, reduced.data)
    reduced.destination = str(path)
    if result.max_error is not None:
        print(
            f"exported {result.graph.name}: onnxruntime matches PyTorch (max abs error "
            f"{result.max_error:.2g})"
        )
    print(reduced.report())
    return 0


def _add_optimize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="optimize an ONNX model (fuse BatchNormalization, clean up), verified",
        description="Run netc's ordered pipeline of ONNX rewrites on a model and print what "
        "each pass changed. Both models then run in onnxruntime on the same random inputs "
        "and must agree (rtol 1e-4, atol 1e-5 times the output's scale); on a mismatch "
        "nothing is written. --precision int8 then quantizes behind an accuracy gate on "
        "--calibrate DATASET (nothing is written if accuracy drops more than --max-drop); "
        "--precision fp16 converts for GPUs and verifies at fp16's tolerance.",
    )
    p.add_argument("model", type=Path, metavar="IN.onnx")
    p.add_argument("-o", "--output", type=output_path, required=True, metavar="OUT.onnx")
    p.add_argument(
        "--no-verify",
        action="store_false",
        dest="verify",
        help="skip the onnxruntime check of the optimized model",
    )
    p.add_argument(
        "--enable",
        action="append",
        default=[],
        metavar="FLAG",
        help="also run the optional passes behind FLAG (repeat, or separate with commas)",
    )
    p.add_argument(
        "--input-shape",
        type=_named_shape,
        action="append",
        default=[],
        dest="input_shapes",
        metavar="[NAME=]D0,D1,...",
        help="verify and count MACs at this full input shape (default: open sizes 64 and 96)",
    )
    p.add_argument(
        "--freeze-initializer-inputs",
        action="store_true",
        help="treat initializers that are also graph inputs (IR 3 files, e.g. Caffe2 "
        "conversions) as constants: drop them from the inputs and raise the IR version to 4",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="list every rewrite and every refusal with its reason",
    )
    _add_precision(p)
    p.set_defaults(run=_run_optimize)


def _add_precision(p: argparse.ArgumentParser) -> None:
    """--precision and its options, shared by optimize and export (defaults: None means
    PrecisionOptions' own, so that building the parser imports no onnx)."""
    p.add_argument(
        "--precision",
        choices=("fp32", "int8", "fp16"),
        default="fp32",
        help="int8: static QDQ quantization behind an accuracy gate (needs --calibrate); "
        "fp16: half precision for GPUs, verified at fp16's tolerance",
    )
    p.add_argument(
        "--calibrate",
        metavar="DATASET",
        help="int8: the data set to calibrate on and judge accuracy with, as netc train "
        "--data takes it (digits, shapes, a folder, a .npz)",
    )
    p.add_argument(
        "--calibration-method",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="int8: how activation ranges are chosen (default minmax)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        metavar="N",
        help="int8: training-split images to calibrate on (default 256)",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        metavar="POINTS",
        help="int8: the most accuracy (or mean IoU) points it may lose (default 1)",
    )
    p.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="LAYER,...",
        help="int8: layers to keep in float with their outputs (the gate names the worst)",
    )
    p.add_argument(
        "--fp16-io",
        action="store_true",
        help="fp16: make inputs and outputs fp16 too (default: they stay fp32)",
    )


def _precision_options(args: argparse.Namespace, verify: bool):
    """PrecisionOptions from the flags, or None for fp32 (refusing int8/fp16 flags there)."""
    from netc.compiler.optimizer.precision import PrecisionOptions

    keep = [name.strip() for item in args.keep_float for name in item.split(",") if name.strip()]
    if args.precision == "fp32":
        flags = (
            ("--calibrate", args.calibrate),
            ("--keep-float", keep),
            ("--fp16-io", args.fp16_io),
        )
        given = [flag for flag, on in flags if on]
        if given:
            raise UserError(
                f"{' and '.join(given)} need --precision int8"
                + (" or fp16" if given == ["--fp16-io"] else "")
            )
        return None
    if not verify:
        raise UserError(
            f"--precision {args.precision} is always checked (an accuracy gate for "
            "int8, fp16's tolerance for fp16); drop --no-verify (--max-drop 100 accepts any "
            "int8 accuracy)"
        )
    tuned = {"max_drop": args.max_drop, "calibration_samples": args.calibration_samples}
    return PrecisionOptions(
        args.precision,
        calibrate=args.calibrate,
        method=args.calibration_method,
        keep_float=keep,
        fp16_io=args.fp16_io,
        **{key: value for key, value in tuned.items() if value is not None},
    )


def _named_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    parts = [p.strip() for p in dims.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a shape: expected [NAME=]D0,D1,... with positive integers, "
            "e.g. input=1,3,224,224"
        )
    return (name if sep else None), tuple(int(p) for p in parts)


def _run_optimize(args: argparse.Namespace) -> int:
    from netc.compiler.optimizer.api import optimize_file

    enable = [flag.strip() for item in args.enable for flag in item.split(",") if flag.strip()]
    shapes = dict(args.input_shapes)
    options = _precision_options(args, args.verify)
    if options is not None and args.freeze_initializer_inputs:
        raise UserError(
            f"--freeze-initializer-inputs goes with --precision fp32: optimize with it first, "
            f"then run --precision {args.precision} on the result"
        )
    if options is not None:
        from netc.compiler.optimizer.precision import reduce_precision_file

        reduced = reduce_precision_file(
            args.model, args.output, options, enable=enable, input_shapes=shapes or None
        )
        print(reduced.report(verbose=args.verbose))
        return 0
    result = optimize_file(
        args.model,
        args.output,
        verify=args.verify,
        enable=enable,
        verbose=args.verbose,
        input_shapes=shapes or None,
        freeze_initializer_inputs=args.freeze_initializer_inputs,
    )
    print(result.report(verbose=args.verbose))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve every model in a repository over gRPC and HTTP",
        description="Serve REPO/<model>/<version>/model.onnx over gRPC "
        "(Triton/KServe v2 protocol and netc's vision service) and HTTP (KServe v2 REST, "
        "the vision service, a page to try a model at /), with Prometheus metrics.",
    )
    p.add_argument("--repository", required=True, type=Path, metavar="REPO")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus metrics port (default 8002; 0 picks a free one)",
    )
    p.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    p.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="HTTP/REST port: KServe v2 REST, the vision service, the page at / "
        "(default 8000; 0 picks a free one)",
    )
    p.add_argument("--no-http", action="store_true", help="do not serve HTTP/REST")
    p.add_argument(
        "--max-message-mb",
        type=int,
        default=128,
        help="largest request or response in MiB (default 128)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="the most pixels one vision request may bring, over all its pictures "
        "(default 16,777,216 = 4096x4096)",
    )
    p.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="reload models whose files changed, checking this often",
    )
    p.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, let calls in flight and queued finish this long "
        "(default 30; a second signal stops at once)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="what the server logs to stderr: info adds a line per model load, unload, "
        "reload; debug a line per request (default warning: failures)",
    )
    security = p.add_argument_group("security (README.md, Security)")
    security.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="TLS (gRPC, HTTP and metrics)"
    )
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="... and its private key")
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: refuse clients without a certificate signed by this CA",
    )
    security.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="every call but health needs 'authorization: Bearer <token>' with a token "
        "of FILE (one a line, '#' comments); SIGHUP reads it again",
    )
    security.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="FILE",
        help="RepositoryModelLoad/Unload need a token of FILE (admin tokens also "
        "pass where --auth-token-file's do)",
    )
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from netc.serving.server import ServerOptions, serve_forever

    options = ServerOptions(
        host=args.host,
        port=args.port,
        metrics_port=None if args.no_metrics else args.metrics_port,
        http_port=None if args.no_http else args.http_port,
        max_message_mb=args.max_message_mb,
        poll_seconds=args.poll,
        max_image_pixels=args.max_image_pixels,
        grace_s=args.grace_period,
        log_level=args.log_level,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token_file=args.auth_token_file,
        admin_token_file=args.admin_token_file,
    )
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise UserError(f"--max-image-pixels must be at least 1, found {args.max_image_pixels}")
    if not 0 <= args.grace_period <= 24 * 3600:
        raise UserError(f"--grace-period must be from 0 to 86400 s, found {args.grace_period}")
    try:
        return serve_forever(args.repository, options)
    except OSError as exc:
        raise UserError(f"cannot start the server: {exc}") from None


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="classify images or write segmentation masks",
        description="Send images to a netc server's vision service: print "
        "the top labels for a classifier, write DIR/<name>_mask.png (the image's size; "
        "each pixel's value is its class index, drawn in PASCAL VOC's palette, class "
        "names in the PNG's netc.labels text) for a segmentation model.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PNG or JPEG images")
    p.add_argument("--model", required=True, metavar="NAME")
    p.add_argument("--version", default="", help="model version (default: the latest)")
    p.add_argument("--url", default="localhost:8001", help="server (default localhost:8001)")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where masks are written (default: the current directory)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also write DIR/<name>_overlay.png: the image tinted with the mask's colours",
    )
    security = p.add_argument_group("security (README.md, Security)")
    security.add_argument(
        "--tls", action="store_true", help="connect with TLS, trusting the system's CAs"
    )
    security.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="connect with TLS, trusting this CA"
    )
    security.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="mutual TLS: the client's certificate"
    )
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="... and its private key")
    security.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="send the (first) token of FILE as 'authorization: Bearer'; "
        "default: the environment variable NETC_TOKEN",
    )
    p.set_defaults(run=_run_infer)


def _check_url(url: str) -> None:
    """HOST:PORT with a port gRPC can dial (it would wrap 99999 around to another port)."""
    if url.startswith(("unix:", "unix-abstract:")):
        return  # a socket path, no port
    host, sep, port = url.rpartition(":")
    if not url or not sep or not host:
        raise UserError(f"--url '{url}': expected HOST:PORT, e.g. localhost:8001")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--url '{url}': the port must be a number from 1 to 65535")


def _run_infer(args: argparse.Namespace) -> int:
    from netc.serving.client import MAX_TOP_K, VisionClient
    from netc.serving.infer import classify_files, find_model, read_files, segment_files

    if not 1 <= args.top_k <= MAX_TOP_K:
        raise UserError(f"--top-k must be from 1 to {MAX_TOP_K:,}, found {args.top_k}")
    _check_url(args.url)
    files = read_files(args.files)  # before the server: a missing file is said first
    client = VisionClient(
        args.url,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token_file=args.token_file,
    )
    with client:
        entry = find_model(client, args.model, args.version)
        if entry.task == "classification":
            for path, labels in classify_files(
                client, files, args.model, args.top_k, version=args.version
            ):
                text = ", ".join(f"{label} ({score:.3f})" for label, _, score in labels)
                print(f"{path}: {text}")
        elif entry.task == "segmentation":
            results = segment_files(
                client, files, args.model, args.out, overlay=args.overlay, version=args.version
            )
            for result in results:
                _print_mask(result)
        else:
            raise UserError(
                f"model '{args.model}' is a {entry.task} model; netc infer "
                "classifies and segments images"
            )
    return 0


def _print_mask(result) -> None:
    """'scene.png: wrote masks/scene_mask.png (40x20; background 93.8% #000000, ...)'."""
    from netc.serving.images.masks import palette

    colours = palette()
    written = " and ".join(str(p) for p in (result.mask_file, result.overlay_file) if p)
    height, width = result.mask.shape
    share = ", ".join(
        f"{name} {100 * pixels / result.mask.size:.1f}% #{bytes(colours[index]).hex()}"
        for name, index, pixels in result.classes()
    )
    print(f"{result.image}: wrote {written} ({width}x{height}; {share})")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    from netc.runtime.inspect.command import add_parser

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netc", description="ConvNet model compiler and inference server."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_compile(sub)
    _add_zoo(sub)
    _add_train(sub)
    _add_export(sub)
    _add_optimize(sub)
    _add_serve(sub)
    _add_infer(sub)
    _add_inspect(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # tables use × and →; an ASCII terminal gets ?
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except UserError as exc:
        final_message(render(exc), 2)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecursionError:  # a description nested past Python's limit (blocks, sizes)
        final_message(
            render(
                "the input nests too deeply for netc to follow (deeper than Python's "
                "recursion limit); flatten the nesting"
            ),
            2,
        )
        return 2
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence for our own bugs
        if os.environ.get("NETC_DEBUG"):
            traceback.print_exc()
        final_message(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in netc; rerun with NETC_DEBUG=1 for the traceback",
            1,
        )
        return 1
