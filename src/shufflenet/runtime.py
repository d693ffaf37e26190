"""ONNX Runtime sessions for any model this package reads or writes (opset 3 and up).

Models below opset 7 (ONNX Runtime's oldest) run as an exact upgraded copy
(:func:`shufflenet.onnx_legacy.upgrade_to_opset7`); ``engine`` says which ran.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

from .errors import ShuffleNetError
from ._io import IMAGE_SUFFIXES, image_files, one_line  # noqa: F401  (IMAGE_SUFFIXES: public here)
from ._onnx import fixed_batch, input_names, model_opset, ort_session
from .onnx_legacy import LegacyUpgradeError, upgrade_to_opset7
from .options import CLASSIFY_BATCH_SIZE, CLASSIFY_TOP

__all__ = ["ModelRunError", "RuntimeError_", "model_info", "Runner", "Classifier", "Prediction", "resolve_model", "is_untrained", "agreement",
           "classify_threads", "run_files", "expand_inputs"]


class ModelRunError(ShuffleNetError, RuntimeError):
    """A model that ONNX Runtime refuses to load or run."""


RuntimeError_ = ModelRunError  # deprecated name, kept so old imports keep working


class Runner:
    """Runs a model: ONNX Runtime, on an upgraded copy below opset 7, else onnx's reference evaluator."""

    def __init__(self, model: onnx.ModelProto, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, optimize: bool = True) -> None:
        self.opset = model_opset(model)
        self.input_names = input_names(model)
        self.output_names = [o.name for o in model.graph.output]
        #: the batch size the model was exported with, or None for a dynamic batch
        self.fixed_batch = fixed_batch(model)
        self._ref = None
        self.threads = threads  # intra-op threads asked for (None: ONNX Runtime's default)
        self.rewrites = None  # the load-time rewrites applied, in words (None: the graph as given)
        try:
            runnable = upgrade_to_opset7(model)
            self.engine = "onnxruntime" if runnable is model else "onnxruntime (exact upgraded copy at opset 7)"
            self._session, self.rewrites = _optimized_session(runnable, threads, providers, optimize)
        except LegacyUpgradeError:
            from onnx.reference import ReferenceEvaluator

            self.engine = "onnx.reference (no upgrade rule for this legacy model)"
            self._ref = ReferenceEvaluator(model)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            if self._ref is not None:
                return list(self._ref.run(None, dict(feeds)))
            return self._session.run(None, dict(feeds))
        except Exception as e:
            raise ModelRunError(f"running the model failed: {one_line(e, line='last')}") from None

    def outputs(self, data: np.ndarray, *, step: int = 32) -> np.ndarray:
        """The first output for a batch of any length: run ``step`` rows at a time (the model's
        own batch when it is fixed, padding the last chunk with zeros)."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        step = self.fixed_batch or max(step, 1)
        outs = []
        for start in range(0, len(data), step):
            chunk = data[start:start + step]
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), np.float32)])
            outs.append(self.run({self.input_names[0]: chunk})[0][:n])
        return np.concatenate(outs)


def _optimized_session(model: onnx.ModelProto, threads: int | None, providers, optimize: bool):
    """(session, rewrites applied or None): the exact load-time rewrites
    (:func:`shufflenet.onnx_optimize.optimize_for_inference`) unless ``optimize`` is False; the
    plain graph when they do not apply or ONNX Runtime refuses the rewritten one."""
    if optimize:
        from .onnx_optimize import OPTIMIZED_KEY, optimize_for_inference

        fast = optimize_for_inference(model)
        if fast is not model:
            try:
                return _session(fast, threads, providers), next(
                    p.value for p in fast.metadata_props if p.key == OPTIMIZED_KEY)
            except ModelRunError:
                pass
    return _session(model, threads, providers), None


def _session(model: onnx.ModelProto, threads: int | None, providers: Sequence[str] | None):
    try:
        return ort_session(model, threads=threads, providers=providers)
    except Exception as e:
        raise ModelRunError(f"ONNX Runtime cannot load the model: {one_line(e, line='last')}") from None


# --------------------------------------------------------------------------- the Classifier


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def model_info(model: onnx.ModelProto):
    """(preprocess recipe, output kind, labels or None) from metadata, else from I/O names."""
    from .specs import Preprocess

    meta = {p.key: p.value for p in model.metadata_props}
    recipe = Preprocess()
    if "preprocessing" in meta:
        try:
            raw = json.loads(meta["preprocessing"])
            recipe = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()
                                   if k in Preprocess.__dataclass_fields__})
        except (ValueError, TypeError, RecursionError):
            pass  # an unreadable recipe falls back to the ImageNet default
    kind = meta.get("output_kind")
    if kind not in ("logits", "probabilities"):
        last = model.graph.node[-1].op_type if model.graph.node else ""
        out = model.graph.output[0].name
        kind = "probabilities" if last == "Softmax" or "softmax" in out.lower() else "logits"
    labels = None
    if "labels" in meta:
        try:
            parsed = json.loads(meta["labels"])
            labels = parsed if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed) else None
        except (ValueError, RecursionError):
            labels = None
    return recipe, kind, labels


def is_untrained(model: onnx.ModelProto) -> bool:
    """True when the model's metadata marks its weights as random (``weights_trained`` false):
    its outputs carry no information, whatever they are compared with."""
    return any(p.key == "weights_trained" and p.value == "false" for p in model.metadata_props)


#: suffixes that make a --model argument a path even when the file does not exist
MODEL_FILE_SUFFIXES = (".onnx", ".tar.gz", ".tgz", ".tar")


def resolve_model(model) -> tuple[onnx.ModelProto, str]:
    """The one model resolver of every command: -> (model, source).

    ``model``: an ``onnx.ModelProto``; a path to a ``.onnx``, a zoo-layout ``.tar.gz``/``.tgz``/
    ``.tar`` (its one model; extracted safely) or a folder holding one model; ``VARIANT:random``
    or ``VARIANT:random:SEED`` (untrained, offline); a zoo artifact name (``shufflenet-v2-12``,
    fetched and verified once); or a variant name (its published weights). A path never touches
    the network, and a missing path says "no such file"; when a download is impossible the
    error suggests a local file or ``VARIANT:random``.
    """
    from .bundle import load_model_checked
    from .specs import list_variants

    if isinstance(model, onnx.ModelProto):
        return model, "<in-memory model>"
    text = os.fspath(model)
    path = Path(text)
    if path.exists():  # a .onnx, a bundle folder or a .tar.gz, in any of the zoo's layouts
        from .bundle import load_any_model

        return load_any_model(path), str(path)
    name, sep, rest = text.partition(":")
    if sep and name in list_variants():
        if not rest.startswith("random"):
            raise ModelRunError(f"{text!r}: after the variant only :random or :random:SEED is accepted")
        from .onnx_export import export_onnx

        return export_onnx(name, weights=rest), text
    from .specs import artifacts, default_artifact

    zoo = {a.name: a for a in artifacts() if a.kind == "zoo-onnx"}
    if text in zoo:
        return load_model_checked(_fetch_or_hint(zoo[text], zoo[text].variant)), text
    if text in list_variants():
        from .onnx_export import export_onnx

        published = default_artifact(text, "torchvision-pth")
        if published:
            from .hub import HubError

            try:
                return export_onnx(text, weights="torchvision"), f"{text} (torchvision weights)"
            except HubError as e:
                raise _with_hint(e, text) from None
        onnx_files = [a for a in (default_artifact(text, "zoo-onnx"),) if a is not None]
        if onnx_files:
            return load_model_checked(_fetch_or_hint(onnx_files[-1], text)), onnx_files[-1].name
        raise ModelRunError(f"no pretrained weights are published for {text}; use {text}:random "
                            "for an untrained model or give a path")
    if text.lower().endswith(MODEL_FILE_SUFFIXES) or os.sep in text or (os.altsep and os.altsep in text):
        raise ModelRunError(f"{text}: no such file")
    raise ModelRunError(f"{text!r} is not a file, a variant (see `shufflenet list`), VARIANT:random[:SEED] "
                        f"or a zoo artifact ({', '.join(sorted(zoo))})")


def _offline_alternatives(variant: str) -> str:
    return (f"without the network, give a local .onnx or zoo .tar.gz, or {variant}:random for an "
            "untrained model")


def _fetch_or_hint(artifact, variant: str) -> Path:
    from .hub import HubError, fetch

    try:
        return fetch(artifact)
    except HubError as e:
        raise _with_hint(e, variant) from None


def _with_hint(e: Exception, variant: str) -> Exception:
    """``e`` (its class and attributes kept: callers branch on the failure class) with the
    offline alternatives added to its message."""
    e.args = (f"{e}; {_offline_alternatives(variant)}", *e.args[1:])
    return e


class Classifier:
    """Top-k classification with any fp32 or int8 ShuffleNet ONNX model.

    ``model``: a path, a zoo artifact name, a variant name (pretrained, fetched when needed) or
    ``VARIANT:random[:SEED]``. Preprocessing and output kind come from the model's metadata (or
    its I/O names for files we did not write); labels: ``labels`` given here, else the model's
    metadata, else ImageNet's for 1000 classes. By default the exact load-time rewrites of
    :mod:`shufflenet.onnx_optimize` apply; ``optimize=False`` runs the graph as given.
    ``predict`` is thread-safe: one ONNX Runtime session serves all threads.
    """

    def __init__(self, model, *, threads: int | None = None, providers=None, labels=None,
                 resize: str | None = None, exact: bool = False, optimize: bool = True) -> None:
        from .labels import imagenet_labels, load_labels

        proto, self.source = resolve_model(model)
        self.recipe, self.output_kind, meta_labels = model_info(proto)
        self.resize = resize or self.recipe.resize_mode
        self.exact = exact
        self.optimize = optimize  # the exact load-time rewrites (onnx_optimize) applied
        self.runner = Runner(proto, threads=threads, providers=providers, optimize=optimize)
        self.input_name = self.runner.input_names[0]
        self.fixed_batch = self.runner.fixed_batch
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        self.num_classes = out_dims[-1].dim_value if out_dims and out_dims[-1].HasField("dim_value") else None
        if isinstance(labels, (str, os.PathLike)):
            labels = load_labels(labels)
        self.labels = list(labels) if labels is not None else meta_labels
        if self.labels is None and self.num_classes == 1000:
            self.labels = imagenet_labels()
        if self.labels is not None and self.num_classes and len(self.labels) != self.num_classes:
            raise ModelRunError(f"{len(self.labels)} labels for a model with {self.num_classes} classes")
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.untrained = is_untrained(proto)  # random weights: predictions carry no information

    def decode(self, image):
        """A path, bytes or PIL image -> RGB PIL image: torchvision's decoding with ``exact``,
        else photo decoding (EXIF orientation, JPEG draft); see :mod:`shufflenet.preprocess`."""
        from .preprocess import DRAFT_MARGIN, load_image

        return load_image(image, draft_size=None if self.exact else DRAFT_MARGIN * self.recipe.resize,
                          exact=self.exact)

    def prepare(self, img) -> np.ndarray:
        """An RGB PIL image -> the model's float32 [1, 3, H, W] input."""
        from .preprocess import preprocess_pil

        return preprocess_pil(img, self.recipe, resize=self.resize)

    def preprocess(self, image) -> np.ndarray:
        return self.prepare(self.decode(image))

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output (logits or probabilities) for a preprocessed NCHW batch."""
        return self.runner.outputs(batch, step=len(batch))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a preprocessed float32 NCHW batch."""
        return self.probabilities_from(self.outputs(batch))

    def probabilities_from(self, raw: np.ndarray) -> np.ndarray:
        out = raw.astype(np.float64)
        if self.output_kind == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels is not None else f"class_{index}"

    def top(self, probs: np.ndarray, k: int = 5) -> list[list[Prediction]]:
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[Prediction(int(i), self.label(int(i)), float(p[i])) for i in row] for p, row in zip(probs, order)]

    def predict(self, images, *, top: int = CLASSIFY_TOP):
        """Top-k for one image (returns a list of Prediction) or a list of images (list of lists)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        batch = np.concatenate([x if isinstance(x, np.ndarray) else self.preprocess(x) for x in items])
        result = self.top(self.probabilities(batch), top)
        return result[0] if single else result


def agreement(a_raw: np.ndarray, b_raw: np.ndarray, kind_a: str = "logits", kind_b: str = "logits") -> dict:
    """How far two models' raw outputs on the same images agree: top-1 agreement and top-5
    overlap (percent), mean cosine of the logits (log-probabilities for softmax models), and the
    largest absolute difference of the raw outputs."""
    def scores(x, kind):
        x = x.astype(np.float64)
        return np.log(np.maximum(x, 1e-30)) if kind == "probabilities" else x

    a, b = scores(a_raw, kind_a), scores(b_raw, kind_b)
    k = min(5, a.shape[1])
    top_a, top_b = np.argsort(-a, 1)[:, :k], np.argsort(-b, 1)[:, :k]
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1)) * 100),
        "top5_overlap": float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)]) * 100),
        "logit_cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(a_raw.astype(np.float64) - b_raw.astype(np.float64)).max()),
    }


# --------------------------------------------------------------------------- files in, answers out


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (recursively, image suffixes only) and globs -> (files, [(item, reason)]).

    Only regular files are taken: a FIFO or device (named or matched) is a problem, never opened.
    """
    import glob
    import stat

    files, problems = [], []
    for item in items:
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            problems.append((item, "no file matches this pattern"))
        for m in matches:
            p = Path(m)
            if p.is_dir():
                found = image_files(p, problems)
                if not found:
                    problems.append((m, "folder holds no images"))
                files.extend(found)
            elif p.is_file():
                files.append(p)
            elif p.exists():
                mode = p.stat().st_mode
                kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
                problems.append((m, f"is {kind}, not a regular file; refused"))
            else:
                problems.append((m, "no such file"))
    return files, problems


@dataclass
class FileResult:
    path: str
    predictions: list[Prediction] | None = None
    error: str | None = None
    outputs: np.ndarray | None = None  # raw model output row, for evaluation


#: chunks decoded ahead of inference in ``run_files``: enough that decoding never waits
PREFETCH_CHUNKS = 3


def classify_threads(threads: int | None, files: int, batch_size: int) -> int | None:
    """ONNX Runtime intra-op threads for classifying ``files`` images: ``threads`` when given;
    else one per session when there are more files than one batch (every core then decodes and
    runs its own chunks, see :func:`run_files`), else ONNX Runtime's default (None)."""
    if threads:
        return threads
    return 1 if files > batch_size else None


def run_files(clf: Classifier, paths: Sequence[Path], *, top: int = CLASSIFY_TOP,
              batch_size: int = CLASSIFY_BATCH_SIZE,
              workers: int | None = None, progress=None, keep_outputs: bool = False,
              timings: dict[str, float] | None = None):
    """Yield one FileResult per path, in order; decoding overlaps inference on a thread pool
    (with a one-thread session, each worker decodes and runs whole chunks).

    A file that cannot be read gets ``error`` (the reason) and the others go on. ``timings``, when
    given, accumulates seconds spent in "decode", "preprocess" (summed over workers) and "inference".
    """
    from concurrent.futures import ThreadPoolExecutor

    stage = timings if timings is not None else {}
    for key in ("decode", "preprocess", "inference"):
        stage.setdefault(key, 0.0)
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runner = _ChunkRunner(clf, pool)
        for chunk, ran in runner.in_order(chunks, ahead=max(PREFETCH_CHUNKS, workers + 1)):
            stage["decode"] += sum(item.decode_s for item in ran.loaded)
            stage["preprocess"] += sum(item.preprocess_s for item in ran.loaded)
            stage["inference"] += ran.seconds
            for r in _file_results(clf, chunk, ran, top=top, keep_outputs=keep_outputs):
                done += 1
                if progress:
                    progress(done, len(paths))
                yield r


class _Loaded(NamedTuple):
    """One file, decoded and preprocessed (``rows``) or not (``error``), and the seconds it took."""
    rows: np.ndarray | None
    error: str | None
    decode_s: float
    preprocess_s: float


def load_one(clf: Classifier, image, name: str) -> _Loaded:
    """One file (a path, or the bytes read from ``name``) decoded and preprocessed by ``clf``; a
    file that cannot be is one bad file: ``error`` says why, beginning with ``name``. The one
    loader of both engines (local and ray), so their answers and messages are the same."""
    from .preprocess import ImageError

    t0 = time.perf_counter()
    try:
        img = clf.decode(image)
        t1 = time.perf_counter()
        return _Loaded(clf.prepare(img), None, t1 - t0, time.perf_counter() - t1)
    except ImageError as e:
        msg = str(e)
        if isinstance(image, bytes) and msg.startswith("<bytes>"):  # the bytes' own name
            msg = name + msg[len("<bytes>"):]
        return _Loaded(None, msg if msg.startswith(name) else f"{name}: {msg}", 0.0, 0.0)
    except Exception as e:  # an unexpected decoder failure is still one bad file
        return _Loaded(None, f"{name}: {type(e).__name__}: {e}", 0.0, 0.0)


class _Ran(NamedTuple):
    """One chunk: its files as loaded, the indices of the good ones and the model's rows for them."""
    loaded: list[_Loaded]
    good: list[int]
    raw: np.ndarray | None
    seconds: float


class _ChunkRunner:
    """run_files' work on chunks of files, on a thread pool: decode and preprocess each file,
    then one model run on the chunk's good files."""

    def __init__(self, clf: Classifier, pool) -> None:
        self.clf, self.pool = clf, pool
        # one-thread inference: each worker decodes *and* runs its own chunk, so every core does the
        # whole job and no thread waits for another; otherwise the workers decode ahead while this
        # thread runs the multi-threaded session
        self.whole_chunks = clf.runner.threads == 1

    def in_order(self, chunks: list[list[Path]], *, ahead: int):
        """Yield (chunk, _Ran) in order, keeping ``ahead`` chunks in flight."""
        pending_chunks = iter(chunks)
        window: deque = deque()  # chunks in flight: the workers never wait for this thread

        def submit() -> None:
            chunk = next(pending_chunks, None)
            if chunk is not None:
                window.append((chunk, self.pool.submit(self.job, chunk) if self.whole_chunks else
                               [self.pool.submit(self.load, p) for p in chunk]))

        for _ in range(ahead):
            submit()
        while window:
            chunk, pending = window.popleft()
            submit()
            yield chunk, pending.result() if self.whole_chunks else self.infer([f.result() for f in pending])

    def job(self, chunk: list[Path]) -> _Ran:
        return self.infer([self.load(p) for p in chunk])

    def load(self, p: Path) -> _Loaded:
        return load_one(self.clf, p, str(p))

    def infer(self, loaded: list[_Loaded]) -> _Ran:
        good = [i for i, item in enumerate(loaded) if item.rows is not None]
        if not good:
            return _Ran(loaded, good, None, 0.0)
        t0 = time.perf_counter()
        raw = self.clf.outputs(np.concatenate([loaded[i].rows for i in good]))
        return _Ran(loaded, good, raw, time.perf_counter() - t0)


def _file_results(clf: Classifier, chunk: list[Path], ran: _Ran, *, top: int,
                  keep_outputs: bool) -> list[FileResult]:
    results = [FileResult(str(p), error=item.error) for p, item in zip(chunk, ran.loaded)]
    if ran.good:
        probs = clf.probabilities_from(ran.raw)
        for i, preds, row in zip(ran.good, clf.top(probs, top), ran.raw):
            results[i].predictions = preds
            if keep_outputs:
                results[i].outputs = row
    return results
