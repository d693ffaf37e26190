"""The ``shufflenet`` command: each subcommand parses, calls one library function, prints.

User errors print one line on stderr and exit 2; a check that ran and failed exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ShuffleNetError

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


class _Bar:
    """A one-line progress bar on stderr, only on a terminal and without --quiet."""

    def __init__(self, label: str, quiet: bool = False, *, rate: bool = False) -> None:
        self.label, self.on = label, (not quiet) and sys.stderr.isatty()
        self.last = -1
        self.rate, self.first = rate, None  # rate: images/s since the first report (start-up excluded)

    def __call__(self, done: int, total: int | None) -> None:
        if not self.on:
            return
        if total:
            pct = int(100 * done / total)
            if pct == self.last and not self.rate:
                return
            self.last = pct
            bar = "#" * (pct // 4)
            speed = ""
            if self.rate:
                import time

                now = time.perf_counter()
                self.first = self.first or (now, done)
                if done > self.first[1]:
                    speed = f" {(done - self.first[1]) / (now - self.first[0]):.1f} images/s"
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}% ({done}/{total}){speed}")
        else:
            sys.stderr.write(f"\r{self.label} {done:,}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.on and self.last != -1:
            sys.stderr.write("\n")


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


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list every architecture with params, MACs and published accuracy")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="variant names only, one per line")
    p.add_argument("--family", choices=["shufflenet_v2", "shufflenet_v1", "shufflenet_v1_caffe2"],
                   help="only this family")
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


WEIGHTS_HELP = ("torchvision (published weights: torchvision's, or the zoo file for the Caffe2 V1) | random | random:SEED | PATH (.pth .pt .safetensors .npz, or a .onnx of "
                "the same architecture)")


def _add_export(sub) -> None:
    from .onnx_export import DEFAULT_OPSET, MIN_OPSET, newest_opset
    from .optimize import PAD_MULTIPLE

    p = sub.add_parser("export", help="write a variant as ONNX at any opset (optionally a zoo-style bundle)",
                       description="Write a registry variant as ONNX, directly from its description "
                                   "(no torch). With --test-data K, -o is a folder that receives "
                                   "<name>/model.onnx and <name>/test_data_set_0..K-1.")
    p.add_argument("variant", help="registry name (see `shufflenet list`)")
    p.add_argument("-o", "--out", "--output", dest="output", required=True,
                   help="the .onnx file, or the folder for a bundle")
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
    p.add_argument("--absorb-shuffle", action="store_true",
                   help="V2: absorb the channel shuffles into weight permutations (no Reshape/Transpose; "
                        "1.14x/1.40x faster on OpenVINO f32/bf16 here, no change on ONNX Runtime)")
    p.add_argument("--pad-channels", type=_positive_int, nargs="?", const=PAD_MULTIPLE, metavar="N",
                   help=f"pad branch interiors and the stem with zero channels to a multiple of N "
                        f"(default: on, N={PAD_MULTIPLE}, unless --faithful) "
                        "so ONNX Runtime's blocked CPU kernels apply: same outputs, V2 x1.0 1.16x faster "
                        "on ONNX Runtime here (docs/bench.md)")
    p.add_argument("--faithful", action="store_true",
                   help="write the plain graph, channel for channel as the architecture is described "
                        "(default: the fastest exact graph, i.e. channel padding; the same outputs)")
    p.add_argument("--input-size", type=_positive_int,
                   help="square input size (default: the training run's, else 224)")
    p.add_argument("--labels", help="class names to store in the model (one per line, JSON list or TSV)")
    p.add_argument("--via", choices=["emitter", "torch"], default="emitter",
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


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a model against its test data as the zoo does",
                       description="PATH: a .onnx with test_data_set_* beside it, a bundle folder, "
                                   "or a .tar.gz. Exit 0 all pass, 1 a mismatch, 2 unusable input.")
    p.add_argument("path", help="a .onnx with test_data_set_* beside it, a bundle folder or a .tar.gz")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only PASSED or FAILED (and the exit code)")
    p.set_defaults(handler=_cmd_validate)


# --------------------------------------------------------------------------- classify


def _check_engine(args: argparse.Namespace, ray_only: Sequence[str]) -> None:
    """Options of the ray engine given without it are an error, not silently ignored."""
    if args.engine != "ray":
        given = [f"--{name.replace('_', '-')}" for name in ray_only if getattr(args, name, None) is not None]
        if given:
            raise _usage(f"{', '.join(given)}: only with --engine ray")


def _cmd_classify(args: argparse.Namespace) -> int:
    from .preprocess import describe
    from .runtime import Classifier, expand_inputs, run_files

    _check_engine(args, ("address", "workers", "output"))
    if args.engine == "ray":
        return _classify_ray(args)
    files, problems = expand_inputs(args.images)
    if not files and problems:
        for item, why in problems:
            print(f"shufflenet classify: {item}: {why}", file=sys.stderr)
        return 2
    # many files: one-thread sessions, every core decodes and runs its own chunks (run_files)
    threads = args.threads or (1 if len(files) > args.batch_size else None)
    clf = Classifier(args.model, threads=threads, labels=args.labels, resize=args.resize,
                     exact=args.exact, optimize=not args.no_optimize)
    _untrained_notice("classify", [clf.source] if clf.untrained else [], args.quiet)
    bar = _Bar("classify", args.quiet or args.json or len(files) < 20)
    results = list(run_files(clf, files, top=args.top, batch_size=args.batch_size, progress=bar))
    bar.close()
    failed = [r for r in results if r.error] + problems
    if args.json:
        _print_json({
            "model": clf.source, "output_kind": clf.output_kind,
            "preprocessing": describe(clf.recipe, resize=clf.resize, exact=clf.exact),
            "results": [{"path": r.path, "error": r.error,
                         "top": None if r.predictions is None else [p.__dict__ for p in r.predictions]}
                        for r in results],
            "problems": [{"path": i, "error": w} for i, w in problems],
        })
    else:
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
    if not any(r.predictions for r in results):
        return 2  # nothing usable: every file was skipped
    return 1 if failed else 0


def _classify_ray(args: argparse.Namespace) -> int:
    from .ray_engine import classify

    if args.output is None:
        raise _usage("--engine ray writes one row per image to --output FILE (.parquet or .jsonl)")
    bar = _Bar("classify", args.quiet or args.json, rate=True)
    report = classify(args.images, args.model, args.output, address=args.address, workers=args.workers,
                      threads=args.threads or 1, top=args.top, batch_size=args.batch_size,
                      labels=args.labels, resize=args.resize, exact=args.exact, progress=bar)
    bar.close()
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


def _add_engine_args(p, *, output: bool) -> None:
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: every core of this machine; ray: a Ray Data actor pool (the ray extra), "
                        "same results bit for bit (docs/scale.md)")
    p.add_argument("--address", help="ray: join this cluster (HEAD_IP:6379); default: $RAY_ADDRESS, "
                                      "else a local Ray started and stopped with the command")
    p.add_argument("--workers", type=_positive_int,
                   help="ray: actors, each with --threads CPUs (default: as many as the cluster's CPUs allow)")
    if output:
        p.add_argument("--output", "-o", help="ray: one row per input (path, top-k indices, labels, "
                                              "probabilities, error) as .parquet or .jsonl, written atomically")


def _add_model_args(p, *, model_required: bool = False, exact_flag: bool = True) -> None:
    p.add_argument("--model", default="shufflenet_v2_x1_0", required=model_required,
                   help="a .onnx path, a zoo artifact (shufflenet-v2-12 ...), a variant (pretrained, "
                        "fetched when not cached) or VARIANT:random[:SEED] (default shufflenet_v2_x1_0)")
    p.add_argument("--threads", type=_positive_int,
                   help="ONNX Runtime intra-op threads (classify default: 1 per session when there are "
                        "more files than one batch, so every core decodes and runs its own batches)")
    p.add_argument("--resize", choices=["shorter", "square"],
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
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per inference call (default 16)")
    p.add_argument("--no-optimize", action="store_true",
                   help="run the model's graph as given (default: the runtime's exact load-time rewrites, "
                        "e.g. channel padding; the same outputs, faster)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notices on stderr")


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="top-k classes for images, folders or globs",
                       description="Exit 0: every file answered; 1: some files were skipped (each "
                                   "reported with the reason); 2: nothing usable.")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs; with "
                                             "--engine ray also URIs (s3://...) and .txt lists of paths")
    _add_model_args(p)
    p.add_argument("--top", type=_positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--labels", help="label file for a custom model (one per line, JSON list or TSV)")
    _add_engine_args(p, output=True)
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_classify)


# --------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _check_engine(args, ("address", "workers"))
    bar = _Bar("evaluate", args.quiet or args.json, rate=args.engine == "ray")
    if args.engine == "ray":
        from .ray_engine import evaluate

        if args.compare:
            raise _usage("--compare runs with the local engine only")
        report = evaluate(args.model, args.data, label_file=args.label_file, limit=args.limit,
                          address=args.address, workers=args.workers, threads=args.threads or 1,
                          batch_size=args.batch_size, resize=args.resize, exact=not args.photo_decoding, progress=bar)
    else:
        from .evaluate import evaluate

        report = evaluate(args.model, args.data, limit=args.limit, compare=args.compare,
                          label_file=args.label_file, batch_size=args.batch_size, threads=args.threads,
                          resize=args.resize, exact=not args.photo_decoding, optimize=not args.no_optimize,
                          progress=bar)
    bar.close()
    _untrained_notice("evaluate", report.untrained, args.quiet)
    status = 1 if report.skipped else 0  # as classify: a skipped image is a failed check
    if args.json:
        _print_json(report.to_dict())
        return status
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
    return status


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy on a labelled folder",
                       description="DATA: an ImageFolder (folders named by WordNet id or class "
                                   "name), files named <wnid>_<anything>, or a flat folder with "
                                   "--label-file ('filename index' per line). Exit 0: every image "
                                   "scored; 1: some were skipped (each listed with the reason).")
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
    from .hub import cache_dir, fetch, find_artifact, list_cache

    if args.list:
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
    if not args.names:
        raise _usage("give an artifact name (see `shufflenet fetch --list`)")
    if (args.opset is not None or args.base) and not args.manifest:
        raise _usage("--opset and --base read a manifest: give --manifest as well")
    paths = {}
    for name in args.names:
        bar = _Bar(name, args.quiet or args.json)
        if args.manifest:
            from .hub_manifest import fetch_from_manifest

            paths[name] = str(fetch_from_manifest(args.manifest, name, opset=args.opset, base=args.base,
                                                  progress=bar, force=args.force))
        else:
            paths[name] = str(fetch(find_artifact(name), progress=bar, force=args.force))
        bar.close()
        if not args.json:
            print(paths[name])
    if args.json:
        _print_json(paths)
    return 0


def _usage(msg: str) -> ShuffleNetError:
    """A usage problem the parser cannot see (exit 2, one line)."""
    return ShuffleNetError(msg)


def _add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download and verify published artifacts into the cache",
                       description="Cache: $SHUFFLENET_HOME, else $XDG_CACHE_HOME/shufflenet, else "
                                   "~/.cache/shufflenet. $SHUFFLENET_MIRROR: a base URL tried first.")
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


# --------------------------------------------------------------------------- demo-data / train


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


def _add_demo_data(sub) -> None:
    from .demo_data import CLASSES, DIFFICULTIES

    p = sub.add_parser("demo-data", help="generate an offline ImageFolder dataset of drawn objects",
                       description="Writes DIR/train/<class>/ and DIR/val/<class>/ JPEGs of "
                                   f"procedurally drawn objects ({', '.join(CLASSES)}), "
                                   "deterministically from --seed.")
    p.add_argument("dir", nargs="?", help="the folder to write (new or empty); or -o DIR")
    p.add_argument("-o", "--out", help="the folder to write, as DIR")
    p.add_argument("--classes", type=_positive_int, default=10, help=f"2..{len(CLASSES)}")
    p.add_argument("--per-class", type=_positive_int, default=500, help="images per class, 20%% held out")
    p.add_argument("--size", type=_positive_int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of it")
    p.add_argument("--difficulty", choices=DIFFICULTIES, default="normal",
                   help="easy: a grey object on a dark background (quick checks); normal: light on dark or "
                        "dark on light, random hues, learnable in minutes; hard: random colours, clutter, "
                        "textures, blur, JPEG noise")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_demo_data)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, resume, train

    if not args.resume:
        if not args.data or not args.output:
            raise _usage("--data and -o RUN are required (or --resume RUN)")
        given = {k: v for k, v in vars(args).items() if v is not None and k != "out"}
        cfg = TrainConfig.from_dict({**given, "out": args.output})
    state = {"epoch": -1, "seconds": []}
    bar = _Bar("train", args.quiet)
    report = int(os.environ.get("RANK", "0")) == 0 and not args.json  # under torchrun, rank 0 reports

    def progress(epoch, step, steps, loss):
        if state["epoch"] != epoch:
            bar.close()
            state["epoch"] = epoch
            bar.label, bar.last = f"epoch {epoch + 1}", -1
        bar(step, steps)

    def on_epoch(h, epochs):  # one line per epoch as it ends, flushed: visible in logs and pipes
        bar.close()
        bar.last = -1
        state["seconds"].append(h["seconds"])
        eta = (epochs - h["epoch"]) * sum(state["seconds"]) / len(state["seconds"])
        if report:
            val = "-" if h["val_acc"] is None else f"loss {h['val_loss']:.3f} acc {h['val_acc']:.1f}%"
            print(f"epoch {h['epoch']:3d}/{epochs}  train loss {h['train_loss']:.3f} acc {h['train_acc']:.1f}%  "
                  f"val {val}  lr {h['lr']:.3g}  {h['seconds']:.1f}s  eta {eta:.0f}s", flush=True)

    result = (resume(args.resume, epochs=args.epochs, progress=progress, on_epoch=on_epoch) if args.resume
              else train(cfg, progress=progress, on_epoch=on_epoch))
    bar.close()
    if args.json:
        _print_json({"run": str(result.run), "best_val_acc": result.best_val_acc, "final_val_acc": result.final_val_acc,
                     "epochs": result.epochs_done, "interrupted": result.interrupted, "seconds": result.seconds,
                     "history": result.history, "ddp": result.ddp})
    elif report:
        if result.interrupted:
            print(f"interrupted: resume with `shufflenet train --resume {result.run}`")
        else:
            print(f"run {result.run}: best val {result.best_val_acc}% in {result.seconds:.0f}s; export with "
                  f"`shufflenet export {result.variant} --weights {result.run}/best -o model.onnx`")
    return 130 if result.interrupted else 0


def _add_train(sub) -> None:
    # parser defaults stay None so a resume keeps the run's own settings; the defaults shown are
    # TrainConfig's (tests/test_cli_conventions.py checks that every one is shown and current)
    p = sub.add_parser("train", help="train or fine-tune on an ImageFolder (needs the torch extra)",
                       description="DATA: DATA/train/<class>/ + DATA/val/<class>/, or DATA/<class>/ (split "
                                   "by --val-fraction, seeded). RUN receives config, checkpoint, best/last "
                                   "weights, class names, metrics CSV/JSON and curves.png. One line per epoch "
                                   "as it ends. Ctrl-C leaves a resumable checkpoint. Under torchrun it trains "
                                   "with DDP (gloo).")
    p.add_argument("--data", help="the image folder (required unless --resume)")
    p.add_argument("--variant", help="registry variant (default shufflenet_v2_x0_5)")
    p.add_argument("-o", "--out", "--output", dest="output", help="the run folder (must be new or empty)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where it stopped")
    p.add_argument("--pretrained", help="torchvision | PATH: start from these weights, new head for the classes "
                                        "(default: from scratch)")
    p.add_argument("--epochs", type=_positive_int, help="(default 20)")
    p.add_argument("--batch-size", type=_positive_int, help="(default 64)")
    p.add_argument("--img-size", type=_positive_int,
                   help="train crop size, 32..1024 (default 224, or the images' shorter side when smaller)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="(default sgd: momentum 0.9, nesterov)")
    p.add_argument("--lr", type=float,
                   help="peak learning rate (default: SGD 0.1 scratch / 0.01 fine-tune; AdamW 3e-3 / 3e-4)")
    p.add_argument("--weight-decay", type=float,
                   help="not applied to BN and biases (default: SGD 4e-5, AdamW 0.05)")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up, then cosine to zero (default 2.0)")
    p.add_argument("--label-smoothing", type=float, help="(default 0.1)")
    p.add_argument("--grad-clip", type=float, help="max global gradient norm (default 5.0)")
    p.add_argument("--ema", type=float, help="EMA decay of weights and BN statistics; evaluation and best "
                                             "weights use it (default 0.99; 0 disables)")
    p.add_argument("--freeze-backbone-epochs", type=int, help="train only the new head first (default 0)")
    p.add_argument("--amp", choices=["off", "bf16", "auto"], help="bf16 autocast on CPU (default off)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, help="(default 0)")
    p.add_argument("--val-fraction", type=float, help="held out when DATA has no val/ (default 0.2)")
    p.add_argument("--min-scale", type=float, help="RandomResizedCrop lower scale bound (default 0.25)")
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
        r, m = report.recipe, report.metrics
        print(f"wrote    {report.output}  ({report.int8_bytes:,} bytes, fp32 {report.fp32_bytes:,}: "
              f"{report.fp32_bytes / report.int8_bytes:.2f}x smaller)")
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
    c = report.criterion
    return 0 if not c or c["met"] or not c.get("meaningful", True) else 1  # random weights: nothing to judge


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="int8 quantization (ONNX Runtime) tuned to keep accuracy",
                       description="Static int8 quantization, QDQ or QOperator. With --max-loss the recipe "
                                   "is tuned (calibration methods, then the least accurate tensors kept in "
                                   "fp32) until the relative top-1 loss holds: accuracy with --eval-data, "
                                   "else agreement with fp32 on held-out --calib images. Exit 1 when the "
                                   "criterion could not be met (the best model found is still written); "
                                   "on untrained (random) weights it is reported as not meaningful.")
    p.add_argument("model", help="an fp32 .onnx")
    p.add_argument("-o", "--out", "--output", dest="output", required=True, help="the int8 .onnx to write")
    p.add_argument("--calib", required=True, help="folder of calibration images (any layout)")
    p.add_argument("--format", choices=["qdq", "qoperator"], default="qdq",
                   help="qdq: QuantizeLinear/DequantizeLinear around float ops (like shufflenet-v2-12-qdq); "
                        "qoperator: QLinearConv and friends (like shufflenet-v2-12-int8)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="per-output-channel weight scales (default)")
    g.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor")
    p.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="activation range calibration tried first (tuning tries the others)")
    p.add_argument("--int8-stem", dest="fp32_stem", action="store_false",
                   help="quantize the stem too (default: first conv, ReLU and max pooling stay fp32, "
                        "which ONNX Runtime runs 1.17x faster overall here)")
    p.add_argument("--calib-count", type=_positive_int, default=100, help="images sampled for calibration (default 100)")
    p.add_argument("--max-loss", help="allowed relative top-1 loss in percent, e.g. 1%% (INC's default)")
    p.add_argument("--min-agreement", type=float, metavar="PCT",
                   help="also require this top-1 agreement with fp32, e.g. 98")
    p.add_argument("--eval-data", help="labelled folder (evaluate's layouts) to judge accuracy")
    p.add_argument("--label-file", help="'filename index' per line for a flat --eval-data folder")
    p.add_argument("--plot", help="write a PNG of per-tensor SQNR")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no tuning progress and no notices on stderr")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_quantize)


# --------------------------------------------------------------------------- zoo


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import build

    variants = args.variants if args.variants in ("zoo", "all") else [v.strip() for v in args.variants.split(",") if v.strip()]
    bar = _Bar("zoo build", args.quiet or args.json)

    def progress(done, total, result):
        bar(done, total)
        if not result.ok and not args.json:
            sys.stderr.write(f"\nshufflenet zoo: {result.artifact.name} failed: {result.error}\n")

    summary = build(args.out, weights=args.weights, variants=variants, calib=args.calib, force=args.force,
                    eval_data=args.eval_data, label_file=args.label_file, batch=args.batch, progress=progress)
    bar.close()
    if args.json:
        _print_json(summary)
    else:
        print(f"built {len(summary['built'])} artifacts into {summary['out']} in {summary['seconds']:.0f} s")
        print(f"manifest {summary['manifest']}\ntable    {summary['readme']}")
        for name, err in summary["failed"]:
            print(f"FAILED   {name}: {err}")
    return 1 if summary["failed"] else 0


def _add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="build the ONNX Model Zoo's ShuffleNet table from source")
    zsub = p.add_subparsers(dest="zoo_command", metavar="build", required=True)
    b = zsub.add_parser("build", help="export, quantize, bundle and validate every artifact",
                        description="Rebuilds shufflenet-3/6/7/8/9 (Caffe2 V1), shufflenet-v2-10/12 and "
                                    "the int8 (QOperator) and QDQ V2, each .onnx + .tar.gz with test data, "
                                    "validated; writes manifest.json (the ONNX hub's format) and README.md. With "
                                    "--weights random everything runs offline (and is labelled untrained).")
    b.add_argument("-o", "--out", required=True, help="the folder to build into (must be new or empty)")
    b.add_argument("--force", action="store_true",
                   help="replace a non-empty --out folder as a whole (swapped in when the build is done)")
    b.add_argument("--weights", default="random:0", help=WEIGHTS_HELP)
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


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, bench_images_many

    if args.images:
        rows = [r for t in args.threads or (1,) for r in bench_images_many(
            args.models, args.images, batches=args.batch or (8,), workers=args.workers, threads=t, limit=args.limit,
            optimize=not args.no_optimize)]
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
            table.append([_short_name(r["model"]), str(r["threads"]), str(r["batch"]), f"{r['seconds']:.2f}", f"{r['images_per_s']:.1f}",
                          *(f"{st[k]:.2f} ({st[k] / total:.0%})" for k in ("decode", "preprocess", "inference"))])
        _print_table(table, ["model", "threads", "batch", "seconds", "img/s", "decode s", "preprocess s",
                             "inference s"], right={1, 2, 3, 4, 5, 6, 7})
        print("stage seconds are summed over the workers")
        return 0
    args.batch, args.threads = args.batch or (1,), args.threads or (1,)
    bar = _Bar("bench", args.quiet or args.json)
    result = bench(args.models, batches=args.batch, threads=args.threads, runs=args.runs, warmup=args.warmup,
                   backend=args.backend, precision=args.precision, ort_defaults=args.ort_defaults,
                   mode="interleaved" if args.interleaved else "blocked", block=args.block,
                   optimize=not args.no_optimize, progress=bar)
    bar.close()
    _untrained_notice("bench", result["untrained"], args.quiet)
    rows = result["rows"]
    if args.plot:
        from .bench import plot

        plot(rows, args.plot)
    if args.json:
        _print_json({"env": result["env"], "rows": [r.to_dict() for r in rows]})
        return 0
    env = result["env"]
    print(f"{env['cpu']}, {env['cores']} cores, onnxruntime {env['onnxruntime']}, session: {env['ort_session']}")
    table = [[_short_name(r.model), r.backend + ("" if r.backend == "onnxruntime" else f" {r.precision}"),
              str(r.threads), str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
              f"{r.images_per_s:.0f}", f"{r.load_ms:.0f}", f"{r.rss_added_mb:.0f}"] for r in rows]
    _print_table(table, ["model", "backend", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s",
                         "load ms", "+RSS MB"], right={2, 3, 4, 5, 6, 7, 8, 9})
    base = [r for r in rows if r.threads == rows[0].threads and r.batch == rows[0].batch]
    if len(base) > 1:
        print("ratios (p50, first config): " + ", ".join(
            f"{_short_name(r.model)} {base[0].p50_ms / r.p50_ms:.2f}x" for r in base[1:]) + f" vs {_short_name(base[0].model)}")
    print(f"{rows[0].runs} runs per model and config after warm-up, {env['mode']}; "
          f"peak RSS {env['peak_rss_mb']:.0f} MB")
    return 0


def _short_name(model: str) -> str:
    from pathlib import Path

    return Path(model).name if "/" in model else model


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency/throughput of models, interleaved in one process",
                       description="Loads every model, warms up, then times them in turn, in blocks of "
                                   "consecutive runs per model (--interleaved: one run each, A B A B ...), "
                                   "so ratios hold on a noisy machine. With --images: decode + preprocess + "
                                   "inference end to end for each model and --batch size, passes interleaved.")
    p.add_argument("models", nargs="+", help="paths, zoo names or VARIANT:random")
    p.add_argument("--batch", type=_int_list, help="comma list, e.g. 1,8 (default 1; 8 with --images)")
    p.add_argument("--threads", type=_int_list, help="comma list, e.g. 1,2 (default 1)")
    p.add_argument("--runs", type=_positive_int, default=200, help="timed runs per model and configuration")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs per model first")
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="inference engine (openvino needs the extra)")
    p.add_argument("--precision", choices=["f32", "bf16"],
                   help="OpenVINO INFERENCE_PRECISION_HINT (default: OpenVINO's own, printed)")
    p.add_argument("--ort-defaults", action="store_true", help="ORT session with default options")
    p.add_argument("--block", type=_positive_int, default=40,
                   help="consecutive runs of one model per round (default 40: weights stay in cache, "
                        "as in deployment)")
    p.add_argument("--interleaved", action="store_true",
                   help="one run of each model in turn instead of blocks (evicts each model's weights)")
    p.add_argument("--no-optimize", action="store_true",
                   help="run the graphs as given, without the runtime's exact load-time rewrites")
    p.add_argument("--images", help="measure end to end over this image folder")
    p.add_argument("--workers", type=_positive_int, default=2, help="decode threads for --images")
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP inference server: KServe v2 protocol, images in / labels out, "
                                     "dynamic batching, metrics (needs the serve extra)",
                       description="Serves until SIGTERM or Ctrl-C, finishing requests in flight. API and "
                                   "limits: docs/serving.md.")
    p.add_argument("--model", action="append", required=True,
                   help="a .onnx path, .tar.gz, zoo artifact, variant or VARIANT:random[:SEED], optionally "
                        "NAME=MODEL; repeat for several. URL name: NAME, else the file stem, else as given")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 takes a free one)")
    p.add_argument("--max-batch", type=_positive_int, default=32, help="rows per model run (default 32)")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="how long a batch's first request waits for more (default 5)")
    p.add_argument("--max-body-mb", type=_positive_float, default=20.0, help="request body limit, 413 above (default 20)")
    p.add_argument("--max-queue", type=_positive_int, default=256,
                   help="rows waiting per model before 503 + Retry-After (default 256)")
    p.add_argument("--timeout-ms", type=_positive_float, default=30000.0,
                   help="request deadline, 504 after (default 30000; a request may ask for less)")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads per model "
                                                        "(default: ONNX Runtime's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no ready line (errors still print)")
    p.set_defaults(handler=_cmd_serve)


# --------------------------------------------------------------------------- main

SUBCOMMANDS = [_add_list, _add_export, _add_validate, _add_classify, _add_evaluate, _add_fetch,
               _add_demo_data, _add_train, _add_quantize, _add_zoo, _add_bench, _add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shufflenet",
        description="ShuffleNet image classifiers: architectures, weights, ONNX export and runtime.",
    )
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help shows its default (taken from the parser, so it cannot go stale)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)
            continue
        default = action.default
        if (action.help and action.help != argparse.SUPPRESS and default not in (None, False, True, argparse.SUPPRESS)
                and not action.option_strings == [] and "default" not in action.help.lower()):
            action.help += f" (default {default})".replace("%", "%%")


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:  # before the parser: no onnx/numpy/PIL
        return print(f"shufflenet {__version__}") or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except ShuffleNetError as e:
        one_line = _shown(" ".join(str(e).split()))  # errors are one line, whatever the library wrapped
        print(f"shufflenet {args.command}: error: {one_line}", file=sys.stderr)
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
