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


# --------------------------------------------------------------------------- main

SUBCOMMANDS = [_add_list]


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
        print(f"shufflenet {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"shufflenet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shufflenet list | head`
        return 0
