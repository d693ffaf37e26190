"""``shufflenet serve``: an ASGI inference server on the runtime's Classifier.

It speaks the KServe Open Inference Protocol v2 over REST (JSON tensors and the binary tensor data
extension, as Triton, KServe and OpenVINO Model Server do), answers images with labels on
``/v1/.../classify`` through the exact preprocessing of ``shufflenet classify``, gathers requests
for one model into batches (``max_batch`` rows or ``max_delay_ms``, run off the event loop), and
serves Prometheus metrics and a page to try a photo at ``/``. Needs the ``serve`` extra
(Starlette, uvicorn, prometheus-client, python-multipart), imported when an app is built.

``create_app(models, ...)`` returns the ASGI app; ``run(app, host=..., port=...)`` serves it with
uvicorn until SIGTERM/SIGINT, finishing the requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import MissingDependencyError, ShuffleNetError
from .options import CLASSIFY_TOP, SERVE_DEFAULTS, SERVE_HOST, SERVE_PORT

if TYPE_CHECKING:  # the serve extra is imported only when an app is built
    from starlette.requests import Request

__all__ = ["ServeOptions", "ServeError", "create_app", "load_models", "model_name", "run", "serve"]

API_VERSION = "1"  # every model is served as version "1" (the protocol's version path segment)
#: Content-Types taken as an image body on /v1/.../classify (anything else is 415); the decoder
#: still allow-lists the actual format
IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp", "image/bmp",
               "image/x-ms-bmp", "image/gif", "image/tiff", "application/octet-stream")


class ServeError(ShuffleNetError):
    """The server cannot start (bad options, duplicate model names, port in use)."""


def _require_extra() -> None:
    import importlib
    import importlib.util

    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(f"`shufflenet serve` needs the serve extra ({module} is missing): "
                                         "pip install 'shufflenet[serve]'") from None
    # python-multipart (multipart uploads); newer releases name the module python_multipart
    if not (importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")):
        raise MissingDependencyError("`shufflenet serve` needs the serve extra (python-multipart is missing): "
                                     "pip install 'shufflenet[serve]'")


@dataclass(frozen=True)
class ServeOptions:
    max_batch: int = SERVE_DEFAULTS["max_batch"]  # rows per model run
    max_delay_ms: float = SERVE_DEFAULTS["max_delay_ms"]  # how long a batch's first request waits for company
    max_body_mb: float = SERVE_DEFAULTS["max_body_mb"]  # request body limit (413 above)
    max_queue: int = SERVE_DEFAULTS["max_queue"]  # rows waiting per model before 503
    timeout_ms: float = SERVE_DEFAULTS["timeout_ms"]  # a request's deadline unless it asks for less (Triton's)
    threads: int | None = None     # ONNX Runtime intra-op threads per model (None: its default)
    decode_workers: int | None = None  # image decode / tensor parse pool (None: one per core)
    #: after the shorter side goes to 256: refuses extreme panoramas (64:1 and beyond)
    max_resized_pixels: int = 64 * 256 * 256
    retry_after_s: int = 1         # Retry-After on 503
    top: int = CLASSIFY_TOP        # default ?top= on /v1/.../classify

    def __post_init__(self) -> None:
        checks = {"max_batch": self.max_batch >= 1, "max_delay_ms": self.max_delay_ms >= 0,
                  "max_body_mb": self.max_body_mb > 0, "max_queue": self.max_queue >= 1,
                  "timeout_ms": self.timeout_ms > 0, "threads": self.threads is None or self.threads >= 1,
                  "decode_workers": self.decode_workers is None or self.decode_workers >= 1,
                  "max_resized_pixels": self.max_resized_pixels >= 1,
                  "retry_after_s": self.retry_after_s >= 0, "top": self.top >= 1}
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ServeError(f"invalid serve options: {', '.join(bad)}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# --------------------------------------------------------------------------- models


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def model_name(spec) -> str:
    """The name a model is served under: ``NAME=SPEC`` gives NAME; a path its file stem (a
    ``.tar.gz`` loses both suffixes); anything else (variant, zoo name, ``VARIANT:random``) itself."""
    text = os.fspath(spec)
    left, eq, _ = text.partition("=")
    if eq and _NAME.match(left) and not Path(text).exists():
        return left
    path = Path(text)
    if path.exists():
        if path.is_dir():
            return path.resolve().name
        name = path.name
        for suffix in (".tar.gz", ".tgz", ".onnx"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return path.stem
    return text


def _name_and_source(spec) -> tuple[str, str]:
    """A ``--model`` value -> (the name it is served under, what Classifier resolves)."""
    text = os.fspath(spec)
    name = model_name(text)
    source = text[len(name) + 1:] if text.startswith(name + "=") and not Path(text).exists() else text
    return name, source


def load_models(specs: Sequence, *, threads: int | None = None) -> dict:
    """``--model`` values (each anything ``classify --model`` takes, optionally ``NAME=SPEC``) ->
    {name: Classifier}. Raises ServeError on a duplicate name, the runtime's errors on a bad model."""
    from .runtime import Classifier

    out: dict = {}
    for spec in specs:
        name, source = _name_and_source(spec)
        if not _NAME.match(name):
            raise ServeError(f"model name {name!r} cannot be used in a URL; give NAME=MODEL")
        if name in out:
            raise ServeError(f"two models are named {name!r}; give one as NAME=MODEL")
        out[name] = Classifier(source, threads=threads)  # the one place a --model is resolved
    if not out:
        raise ServeError("no model to serve; give --model")
    return out


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


@dataclass(eq=False)
class _Item:
    rows: np.ndarray
    deadline: float
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class _Model:
    """One served model: its Classifier, its batching queue and the thread that runs it."""

    def __init__(self, name: str, clf, opts: ServeOptions, metrics: _Metrics) -> None:
        self.name, self.clf, self.opts, self.metrics = name, clf, opts, metrics
        self.input_shape = [-1 if clf.fixed_batch is None else clf.fixed_batch, 3, clf.recipe.crop, clf.recipe.crop]
        self.output_name = clf.runner.output_names[0]
        # what clients see of the model's origin: a file's name, never the server's folders
        self.source = Path(clf.source).name if Path(clf.source).exists() else clf.source
        r = clf.recipe  # what the model metadata and every classify answer say: built once
        self.preprocessing = {"description": f"{clf.resize} resize {r.resize}, crop {r.crop}",
                              **r.to_dict(), "resize_mode": clf.resize, "exact_decoding": clf.exact}
        self.metadata = {
            "name": name, "versions": [API_VERSION], "platform": "onnxruntime_onnx",
            "inputs": [{"name": clf.input_name, "datatype": "FP32", "shape": self.input_shape}],
            "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, clf.num_classes or -1]}],
            "parameters": {"output_kind": clf.output_kind, "source": self.source, "max_batch_size": opts.max_batch}}
        self.queue: deque[_Item] = deque()
        self.rows_waiting = 0
        self.ready = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # one thread: batches for one model run one after another, as Triton's instance_count=1
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"shufflenet-infer-{name}")

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.executor.shutdown(wait=True)

    def warm(self) -> None:
        """One run at batch 1 and one at ``max_batch`` so ONNX Runtime's arena is sized."""
        shape = (1, 3, self.clf.recipe.crop, self.clf.recipe.crop)
        self.clf.outputs(np.zeros(shape, np.float32))
        if self.opts.max_batch > 1:
            self.clf.outputs(np.zeros((self.opts.max_batch, *shape[1:]), np.float32))

    async def submit(self, rows: np.ndarray, deadline: float) -> np.ndarray:
        """The model's raw output rows for ``rows``, run in whatever batch forms."""
        n = len(rows)
        if self.rows_waiting and self.rows_waiting + n > self.opts.max_queue:
            raise _HTTPError(503, f"model {self.name!r} is busy: {self.rows_waiting} rows waiting "
                                  f"(bound {self.opts.max_queue}); retry later",
                             {"Retry-After": str(self.opts.retry_after_s)})
        item = _Item(rows, deadline, asyncio.get_running_loop().create_future())
        self.queue.append(item)
        self.rows_waiting += n
        self.metrics.queue_depth.labels(self.name).set(self.rows_waiting)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), max(deadline - time.perf_counter(), 0))
        except TimeoutError:
            item.future.cancel()
            try:  # still waiting: it leaves the queue now and stops counting against its bound
                self.queue.remove(item)
                self.rows_waiting -= n
                self.metrics.queue_depth.labels(self.name).set(self.rows_waiting)
            except ValueError:
                pass  # already in a batch, whose result is dropped
            raise _HTTPError(504, f"the request passed its deadline waiting for model {self.name!r}") from None

    async def _loop(self) -> None:
        while True:
            await self._gather()
            batch, rows = self._take_batch()
            if batch:
                await self._run_batch(batch, rows)

    async def _gather(self) -> None:
        """Wait for a request, then until max_batch rows wait or the first one has waited max_delay."""
        while not self.queue:
            self._wake.clear()
            await self._wake.wait()
        until = self.queue[0].enqueued + self.opts.max_delay_ms / 1000
        while self.rows_waiting < self.opts.max_batch and (left := until - time.perf_counter()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                break

    def _take_batch(self) -> tuple[list[_Item], int]:
        """(requests, rows) off the queue for one run, at most max_batch rows (a larger request
        runs alone); requests whose client gave up or whose deadline passed are dropped."""
        batch, rows = [], 0
        now = time.perf_counter()
        while self.queue and (not batch or rows + len(self.queue[0].rows) <= self.opts.max_batch):
            item = self.queue.popleft()
            self.rows_waiting -= len(item.rows)
            if item.future.done():
                continue  # its client gave up (deadline)
            if now > item.deadline:
                item.future.set_exception(_HTTPError(504, "the request passed its deadline in the queue"))
                continue
            batch.append(item)
            rows += len(item.rows)
            self.metrics.stage.labels(self.name, "queue").observe(now - item.enqueued)
        self.metrics.queue_depth.labels(self.name).set(self.rows_waiting)
        return batch, rows

    async def _run_batch(self, batch: list[_Item], rows: int) -> None:
        """One model run on the model's thread; each request gets its rows or its error."""
        self.metrics.batch_size.labels(self.name).observe(rows)
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self._run,
                                                                       [i.rows for i in batch])
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(_HTTPError(503, "the server is shutting down"))
            raise
        except Exception as e:  # never let one batch end the batcher
            results = [_HTTPError(500, f"model {self.name!r} failed: {type(e).__name__}: {e}")] * len(batch)
        self.metrics.stage.labels(self.name, "model").observe(time.perf_counter() - t0)
        for item, result in zip(batch, results):
            if item.future.done():
                continue
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _run(self, parts: list[np.ndarray]) -> list:
        """One model run for the batch; if it fails, each request alone, so one bad request
        never takes the others down with it."""
        try:
            raw = self.clf.outputs(np.concatenate(parts) if len(parts) > 1 else parts[0])
            bounds = np.cumsum([0] + [len(p) for p in parts])
            return [raw[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        except Exception as e:
            if len(parts) == 1:
                return [_HTTPError(500, f"model {self.name!r} failed on this input: {e}")]
            out = []
            for p in parts:
                try:
                    out.append(self.clf.outputs(p))
                except Exception as e:
                    out.append(_HTTPError(500, f"model {self.name!r} failed on this input: {e}"))
            return out


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)  # one per app: tests run several
        self.requests = Counter("shufflenet_requests", "HTTP requests by model, endpoint and status",
                                ["model", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("shufflenet_request_duration_seconds", "Request latency (server side)",
                                 ["model", "endpoint"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("shufflenet_batch_size", "Rows per model run", ["model"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("shufflenet_queue_depth", "Rows waiting for a batch", ["model"],
                                 registry=self.registry)
        self.stage = Histogram("shufflenet_stage_seconds",
                               "Where the time goes: decode (image or tensor parsing), queue, model, encode",
                               ["model", "stage"], registry=self.registry,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.in_flight = Gauge("shufflenet_requests_in_flight", "Requests being handled", registry=self.registry)


# --------------------------------------------------------------------------- request parsing

_DTYPES = {"FP32": "<f4"}  # the models' input; anything else is refused, never silently cast


def _parse_infer(body: bytes, header_length: str | None, model: _Model) -> tuple[dict, np.ndarray]:
    """An infer request body (JSON, or JSON + binary tensors) -> (request JSON, NCHW float32)."""
    head, binary = _split_body(body, header_length)
    req = _request_json(head)
    tensor = _input_tensor(req, model)
    return req, _tensor_values(tensor, binary).reshape(tensor["shape"])


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, the binary tensor data after it): the binary extension's
    Inference-Header-Content-Length says where the JSON ends; without it all is JSON."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise _HTTPError(400, f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if not 0 < n <= len(body):
        raise _HTTPError(400, f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _request_json(head: bytes) -> dict:
    """The request's JSON: an object with an 'inputs' list and, if any, a 'parameters' object."""
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise _HTTPError(400, f"the request is not valid JSON ({e})") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise _HTTPError(400, "an inference request is a JSON object with an 'inputs' list")
    if "parameters" in req and not isinstance(req["parameters"], dict):
        raise _HTTPError(400, "'parameters' must be an object")
    return req


def _input_tensor(req: dict, model: _Model) -> dict:
    """The request's one input, its name, datatype and shape checked against the model's."""
    if len(req["inputs"]) != 1:
        raise _HTTPError(400, f"model {model.name!r} takes one input ({model.clf.input_name!r}), "
                              f"got {len(req['inputs'])}")
    tensor = req["inputs"][0]
    if not isinstance(tensor, dict):
        raise _HTTPError(400, "each input must be a JSON object")
    name, dtype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name != model.clf.input_name:
        raise _HTTPError(400, f"unknown input {name!r}; model {model.name!r} takes {model.clf.input_name!r}")
    if dtype not in _DTYPES:
        raise _HTTPError(400, f"input {name!r} must be FP32, got datatype {dtype!r}")
    want = model.input_shape
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or shape[0] < 1 or shape[1:] != want[1:]):
        raise _HTTPError(400, f"input {name!r} must have shape [N, {', '.join(map(str, want[1:]))}] "
                              f"with N >= 1, got {shape!r}")
    return tensor


def _tensor_values(tensor: dict, binary: memoryview) -> np.ndarray:
    """The checked input's values, flat: from the binary data after the JSON when the input
    gives binary_data_size, else from its JSON 'data'."""
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise _HTTPError(400, "input 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        return _binary_values(tensor, size, binary)
    return _json_values(tensor, binary)


def _binary_values(tensor: dict, size, binary: memoryview) -> np.ndarray:
    name, shape = tensor["name"], tensor["shape"]
    count = int(np.prod(shape))
    if "data" in tensor:
        raise _HTTPError(400, f"input {name!r} has both 'data' and binary_data_size")
    if type(size) is not int or size != len(binary):
        raise _HTTPError(400, f"input {name!r}: binary_data_size {size!r} but {len(binary)} bytes follow the JSON")
    if size != count * 4:
        raise _HTTPError(400, f"input {name!r}: {size} bytes of binary data for shape {shape} "
                              f"(FP32 needs {count * 4})")
    return np.frombuffer(binary, dtype=_DTYPES[tensor["datatype"]]).astype(np.float32)


def _json_values(tensor: dict, binary: memoryview) -> np.ndarray:
    name, shape = tensor["name"], tensor["shape"]
    count = int(np.prod(shape))
    if len(binary):
        raise _HTTPError(400, f"{len(binary)} bytes follow the JSON but no input has binary_data_size")
    if "data" not in tensor:
        raise _HTTPError(400, f"input {name!r} has neither 'data' nor binary_data_size")
    try:
        array = np.asarray(tensor["data"], dtype=np.float32)
    except (ValueError, TypeError):
        raise _HTTPError(400, f"input {name!r}: 'data' must be numbers (flat or nested row-major)") from None
    if array.size != count:
        raise _HTTPError(400, f"input {name!r}: {array.size} values for shape {shape} ({count} needed)")
    return array


def _wanted_outputs(req: dict, model: _Model) -> bool:
    """Whether the (only) output goes back as binary data; unknown output names are refused."""
    params = req.get("parameters") or {}
    binary = bool(params.get("binary_data_output", False))
    outputs = req.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise _HTTPError(400, "'outputs' must be a list of objects")
    for o in outputs:
        if o.get("name") != model.output_name:
            raise _HTTPError(400, f"unknown output {o.get('name')!r}; model {model.name!r} gives {model.output_name!r}")
        binary = bool((o.get("parameters") or {}).get("binary_data", binary))
    return binary


def _encode_infer(req: dict, model: _Model, raw: np.ndarray, binary: bool) -> tuple[bytes, dict]:
    raw = np.ascontiguousarray(raw, dtype="<f4")
    out = {"name": model.output_name, "datatype": "FP32", "shape": list(raw.shape)}
    resp = {"model_name": model.name, "model_version": API_VERSION}
    if "id" in req:
        resp["id"] = req["id"]
    if binary:
        data = raw.tobytes()
        out["parameters"] = {"binary_data_size": len(data)}
        resp["outputs"] = [out]
        head = json.dumps(resp).encode()
        return head + data, {"Inference-Header-Content-Length": str(len(head)),
                             "Content-Type": "application/octet-stream"}
    out["data"] = raw.ravel().tolist()
    resp["outputs"] = [out]
    return json.dumps(resp).encode(), {"Content-Type": "application/json"}


def _decode_image(model: _Model, data: bytes) -> np.ndarray:
    """Image bytes -> the model's input row, by the Classifier's own decode and prepare."""
    from .preprocess import ImageError, resized_size

    clf = model.clf
    try:
        img = clf.decode(data)  # the allow-list, the pixel bound before decoding, the draft rule
    except ImageError as e:
        raise _HTTPError(400, str(e).replace("<bytes>: ", "", 1)) from None
    w, h = img.size
    tw, th = (clf.recipe.resize,) * 2 if clf.resize == "square" else resized_size(w, h, clf.recipe.resize)
    if tw * th > model.opts.max_resized_pixels:
        raise _HTTPError(400, f"refused: a {w}x{h} image resizes to {tw}x{th}, more than "
                              f"{model.opts.max_resized_pixels:,} pixels (aspect ratio too extreme)")
    try:
        return clf.prepare(img)
    except ImageError as e:
        raise _HTTPError(400, str(e)) from None


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient's request compression), bounded by ``limit``."""
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise _HTTPError(400, f"cannot {encoding}-decode the body ({e})") from None
    if len(out) > limit:
        raise _HTTPError(413, f"the body decompresses to more than {limit:,} bytes (--max-body-mb)")
    if not d.eof:
        raise _HTTPError(400, f"the {encoding} body is truncated")
    return out


# --------------------------------------------------------------------------- the app


def create_app(models, *, options: ServeOptions | None = None,
               on_ready: Callable[[], None] | None = None, **option_values):
    """The ASGI app serving ``models``: a name, path or Classifier, a list of them, or
    {name: spec or Classifier}. Options come as ``options=ServeOptions(...)`` or as keywords
    (``max_batch=8``), not both. ``on_ready`` is called once every model is loaded and warmed.
    """
    _require_extra()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException

    if options is not None and option_values:
        raise ServeError("give options=ServeOptions(...) or keyword options, not both")
    opts = options or ServeOptions(**option_values)
    server = _Server(_classifiers(models, opts), opts, on_ready)
    app = Starlette(routes=server.routes(), lifespan=server.lifespan,
                    exception_handlers={HTTPException: server.http_error})
    app.state.shufflenet = server.served  # {name: served model}, for embedding and tests
    app.state.options = opts
    return app


def _classifiers(models, opts: ServeOptions) -> dict:
    """create_app's ``models`` -> {name: Classifier}, loading the ones given by name or path."""
    from .runtime import Classifier

    if isinstance(models, Mapping):
        loaded = _named_classifiers(models, opts)
    else:
        items = [models] if isinstance(models, (str, os.PathLike, Classifier)) else list(models)
        loaded = _listed_classifiers(items, opts)
    if not loaded:
        raise ServeError("no model to serve")
    return loaded


def _named_classifiers(models: Mapping, opts: ServeOptions) -> dict:
    from .runtime import Classifier

    loaded = {}
    for name, m in models.items():
        if not _NAME.match(str(name)):
            raise ServeError(f"model name {name!r} cannot be used in a URL")
        # the key names it: the spec's own name (a file stem) need not fit a URL
        loaded[str(name)] = m if isinstance(m, Classifier) else Classifier(_name_and_source(m)[1], threads=opts.threads)
    return loaded


def _listed_classifiers(items: list, opts: ServeOptions) -> dict:
    """Classifiers named by their source; model specs loaded (``NAME=SPEC`` or their own name)."""
    from .runtime import Classifier

    loaded = {}
    for m in items:
        if isinstance(m, Classifier):
            # "shufflenet_v2_x1_0 (torchvision weights)" -> "shufflenet_v2_x1_0"
            name = model_name(m.source.split(" (")[0]) if m.source != "<in-memory model>" else f"model{len(loaded)}"
            if not _NAME.match(name):
                raise ServeError(f"model name {name!r} cannot be used in a URL; pass {{name: classifier}}")
            if name in loaded:
                raise ServeError(f"two models are named {name!r}; pass a dict of names")
            loaded[name] = m
        else:
            for name, clf in load_models([m], threads=opts.threads).items():
                if name in loaded:
                    raise ServeError(f"two models are named {name!r}; give one as NAME=MODEL")
                loaded[name] = clf
    return loaded


def _json(content, status: int = 200, headers: Mapping[str, str] | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(content, status, headers=headers)


class _Server:
    """One app's state (the served models, their metrics, the decode pool, the options) and its
    route handlers. Handlers raise _HTTPError; :meth:`_endpoint` turns it into a JSON error body."""

    def __init__(self, loaded: dict, opts: ServeOptions, on_ready: Callable[[], None] | None) -> None:
        self.opts, self.on_ready = opts, on_ready
        self.metrics = _Metrics()
        self.served = {name: _Model(name, clf, opts, self.metrics) for name, clf in loaded.items()}
        self.pool = ThreadPoolExecutor(opts.decode_workers or os.cpu_count() or 1,
                                       thread_name_prefix="shufflenet-decode")
        self.warm_task: asyncio.Task | None = None  # set once started
        self.page_html = resources.files("shufflenet").joinpath("data/serve.html").read_text("utf-8")

    @property
    def ready(self) -> bool:
        """Every model warmed."""
        return all(m.ready for m in self.served.values())

    def routes(self) -> list:
        from starlette.routing import Route

        e = self._endpoint
        classify = e("classify", self.classify)
        routes = [
            Route("/", e("page", self.page), methods=["GET"]),
            Route("/metrics", e("metrics", self.metrics_text), methods=["GET"]),
            Route("/v2", e("server", self.server_metadata), methods=["GET"]),
            Route("/v2/health/live", e("health", self.health_live), methods=["GET"]),
            Route("/v2/health/ready", e("health", self.health_ready), methods=["GET"]),
            Route("/v1/models", e("models", self.list_models), methods=["GET"]),
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/models/{name}/classify", classify, methods=["POST"]),
        ]
        metadata, ready, infer = e("metadata", self.model_metadata), e("ready", self.model_ready), e("infer", self.infer)
        for suffix in ("", "/versions/{version}"):
            routes += [Route(f"/v2/models/{{name}}{suffix}", metadata, methods=["GET"]),
                       Route(f"/v2/models/{{name}}{suffix}/ready", ready, methods=["GET"]),
                       Route(f"/v2/models/{{name}}{suffix}/infer", infer, methods=["POST"])]
        return routes

    # ---- lifecycle

    @asynccontextmanager
    async def lifespan(self, app):
        await self.ensure_started()
        try:
            yield
        finally:
            if self.warm_task is not None and not self.warm_task.done():
                await self.warm_task
            for m in self.served.values():
                await m.stop()
            self.pool.shutdown(wait=True)

    async def ensure_started(self) -> None:
        """Batchers and warm-up start with the lifespan, or on the first request when the app
        is mounted somewhere that does not run sub-app lifespans."""
        if self.warm_task is not None:
            return
        for m in self.served.values():
            m.start()
        self.warm_task = asyncio.get_running_loop().create_task(self._warm_all())

    async def _warm_all(self) -> None:
        loop = asyncio.get_running_loop()
        for m in self.served.values():
            await loop.run_in_executor(m.executor, m.warm)
            m.ready = True
        if self.on_ready is not None:
            self.on_ready()

    # ---- what every handler shares

    def _endpoint(self, label: str, fn):
        """``fn`` as a route handler: typed errors become JSON error bodies; metrics by model and status."""
        async def handler(request: Request):
            await self.ensure_started()
            model_label = self._model_label(request, label)
            t0 = time.perf_counter()
            self.metrics.in_flight.inc()
            try:
                response = await fn(request)
            except _HTTPError as e:
                response = _json({"error": e.message}, e.status, headers=e.headers)
            finally:
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(model_label, label, str(response.status_code)).inc()
            if model_label and model_label != "<unknown>":
                self.metrics.latency.labels(model_label, label).observe(time.perf_counter() - t0)
            return response
        return handler

    def _model_label(self, request: Request, label: str) -> str:
        """The request's model as a metrics label: bounded values, never a client's made-up name."""
        name = request.path_params.get("name")
        if name is not None:
            return name if name in self.served else "<unknown>"
        return next(iter(self.served)) if label == "classify" and len(self.served) == 1 else ""

    async def http_error(self, request, exc):
        """Starlette's own errors (no route, wrong method) as the same JSON error bodies."""
        return _json({"error": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))

    def lookup(self, request: Request) -> _Model:
        served = self.served
        name = request.path_params.get("name")
        if name is None:  # /v1/classify: only when one model is served
            if len(served) != 1:
                raise _HTTPError(404, f"{len(served)} models are served; use /v1/models/NAME/classify "
                                      f"({', '.join(served)})")
            return next(iter(served.values()))
        if name not in served:
            raise _HTTPError(404, f"no model named {name!r}; served: {', '.join(served)}")
        version = request.path_params.get("version")
        if version is not None and version != API_VERSION:
            raise _HTTPError(404, f"model {name!r} has no version {version!r}; it has {API_VERSION!r}")
        return served[name]

    def _require_ready(self, m: _Model) -> None:
        if not m.ready:
            raise _HTTPError(503, f"model {m.name!r} is still loading", {"Retry-After": str(self.opts.retry_after_s)})

    async def read_body(self, request: Request) -> bytes:
        """The body, at most ``max_body_mb`` of it (413 beyond), gzip/deflate decoded."""
        body = await self._read_bounded(request)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            return await self.in_pool(_inflate, body, encoding, self.opts.max_body_bytes)
        if encoding not in ("", "identity"):
            raise _HTTPError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate, identity)")
        return body

    async def _read_bounded(self, request: Request) -> bytes:
        limit = self.opts.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise _HTTPError(400, f"bad Content-Length {declared!r}")
        too_big = declared is not None and int(declared) > limit
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                too_big = True
            if too_big:
                # keep reading (not keeping) a body up to twice the limit, so the client, still
                # sending, gets the 413 instead of a connection reset; beyond that, hang up
                if size > 2 * limit + (1 << 20):
                    break
                continue
            chunks.append(chunk)
        if too_big:
            raise _HTTPError(413, f"the body is {max(size, int(declared or 0)):,} bytes or more; the limit is "
                                  f"{limit:,} (--max-body-mb)")
        return b"".join(chunks)

    def deadline_for(self, t0: float, asked_us=None) -> float:
        seconds = self.opts.timeout_ms / 1000
        if asked_us is not None:
            if type(asked_us) not in (int, float) or asked_us <= 0:
                raise _HTTPError(400, f"parameter 'timeout' must be a positive number of microseconds, got {asked_us!r}")
            seconds = min(seconds, asked_us / 1e6)
        return t0 + seconds

    async def in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- KServe v2

    async def health_live(self, request: Request):
        return _json({"live": True})

    async def health_ready(self, request: Request):
        return _json({"ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, request: Request):
        from . import __version__

        return _json({"name": "shufflenet", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request):
        return _json(self.lookup(request).metadata)

    async def model_ready(self, request: Request):
        m = self.lookup(request)
        return _json({"name": m.name, "ready": m.ready}, 200 if m.ready else 503)

    async def infer(self, request: Request):
        from starlette.responses import Response

        t0 = time.perf_counter()
        m = self.lookup(request)
        self._require_ready(m)
        body = await self.read_body(request)
        req, rows = await self.in_pool(_parse_infer, body, request.headers.get("inference-header-content-length"), m)
        binary = _wanted_outputs(req, m)
        deadline = self.deadline_for(t0, (req.get("parameters") or {}).get("timeout"))
        self.metrics.stage.labels(m.name, "decode").observe(time.perf_counter() - t0)
        raw = await m.submit(rows, deadline)
        t1 = time.perf_counter()
        content, headers = await self.in_pool(_encode_infer, req, m, raw, binary)  # JSON text is not free
        self.metrics.stage.labels(m.name, "encode").observe(time.perf_counter() - t1)
        media = headers.pop("Content-Type")
        return Response(content, 200, headers=headers, media_type=media)

    # ---- images in, labels out

    async def classify(self, request: Request):
        t0 = time.perf_counter()
        m = self.lookup(request)
        top = self._top(request, m)
        self._require_ready(m)
        data = await self._image_bytes(request)
        deadline = self.deadline_for(t0)
        rows = await self.in_pool(_decode_image, m, data)
        self.metrics.stage.labels(m.name, "decode").observe(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            raise _HTTPError(504, "the request passed its deadline while decoding")
        raw = await m.submit(rows, deadline)
        t1 = time.perf_counter()
        preds = m.clf.top(m.clf.probabilities_from(raw), top)[0]
        answer = {"model": m.name, "source": m.source, "output_kind": m.clf.output_kind,
                  "preprocessing": m.preprocessing,
                  "predictions": [{"index": p.index, "label": p.label, "probability": p.probability} for p in preds]}
        response = _json(answer)
        self.metrics.stage.labels(m.name, "encode").observe(time.perf_counter() - t1)
        return response

    def _top(self, request: Request, m: _Model) -> int:
        top_text = request.query_params.get("top", str(self.opts.top))
        if not top_text.isdigit() or not 1 <= int(top_text) <= (m.clf.num_classes or 10**6):
            raise _HTTPError(400, f"top must be an integer from 1 to {m.clf.num_classes}, got {top_text!r}")
        return int(top_text)

    async def _image_bytes(self, request: Request) -> bytes:
        """The image: the body itself, or the 'file' part of a multipart/form-data body."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES and ctype not in ("", "multipart/form-data"):
            raise _HTTPError(415, f"Content-Type {ctype!r} is not an image; send the image bytes "
                                  f"({', '.join(IMAGE_TYPES)}) or multipart/form-data with a 'file' field")
        body = await self.read_body(request)
        data = await _multipart_file(request, body) if ctype == "multipart/form-data" else body
        if not data:
            raise _HTTPError(400, "the body is empty; send the image bytes")
        return data

    async def list_models(self, request: Request):
        return _json({"models": [
            {"name": m.name, "ready": m.ready, "source": m.source, "output_kind": m.clf.output_kind,
             "num_classes": m.clf.num_classes, "preprocessing": m.preprocessing} for m in self.served.values()]})

    async def metrics_text(self, request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(self, request: Request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.page_html)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """The 'file' field of a multipart/form-data body (already read, within the body limit)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8).parse()
    except MultiPartException as e:
        raise _HTTPError(400, f"bad multipart body: {e.message}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise _HTTPError(400, "the multipart body needs a 'file' field holding the image")
    part_type = (upload.content_type or "").split(";")[0].strip().lower()
    if part_type and part_type not in IMAGE_TYPES:
        await form.close()
        raise _HTTPError(415, f"the 'file' part is {part_type!r}, not an image")
    data = await upload.read()
    await form.close()
    return data


# --------------------------------------------------------------------------- running it


def run(app, *, host: str = SERVE_HOST, port: int = SERVE_PORT, on_listening: Callable[[str, int], None] | None = None,
        graceful_timeout_s: float | None = None, access_log: bool = False) -> None:
    """Serve ``app`` with uvicorn until SIGTERM or SIGINT; requests in flight are finished first.

    The socket is bound here, so a port in use is a ServeError and ``port=0`` takes a free one
    (``on_listening(host, port)`` says which).
    """
    import signal
    import socket

    _require_extra()
    _check_port(host, port)
    import uvicorn

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it every response waits ~40 ms for the client's delayed ACK (Nagle)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    if on_listening is not None:
        on_listening(host, bound)
    timeout = graceful_timeout_s
    if timeout is None:
        timeout = app.state.options.timeout_ms / 1000 + 5
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=timeout)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; with this no-op handler in
    # place underneath, a SIGTERM ends in a clean return (exit 0) instead of death by signal
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run(sockets=[sock])
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()


def _check_port(host: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"cannot listen on {host}:{port}: the port must be 0 to 65535 (0: a free one)")


def serve(models: Sequence, *, host: str = SERVE_HOST, port: int = SERVE_PORT, options: ServeOptions | None = None,
          on_ready: Callable[[str, list[str]], None] | None = None) -> None:
    """Load ``models`` (``--model`` values), then serve them until SIGTERM/SIGINT.
    ``on_ready(url, names)`` is called once every model is loaded and warmed."""
    _require_extra()  # before minutes of model loading
    _check_port(host, port)
    opts = options or ServeOptions()
    loaded = load_models(models, threads=opts.threads)
    where: dict[str, str] = {}

    def ready() -> None:
        if on_ready is not None:
            on_ready(where["url"], list(loaded))

    app = create_app(loaded, options=opts, on_ready=ready)
    run(app, host=host, port=port, on_listening=lambda h, p: where.update(url=f"http://{h}:{p}"))
