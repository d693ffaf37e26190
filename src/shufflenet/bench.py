"""Honest latency and throughput: several models in one process, interleaved in blocks.

On a shared, noisy machine an absolute time proves little; a ratio measured in one process,
interleaved, holds (see the project's measuring notes). Every (threads, batch) configuration
loads all models, warms each up, then times ``block`` consecutive runs of each model in turn,
round after round, until each has ``runs`` runs (``mode="blocked"``, the default). Blocks keep
each model's weights warm in cache, as a deployed model runs the same weights over and over;
``mode="interleaved"`` times one run of each model in turn (A B A B ...), which evicts every
model's weights for the others' and penalises the ones with more bytes to re-read. Reported: p50 /
p90 / p99 latency, images/s, session load time, the resident memory each model added, and the
process's peak RSS. ``--images`` measures decode + preprocess + inference end to end.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ._onnx import fixed_batch, input_names, input_shape, ort_session as _new_session
from .errors import ShuffleNetError, install_hint
from .options import (BENCH_BACKENDS as BACKENDS, BENCH_BATCHES, BENCH_BLOCK as BLOCK, BENCH_IMAGE_BATCHES,
                      BENCH_IMAGE_WORKERS, BENCH_MODES as MODES, BENCH_PRECISIONS, BENCH_RUNS, BENCH_THREADS, BENCH_WARMUP)
from .runtime import is_untrained, resolve_model

__all__ = ["BenchError", "BenchRow", "bench", "bench_images", "bench_images_many", "p50_ratios", "ort_session",
           "MODES", "BLOCK"]


class BenchError(ShuffleNetError, ValueError):
    pass


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def ort_session(model: onnx.ModelProto, threads: int | None, *, defaults: bool = False,
                optimize: bool = True):
    """An ORT session with ONNX Runtime's default options (all graph optimisations, sequential
    execution: what a user gets, the zoo recipe) and ``threads`` pinned (a benchmark axis).
    ``defaults`` is accepted for old callers and changes nothing: the options it used to drop
    are ONNX Runtime's defaults. ``optimize``: the runtime's exact load-time rewrites
    (``onnx_optimize``), as classify and evaluate apply them."""
    from .onnx_legacy import upgrade_to_opset7

    model = upgrade_to_opset7(model)
    if optimize:
        from .onnx_optimize import optimize_for_inference

        model = optimize_for_inference(model)
    return _new_session(model, threads=threads)


class _Runner:
    def __init__(self, model: onnx.ModelProto, backend: str, threads: int, precision: str | None,
                 optimize: bool = True) -> None:
        self.backend = backend
        self.input = input_names(model)[0]
        self.precision = "f32"
        if backend == "onnxruntime":
            self.sess = ort_session(model, threads, optimize=optimize)
            self.run = lambda x: self.sess.run(None, {self.input: x})
        else:
            try:
                import openvino as ov
            except ImportError:
                raise BenchError(f"the openvino backend needs the extra: {install_hint('openvino')}") from None
            core = ov.Core()  # the graph as given: the load-time rewrites target ONNX Runtime
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            if precision:  # OpenVINO's own default on AVX512-BF16 CPUs is bf16: always say which ran
                config["INFERENCE_PRECISION_HINT"] = precision
            compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", config)
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            self.precision = getattr(hint, "to_string", lambda: str(hint))()
            request = compiled.create_infer_request()
            self.run = lambda x: request.infer({0: x})


@dataclass
class BenchRow:
    model: str
    backend: str
    precision: str
    threads: int
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    load_ms: float
    rss_added_mb: float
    mode: str = "blocked"
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, *, samples: bool = False) -> dict:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


@dataclass(frozen=True)
class _Plan:
    """How every (threads, batch) configuration is measured."""

    runs: int
    warmup: int
    step: int  # consecutive timed runs of one model per round
    backend: str
    precision: str | None
    optimize: bool
    mode: str


def bench(models: list[str], *, batches: tuple[int, ...] = BENCH_BATCHES, threads: tuple[int, ...] = BENCH_THREADS,
          runs: int = BENCH_RUNS, warmup: int = BENCH_WARMUP, backend: str = BACKENDS[0],
          precision: str | None = None, ort_defaults: bool = False, mode: str = MODES[0], block: int = BLOCK,
          optimize: bool = True, progress=None) -> dict:
    """Benchmark ``models`` (paths or names, see Classifier) in every (threads, batch) config,
    ``runs`` timed runs per model: in blocks of ``block`` consecutive runs per model and round
    (``mode="blocked"``) or one run per model in turn (``"interleaved"``). ``ort_defaults`` is
    accepted for old callers and changes nothing (see :func:`ort_session`)."""
    if backend not in BACKENDS:
        raise BenchError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if mode not in MODES:
        raise BenchError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if precision is not None and (backend != "openvino" or precision not in BENCH_PRECISIONS):
        raise BenchError(f"precision is OpenVINO's hint ({', '.join(BENCH_PRECISIONS)}), for backend openvino only; "
                         f"got {precision!r} with {backend}")
    if runs < 1 or warmup < 0 or block < 1:
        raise BenchError("runs and block must be positive and warmup non-negative")
    plan = _Plan(runs, warmup, 1 if mode == "interleaved" else min(block, runs), backend, precision,
                 optimize, mode)
    protos = [(m if isinstance(m, (str, os.PathLike)) else getattr(m.graph, "name", "model"), resolve_model(m)[0])
              for m in models]
    for name, proto in protos:  # before any model is loaded and timed
        fixed = fixed_batch(proto)
        if fixed and any(b != fixed for b in batches):
            raise BenchError(f"{name}: fixed batch {fixed}, cannot run batch "
                             f"{next(b for b in batches if b != fixed)}")
    rng = np.random.default_rng(0)
    rows = [row for t in threads for b in batches for row in _bench_config(protos, t, b, plan, rng, progress)]
    return {"rows": rows, "env": _env(plan), "untrained": [str(name) for name, proto in protos if is_untrained(proto)]}


def _bench_config(protos: list, threads: int, batch: int, plan: _Plan, rng: np.random.Generator,
                  progress) -> list[BenchRow]:
    """Load and warm every model, then time them round after round: ``plan.step`` consecutive
    runs of each model in turn, until each has ``plan.runs``."""
    runners = []
    for name, proto in protos:
        before = _rss_mb()
        t0 = time.perf_counter()
        r = _Runner(proto, plan.backend, threads, plan.precision, plan.optimize)
        load = (time.perf_counter() - t0) * 1e3
        x = rng.standard_normal(input_shape(proto, batch)).astype(np.float32)
        for _ in range(max(plan.warmup, 1)):
            r.run(x)
        runners.append((name, r, x, load, _rss_mb() - before, []))
    done = 0
    while done < plan.runs:
        n = min(plan.step, plan.runs - done)
        for _, r, x, _, _, samples in runners:
            for _ in range(n):
                s = time.perf_counter()
                r.run(x)
                samples.append((time.perf_counter() - s) * 1e3)
        done += n
        if progress:
            progress(done, plan.runs)
    rows = []
    for name, r, _, load, rss, samples in runners:
        q = np.percentile(samples, [50, 90, 99])
        rows.append(BenchRow(str(name), plan.backend, r.precision, threads, batch, plan.runs, float(q[0]),
                             float(q[1]), float(q[2]), statistics.fmean(samples), batch / (q[0] / 1e3), load, rss,
                             plan.mode, samples))
    return rows


def _env(plan: _Plan) -> dict:
    """What the numbers were measured on and how."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "cpu": _cpu_name(), "cores": os.cpu_count(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ort_session": "ONNX Runtime's defaults (ORT_ENABLE_ALL, sequential), pinned threads",
            "mode": plan.mode if plan.mode == "interleaved" else
            f"blocked ({plan.step} consecutive runs per model and round)",
            "load_time_rewrites": plan.optimize,
            "date": time.strftime("%Y-%m-%d")}


def p50_ratios(rows: list[BenchRow]) -> list[tuple[str, float]]:
    """How each model compares with the first, in the first (threads, batch) configuration:
    ``[(model, first model's p50 / its p50)]`` for the second model on (above 1: faster than the
    first); empty with fewer than two models."""
    if not rows:
        return []
    base = [r for r in rows if (r.threads, r.batch) == (rows[0].threads, rows[0].batch)]
    return [(r.model, base[0].p50_ms / r.p50_ms) for r in base[1:]]


def plot(rows: list[BenchRow], path: str | os.PathLike) -> Path:
    """One panel per (threads, batch): each model's latencies, sorted (a distribution at a glance)."""
    from .plotting import line_panel, save_panels

    configs = sorted({(r.threads, r.batch) for r in rows})
    panels = [line_panel({Path(r.model).name: sorted(r.samples_ms) for r in rows if (r.threads, r.batch) == c},
                         title=f"latency ms, sorted runs (threads {c[0]}, batch {c[1]})", xlabel="run")
              for c in configs]
    return save_panels(panels, path)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def bench_images(model: str, images: str | os.PathLike, *, batch: int = BENCH_IMAGE_BATCHES[0],
                 workers: int = BENCH_IMAGE_WORKERS, threads: int | None = BENCH_THREADS[0], limit: int | None = None,
                 repeat: int = 2, optimize: bool = True) -> dict:
    """End to end over an image folder with ``classify``'s pipeline (decode + preprocess on
    ``workers`` threads, overlapped with batched inference): images/s, best of ``repeat``, and
    where the time goes (stage seconds, decode and preprocess summed over workers). ``threads``:
    intra-op threads per session, one unless asked as for :func:`bench` (None: ONNX Runtime's)."""
    return bench_images_many([model], images, batches=(batch,), workers=workers, threads=threads,
                             limit=limit, repeat=repeat, optimize=optimize)[0]


def bench_images_many(models: list, images: str | os.PathLike, *, batches: tuple[int, ...] = BENCH_IMAGE_BATCHES,
                      workers: int = BENCH_IMAGE_WORKERS, threads: int | None | Sequence[int | None] = BENCH_THREADS,
                      limit: int | None = None, repeat: int = 2, optimize: bool = True) -> list[dict]:
    """:func:`bench_images` for every model and batch size (and every thread count when
    ``threads`` is a sequence), interleaved: each round passes over the folder once per model in
    turn, so drift on a noisy machine hits every model alike; each figure is the best of
    ``repeat`` rounds. One dict per (threads, batch, model), in that order."""
    from .runtime import Classifier, expand_inputs

    if repeat < 1:
        raise BenchError("repeat must be positive")
    if not batches or min(batches) < 1:
        raise BenchError(f"batch sizes must be positive, got {batches}")
    files, _ = expand_inputs([str(images)])
    files = files[:limit] if limit else files
    if not files:
        raise BenchError(f"{images}: no images")
    out = []
    for t in (tuple(threads) if isinstance(threads, Sequence) else (threads,)):
        clfs = [(m if isinstance(m, (str, os.PathLike)) else "model", Classifier(m, threads=t, optimize=optimize))
                for m in models]
        for batch in batches:
            best = _best_passes([clf for _, clf in clfs], files, batch, workers, repeat)
            for (name, clf), (wall, stage, results) in zip(clfs, best):
                out.append({"model": str(name), "images": len(files), "seconds": wall,
                            "images_per_s": len(files) / wall, "batch": batch, "workers": workers,
                            "threads": t, "repeat": repeat, "stage_seconds": stage,
                            "untrained": clf.untrained,
                            "predictions": [r.predictions[0].index if r.predictions else None for r in results],
                            "files": [str(f) for f in files]})
    return out


def _best_passes(clfs: list, files: list[Path], batch: int, workers: int, repeat: int) -> list[tuple]:
    """``repeat`` rounds of one pass over ``files`` per classifier in turn; for each classifier
    its fastest pass: (wall seconds, stage seconds, results)."""
    from .runtime import run_files

    best: list[tuple | None] = [None] * len(clfs)
    for _ in range(repeat):
        for k, clf in enumerate(clfs):
            stage: dict[str, float] = {}
            t0 = time.perf_counter()
            results = list(run_files(clf, files, top=1, batch_size=batch, workers=workers, timings=stage))
            wall = time.perf_counter() - t0
            if best[k] is None or wall < best[k][0]:
                best[k] = (wall, stage, results)
    return best
