"""The ``shufflenet`` command: each subcommand parses, calls one library function, prints.

User errors print one line on stderr and exit 2; a check that ran and failed exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import ShuffleNetError

Handler = Callable[[argparse.Namespace], int]


def _print_table(rows: list[list[str]], headers: list[str], *, right: set[int] = frozenset()) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def _print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- list


def _cmd_list(args: argparse.Namespace) -> int:
    from .specs import catalog

    rows = catalog()
    if args.family:
        rows = [r for r in rows if r["family"] == args.family]
    if args.json:
        _print_json(rows)
        return 0
    table = []
    for r in rows:
        top1 = r["published"][0]["top1"] if r["published"] else None  # the primary source
        sources = sorted({"torchvision" if a["kind"] == "torchvision-pth" else "onnx-zoo" for a in r["pretrained"]})
        table.append([r["name"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}M",
                      "-" if top1 is None else f"{top1:.2f}", r["output"], ", ".join(sources) or "-"])
    _print_table(table, ["variant", "params", "MACs", "top-1", "output", "pretrained"], right={1, 2, 3})
    return 0


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list every architecture with params, MACs and published accuracy")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.add_argument("--family", choices=["shufflenet_v2", "shufflenet_v1", "shufflenet_v1_caffe2"],
                   help="only this family")
    p.set_defaults(handler=_cmd_list)


# --------------------------------------------------------------------------- export


def _cmd_export(args: argparse.Namespace) -> int:
    from .validate import export_to

    info = export_to(
        args.variant, args.output, test_data=args.test_data, tar=args.tar, name=args.name,
        opset=args.opset, weights=args.weights, batch=args.batch, keep_batchnorm=args.keep_batchnorm,
        input_name=args.input_name, output_name=args.output_name, num_classes=args.num_classes,
        via=args.via,
    )
    if args.json:
        _print_json(info)
        return 0
    for key in ("model", "bundle", "tar"):
        if key in info:
            print(f"{key:8s} {info[key]}")
    print(f"opset    {info['opset']}   nodes {info['nodes']}   {info['input']} -> {info['output']}")
    print(f"weights  {info['weights']}   batchnorm {info['batchnorm']}")
    print(f"size     {info['bytes']:,} bytes   sha256 {info['sha256']}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


WEIGHTS_HELP = ("torchvision | random | random:SEED | PATH (.pth .pt .safetensors .npz, or a .onnx of "
                "the same architecture); default random:0")


def _add_export(sub) -> None:
    from .onnx_export import DEFAULT_OPSET, MIN_OPSET, newest_opset

    p = sub.add_parser("export", help="write a variant as ONNX at any opset (optionally a zoo-style bundle)",
                       description="Write a registry variant as ONNX, directly from its description "
                                   "(no torch). With --test-data K, -o is a folder that receives "
                                   "<name>/model.onnx and <name>/test_data_set_0..K-1.")
    p.add_argument("variant", help="registry name (see `shufflenet list`)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file, or the folder for a bundle")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"{MIN_OPSET}..{newest_opset()} (default {DEFAULT_OPSET})")
    p.add_argument("--weights", default="random", help=WEIGHTS_HELP)
    p.add_argument("--batch", type=_positive_int, help="fix the batch size (default: dynamic)")
    p.add_argument("--keep-batchnorm", action="store_true",
                   help="emit BatchNormalization nodes instead of folding them into Conv")
    p.add_argument("--input-name", help="graph input name (default: the zoo's, e.g. 'input')")
    p.add_argument("--output-name", help="graph output name (default: the zoo's, e.g. 'output')")
    p.add_argument("--num-classes", type=_positive_int, help="classifier outputs (default: from the weights, else 1000)")
    p.add_argument("--test-data", type=_positive_int, default=0, metavar="K",
                   help="write a bundle with K test sets (generated images, one set with batch 3)")
    p.add_argument("--tar", action="store_true", help="also pack <name>.tar.gz as the zoo ships bundles")
    p.add_argument("--name", help="bundle name (default: <variant>-<opset>)")
    p.add_argument("--via", choices=["emitter", "torch"], default="emitter",
                   help="emitter: written from the description (any opset, no torch); torch: "
                        "torch.onnx.export of the PyTorch module, then cleaned (opset >= 11)")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_export)


# --------------------------------------------------------------------------- validate


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    report = validate(args.path, threads=args.threads)
    if args.json:
        _print_json(report.to_dict())
        return 0 if report.passed else 1
    print(f"{report.path}: {report.model} (opset {report.opset})")
    print(f"checker  {report.checker}")
    print(f"engine   {report.engine}")
    rows = []
    for s in report.sets:
        where = "" if s.passed else f"{s.tensor}[{','.join(map(str, s.worst_index))}] expected {s.expected:.6g} got {s.got:.6g}"
        top1 = "-" if s.top1_match is None else f"{s.top1_match:.0%}"
        rows.append([s.name, "ok" if s.passed else "FAIL", f"{s.max_abs_err:.2e}", f"{s.max_rel_err:.2e}",
                     top1, where])
    _print_table(rows, ["test set", "result", "max abs", "max rel", "top-1", "worst mismatch"])
    print("PASSED" if report.passed else "FAILED", f"(rtol 1e-3, atol 1e-5)")
    return 0 if report.passed else 1


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a model against its test data as the zoo does",
                       description="PATH: a .onnx with test_data_set_* beside it, a bundle folder, "
                                   "or a .tar.gz. Exit 0 all pass, 1 a mismatch, 2 unusable input.")
    p.add_argument("path")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_validate)


# --------------------------------------------------------------------------- main

SUBCOMMANDS = [_add_list, _add_export, _add_validate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shufflenet",
        description="ShuffleNet image classifiers: architectures, weights, ONNX export and runtime.",
    )
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except ShuffleNetError as e:
        one_line = " ".join(str(e).split())  # errors are one line, whatever the library wrapped
        print(f"shufflenet {args.command}: error: {one_line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"shufflenet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shufflenet list | head`
        return 0
