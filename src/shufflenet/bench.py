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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import ShuffleNetError, install_hint
from .runtime import is_untrained, resolve_model

__all__ = ["BenchError", "BenchRow", "bench", "bench_images", "bench_images_many", "ort_session", "MODES", "BLOCK"]

BACKENDS = ("onnxruntime", "openvino")
MODES = ("blocked", "interleaved")
BLOCK = 40  # consecutive runs of one model per round in blocked mode


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
    """An ORT session: ``defaults`` = what a user gets with no options (the zoo recipe), else
    pinned threads, all graph optimisations, sequential execution. ``optimize``: the runtime's
    exact load-time rewrites (``onnx_optimize``), as classify and evaluate apply them."""
    import onnxruntime as ort

    from .onnx_legacy import upgrade_to_opset7

    model = upgrade_to_opset7(model)
    if optimize:
        from .onnx_optimize import optimize_for_inference

        model = optimize_for_inference(model)

    opts = ort.SessionOptions()
    if not defaults:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
    elif threads:
        opts.intra_op_num_threads = threads  # the thread count is a benchmark axis, pinned in both
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class _Runner:
    def __init__(self, model: onnx.ModelProto, backend: str, threads: int, precision: str | None,
                 ort_defaults: bool, optimize: bool = True) -> None:
        self.backend = backend
        self.input = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}][0]
        self.precision = "f32"
        if backend == "onnxruntime":
            self.sess = ort_session(model, threads, defaults=ort_defaults, optimize=optimize)
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


def _input_shape(model: onnx.ModelProto, batch: int) -> tuple[int, ...]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") else None
    if fixed and fixed != batch:
        raise BenchError(f"{model.graph.name}: fixed batch {fixed}, cannot run batch {batch}")
    return (batch, *[d.dim_value for d in dims[1:]])


def bench(models: list[str], *, batches: tuple[int, ...] = (1,), threads: tuple[int, ...] = (1,),
          runs: int = 200, warmup: int = 20, backend: str = "onnxruntime", precision: str | None = None,
          ort_defaults: bool = False, mode: str = "blocked", block: int = BLOCK, optimize: bool = True,
          progress=None) -> dict:
    """Benchmark ``models`` (paths or names, see Classifier) in every (threads, batch) config,
    ``runs`` timed runs per model: in blocks of ``block`` consecutive runs per model and round
    (``mode="blocked"``) or one run per model in turn (``"interleaved"``)."""
    if backend not in BACKENDS:
        raise BenchError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if mode not in MODES:
        raise BenchError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if runs < 1 or warmup < 0 or block < 1:
        raise BenchError("runs and block must be positive and warmup non-negative")
    step = 1 if mode == "interleaved" else min(block, runs)
    protos = [(m if isinstance(m, (str, os.PathLike)) else getattr(m.graph, "name", "model"), resolve_model(m)[0])
              for m in models]
    untrained = [str(name) for name, proto in protos if is_untrained(proto)]
    rows: list[BenchRow] = []
    rng = np.random.default_rng(0)
    for t in threads:
        for b in batches:
            runners = []
            for name, proto in protos:
                before = _rss_mb()
                t0 = time.perf_counter()
                r = _Runner(proto, backend, t, precision, ort_defaults, optimize)
                load = (time.perf_counter() - t0) * 1e3
                x = rng.standard_normal(_input_shape(proto, b)).astype(np.float32)
                for _ in range(max(warmup, 1)):
                    r.run(x)
                runners.append((name, r, x, load, _rss_mb() - before, []))
            done = 0
            while done < runs:  # round after round: `step` consecutive runs of each model in turn
                n = min(step, runs - done)
                for name, r, x, _, _, samples in runners:
                    for _ in range(n):
                        s = time.perf_counter()
                        r.run(x)
                        samples.append((time.perf_counter() - s) * 1e3)
                done += n
                if progress:
                    progress(done, runs)
            for name, r, x, load, rss, samples in runners:
                q = np.percentile(samples, [50, 90, 99])
                rows.append(BenchRow(str(name), backend, r.precision, t, b, runs, float(q[0]), float(q[1]),
                                     float(q[2]), statistics.fmean(samples), b / (q[0] / 1e3), load, rss, mode,
                                     samples))
    import onnxruntime

    env = {"onnxruntime": onnxruntime.__version__, "cpu": _cpu_name(), "cores": os.cpu_count(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "ort_session": "defaults" if ort_defaults else "ORT_ENABLE_ALL, sequential, pinned threads",
           "mode": mode if mode == "interleaved" else f"blocked ({step} consecutive runs per model and round)",
           "load_time_rewrites": optimize,
           "date": time.strftime("%Y-%m-%d")}
    return {"rows": rows, "env": env, "untrained": untrained}


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


def bench_images(model: str, images: str | os.PathLike, *, batch: int = 8, workers: int = 2,
                 threads: int | None = None, limit: int | None = None, repeat: int = 2,
                 optimize: bool = True) -> dict:
    """End to end over an image folder with ``classify``'s pipeline (decode + preprocess on
    ``workers`` threads, overlapped with batched inference): images/s, best of ``repeat``, and
    where the time goes (stage seconds, decode and preprocess summed over workers)."""
    return bench_images_many([model], images, batches=(batch,), workers=workers, threads=threads,
                             limit=limit, repeat=repeat, optimize=optimize)[0]


def bench_images_many(models: list, images: str | os.PathLike, *, batches: tuple[int, ...] = (8,),
                      workers: int = 2, threads: int | None = None, limit: int | None = None,
                      repeat: int = 2, optimize: bool = True) -> list[dict]:
    """:func:`bench_images` for every model and batch size, interleaved: each round passes over
    the folder once per model in turn, so drift on a noisy machine hits every model alike; each
    figure is the best of ``repeat`` rounds. One dict per (batch, model), in that order."""
    from .runtime import Classifier, expand_inputs, run_files

    if repeat < 1:
        raise BenchError("repeat must be positive")
    if not batches or min(batches) < 1:
        raise BenchError(f"batch sizes must be positive, got {batches}")
    files, _ = expand_inputs([str(images)])
    files = files[:limit] if limit else files
    if not files:
        raise BenchError(f"{images}: no images")
    clfs = [(m if isinstance(m, (str, os.PathLike)) else "model", Classifier(m, threads=threads, optimize=optimize)) for m in models]
    out = []
    for batch in batches:
        best: dict[int, tuple] = {}
        for _ in range(repeat):
            for k, (_, clf) in enumerate(clfs):
                stage: dict[str, float] = {}
                t0 = time.perf_counter()
                results = list(run_files(clf, files, top=1, batch_size=batch, workers=workers, timings=stage))
                wall = time.perf_counter() - t0
                if k not in best or wall < best[k][0]:
                    best[k] = (wall, stage, results)
        for k, (name, _) in enumerate(clfs):
            wall, stage, results = best[k]
            out.append({"model": str(name), "images": len(files), "seconds": wall,
                        "images_per_s": len(files) / wall, "batch": batch, "workers": workers,
                        "threads": threads, "repeat": repeat, "stage_seconds": stage,
                        "untrained": clfs[k][1].untrained,
                        "predictions": [r.predictions[0].index if r.predictions else None for r in results],
                        "files": [str(f) for f in files]})
    return out
