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

import yaml

from netc.errors import UserError
from netc.fileio import write_atomic


def _input_shape(text: str) -> tuple:
    parts = [p.strip() for p in text.split(",")]
    dims = []
    for part in parts:
        if part.isdigit() and int(part) > 0:
            dims.append(int(part))
        elif part.upper() in ("H", "W", "?", "-1"):
            dims.append(None)
        else:
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a shape: expected C,H,W with positive integers, e.g. 3,224,224")
    return tuple(dims)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(
            f"'{text}': the value is not valid YAML (quote a string, close a list)") from None


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="validate a network, infer shapes, print its analysis",
                       description="Validate a network description (a file or a zoo name), "
                       "infer shapes and print per-layer output shape, parameters, MACs and "
                       "receptive field, with totals.")
    p.add_argument("spec", metavar="SPEC_OR_ZOO_NAME")
    p.add_argument("--input-shape", type=_input_shape, metavar="C,H,W",
                   help="replace the first input's shape (fixes open H and W)")
    p.add_argument("--set", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   dest="params", help="override a network parameter, e.g. num_classes=10")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-o", "--output", type=Path, metavar="graph.json",
                   help="also write the JSON analysis to this file")
    p.set_defaults(run=_run_compile)


def _run_compile(args: argparse.Namespace) -> int:
    from netc.compiler import summary
    from netc.compiler.network import load

    network = load(args.spec, input_shape=args.input_shape, params=dict(args.params))
    data = summary.to_json(network)
    if args.output:
        write_atomic(args.output, (json.dumps(data, indent=2) + "\n").encode())
    print(json.dumps(data, indent=2) if args.json else summary.table(network))
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
        rows.append((name, net.graph.task, shape, f"{net.analysis.params:,}",
                     _first_sentence(net.spec.description)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  "
              f"{row[3]:>{widths[3]}}  {row[4]}".rstrip())
    return 0


def _first_sentence(text: str) -> str:
    """A description's title: its text up to the first parenthesis, at most 60 characters."""
    text = " ".join(text.split()).split(" (")[0].split(": ")[0]
    return text if len(text) <= 60 else text[:57].rsplit(" ", 1)[0] + " ..."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netc", description="ConvNet model compiler and inference server.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_compile(sub)
    _add_zoo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence for our own bugs
        if os.environ.get("NETC_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "  this is a bug in netc; rerun with NETC_DEBUG=1 for the traceback",
              file=sys.stderr)
        return 1
