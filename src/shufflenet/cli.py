"""The ``shufflenet`` command: each subcommand parses, calls one library function, prints.

User errors print one line on stderr and exit 2; a check that ran and failed exits 1. Choices
and defaults come from :mod:`shufflenet.options` (the library's own), and only the chosen
command's arguments are built: ``shufflenet --help`` and ``--version`` load neither onnx, numpy
nor Pillow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

from . import __version__
from ._io import one_line
from ._progress import Bar
from .errors import ShuffleNetError
from .options import (
    AMP_MODES, BENCH_BACKENDS, BENCH_BATCHES, BENCH_BLOCK, BENCH_IMAGE_BATCHES, BENCH_IMAGE_WORKERS, BENCH_PRECISIONS, BENCH_RUNS,
    BENCH_THREADS, BENCH_WARMUP, CALIB_METHODS, CLASSIFY_BATCH_SIZE, CLASSIFY_TOP, DEFAULT_MODEL, DEFAULT_OPSET,
    DEMO_CLASSES, DEMO_DEFAULTS, DEMO_DIFFICULTIES, ENGINES, EXPORT_VIAS, INPUT_SIZES, MIN_OPSET, OPTIMIZERS, PAD_MULTIPLE,
    QUANTIZE_DEFAULTS, QUANTIZE_FORMATS, RESIZE_MODES, SERVE_DEFAULTS, SERVE_HOST, SERVE_PORT, TRAIN_DEFAULTS,
    ZOO_WEIGHTS,
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose options' help ends with their default, taken from the value given
    to ``add_argument`` (so it cannot go stale), unless the help states it already."""

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        default = action.default
        if (action.option_strings and action.help and action.help != argparse.SUPPRESS
                and default not in (None, False, True, argparse.SUPPRESS) and "default" not in action.help.lower()):
            shown = f"{default:g}" if isinstance(default, float) else default
            action.help += f" (default {shown})".replace("%", "%%")
        return action


def _print_table(rows: list[list[str]], headers: list[str], *, right: set[int] = frozenset()) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def _untrained_notice(command: str, models, quiet: bool) -> None:
    """One line on stderr per model whose weights are random (from its metadata)."""
    if quiet:
        return
    for name in models:
        print(f"shufflenet {command}: note: {name} has untrained (random) weights; its outputs carry "
              "no information", file=sys.stderr)


def _print_json(data) -> None:
    """Strict JSON: NaN and infinities are written as null (docs/limits.md)."""
    from ._safeio import finite_json

    json.dump(finite_json(data), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _shown(text) -> str:
    """Text from files (labels, paths, reasons) with control characters escaped for the terminal."""
    from ._safeio import printable

    return printable(str(text))


def _usage(msg: str) -> ShuffleNetError:
    """A usage problem the parser cannot see (exit 2, one line)."""
    return ShuffleNetError(msg)


def _given(**kwargs) -> dict:
    """The keyword arguments the user gave (not None): the library's defaults apply to the rest."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _refuse_given(args: argparse.Namespace, names: Sequence[str], why: str) -> None:
    """Options given where they do not apply are an error, not silently ignored (their parser
    defaults are None or False, so a given one is told apart)."""
    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) not in (None, False)]
    if given:
        raise _usage(f"{', '.join(given)}: {why}")


def _number(text: str, kind: type, ok: Callable[[float], bool], expected: str):
    """``text`` as ``kind`` when ``ok`` holds for it; otherwise argparse's one-line usage error."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a positive number")


def _port(text: str) -> int:
    return _number(text, int, lambda v: 0 <= v <= 65535, "a port number from 0 to 65535")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


WEIGHTS_HELP = ("torchvision (published weights: torchvision's, or the zoo file for the Caffe2 V1) | random | random:SEED | PATH (.pth .pt .safetensors .npz, or a .onnx of "
                "the same architecture)")


# --------------------------------------------------------------------------- list


def _cmd_list(args: argparse.Namespace) -> int:
    from .specs import catalog

    rows = catalog()
    if args.family:
        rows = [r for r in rows if r["family"] == args.family]
    if args.json:
        _print_json(rows)
        return 0
    if args.quiet:  # names only, one per line (for scripts)
        print("\n".join(r["name"] for r in rows))
        return 0
    table = []
    for r in rows:
        top1 = r["published"][0]["top1"] if r["published"] else None  # the primary source
        sources = sorted({"torchvision" if a["kind"] == "torchvision-pth" else "onnx-zoo" for a in r["pretrained"]})
        table.append([r["name"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}M",
                      "-" if top1 is None else f"{top1:.2f}", r["output"], ", ".join(sources) or "-"])
    _print_table(table, ["variant", "params", "MACs", "top-1", "output", "pretrained"], right={1, 2, 3})
    return 0


def _args_list(p: argparse.ArgumentParser) -> None:
    from .specs import get_spec, list_variants

    families = list(dict.fromkeys(get_spec(name).family for name in list_variants()))  # the registry's own
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="variant names only, one per line")
    p.add_argument("--family", choices=families, help="only this family")
    p.set_defaults(handler=_cmd_list)


# --------------------------------------------------------------------------- export


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_to

    info = export_to(
        args.variant, args.output, test_data=args.test_data, tar=args.tar, name=args.name,
        opset=args.opset, weights=args.weights, batch=args.batch, keep_batchnorm=args.keep_batchnorm,
        input_name=args.input_name, output_name=args.output_name, num_classes=args.num_classes,
        via=args.via, faithful=args.faithful, pad_channels=args.pad_channels,
        absorb_shuffle=args.absorb_shuffle, input_size=args.input_size,
        labels=_read_labels(args.labels) if args.labels else None,
    )
    if args.json:
        _print_json(info)
        return 0
    if args.quiet:
        return 0
    for key in ("model", "bundle", "tar"):
        if key in info:
            print(f"{key:8s} {info[key]}")
    print(f"opset    {info['opset']}   nodes {info['nodes']}   {info['input']} -> {info['output']}")
    print(f"weights  {info['weights']}   batchnorm {info['batchnorm']}")
    print(f"size     {info['bytes']:,} bytes   sha256 {info['sha256']}")
    return 0


def _read_labels(path: str) -> list[str]:
    from .labels import load_labels

    return load_labels(path)


def _args_export(p: argparse.ArgumentParser) -> None:
    from .onnx_export import newest_opset  # the installed onnx's (export needs onnx anyway)

    p.description = ("Write a registry variant as ONNX, directly from its description (no torch). With "
                     "--test-data K, -o is a folder that receives <name>/model.onnx and <name>/test_data_set_0..K-1.")
    p.add_argument("variant", help="registry name (see `shufflenet list`)")
    p.add_argument("-o", "--out", "--output", dest="output", required=True,
                   help="the .onnx file, or the folder for a bundle")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"{MIN_OPSET}..{newest_opset()}")
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
    p.add_argument("--absorb-shuffle", action="store_true",
                   help="V2: absorb the channel shuffles into weight permutations (no Reshape/Transpose; "
                        "helps OpenVINO, not ONNX Runtime: docs/bench.md)")
    p.add_argument("--pad-channels", type=_positive_int, nargs="?", const=PAD_MULTIPLE, metavar="N",
                   help=f"pad branch interiors and the stem with zero channels to a multiple of N "
                        f"(default: on, N={PAD_MULTIPLE}, unless --faithful) "
                        "so ONNX Runtime's blocked CPU kernels apply: same outputs, faster (docs/bench.md)")
    p.add_argument("--faithful", action="store_true",
                   help="write the plain graph, channel for channel as the architecture is described "
                        "(default: the fastest exact graph, i.e. channel padding; the same outputs)")
    p.add_argument("--input-size", type=_positive_int,
                   help="square input size (default: the training run's, else 224)")
    p.add_argument("--labels", help="class names to store in the model (one per line, JSON list or TSV)")
    p.add_argument("--via", choices=EXPORT_VIAS, default=EXPORT_VIAS[0],
                   help="emitter: written from the description (any opset, no torch); torch: "
                        "torch.onnx.export of the PyTorch module, then cleaned (opset >= 11)")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(handler=_cmd_export)


# --------------------------------------------------------------------------- validate


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    report = validate(args.path, threads=args.threads)
    if args.json:
        _print_json(report.to_dict())
        return 0 if report.passed else 1
    if args.quiet:
        print("PASSED" if report.passed else "FAILED")
        return 0 if report.passed else 1
    print(f"{_shown(report.path)}: {_shown(report.model)} (opset {report.opset})")  # names from the file
    print(f"checker  {_shown(report.checker)}")
    print(f"engine   {report.engine}")
    print(f"expected {report.expected_outputs}")
    rows = []
    for s in report.sets:
        where = "" if s.passed else f"{_shown(s.tensor)}[{','.join(map(str, s.worst_index))}] expected {s.expected:.6g} got {s.got:.6g}"
        top1 = "-" if s.top1_match is None else f"{s.top1_match:.0%}"
        rows.append([s.name, "ok" if s.passed else "FAIL", f"{s.max_abs_err:.2e}", f"{s.max_rel_err:.2e}",
                     top1, where])
    _print_table(rows, ["test set", "result", "max abs", "max rel", "top-1", "worst mismatch"])
    print("PASSED" if report.passed else "FAILED", "(rtol 1e-3, atol 1e-5)")
    return 0 if report.passed else 1


def _args_validate(p: argparse.ArgumentParser) -> None:
    p.description = ("PATH: a .onnx with test_data_set_* beside it, a bundle folder, or a .tar.gz. "
                     "Exit 0 all pass, 1 a mismatch, 2 unusable input.")
    p.add_argument("path", help="a .onnx with test_data_set_* beside it, a bundle folder or a .tar.gz")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only PASSED or FAILED (and the exit code)")
    p.set_defaults(handler=_cmd_validate)


# --------------------------------------------------------------------------- classify


def _check_engine(args: argparse.Namespace, ray_only: Sequence[str]) -> None:
    if args.engine != "ray":
        _refuse_given(args, ray_only, "only with --engine ray")


def _cmd_classify(args: argparse.Namespace) -> int:
    from .runtime import Classifier, classify_threads, expand_inputs, run_files

    _check_engine(args, ("address", "workers", "output"))
    if args.engine == "ray":
        return _classify_ray(args)
    files, problems = expand_inputs(args.images)
    if not files and problems:
        for item, why in problems:
            print(f"shufflenet classify: {item}: {why}", file=sys.stderr)
        return 2
    clf = Classifier(args.model, threads=classify_threads(args.threads, len(files), args.batch_size),
                     labels=args.labels, resize=args.resize, exact=args.exact, optimize=not args.no_optimize)
    _untrained_notice("classify", [clf.source] if clf.untrained else [], args.quiet)
    with Bar("classify", args.quiet or args.json or len(files) < 20, unit="img") as bar:
        results = list(run_files(clf, files, top=args.top, batch_size=args.batch_size, progress=bar))
    if args.json:
        _print_classify_json(clf, results, problems)
    else:
        _print_classified(results, problems)
    if not any(r.predictions for r in results):
        return 2  # nothing usable: every file was skipped
    return 1 if problems or any(r.error for r in results) else 0


def _print_classify_json(clf, results: list, problems: list[tuple[str, str]]) -> None:
    from .preprocess import describe

    _print_json({
        "model": clf.source, "output_kind": clf.output_kind,
        "preprocessing": describe(clf.recipe, resize=clf.resize, exact=clf.exact),
        "results": [{"path": r.path, "error": r.error,
                     "top": None if r.predictions is None else [p.__dict__ for p in r.predictions]}
                    for r in results],
        "problems": [{"path": i, "error": w} for i, w in problems],
    })


def _print_classified(results: list, problems: list[tuple[str, str]]) -> None:
    """One line per answered file on stdout; the skipped ones, with the reason, on stderr."""
    for r in results:
        if r.error:
            continue
        best = r.predictions[0]
        rest = ", ".join(f"{_shown(p.label)} {p.probability:.1%}" for p in r.predictions[1:])
        print(f"{_shown(r.path)}: {_shown(best.label)} ({best.index}) {best.probability:.1%}"
              + (f"  | {rest}" if rest else ""))
    for r in results:
        if r.error:
            print(f"shufflenet classify: skipped {_shown(r.error)}", file=sys.stderr)
    for item, why in problems:
        print(f"shufflenet classify: skipped {_shown(item)}: {_shown(why)}", file=sys.stderr)


def _classify_ray(args: argparse.Namespace) -> int:
    from .ray_engine import classify

    if args.output is None:
        raise _usage("--engine ray writes one row per image to --output FILE (.parquet or .jsonl)")
    with Bar("classify", args.quiet or args.json, unit="img") as bar:
        report = classify(args.images, args.model, args.output, address=args.address, workers=args.workers,
                          top=args.top, batch_size=args.batch_size, labels=args.labels, resize=args.resize,
                          exact=args.exact, progress=bar, optimize=not args.no_optimize,
                          **_given(threads=args.threads))
    if args.json:
        _print_json(report.to_dict())
    else:
        for path, why in report.failed:
            print(f"shufflenet classify: skipped {why if why.startswith(path) else f'{path}: {why}'}",
                  file=sys.stderr)
        print(f"wrote {report.images} rows to {report.output} ({report.ok} classified, "
              f"{len(report.failed)} failed) in {report.seconds:.1f} s: {report.images_per_second:.1f} images/s "
              f"on {report.workers} Ray actors x {report.threads} thread(s)")
    return 1 if report.failed else 0  # as local classify: 1 when any input was skipped


def _add_engine_args(p: argparse.ArgumentParser, *, output: bool) -> None:
    p.add_argument("--engine", choices=ENGINES, default=ENGINES[0],
                   help="local: every core of this machine; ray: a Ray Data actor pool (the ray extra), "
                        "same results bit for bit (docs/scale.md)")
    p.add_argument("--address", help="ray: join this cluster (HEAD_IP:6379); default: $RAY_ADDRESS, "
                                      "else a local Ray started and stopped with the command")
    p.add_argument("--workers", type=_positive_int,
                   help="ray: actors, each with --threads CPUs (default: as many as the cluster's CPUs allow)")
    if output:
        p.add_argument("--output", "-o", help="ray: one row per input (path, top-k indices, labels, "
                                              "probabilities, error) as .parquet or .jsonl, written atomically")


def _add_model_args(p: argparse.ArgumentParser, *, model_required: bool = False, exact_flag: bool = True) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, required=model_required,
                   help="a .onnx path, a zoo artifact (shufflenet-v2-12 ...), a variant (pretrained, "
                        "fetched when not cached) or VARIANT:random[:SEED]")
    p.add_argument("--threads", type=_positive_int,
                   help="ONNX Runtime intra-op threads (classify default: 1 per session when there are "
                        "more files than one batch, so every core decodes and runs its own batches)")
    p.add_argument("--resize", choices=RESIZE_MODES,
                   help="shorter: shorter side to 256 (torchvision); square: whole image to 256x256 "
                        "(the zoo notebook); default: the model's own")
    if exact_flag:
        p.add_argument("--exact", action="store_true",
                       help="torchvision's decoding, bit for bit: full-size JPEGs, EXIF orientation ignored "
                            "(default: photo decoding: EXIF orientation applied, large JPEGs draft-decoded)")
    else:
        p.add_argument("--photo-decoding", action="store_true",
                       help="apply EXIF orientation and draft-decode large JPEGs (faster, not torchvision's; "
                            "default: torchvision's exact decoding)")
    p.add_argument("--batch-size", type=_positive_int, default=CLASSIFY_BATCH_SIZE, help="images per inference call")
    p.add_argument("--no-optimize", action="store_true",
                   help="run the model's graph as given (default: the runtime's exact load-time rewrites, "
                        "e.g. channel padding; the same outputs, faster)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notices on stderr")


def _args_classify(p: argparse.ArgumentParser) -> None:
    p.description = ("Exit 0: every file answered; 1: some files were skipped (each reported with the "
                     "reason); 2: nothing usable.")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs; with "
                                             "--engine ray also URIs (s3://...) and .txt lists of paths")
    _add_model_args(p)
    p.add_argument("--top", type=_positive_int, default=CLASSIFY_TOP, help="classes per image")
    p.add_argument("--labels", help="label file for a custom model (one per line, JSON list or TSV)")
    _add_engine_args(p, output=True)
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_classify)


# --------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _check_engine(args, ("address", "workers"))
    if args.engine == "ray" and args.compare:
        raise _usage("--compare runs with the local engine only")
    with Bar("evaluate", args.quiet or args.json, unit="img") as bar:
        if args.engine == "ray":
            from .ray_engine import evaluate

            report = evaluate(args.model, args.data, label_file=args.label_file, limit=args.limit,
                              address=args.address, workers=args.workers, batch_size=args.batch_size,
                              resize=args.resize, exact=not args.photo_decoding, progress=bar,
                              optimize=not args.no_optimize, **_given(threads=args.threads))
        else:
            from .evaluate import evaluate

            report = evaluate(args.model, args.data, limit=args.limit, compare=args.compare,
                              label_file=args.label_file, batch_size=args.batch_size, threads=args.threads,
                              resize=args.resize, exact=not args.photo_decoding, optimize=not args.no_optimize,
                              progress=bar)
    _untrained_notice("evaluate", report.untrained, args.quiet)
    if args.json:
        _print_json(report.to_dict())
    else:
        _print_evaluation(report)
    return 1 if report.skipped else 0  # as classify: a skipped image is a failed check


def _print_evaluation(report) -> None:
    print(f"model          {report.model}")
    print(f"data           {report.data} ({report.layout})")
    print(f"preprocessing  {report.preprocessing}")
    print(f"images         {report.images}   ({report.images_per_second:.1f} images/s)")
    print(f"top-1          {report.top1:.2f}%   (error {report.top1_error:.2f}%)")
    print(f"top-5          {report.top5:.2f}%   (error {report.top5_error:.2f}%)")
    if report.compare:
        c = report.compare
        print(f"compared with  {c['model']}")
        print(f"  top-1 agreement {c['top1_agreement']:.2f}%   top-5 overlap {c['top5_overlap']:.2f}%   "
              f"logit cosine {c['logit_cosine']:.4f}   max abs diff {c['max_abs_diff']:.3g}")
    if report.skipped:
        print(f"skipped        {len(report.skipped)}")
        for path, why in report.skipped:
            print(f"  {_shown(path)}: {_shown(why)}")


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    p.description = ("DATA: an ImageFolder (folders named by WordNet id or class name), files named "
                     "<wnid>_<anything>, or a flat folder with --label-file ('filename index' per line). "
                     "Exit 0: every image scored; 1: some were skipped (each listed with the reason).")
    _add_model_args(p, exact_flag=False)
    p.add_argument("--data", required=True, help="the labelled image folder")
    p.add_argument("--label-file", help="'filename index' per line (ImageNet val convention)")
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N images")
    p.add_argument("--compare", metavar="MODEL2", help="also report agreement with a second model")
    _add_engine_args(p, output=False)
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_evaluate)


# --------------------------------------------------------------------------- fetch


def _cmd_fetch(args: argparse.Namespace) -> int:
    if args.list:
        return _fetch_list(args)
    if not args.names:
        raise _usage("give an artifact name (see `shufflenet fetch --list`)")
    if (args.opset is not None or args.base) and not args.manifest:
        raise _usage("--opset and --base read a manifest: give --manifest as well")
    paths = {}
    for name in args.names:
        with Bar(name, args.quiet or args.json, unit="B", unit_scale=True) as bar:
            if args.manifest:
                from .hub_manifest import fetch_from_manifest

                path = fetch_from_manifest(args.manifest, name, opset=args.opset, base=args.base,
                                           progress=bar, force=args.force)
            else:
                from .hub import fetch, find_artifact

                path = fetch(find_artifact(name), progress=bar, force=args.force)
        paths[name] = str(path)
        if not args.json:
            print(paths[name])
    if args.json:
        _print_json(paths)
    return 0


def _fetch_list(args: argparse.Namespace) -> int:
    from .hub import cache_dir, list_cache

    entries = list_cache()
    if args.json:
        _print_json({"cache": str(cache_dir()), "artifacts": [
            {**e.artifact.__dict__, "path": str(e.path), "cached": e.present} for e in entries]})
        return 0
    rows = [[e.artifact.name, e.artifact.kind, e.artifact.variant,
             f"{e.artifact.size:,}" if e.artifact.size else "-", "cached" if e.present else "-"] for e in entries]
    _print_table(rows, ["artifact", "kind", "variant", "bytes", "status"])
    print(f"cache: {cache_dir()}")
    return 0


def _args_fetch(p: argparse.ArgumentParser) -> None:
    p.description = ("Cache: $SHUFFLENET_HOME, else $XDG_CACHE_HOME/shufflenet, else ~/.cache/shufflenet. "
                     "$SHUFFLENET_MIRROR: a base URL tried first.")
    p.add_argument("names", nargs="*", help="artifact names, e.g. shufflenet-v2-12")
    p.add_argument("--list", action="store_true", help="list the known artifacts and what is cached")
    p.add_argument("--manifest", metavar="PATH_OR_URL",
                   help="an ONNX hub manifest (the Model Zoo's ONNX_HUB_MANIFEST.json or a zoo build's "
                        "manifest.json): NAME is a hub model name or file name (add .tar.gz for the bundle)")
    p.add_argument("--opset", type=_positive_int, help="with --manifest: this opset (default: the newest)")
    p.add_argument("--base", metavar="URL_OR_DIR",
                   help="with --manifest: where model paths are relative to (default: the manifest's location)")
    p.add_argument("--force", action="store_true", help="download again even when cached")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_fetch)


# --------------------------------------------------------------------------- demo-data


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from .demo_data import make_demo_data

    if args.dir and args.out and args.dir != args.out:
        raise _usage(f"two folders given ({args.dir} and -o {args.out}); give one")
    target = args.out or args.dir
    if not target:
        raise _usage("give the folder to write: shufflenet demo-data DIR")
    info = make_demo_data(target, classes=args.classes, per_class=args.per_class, size=args.size,
                          seed=args.seed, difficulty=args.difficulty)
    if args.json:
        _print_json(info)
    elif not args.quiet:
        print(f"{target}: {info['train']} train + {info['val']} val images, {len(info['classes'])} classes "
              f"({', '.join(info['classes'])}), {info['size']}px, {info['difficulty']}")
    return 0


def _args_demo_data(p: argparse.ArgumentParser) -> None:
    d = DEMO_DEFAULTS
    p.description = ("Writes DIR/train/<class>/ and DIR/val/<class>/ JPEGs of procedurally drawn objects "
                     f"({', '.join(DEMO_CLASSES)}), deterministically from --seed.")
    p.add_argument("dir", nargs="?", help="the folder to write (new or empty); or -o DIR")
    p.add_argument("-o", "--out", help="the folder to write, as DIR")
    p.add_argument("--classes", type=_positive_int, default=d["classes"], help=f"2..{len(DEMO_CLASSES)}")
    p.add_argument("--per-class", type=_positive_int, default=d["per_class"], help="images per class, 20%% held out")
    p.add_argument("--size", type=_positive_int, default=d["size"], help="image side in pixels")
    p.add_argument("--seed", type=int, default=d["seed"], help="the dataset is a pure function of it")
    p.add_argument("--difficulty", choices=DEMO_DIFFICULTIES, default=d["difficulty"],
                   help="easy: a grey object on a dark background (quick checks); normal: light on dark or "
                        "dark on light, random hues, learnable in minutes; hard: random colours, clutter, "
                        "textures, blur, JPEG noise")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_demo_data)


# --------------------------------------------------------------------------- train

#: train's arguments that steer the command rather than the run: every other argument given is a
#: TrainConfig field (the run folder, -o, is TrainConfig's ``out``)
_TRAIN_CLI_ONLY = frozenset({"command", "handler", "resume", "output", "json", "quiet"})


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    if not args.data or not args.output:
        raise _usage("--data and -o RUN are required (or --resume RUN)")
    given = {k: v for k, v in vars(args).items() if k not in _TRAIN_CLI_ONLY and v is not None}
    return TrainConfig.from_dict({**given, "out": args.output})


class _EpochPrinter:
    """train's output: a progress bar per epoch (on a terminal), then one line per epoch as it
    ends, flushed so it shows in logs and pipes. Under torchrun only rank 0 prints the lines."""

    def __init__(self, quiet: bool, json_out: bool) -> None:
        self.quiet = quiet or json_out
        self.report = int(os.environ.get("RANK", "0")) == 0 and not json_out
        self.bar: Bar | None = None
        self.epoch = -1
        self.seconds: list[float] = []

    def progress(self, epoch: int, step: int, steps: int, loss: float) -> None:
        if self.bar is None or epoch != self.epoch:
            self.close()
            self.epoch = epoch
            self.bar = Bar(f"epoch {epoch + 1}", self.quiet, unit="step", leave=False)
        self.bar(step, steps)

    def on_epoch(self, h: dict, epochs: int) -> None:
        self.close()
        self.seconds.append(h["seconds"])
        eta = (epochs - h["epoch"]) * sum(self.seconds) / len(self.seconds)
        if self.report:
            val = "-" if h["val_acc"] is None else f"loss {h['val_loss']:.3f} acc {h['val_acc']:.1f}%"
            print(f"epoch {h['epoch']:3d}/{epochs}  train loss {h['train_loss']:.3f} acc {h['train_acc']:.1f}%  "
                  f"val {val}  lr {h['lr']:.3g}  {h['seconds']:.1f}s  eta {eta:.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import resume, train

    cfg = None if args.resume else _train_config(args)
    out = _EpochPrinter(args.quiet, args.json)
    try:
        result = (resume(args.resume, epochs=args.epochs, progress=out.progress, on_epoch=out.on_epoch)
                  if args.resume else train(cfg, progress=out.progress, on_epoch=out.on_epoch))
    finally:
        out.close()
    if args.json:
        _print_json(result.to_dict())
    elif out.report:
        if result.interrupted:
            print(f"interrupted: resume with `shufflenet train --resume {result.run}`")
        else:
            best = "-" if result.best_val_acc is None else f"{result.best_val_acc:.1f}%"  # no validation set
            print(f"run {result.run}: best val {best} in {result.seconds:.0f}s; export with "
                  f"`shufflenet export {result.variant} --weights {result.run}/best -o model.onnx`")
    return 130 if result.interrupted else 0


def _args_train(p: argparse.ArgumentParser) -> None:
    # parser defaults stay None so a resume keeps the run's own settings; the defaults shown are
    # TrainConfig's (options.TRAIN_DEFAULTS)
    t = TRAIN_DEFAULTS
    p.description = ("DATA: DATA/train/<class>/ + DATA/val/<class>/, or DATA/<class>/ (split by "
                     "--val-fraction, seeded). RUN receives config, checkpoint, best/last weights, class "
                     "names, metrics CSV/JSON and curves.png. One line per epoch as it ends. Ctrl-C leaves a "
                     "resumable checkpoint. Under torchrun it trains with DDP (gloo).")
    p.add_argument("--data", help="the image folder (required unless --resume)")
    p.add_argument("--variant", help=f"registry variant (default {t['variant']})")
    p.add_argument("-o", "--out", "--output", dest="output", help="the run folder (must be new or empty)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where it stopped")
    p.add_argument("--pretrained", help="torchvision | PATH: start from these weights, new head for the classes "
                                        "(default: from scratch)")
    p.add_argument("--epochs", type=_positive_int, help=f"(default {t['epochs']})")
    p.add_argument("--batch-size", type=_positive_int, help=f"(default {t['batch_size']})")
    p.add_argument("--img-size", type=_positive_int,
                   help=f"train crop size, {INPUT_SIZES[0]}..{INPUT_SIZES[1]} (default 224, or the images' shorter side when smaller)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"sgd: momentum 0.9, nesterov; adamw (default {t['optimizer']})")
    p.add_argument("--lr", type=float,
                   help="peak learning rate (default: SGD 0.1 scratch / 0.01 fine-tune; AdamW 3e-3 / 3e-4)")
    p.add_argument("--weight-decay", type=float,
                   help="not applied to BN and biases (default: SGD 4e-5, AdamW 0.05)")
    p.add_argument("--warmup-epochs", type=float,
                   help=f"linear warm-up, then cosine to zero (default {t['warmup_epochs']})")
    p.add_argument("--label-smoothing", type=float, help=f"(default {t['label_smoothing']})")
    p.add_argument("--grad-clip", type=float, help=f"max global gradient norm (default {t['grad_clip']})")
    p.add_argument("--ema", type=float, help="EMA decay of weights and BN statistics; evaluation and best "
                                             f"weights use it (default {t['ema']}; 0 disables)")
    p.add_argument("--freeze-backbone-epochs", type=int,
                   help=f"train only the new head first (default {t['freeze_backbone_epochs']})")
    p.add_argument("--amp", choices=AMP_MODES, help=f"bf16 autocast on CPU (default {t['amp']})")
    p.add_argument("--workers", type=int, help=f"DataLoader worker processes (default {t['workers']})")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, help=f"(default {t['seed']})")
    p.add_argument("--val-fraction", type=float, help=f"held out when DATA has no val/ (default {t['val_fraction']})")
    p.add_argument("--min-scale", type=float, help=f"RandomResizedCrop lower scale bound (default {t['min_scale']})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (epoch lines still print)")
    p.add_argument("--json", action="store_true", help="print exact data as JSON (no epoch lines)")
    p.set_defaults(handler=_cmd_train)


# --------------------------------------------------------------------------- quantize


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import QuantizeOptions, parse_percent, quantize

    max_loss = None if args.max_loss is None else parse_percent(args.max_loss)
    opts = QuantizeOptions(format=args.format, per_channel=args.per_channel, calib_method=args.calib_method,
                           calib_count=args.calib_count, max_loss=max_loss, seed=args.seed,
                           min_agreement=args.min_agreement, fp32_stem=args.fp32_stem)
    quiet = args.quiet or args.json or not sys.stderr.isatty()

    def progress(a):
        if not quiet:
            print(f"  try {a['format']} {a['calib_method']:10s} excluded {a['excluded']:3d}: "
                  f"loss {a['loss_pct']:.2f}%  agreement {a['top1_agreement']:.1f}%", file=sys.stderr)

    report = quantize(args.model, args.output, args.calib, options=opts, eval_data=args.eval_data,
                      plot=args.plot, progress=progress, label_file=args.label_file)
    _untrained_notice("quantize", [report.model] if report.untrained else [], args.quiet)
    if args.json:
        _print_json(report.to_dict())
    else:
        _print_quantized(report)
    return 0 if report.passed else 1


def _print_quantized(report) -> None:
    r, m = report.recipe, report.metrics
    print(f"wrote    {report.output}  ({report.int8_bytes:,} bytes, fp32 {report.fp32_bytes:,}: "
          f"{report.compression:.2f}x smaller)")
    print(f"recipe   {r['format']} {'per-channel' if r['per_channel'] else 'per-tensor'} u8/s8"
          f"{' reduce_range' if r['reduce_range'] else ''}, calibration {r['calib_method']} on "
          f"{r['calib_images']} images, {len(r['excluded_nodes'])} nodes kept in fp32, opset {r['opset']}")
    line = (f"fidelity top-1 agreement {m['top1_agreement']:.2f}%  top-5 overlap {m['top5_overlap']:.2f}%  "
            f"logit cosine {m['logit_cosine']:.4f}")
    if "fp32_accuracy" in m:
        line += f"  accuracy fp32 {m['fp32_accuracy']:.2f}% int8 {m['int8_accuracy']:.2f}%"
    print(line + ("  (not meaningful: untrained weights)" if report.untrained else ""))
    if report.criterion:
        c = report.criterion
        want = []
        if c["max_loss_pct"] is not None:
            want.append(f"{c['measure']} loss {c['loss_pct']:.2f}% <= {c['max_loss_pct']}%")
        if c["min_agreement_pct"] is not None:
            want.append(f"agreement {c['agreement_pct']:.2f}% >= {c['min_agreement_pct']}%")
        verdict = ("not meaningful: the weights are untrained" if not c.get("meaningful", True)
                   else "met" if c["met"] else "NOT met")
        print(f"criterion {' and '.join(want)}: {verdict} ({c['images']} images)")
    if report.latency_ms:
        lat = report.latency_ms
        print(f"latency  fp32 {lat['fp32_ms']:.2f} ms  int8 {lat['int8_ms']:.2f} ms  ({lat['speedup']:.2f}x, "
              f"batch 1, 1 thread, {lat['runs']} runs each, {lat.get('mode', 'blocked')})")
    if report.speed_note:
        print(f"note     {report.speed_note}")
    if report.worst_nodes:
        print("worst    " + ", ".join(f"{t} {v:.1f} dB" for t, v in report.worst_nodes[:5]))
    if report.plot:
        print(f"plot     {report.plot}")


def _args_quantize(p: argparse.ArgumentParser) -> None:
    q = QUANTIZE_DEFAULTS
    p.description = ("Static int8 quantization, QDQ or QOperator. With --max-loss the recipe is tuned "
                     "(calibration methods, then the least accurate tensors kept in fp32) until the relative "
                     "top-1 loss holds: accuracy with --eval-data, else agreement with fp32 on held-out --calib "
                     "images. Exit 1 when the criterion could not be met (the best model found is still "
                     "written); on untrained (random) weights it is reported as not meaningful.")
    p.add_argument("model", help="an fp32 .onnx")
    p.add_argument("-o", "--out", "--output", dest="output", required=True, help="the int8 .onnx to write")
    p.add_argument("--calib", required=True, help="folder of calibration images (any layout)")
    p.add_argument("--format", choices=QUANTIZE_FORMATS, default=q["format"],
                   help="qdq: QuantizeLinear/DequantizeLinear around float ops (like shufflenet-v2-12-qdq); "
                        "qoperator: QLinearConv and friends (like shufflenet-v2-12-int8)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="per-output-channel weight scales (default)")
    g.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default=q["calib_method"],
                   help="activation range calibration tried first (tuning tries the others)")
    p.add_argument("--int8-stem", dest="fp32_stem", action="store_false",
                   help="quantize the stem too (default: first conv, ReLU and max pooling stay fp32, "
                        "usually faster overall on ONNX Runtime: docs/quantization.md)")
    p.add_argument("--calib-count", type=_positive_int, default=q["calib_count"],
                   help="images sampled for calibration")
    p.add_argument("--max-loss", help="allowed relative top-1 loss in percent, e.g. 1%% (INC's default)")
    p.add_argument("--min-agreement", type=float, metavar="PCT",
                   help="also require this top-1 agreement with fp32, e.g. 98")
    p.add_argument("--eval-data", help="labelled folder (evaluate's layouts) to judge accuracy")
    p.add_argument("--label-file", help="'filename index' per line for a flat --eval-data folder")
    p.add_argument("--plot", help="write a PNG of per-tensor SQNR")
    p.add_argument("--seed", type=int, default=q["seed"], help=f"calibration sampling seed (default {q['seed']})")
    p.add_argument("-q", "--quiet", action="store_true", help="no tuning progress and no notices on stderr")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_quantize)


# --------------------------------------------------------------------------- zoo


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import build

    with Bar("zoo build", args.quiet or args.json, unit="artifact") as bar:

        def progress(done, total, result):
            bar(done, total)
            if not result.ok and not args.json:
                bar.write(f"shufflenet zoo: {result.artifact.name} failed: {result.error}")

        summary = build(args.out, weights=args.weights, variants=args.variants, calib=args.calib, force=args.force,
                        eval_data=args.eval_data, label_file=args.label_file, batch=args.batch, progress=progress)
    if args.json:
        _print_json(summary)
    else:
        print(f"built {len(summary['built'])} artifacts into {summary['out']} in {summary['seconds']:.0f} s")
        print(f"manifest {summary['manifest']}\ntable    {summary['readme']}")
        for name, err in summary["failed"]:
            print(f"FAILED   {name}: {err}")
    return 1 if summary["failed"] else 0


def _args_zoo(p: argparse.ArgumentParser) -> None:
    zsub = p.add_subparsers(dest="zoo_command", metavar="build", required=True)
    b = zsub.add_parser("build", help="export, quantize, bundle and validate every artifact",
                        description="Rebuilds shufflenet-3/6/7/8/9 (Caffe2 V1), shufflenet-v2-10/12 and "
                                    "the int8 (QOperator) and QDQ V2, each .onnx + .tar.gz with test data, "
                                    "validated; writes manifest.json (the ONNX hub's format) and README.md. With "
                                    "--weights random everything runs offline (and is labelled untrained).")
    b.add_argument("-o", "--out", required=True, help="the folder to build into (must be new or empty)")
    b.add_argument("--force", action="store_true",
                   help="replace a non-empty --out folder as a whole (swapped in when the build is done)")
    b.add_argument("--weights", default=ZOO_WEIGHTS, help=WEIGHTS_HELP)
    b.add_argument("--variants", default="zoo", help="zoo (the seed table), all (+ every variant, with int8), "
                                                     "or a comma list of variants")
    b.add_argument("--calib", help="calibration images for the int8 models (default: 100 generated images)")
    b.add_argument("--eval-data", help="labelled images: adds top-1/top-5 to the table (torchvision's exact decoding)")
    b.add_argument("--label-file", help="'filename index' per line for a flat --eval-data folder")
    b.add_argument("--batch", type=_positive_int,
                   help="fixed batch size: 1 writes the zoo's static shapes (default: dynamic batch N)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print exact data as JSON")
    b.set_defaults(handler=_cmd_zoo)


# --------------------------------------------------------------------------- bench


#: bench's options that only the latency measurement reads, and those only --images reads
_BENCH_LATENCY_ONLY = ("runs", "warmup", "backend", "precision", "ort_defaults", "block", "interleaved", "plot")
_BENCH_IMAGES_ONLY = ("workers", "limit")


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.images:
        _refuse_given(args, _BENCH_LATENCY_ONLY, "not with --images (it measures end to end with ONNX Runtime)")
        return _bench_images(args)
    _refuse_given(args, _BENCH_IMAGES_ONLY, "only with --images")
    return _bench_latency(args)


def _bench_images(args: argparse.Namespace) -> int:
    from .bench import bench_images_many

    rows = bench_images_many(args.models, args.images, limit=args.limit, optimize=not args.no_optimize,
                             **_given(batches=args.batch, threads=args.threads, workers=args.workers))
    _untrained_notice("bench", list(dict.fromkeys(r["model"] for r in rows if r["untrained"])), args.quiet)
    if args.json:
        _print_json([{k: v for k, v in r.items() if k not in ("predictions", "files")} for r in rows])
        return 0
    print(f"{rows[0]['images']} images, {rows[0]['workers']} decode workers, best of {rows[0]['repeat']} "
          "interleaved passes per model")
    table = []
    for r in rows:
        st = r["stage_seconds"]
        total = sum(st.values()) or 1.0
        table.append([_short_name(r["model"]), str(r["threads"]), str(r["batch"]), f"{r['seconds']:.2f}",
                      f"{r['images_per_s']:.1f}",
                      *(f"{st[k]:.2f} ({st[k] / total:.0%})" for k in ("decode", "preprocess", "inference"))])
    _print_table(table, ["model", "threads", "batch", "seconds", "img/s", "decode s", "preprocess s",
                         "inference s"], right={1, 2, 3, 4, 5, 6, 7})
    print("stage seconds are summed over the workers")
    return 0


def _bench_latency(args: argparse.Namespace) -> int:
    from .bench import bench, p50_ratios, plot

    with Bar("bench", args.quiet or args.json, unit="run") as bar:
        result = bench(args.models, precision=args.precision, ort_defaults=args.ort_defaults,
                       mode="interleaved" if args.interleaved else "blocked", optimize=not args.no_optimize,
                       progress=bar, **_given(batches=args.batch, threads=args.threads, runs=args.runs,
                                              warmup=args.warmup, backend=args.backend, block=args.block))
    _untrained_notice("bench", result["untrained"], args.quiet)
    rows, env = result["rows"], result["env"]
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        _print_json({"env": env, "rows": [r.to_dict() for r in rows]})
        return 0
    print(f"{env['cpu']}, {env['cores']} cores, onnxruntime {env['onnxruntime']}, session: {env['ort_session']}")
    table = [[_short_name(r.model), r.backend + ("" if r.backend == "onnxruntime" else f" {r.precision}"),
              str(r.threads), str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
              f"{r.images_per_s:.0f}", f"{r.load_ms:.0f}", f"{r.rss_added_mb:.0f}"] for r in rows]
    _print_table(table, ["model", "backend", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s",
                         "load ms", "+RSS MB"], right={2, 3, 4, 5, 6, 7, 8, 9})
    ratios = p50_ratios(rows)
    if ratios:
        print("ratios (p50, first config): " + ", ".join(f"{_short_name(m)} {x:.2f}x" for m, x in ratios)
              + f" vs {_short_name(rows[0].model)}")
    print(f"{rows[0].runs} runs per model and config after warm-up, {env['mode']}; "
          f"peak RSS {env['peak_rss_mb']:.0f} MB")
    return 0


def _short_name(model: str) -> str:
    from pathlib import Path

    return Path(model).name if "/" in model else model


def _args_bench(p: argparse.ArgumentParser) -> None:
    p.description = ("Loads every model, warms up, then times them in turn, in blocks of consecutive runs "
                     "per model (--interleaved: one run each, A B A B ...), so ratios hold on a noisy machine. "
                     "With --images: decode + preprocess + inference end to end for each model and --batch "
                     "size, passes interleaved (--workers and --limit apply to it alone; the options of the "
                     "latency runs are refused with it).")
    p.add_argument("models", nargs="+", help="paths, zoo names or VARIANT:random")
    p.add_argument("--batch", type=_int_list,
                   help=f"comma list, e.g. 1,8 (default {BENCH_BATCHES[0]}; {BENCH_IMAGE_BATCHES[0]} with --images)")
    p.add_argument("--threads", type=_int_list,
                   help=f"comma list, e.g. 1,2 (default {','.join(map(str, BENCH_THREADS))})")
    # the latency options' parser defaults are None, so one given with --images is refused; the
    # defaults shown are bench's (options.BENCH_*)
    p.add_argument("--runs", type=_positive_int, help=f"timed runs per model and configuration (default {BENCH_RUNS})")
    p.add_argument("--warmup", type=int, help=f"untimed runs per model first (default {BENCH_WARMUP})")
    p.add_argument("--backend", choices=BENCH_BACKENDS,
                   help=f"inference engine (openvino needs the extra; default {BENCH_BACKENDS[0]})")
    p.add_argument("--precision", choices=BENCH_PRECISIONS,
                   help="with --backend openvino: its INFERENCE_PRECISION_HINT (default: OpenVINO's own, printed)")
    p.add_argument("--ort-defaults", action="store_true",
                   help="no effect, kept so old command lines run: every session uses ONNX Runtime's default "
                        "options (all graph optimisations, sequential) with pinned threads")
    p.add_argument("--block", type=_positive_int,
                   help=f"consecutive runs of one model per round (weights stay in cache, as in deployment; "
                        f"default {BENCH_BLOCK})")
    p.add_argument("--interleaved", action="store_true",
                   help="one run of each model in turn instead of blocks (evicts each model's weights)")
    p.add_argument("--no-optimize", action="store_true",
                   help="run the graphs as given, without the runtime's exact load-time rewrites")
    p.add_argument("--images", help="measure end to end over this image folder")
    p.add_argument("--workers", type=_positive_int, help=f"decode threads for --images (default {BENCH_IMAGE_WORKERS})")
    p.add_argument("--limit", type=_positive_int, help="at most N images for --images")
    p.add_argument("--plot", help="PNG of the sorted latencies per configuration")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notices on stderr")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_bench)


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeOptions, serve

    options = ServeOptions(max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_body_mb=args.max_body_mb,
                           max_queue=args.max_queue, timeout_ms=args.timeout_ms, threads=args.threads)

    def ready(url: str, names: list[str]) -> None:
        if not args.quiet:
            print(f"shufflenet serve: ready at {url} (models: {', '.join(names)})", flush=True)

    serve(args.model, host=args.host, port=args.port, options=options, on_ready=ready)
    return 0


def _args_serve(p: argparse.ArgumentParser) -> None:
    s = SERVE_DEFAULTS
    p.description = "Serves until SIGTERM or Ctrl-C, finishing requests in flight. API and limits: docs/serving.md."
    p.add_argument("--model", action="append", required=True,
                   help="a .onnx path, .tar.gz, zoo artifact, variant or VARIANT:random[:SEED], optionally "
                        "NAME=MODEL; repeat for several. URL name: NAME, else the file stem, else as given")
    p.add_argument("--host", default=SERVE_HOST, help="address to listen on")
    p.add_argument("--port", type=_port, default=SERVE_PORT, help="port; 0 takes a free one")
    p.add_argument("--max-batch", type=_positive_int, default=s["max_batch"], help="rows per model run")
    p.add_argument("--max-delay-ms", type=float, default=s["max_delay_ms"],
                   help="how long a batch's first request waits for more")
    p.add_argument("--max-body-mb", type=_positive_float, default=s["max_body_mb"], help="request body limit, 413 above")
    p.add_argument("--max-queue", type=_positive_int, default=s["max_queue"],
                   help="rows waiting per model before 503 + Retry-After")
    p.add_argument("--timeout-ms", type=_positive_float, default=s["timeout_ms"],
                   help="request deadline, 504 after; a request may ask for less")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads per model "
                                                        "(default: ONNX Runtime's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no ready line (errors still print)")
    p.set_defaults(handler=_cmd_serve)


# --------------------------------------------------------------------------- main


class Command(NamedTuple):
    help: str  # the one line `shufflenet --help` shows
    add_arguments: Callable[[argparse.ArgumentParser], None]


#: every subcommand, in the order `shufflenet --help` lists them
COMMANDS: dict[str, Command] = {
    "list": Command("list every architecture with params, MACs and published accuracy", _args_list),
    "export": Command("write a variant as ONNX at any opset (optionally a zoo-style bundle)", _args_export),
    "validate": Command("check a model against its test data as the zoo does", _args_validate),
    "classify": Command("top-k classes for images, folders or globs", _args_classify),
    "evaluate": Command("top-1/top-5 accuracy on a labelled folder", _args_evaluate),
    "fetch": Command("download and verify published artifacts into the cache", _args_fetch),
    "demo-data": Command("generate an offline ImageFolder dataset of drawn objects", _args_demo_data),
    "train": Command("train or fine-tune on an ImageFolder (needs the torch extra)", _args_train),
    "quantize": Command("int8 quantization (ONNX Runtime) tuned to keep accuracy", _args_quantize),
    "zoo": Command("build the ONNX Model Zoo's ShuffleNet table from source", _args_zoo),
    "bench": Command("latency/throughput of models, interleaved in one process", _args_bench),
    "serve": Command("HTTP inference server: KServe v2 protocol, images in / labels out, dynamic batching, "
                     "metrics (needs the serve extra)", _args_serve),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``shufflenet`` parser. Every command is listed with its one-line help; the arguments
    are built for ``commands`` only (every command when None): a run builds just its own, and
    ``shufflenet --help`` imports nothing heavy."""
    parser = _Parser(prog="shufflenet",
                     description="ShuffleNet image classifiers: architectures, weights, ONNX export and runtime.")
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        if commands is None or name in commands:
            command.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # an answer, not a parse: returns like every command
        print(f"shufflenet {__version__}")
        return 0
    chosen = next((a for a in argv if not a.startswith("-")), None)  # the top level has no valued options
    parser = build_parser([chosen] if chosen else [])
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except ShuffleNetError as e:
        print(f"shufflenet {args.command}: error: {_shown(one_line(e))}", file=sys.stderr)  # one line, whatever was wrapped
        return e.exit_code
    except KeyboardInterrupt:
        print(f"shufflenet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shufflenet list | head`
        return 0
    except OSError as e:  # a folder or disk the user named: one line, the path and the reason
        print(f"shufflenet {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2


def _os_error(e: OSError) -> str:
    """``PATH: reason``; for a rename, the destination is the path the user named."""
    path = e.filename2 if e.filename2 is not None else e.filename
    reason = e.strerror or str(e) or type(e).__name__
    return _shown(" ".join((f"{path}: {reason}" if path is not None else reason).split()))
