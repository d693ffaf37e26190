"""Classify and evaluate on a Ray cluster with Ray Data (the ``ray`` extra).

The pipeline is the local engine's, spread over an actor pool: every actor holds one
:class:`~shufflenet.runtime.Classifier` (one ONNX Runtime session, intra-op threads = the CPUs the
actor reserves), built from the model bytes that the driver resolved once and put in the object
store. Each actor reads its batch's files as bytes, decodes and preprocesses them with the same
``Classifier.decode``/``prepare`` the local engine uses, and runs the batch; so every answer is
bit for bit the local one (ONNX Runtime's CPU outputs do not depend on batch composition or thread
count; ``tests/test_ray.py`` checks every row). Execution streams: paths go in as small blocks,
results come out as Arrow tables, and memory stays bounded whatever the number of images.

A file that cannot be read or decoded becomes a row with ``error`` set; it never ends the job.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._io import IMAGE_SUFFIXES, atomic_write, one_line
from .errors import MissingDependencyError, ShuffleNetError
from .options import CLASSIFY_BATCH_SIZE, CLASSIFY_TOP

__all__ = ["RayEngineError", "list_sources", "predict_dataset", "classify", "evaluate",
           "RayClassifyReport", "OUTPUT_FORMATS", "connect"]


class RayEngineError(ShuffleNetError, RuntimeError):
    """The cluster cannot be reached, refuses the job, or the job failed as a whole."""


#: output files by suffix
OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
#: a "file" larger than this is refused before it is read whole into an actor's memory
MAX_FILE_BYTES = 256 * 1024 * 1024
#: rows per Parquet row group (result batches are gathered: 16-row groups would bloat the file)
ROW_GROUP = 65536
#: the stages an actor times (``stage_times``)
STAGES = ("read", "decode", "preprocess", "inference")
#: threads per actor reading its batch's files (I/O waits on object stores, not CPU)
READ_THREADS = 8
#: paths per input block: small enough that the pool streams and balances, large enough that a
#: million-image job is a few thousand Ray tasks, not a million
MAX_BLOCKS = 2000
#: Ray's errors can carry whole remote tracebacks: the message is cut to this many characters
ERROR_CHARS = 500

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _require_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the ray engine needs the ray extra: pip install 'shufflenet[ray]'") from None
    return ray


# --------------------------------------------------------------------------- sources


def list_sources(items: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Folders, globs, files, ``scheme://`` URIs (any filesystem pyarrow opens: s3://, gs://,
    file://, ...) and ``.txt`` lists of those (one per line, relative paths taken from the list's
    folder) -> (paths/URIs in order, [(item, why it gave nothing)]).

    Local folders and globs expand exactly as the local engine's (same files, same order).
    """
    from .runtime import expand_inputs

    out: list[str] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        if _URI.match(item):
            found, why = _expand_uri(item)
            out.extend(found)
            if why:
                problems.append((item, why))
        elif item.lower().endswith(".txt") and Path(item).is_file():
            listed, bad = _read_list(Path(item))
            out.extend(listed)
            problems.extend(bad)
        else:
            files, bad = expand_inputs([item])
            out.extend(str(f) for f in files)
            problems.extend(bad)
    return out, problems


def _read_list(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [], [(str(path), f"cannot read the list ({e})")]
    out = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        out.append(entry if _URI.match(entry) or os.path.isabs(entry) else str(path.parent / entry))
    if not out:
        return [], [(str(path), "the list holds no paths")]
    return out, []


def _expand_uri(uri: str) -> tuple[list[str], str | None]:
    import fnmatch
    import glob
    import itertools

    import pyarrow.fs as pafs

    scheme, _, rest = uri.partition("://")
    scheme += "://"
    magic = glob.has_magic(rest)
    base = uri.rstrip("/") if not magic else scheme + "/".join(  # the folder above the first wildcard
        itertools.takewhile(lambda part: not glob.has_magic(part), rest.split("/")))
    try:
        fs, root = pafs.FileSystem.from_uri(base)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File and not magic:
            return [uri], None
        if info.type != pafs.FileType.Directory:
            return [], "no such file or folder"
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:
        return [], f"cannot list ({one_line(e)})"
    # the filesystem's paths are the URI's tail ("bucket/key" for s3, "/a/b" for file://, hdfs)
    prefix = base[:len(base) - len(root)] if root and base.endswith(root) else scheme
    files = sorted(prefix + e.path for e in entries if e.type == pafs.FileType.File)
    if magic:
        files = [f for f in files if fnmatch.fnmatchcase(f, uri)]
        return files, None if files else "no file matches this pattern"
    files = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    return files, None if files else "folder holds no images"


# --------------------------------------------------------------------------- the actor


def _read_bytes(path: str, filesystems: dict) -> bytes:
    """A path or URI -> its bytes; raises OSError with the reason."""
    if _URI.match(path):
        import pyarrow.fs as pafs

        key = "/".join(path.split("/", 3)[:3])  # scheme://bucket: one client per bucket, made once
        if key not in filesystems:
            fs, inner = pafs.FileSystem.from_uri(path)
            # the filesystem's own path is the URI's tail ("bucket/key" for s3, "/a/b" for file)
            filesystems[key] = fs, len(path) - len(inner) if path.endswith(inner) else len(key)
        fs, cut = filesystems[key]
        with fs.open_input_file(path[cut:]) as f:
            if f.size() > MAX_FILE_BYTES:
                raise OSError(f"refused, {f.size():,} bytes is more than {MAX_FILE_BYTES:,}")
            return f.read()
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"refused, more than {MAX_FILE_BYTES:,} bytes")
    return data


def _schema(extra: dict):
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("top_indices", pa.list_(pa.int64())),
                      ("top_labels", pa.list_(pa.string())), ("top_probabilities", pa.list_(pa.float64())),
                      ("error", pa.string()), *extra.items()])


class _Predictor:
    """One actor of the pool: one Classifier, built once from the shipped model bytes."""

    def __init__(self, model_ref, *, threads: int, labels, resize, exact: bool, top: int,
                 stage_times: bool, optimize: bool = True) -> None:
        import onnx
        import ray

        from .runtime import Classifier

        data = ray.get(model_ref[0])  # the model's bytes, from the object store (once per node)
        self.clf = Classifier(onnx.load_from_string(data), threads=threads, labels=labels,
                              resize=resize, exact=exact, optimize=optimize)
        self.top, self.stage_times = top, stage_times
        self.filesystems: dict = {}
        self.pool = None

    def _read_all(self, paths: list[str]) -> list[tuple[bytes | None, str | None]]:
        def one(p):
            try:
                return _read_bytes(p, self.filesystems), None
            except OSError as e:
                return None, f"{p}: cannot read ({e.strerror or e})"

        if len(paths) > 1 and any(_URI.match(p) for p in paths):
            from concurrent.futures import ThreadPoolExecutor

            self.pool = self.pool or ThreadPoolExecutor(READ_THREADS)
            return list(self.pool.map(one, paths))
        return [one(p) for p in paths]

    def __call__(self, batch):
        paths = batch.column("path").to_pylist()
        t0 = time.perf_counter()
        if "bytes" in batch.column_names:  # a dataset from ray.data.read_binary_files(include_paths=True)
            loaded = [(b, None) for b in batch.column("bytes").to_pylist()]
        else:
            loaded = self._read_all(paths)
        seconds = {"read": time.perf_counter() - t0}
        errors: list[str | None] = [why for _, why in loaded]
        tensors, good = self._decode_all(paths, loaded, errors, seconds)
        columns = {"path": paths, **self._predict(tensors, good, len(paths), seconds), "error": errors}
        return self._table(batch, columns, seconds)

    def _decode_all(self, paths: list[str], loaded, errors: list, seconds: dict) -> tuple[list, list[int]]:
        """(input rows, their indices) for the files read: the local engine's own loader
        (:func:`~shufflenet.runtime.load_one`), from bytes instead of a path; a file that fails
        gets its ``errors`` entry."""
        from .runtime import load_one

        tensors, good = [], []
        seconds["decode"] = seconds["preprocess"] = 0.0
        for i, (p, (data, why)) in enumerate(zip(paths, loaded)):
            if why is not None:
                continue
            item = load_one(self.clf, data, p)
            seconds["decode"] += item.decode_s
            seconds["preprocess"] += item.preprocess_s
            if item.error is not None:
                errors[i] = item.error
            else:
                tensors.append(item.rows)
                good.append(i)
        return tensors, good

    def _predict(self, tensors: list, good: list[int], n: int, seconds: dict) -> dict:
        """The top-k columns of the ``n`` rows: None where the file failed."""
        clf = self.clf
        columns: dict[str, list] = {k: [None] * n for k in ("top_indices", "top_labels", "top_probabilities")}
        seconds["inference"] = 0.0
        if good:
            t0 = time.perf_counter()
            raw = clf.outputs(np.concatenate(tensors))
            seconds["inference"] = time.perf_counter() - t0
            for i, preds in zip(good, clf.top(clf.probabilities_from(raw), self.top)):
                columns["top_indices"][i] = [p.index for p in preds]
                columns["top_labels"][i] = [p.label for p in preds]
                columns["top_probabilities"][i] = [p.probability for p in preds]
        return columns

    def _table(self, batch, columns: dict, seconds: dict):
        """The result table: ``columns``, the input's labels if any, and with ``stage_times``
        this batch's seconds per stage, spread evenly over its rows."""
        import pyarrow as pa

        n = len(columns["path"])
        extra = {}
        if "label" in batch.column_names:
            extra["label"] = pa.int64()
            columns["label"] = batch.column("label").to_pylist()
        if self.stage_times:
            extra.update({f"{k}_s": pa.float64() for k in STAGES})
            for key in STAGES:
                columns[f"{key}_s"] = [seconds[key] / n] * n
        return pa.table(columns, schema=_schema(extra))


# --------------------------------------------------------------------------- the dataset


def _prepare(model, *, labels=None, resize=None, exact=False, optimize=True):
    """(model proto, its source, a driver-side Classifier): the one place the ray engine resolves
    ``--model``, as local classify does. The Classifier is built here once so that a bad model or
    label file fails on the driver with one clear error, and gives the labels the actors use."""
    from .runtime import Classifier, resolve_model

    proto, source = resolve_model(model)
    return proto, source, Classifier(proto, threads=1, labels=labels, resize=resize, exact=exact,
                                     optimize=optimize)


def _pool(ray, workers: int | None, threads: int, *, share: bool = False):
    """(ActorPoolStrategy, actors expected). A fixed pool of what fits the cluster's CPUs now;
    asked for more, an autoscaling pool up to ``workers`` (an autoscaler may add nodes).
    ``share``: the input is a caller's Dataset whose own tasks (reads) need CPUs too, so by
    default the pool autoscales from one actor instead of taking every CPU and starving them."""
    fits = max(1, int(ray.cluster_resources().get("CPU", 0)) // threads)
    if workers is None and share:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=fits), 1
    if workers is None or workers <= fits:
        n = workers or fits
        return ray.data.ActorPoolStrategy(size=n), n
    return ray.data.ActorPoolStrategy(min_size=fits, max_size=workers), fits


def predict_dataset(source, model, *, top: int = CLASSIFY_TOP, batch_size: int = CLASSIFY_BATCH_SIZE, workers: int | None = None,
                    threads: int = 1, labels=None, resize: str | None = None, exact: bool = False,
                    stage_times: bool = False, optimize: bool = True):
    """The Ray Dataset of predictions (lazy: nothing runs until it is consumed).

    ``source``: a list of paths/URIs (see :func:`list_sources`), or a ``ray.data.Dataset`` with a
    ``path`` column (and optionally ``bytes``, as ``ray.data.read_binary_files(...,
    include_paths=True)`` gives, and ``label``, passed through). Ray must already be initialised
    (``ray.init(...)``, or :class:`connect`). Columns: ``path``, ``top_indices``, ``top_labels``,
    ``top_probabilities`` (top-``top``, best first), ``error`` (null, or why the file is unusable;
    the three lists are then null), plus ``label`` when the input has it and, with
    ``stage_times``, per-row seconds ``read_s``, ``decode_s``, ``preprocess_s``, ``inference_s``.
    ``workers`` actors (default: as many as the cluster's CPUs allow; for a Dataset input, an
    autoscaling pool from one actor up to that, so the Dataset's own read tasks keep CPUs) each
    reserve ``threads`` CPUs and run ONNX Runtime with that many intra-op threads.
    """
    ray = _require_ray()
    if not ray.is_initialized():
        raise RayEngineError("Ray is not initialised: call ray.init(...) or use shufflenet.ray_engine.connect()")
    proto, _, clf = _prepare(model, labels=labels, resize=resize, exact=exact, optimize=optimize)
    return _dataset(ray, source, proto, clf, top=top, batch_size=batch_size, workers=workers,
                    threads=threads, stage_times=stage_times)


def _blocks(n: int, batch_size: int, actors: int) -> int:
    """Input blocks: about one batch each, and at least two per actor while there are images."""
    return max(1, min(MAX_BLOCKS, max(-(-n // batch_size), min(n, 2 * actors))))


def _dataset(ray, source, proto, clf, *, top, batch_size, workers, threads, stage_times):
    for name, value in (("top", top), ("batch_size", batch_size), ("threads", threads), ("workers", workers)):
        if (value is not None or name != "workers") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise RayEngineError(f"{name} must be a positive integer, got {value!r}")
    compute, actors = _pool(ray, workers, threads, share=isinstance(source, ray.data.Dataset))
    if isinstance(source, ray.data.Dataset):
        ds = source
    else:
        rows = [item if isinstance(item, dict) else {"path": str(item)} for item in source]
        if not rows:
            raise RayEngineError("no images to classify")
        ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), batch_size, actors))
    model_ref = ray.put(proto.SerializeToString())  # shipped once; each node fetches it once
    return ds.map_batches(
        _Predictor,
        # the ref travels in a list: the actor fetches the bytes itself when it starts
        fn_constructor_kwargs={"model_ref": [model_ref], "threads": threads, "labels": clf.labels,
                               "resize": clf.resize, "exact": clf.exact, "top": top,
                               "stage_times": stage_times, "optimize": clf.optimize},
        batch_size=batch_size, batch_format="pyarrow", compute=compute, num_cpus=threads,
        zero_copy_batch=True)


# --------------------------------------------------------------------------- cluster


class connect:
    """Context manager: join the cluster at ``address`` (else ``$RAY_ADDRESS``), or start a
    private local Ray for the block when neither is set and stop it after; an already initialised
    Ray is used as it is.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus, self.owned = num_cpus, False

    def __enter__(self):
        import logging

        ray = _require_ray()
        if ray.is_initialized():
            return ray
        kwargs = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                # a private local Ray: no dashboard, no usage report leaving this machine
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, **kwargs)
        except Exception as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise RayEngineError(f"cannot start or join {where}: {one_line(e)[:ERROR_CHARS]}") from None
        self.owned = True
        return ray

    def __exit__(self, *exc) -> None:
        if self.owned:
            import ray

            ray.shutdown()


# --------------------------------------------------------------------------- classify


@dataclass
class RayClassifyReport:
    model: str
    output: str
    format: str
    address: str | None
    workers: int
    threads: int
    images: int
    ok: int
    failed: list[tuple[str, str]]  # (path, reason) for each unusable file, and inputs that gave nothing
    seconds: float
    output_kind: str
    preprocessing: str
    stage_seconds: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["engine"] = "ray"
        d["images_per_second"] = self.images_per_second
        d["failed"] = [{"path": p, "error": w} for p, w in self.failed]
        return d


def output_format(output: str | os.PathLike) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise RayEngineError(f"{output}: the output must end in {' or '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def _run(ds, total: int, progress, consume) -> int:
    """Stream the dataset's result tables to ``consume``, reporting progress; Ray's failures of
    the job as a whole become RayEngineError. Returns the rows seen."""
    import logging

    ds.context.enable_progress_bars = False  # the caller's progress callback reports instead
    ds.context.print_on_execution_start = False
    quiet = logging.getLogger("ray.data")  # its INFO/WARNING lines would break the progress line
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    done = 0
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            consume(table)
            done += table.num_rows
            if progress:
                progress(done, total)
    except ShuffleNetError:
        raise
    except Exception as e:
        raise RayEngineError(f"the Ray job failed: {one_line(e)[:ERROR_CHARS]}") from None
    finally:
        quiet.setLevel(level)
    return done


def classify(sources: Sequence[str], model, output, *, address: str | None = None,
             workers: int | None = None, threads: int = 1, top: int = CLASSIFY_TOP, batch_size: int = CLASSIFY_BATCH_SIZE,
             labels=None, resize: str | None = None, exact: bool = False, num_cpus: int | None = None,
             stage_times: bool = False, progress: Callable[[int, int], None] | None = None,
             optimize: bool = True) -> RayClassifyReport:
    """Classify every image of ``sources`` on Ray and write one row per input to ``output``
    (``.parquet`` or ``.jsonl``, written to a temp file beside it and renamed when complete).

    Inputs that expand to nothing (a missing file, an empty folder) and files that cannot be read
    or decoded are counted in ``failed``; the job goes on. ``address``: join that cluster (else
    ``$RAY_ADDRESS``); neither starts a local Ray (``num_cpus``) for the call and stops it after.
    ``stage_times`` adds the seconds per stage, summed over actors, to the report (and the
    per-row columns to the output).
    """
    fmt = output_format(output)
    _require_ray()
    paths, problems = list_sources(sources)
    if not paths:
        raise RayEngineError("nothing to classify: " + "; ".join(f"{i}: {w}" for i, w in problems))
    proto, source, clf = _prepare(model, labels=labels, resize=resize, exact=exact, optimize=optimize)
    out = Path(output)
    failed: list[tuple[str, str]] = []
    stages: dict[str, float] = {}

    def tally(table) -> None:
        errs = table.column("error")
        if errs.null_count < table.num_rows:
            failed.extend((p, e) for p, e in zip(table.column("path").to_pylist(), errs.to_pylist())
                          if e is not None)
        if stage_times:
            for key in STAGES:
                stages[key] = stages.get(key, 0.0) + float(np.sum(table.column(f"{key}_s")))

    cluster = connect(address, num_cpus=num_cpus)
    with cluster as ray:
        ds = _dataset(ray, paths, proto, clf, top=top, batch_size=batch_size, workers=workers,
                      threads=threads, stage_times=stage_times)
        _, pool = _pool(ray, workers, threads)
        seconds = _write_results(ds, out, fmt, len(paths), progress, tally)
    return RayClassifyReport(source, str(out), fmt, cluster.address, pool, threads, len(paths),
                             len(paths) - len(failed), failed + problems, seconds, clf.output_kind,
                             _preprocessing(clf), stages)


def _write_results(ds, out: Path, fmt: str, total: int, progress, tally) -> float:
    """Stream the job's result tables through ``tally`` into ``out``, which appears only complete
    (a temp file beside it, renamed); returns the job's seconds."""
    seconds = 0.0

    def write(tmp: Path) -> None:
        nonlocal seconds
        writer = _Writer(tmp, fmt)
        try:
            def consume(table) -> None:
                tally(table)
                writer.write(table)

            start = time.perf_counter()
            done = _run(ds, total, progress, consume)
            seconds = time.perf_counter() - start
            if done != total:
                raise RayEngineError(f"the Ray job returned {done} rows for {total} inputs")
            writer.finish()
        finally:
            writer.close()

    atomic_write(out, write)
    return seconds


def _preprocessing(clf) -> str:
    return (f"{clf.resize} resize {clf.recipe.resize}, crop {clf.recipe.crop}"
            + ("" if clf.exact else ", JPEG draft decoding"))


class _Writer:
    """Result tables to ``path`` as they arrive (Parquet row groups of :data:`ROW_GROUP` rows, or
    JSON lines): memory stays bounded."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.parquet = None
        self.pending: list = []  # result tables (one per batch) gathered into whole row groups
        self.pending_rows = 0
        self.jsonl = open(path, "w", encoding="utf-8") if fmt == "jsonl" else None

    def write(self, table) -> None:
        if self.fmt == "parquet":
            self.pending.append(table)
            self.pending_rows += table.num_rows
            if self.pending_rows >= ROW_GROUP:
                self._flush()
        else:
            import json

            for row in table.to_pylist():
                self.jsonl.write(json.dumps(row) + "\n")

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.path, table.schema)
        self.parquet.write_table(table, row_group_size=ROW_GROUP)
        self.pending, self.pending_rows = [], 0

    def finish(self) -> None:
        """Write what is pending and close the file: a valid file, even with no rows."""
        if self.fmt == "parquet":
            self._flush()
            if self.parquet is None:
                import pyarrow.parquet as pq

                pq.write_table(_schema({}).empty_table(), self.path)
            else:
                self.parquet.close()
        else:
            self.jsonl.close()

    def close(self) -> None:
        """Let go of the file, finished or not (a failed job's file is removed by atomic_write)."""
        if self.parquet is not None:
            try:
                self.parquet.close()
            except Exception:
                pass
        if self.jsonl is not None and not self.jsonl.closed:
            self.jsonl.close()


# --------------------------------------------------------------------------- evaluate


def evaluate(model, data, *, label_file=None, limit: int | None = None, address: str | None = None,
             workers: int | None = None, threads: int = 1, batch_size: int = 32,
             resize: str | None = None, exact: bool = True, num_cpus: int | None = None,
             progress: Callable[[int, int], None] | None = None, optimize: bool = True):
    """Top-1/top-5 of ``model`` on a labelled folder (evaluate's layouts), computed on Ray; the
    same :class:`~shufflenet.evaluate.EvalReport` and the same counts as the local engine
    (torchvision's exact decoding by default, as local evaluate).
    The folder must be visible at the same path on every node (a shared filesystem)."""
    from .evaluate import DatasetError, EvalReport, discover

    _require_ray()
    proto, source, clf = _prepare(model, resize=resize, exact=exact, optimize=optimize)
    samples, skipped, layout = discover(data, labels=clf.labels, label_file=label_file)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise DatasetError(f"{data}: no labelled images to evaluate ({len(skipped)} skipped)")
    hit1 = hit5 = n = 0

    def consume(table):
        nonlocal hit1, hit5, n
        for path, label, top, err in zip(*(table.column(c).to_pylist()
                                           for c in ("path", "label", "top_indices", "error"))):
            if err is not None:
                skipped.append((path, err))
                continue
            n += 1
            hit1 += top[0] == label
            hit5 += label in top

    with connect(address, num_cpus=num_cpus) as ray:
        ds = _dataset(ray, [{"path": str(s.path), "label": s.label} for s in samples], proto, clf, top=CLASSIFY_TOP,
                      batch_size=batch_size, workers=workers, threads=threads, stage_times=False)
        start = time.perf_counter()
        done = _run(ds, len(samples), progress, consume)
        seconds = time.perf_counter() - start
    if done != len(samples):
        raise RayEngineError(f"the Ray job returned {done} rows for {len(samples)} images")
    if n == 0:
        raise DatasetError(f"{data}: none of the {len(samples)} images could be read")
    return EvalReport(source, str(data), layout, _preprocessing(clf), n, 100.0 * hit1 / n, 100.0 * hit5 / n,
                      seconds, n / seconds, skipped)
