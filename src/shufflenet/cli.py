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

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label, self.on = label, (not quiet) and sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int | None) -> None:
        if not self.on:
            return
        if total:
            pct = int(100 * done / total)
            if pct == self.last:
                return
            self.last = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}% ({done}/{total})")
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
        via=args.via, **({"input_size": args.input_size} if args.input_size else {}),
        **({"absorb_shuffle": True} if args.absorb_shuffle else {}),
        **({"pad_channels": args.pad_channels} if args.pad_channels else {}),
        **({"labels": _read_labels(args.labels)} if args.labels else {}),
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
                "the same architecture); default random:0")


def _add_export(sub) -> None:
    from .onnx_export import DEFAULT_OPSET, MIN_OPSET, newest_opset
    from .optimize import PAD_MULTIPLE

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
    p.add_argument("--absorb-shuffle", action="store_true",
                   help="V2: absorb the channel shuffles into weight permutations (no Reshape/Transpose; "
                        "1.14x/1.40x faster on OpenVINO f32/bf16 here, no change on ONNX Runtime)")
    p.add_argument("--pad-channels", type=_positive_int, nargs="?", const=PAD_MULTIPLE, metavar="N",
                   help=f"pad branch interiors and the stem with zero channels to a multiple of N "
                        f"(default {PAD_MULTIPLE}) "
                        "so ONNX Runtime's blocked CPU kernels apply: same outputs, V2 x1.0 1.16x faster "
                        "on ONNX Runtime here (docs/bench.md)")
    p.add_argument("--input-size", type=_positive_int,
                   help="square input size (default: the training run's, else 224)")
    p.add_argument("--labels", help="class names to store in the model (one per line, JSON list or TSV)")
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
    print(f"{_shown(report.path)}: {_shown(report.model)} (opset {report.opset})")  # names from the file
    print(f"checker  {_shown(report.checker)}")
    print(f"engine   {report.engine}")
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
    p.add_argument("path")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_validate)


# --------------------------------------------------------------------------- classify


def _cmd_classify(args: argparse.Namespace) -> int:
    from .runtime import Classifier, expand_inputs, run_files

    files, problems = expand_inputs(args.images)
    if not files and problems:
        for item, why in problems:
            print(f"shufflenet classify: {item}: {why}", file=sys.stderr)
        return 2
    # many files: one-thread sessions, every core decodes and runs its own chunks (run_files)
    threads = args.threads or (1 if len(files) > args.batch_size else None)
    clf = Classifier(args.model, threads=threads, labels=args.labels, resize=args.resize,
                     exact=args.exact)
    bar = _Bar("classify", args.quiet or args.json or len(files) < 20)
    results = list(run_files(clf, files, top=args.top, batch_size=args.batch_size, progress=bar))
    bar.close()
    failed = [r for r in results if r.error] + problems
    if args.json:
        _print_json({
            "model": clf.source, "output_kind": clf.output_kind,
            "preprocessing": f"{clf.resize} resize {clf.recipe.resize}, crop {clf.recipe.crop}",
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
    return 1 if failed else 0


def _add_model_args(p, *, model_required: bool = False) -> None:
    p.add_argument("--model", default="shufflenet_v2_x1_0", required=model_required,
                   help="a .onnx path, a zoo artifact (shufflenet-v2-12 ...), a variant (pretrained, "
                        "fetched when not cached) or VARIANT:random[:SEED] (default shufflenet_v2_x1_0)")
    p.add_argument("--threads", type=_positive_int,
                   help="ONNX Runtime intra-op threads (classify default: 1 per session when there are "
                        "more files than one batch, so every core decodes and runs its own batches)")
    p.add_argument("--resize", choices=["shorter", "square"],
                   help="shorter: shorter side to 256 (torchvision); square: whole image to 256x256 "
                        "(the zoo notebook); default: the model's own")
    p.add_argument("--exact", action="store_true",
                   help="decode large JPEGs at full size (default: DCT draft decoding, see docs)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per inference call")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="top-k classes for images, folders or globs",
                       description="Exit 0: every file answered; 1: some files were skipped (each "
                                   "reported with the reason); 2: nothing usable.")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    _add_model_args(p)
    p.add_argument("--top", type=_positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--labels", help="label file for a custom model (one per line, JSON list or TSV)")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_classify)


# --------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    bar = _Bar("evaluate", args.quiet or args.json)
    report = evaluate(args.model, args.data, limit=args.limit, compare=args.compare,
                      label_file=args.label_file, batch_size=args.batch_size, threads=args.threads,
                      resize=args.resize, exact=args.exact, progress=bar)
    bar.close()
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
    _add_model_args(p)
    p.add_argument("--data", required=True, help="the labelled image folder")
    p.add_argument("--label-file", help="'filename index' per line (ImageNet val convention)")
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N images")
    p.add_argument("--compare", metavar="MODEL2", help="also report agreement with a second model")
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
    paths = {}
    for name in args.names:
        a = find_artifact(name)
        bar = _Bar(name, args.quiet or args.json)
        paths[name] = str(fetch(a, progress=bar, force=args.force))
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
    p.add_argument("--force", action="store_true", help="download again even when cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print exact data as JSON")
    p.set_defaults(handler=_cmd_fetch)


# --------------------------------------------------------------------------- demo-data / train


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from .demo_data import make_demo_data

    info = make_demo_data(args.dir, classes=args.classes, per_class=args.per_class, size=args.size,
                          seed=args.seed, difficulty=args.difficulty)
    if args.json:
        _print_json(info)
    else:
        print(f"{args.dir}: {info['train']} train + {info['val']} val images, {len(info['classes'])} classes "
              f"({', '.join(info['classes'])}), {info['size']}px, {info['difficulty']}")
    return 0


def _add_demo_data(sub) -> None:
    from .demo_data import CLASSES

    p = sub.add_parser("demo-data", help="generate an offline ImageFolder dataset of drawn objects",
                       description="Writes DIR/train/<class>/ and DIR/val/<class>/ JPEGs of "
                                   f"procedurally drawn objects ({', '.join(CLASSES)}), "
                                   "deterministically from --seed.")
    p.add_argument("dir")
    p.add_argument("--classes", type=_positive_int, default=10, help=f"2..{len(CLASSES)} (default 10)")
    p.add_argument("--per-class", type=_positive_int, default=100, help="images per class, 20%% held out (default 100)")
    p.add_argument("--size", type=_positive_int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", choices=["easy", "normal"], default="normal",
                   help="easy: one light object on a dark background (quick checks); normal: colour, "
                        "clutter, textures, blur, JPEG noise")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_demo_data)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, resume, train

    if not args.resume:
        if not args.data or not args.output:
            raise _usage("--data and -o RUN are required (or --resume RUN)")
        given = {k: v for k, v in vars(args).items() if v is not None and k != "out"}
        cfg = TrainConfig.from_dict({**given, "out": args.output})
    state = {"epoch": -1}
    bar = _Bar("train", args.quiet)

    def progress(epoch, step, steps, loss):
        if state["epoch"] != epoch:
            bar.close()
            state["epoch"] = epoch
            bar.label, bar.last = f"epoch {epoch + 1}", -1
        bar(step, steps)

    result = (resume(args.resume, epochs=args.epochs, progress=progress) if args.resume
              else train(cfg, progress=progress))
    bar.close()
    if args.json:
        _print_json({"run": str(result.run), "best_val_acc": result.best_val_acc, "final_val_acc": result.final_val_acc,
                     "epochs": result.epochs_done, "interrupted": result.interrupted, "seconds": result.seconds,
                     "history": result.history, "ddp": result.ddp})
    elif int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        for h in result.history:
            val = "-" if h["val_acc"] is None else f"{h['val_acc']:.1f}%"
            print(f"epoch {h['epoch']:3d}  loss {h['train_loss']:.3f}  train {h['train_acc']:.1f}%  val {val}  "
                  f"lr {h['lr']:.3g}  {h['seconds']:.1f}s")
        if result.interrupted:
            print(f"interrupted: resume with `shufflenet train --resume {result.run}`")
        else:
            print(f"run {result.run}: best val {result.best_val_acc}%; export with "
                  f"`shufflenet export {result.variant} --weights {result.run}/best -o model.onnx`")
    return 130 if result.interrupted else 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune on an ImageFolder (needs the torch extra)",
                       description="DATA: DATA/train/<class>/ + DATA/val/<class>/, or DATA/<class>/ (split "
                                   "by --val-fraction, seeded). RUN receives config, checkpoint, best/last "
                                   "weights, class names, metrics CSV/JSON and curves.png. Ctrl-C leaves a "
                                   "resumable checkpoint. Under torchrun it trains with DDP (gloo).")
    p.add_argument("--data")
    p.add_argument("--variant", default=None, help="registry variant (default shufflenet_v2_x0_5)")
    p.add_argument("-o", "--output", help="the run folder (must be new or empty)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where it stopped")
    p.add_argument("--pretrained", help="torchvision | PATH: start from these weights, new head for the classes")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--img-size", type=_positive_int, help="train crop size (default 224)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, help="peak learning rate (default: SGD 0.2 scratch / 0.02 fine-tune)")
    p.add_argument("--weight-decay", type=float, help="not applied to BN and biases")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--ema", type=float, help="EMA decay, e.g. 0.999 (evaluation and best weights use it)")
    p.add_argument("--freeze-backbone-epochs", type=int)
    p.add_argument("--amp", choices=["off", "bf16", "auto"])
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--min-scale", type=float, help="RandomResizedCrop lower scale bound")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
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
                      plot=args.plot, progress=progress)
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
        print(line)
        if report.criterion:
            c = report.criterion
            want = []
            if c["max_loss_pct"] is not None:
                want.append(f"{c['measure']} loss {c['loss_pct']:.2f}% <= {c['max_loss_pct']}%")
            if c["min_agreement_pct"] is not None:
                want.append(f"agreement {c['agreement_pct']:.2f}% >= {c['min_agreement_pct']}%")
            print(f"criterion {' and '.join(want)}: {'met' if c['met'] else 'NOT met'} ({c['images']} images)")
        if report.latency_ms:
            lat = report.latency_ms
            print(f"latency  fp32 {lat['fp32_ms']:.2f} ms  int8 {lat['int8_ms']:.2f} ms  ({lat['speedup']:.2f}x, "
                  f"batch 1, 1 thread, {lat['runs']} runs each, interleaved)")
        if report.worst_nodes:
            print("worst    " + ", ".join(f"{t} {v:.1f} dB" for t, v in report.worst_nodes[:5]))
        if report.plot:
            print(f"plot     {report.plot}")
    return 0 if not report.criterion or report.criterion["met"] else 1


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="int8 quantization (ONNX Runtime) tuned to keep accuracy",
                       description="Static int8 quantization, QDQ or QOperator. With --max-loss the recipe "
                                   "is tuned (calibration methods, then the least accurate tensors kept in "
                                   "fp32) until the relative top-1 loss holds: accuracy with --eval-data, "
                                   "else agreement with fp32 on held-out --calib images. Exit 1 when the "
                                   "criterion could not be met (the best model found is still written).")
    p.add_argument("model", help="an fp32 .onnx")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--calib", required=True, help="folder of calibration images (any layout)")
    p.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="per-output-channel weight scales (default)")
    g.add_argument("--per-tensor", dest="per_channel", action="store_false")
    p.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--int8-stem", dest="fp32_stem", action="store_false",
                   help="quantize the stem too (default: first conv, ReLU and max pooling stay fp32, "
                        "which ONNX Runtime runs 1.17x faster overall here)")
    p.add_argument("--calib-count", type=_positive_int, default=100, help="images sampled for calibration (default 100)")
    p.add_argument("--max-loss", help="allowed relative top-1 loss in percent, e.g. 1%% (INC's default)")
    p.add_argument("--min-agreement", type=float, metavar="PCT",
                   help="also require this top-1 agreement with fp32, e.g. 98")
    p.add_argument("--eval-data", help="labelled folder (evaluate's layouts) to judge accuracy")
    p.add_argument("--plot", help="write a PNG of per-tensor SQNR")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
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

    summary = build(args.out, weights=args.weights, variants=variants, calib=args.calib,
                    eval_data=args.eval_data, progress=progress)
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
                                    "validated; writes manifest.json (zoo hub keys) and README.md. With "
                                    "--weights random everything runs offline (and is labelled untrained).")
    b.add_argument("--out", required=True)
    b.add_argument("--weights", default="random:0", help=WEIGHTS_HELP)
    b.add_argument("--variants", default="zoo", help="zoo (the seed table), all (+ every variant, with int8), "
                                                     "or a comma list of variants")
    b.add_argument("--calib", help="calibration images for the int8 models (default: 100 generated images)")
    b.add_argument("--eval-data", help="labelled images: adds top-1/top-5 to the table")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--json", action="store_true")
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
    from .bench import bench, bench_images

    if args.images:
        if len(args.models) != 1:
            raise _usage("--images measures one model end to end")
        res = bench_images(args.models[0], args.images, batch=(args.batch or (8,))[0],
                           workers=args.workers, threads=(args.threads or (1,))[0], limit=args.limit)
        if args.json:
            _print_json({k: v for k, v in res.items() if k not in ("predictions", "files")})
            return 0
        st = res["stage_seconds"]
        total = sum(st.values())
        print(f"{res['images']} images in {res['seconds']:.2f} s: {res['images_per_s']:.1f} images/s "
              f"(batch {res['batch']}, {res['workers']} decode workers, {res['threads']} inference threads)")
        print("time by stage (summed over workers): " + ", ".join(
            f"{k} {v:.2f} s ({v / total:.0%})" for k, v in st.items()))
        return 0
    args.batch, args.threads = args.batch or (1,), args.threads or (1,)
    bar = _Bar("bench", args.quiet or args.json)
    result = bench(args.models, batches=args.batch, threads=args.threads, runs=args.runs, warmup=args.warmup,
                   backend=args.backend, precision=args.precision, ort_defaults=args.ort_defaults, progress=bar)
    bar.close()
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
    print(f"{rows[0].runs} interleaved runs per model and config after warm-up; peak RSS {env['peak_rss_mb']:.0f} MB")
    return 0


def _short_name(model: str) -> str:
    from pathlib import Path

    return Path(model).name if "/" in model else model


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency/throughput of models, interleaved in one process",
                       description="Loads every model, warms up, then times them in turn (A B A B ...) so "
                                   "ratios hold on a noisy machine. With --images: decode + preprocess + "
                                   "inference end to end for one model.")
    p.add_argument("models", nargs="+", help="paths, zoo names or VARIANT:random")
    p.add_argument("--batch", type=_int_list, help="comma list, e.g. 1,8 (default 1; 8 with --images)")
    p.add_argument("--threads", type=_int_list, help="comma list, e.g. 1,2 (default 1)")
    p.add_argument("--runs", type=_positive_int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--precision", choices=["f32", "bf16"],
                   help="OpenVINO INFERENCE_PRECISION_HINT (default: OpenVINO's own, printed)")
    p.add_argument("--ort-defaults", action="store_true", help="ORT session with default options")
    p.add_argument("--images", help="measure end to end over this image folder")
    p.add_argument("--workers", type=_positive_int, default=2, help="decode threads for --images")
    p.add_argument("--limit", type=_positive_int, help="at most N images for --images")
    p.add_argument("--plot", help="PNG of the sorted latencies per configuration")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_bench)


# --------------------------------------------------------------------------- main

SUBCOMMANDS = [_add_list, _add_export, _add_validate, _add_classify, _add_evaluate, _add_fetch,
               _add_demo_data, _add_train, _add_quantize, _add_zoo, _add_bench]


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
