"""Weights as plain ``dict[str, numpy.ndarray]``, and the files they live in.

Keys follow the variant's naming (torchvision's for V2, Caffe2 blob names for the zoo's V1).
Formats: ``.npz`` and ``.safetensors`` are read and written here with numpy alone; ``.pth``/``.pt``
need torch and are only ever loaded with ``weights_only=True``. Nothing here executes code from a
file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._calibrate import calibrate
from ._io import atomic_write, import_torch, one_line, sha256_file  # noqa: F401  (re-exported: old import path)
from ._safeio import json_loads, read_capped, read_text, regular_file
from .errors import MissingDependencyError, UnsafeFileError, WeightsError
from .limits import MAX_TENSOR_BYTES, MAX_WEIGHTS_BYTES
from .specs import Graph, VariantSpec, default_artifact, get_spec, list_variants

__all__ = [
    "WeightSource",
    "random_weights",
    "init_weights",
    "load_weights",
    "save_weights",
    "conform",
    "infer_num_classes",
    "resolve_weights",
    "sha256_file",
    "weights_digest",
]

Weights = dict[str, np.ndarray]

WEIGHT_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt")  # and .onnx, read by weights_from_onnx

# --------------------------------------------------------------------------- random init


def random_weights(variant: str | VariantSpec, *, seed: int = 0, num_classes: int = 1000) -> Weights:
    """Seeded random weights that behave like a trained network's, numerically.

    He-normal convolutions, BatchNorm affine parameters away from identity, and BN running
    statistics measured on a seeded batch (see ``_calibrate``) so activations stay of order one
    through every residual add; the classifier is centred on the pooled features so logits are
    of order one and depend on the input. No torch needed.

    Memoised on (variant, seed, num_classes): the BN calibration costs seconds, and exports, tests
    and the zoo ask for the same weights many times. Each call returns its own copies, so callers
    may change the arrays freely.
    """
    spec = variant if isinstance(variant, VariantSpec) else get_spec(variant)
    # cached: registered specs (an ad-hoc spec may share a name, not a builder) with an int seed
    # (a Generator as seed has state: the same call must give the next weights, not the same ones)
    cacheable = (isinstance(seed, int) and not isinstance(seed, bool)
                 and spec.name in list_variants() and get_spec(spec.name) is spec)
    if not cacheable:
        return _random_weights(spec, seed, num_classes)
    return {k: v.copy() for k, v in _random_weights_cached(spec.name, seed, num_classes).items()}


@functools.lru_cache(maxsize=16, typed=True)  # a 2.0x variant is ~30 MB of float32; tests use a handful
def _random_weights_cached(name: str, seed, num_classes: int) -> Weights:
    return _random_weights(get_spec(name), seed, num_classes)


def _random_weights(spec: VariantSpec, seed, num_classes: int) -> Weights:
    graph = spec.graph(num_classes)
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for key, p in graph.param_table().items():
        if p.role == "num_batches_tracked":
            out[key] = np.array(0, dtype=np.int64)
            continue
        if p.op == "conv" and p.role == "weight":
            fan_in = int(np.prod(p.shape[1:]))
            arr = rng.normal(0.0, np.sqrt(2.0 / fan_in), p.shape)
        elif p.op == "linear" and p.role == "weight":
            arr = rng.normal(0.0, 1.0 / np.sqrt(p.shape[1]), p.shape)
        elif p.op == "bn" and p.role == "weight":
            arr = rng.uniform(0.5, 1.5, p.shape)
        elif p.role == "running_var":
            arr = rng.uniform(0.5, 2.0, p.shape)
        elif p.role == "running_mean":
            arr = rng.normal(0.0, 0.1, p.shape)
        else:  # biases (conv, bn, linear)
            arr = rng.normal(0.0, 0.05, p.shape)
        out[key] = arr.astype(np.float32)
    calibrate(graph, out, rng)
    return out


def init_weights(variant: str | VariantSpec, *, seed: int = 0, num_classes: int = 1000) -> Weights:
    """Seeded weights to start training from: He-normal (fan-out) convolutions, identity
    BatchNorm (weight 1, bias 0, running mean 0, variance 1), a small-normal classifier.

    ``random_weights`` imitates a *trained* network (for exports and numerics tests); started
    from, its random BN affines and wide classifier slow training from scratch by many epochs.
    """
    spec = variant if isinstance(variant, VariantSpec) else get_spec(variant)
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for key, p in spec.graph(num_classes).param_table().items():
        if p.role == "num_batches_tracked":
            out[key] = np.array(0, dtype=np.int64)
            continue
        if p.op == "conv" and p.role == "weight":  # fan-out (out x kh x kw), as torchvision's ResNet
            arr = rng.normal(0.0, np.sqrt(2.0 / (p.shape[0] * int(np.prod(p.shape[2:])))), p.shape)
        elif p.op == "linear" and p.role == "weight":
            arr = rng.normal(0.0, 0.01, p.shape)
        elif p.role in ("weight", "running_var"):  # BN scale and variance
            arr = np.ones(p.shape)
        else:  # biases and running means
            arr = np.zeros(p.shape)
        out[key] = arr.astype(np.float32)
    return out


# --------------------------------------------------------------------------- checking


def infer_num_classes(weights: Mapping[str, np.ndarray], spec: VariantSpec) -> int | None:
    """The classifier's output count in these weights, or None when the key is absent."""
    graph = spec.graph()
    head = graph.head
    w = weights.get(head.params["weight"])
    return None if w is None or np.ndim(w) != 2 else int(np.shape(w)[0])


def conform(weights: Mapping[str, np.ndarray], graph: Graph, *, what: str = "weights") -> Weights:
    """Check ``weights`` against the graph and return them in graph order with the right dtypes.

    Raises WeightsError naming the first missing key, unexpected key or shape mismatch. BN
    ``num_batches_tracked`` counters may be absent (older torchvision checkpoints lack them, and
    torch's BatchNorm fills them the same way).
    """
    table = graph.param_table()
    extra = [k for k in weights if k not in table]
    if extra:
        raise WeightsError(f"{what}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all); "
                           f"are these weights for another architecture?")
    out: Weights = {}
    missing = []
    for key, p in table.items():
        if key not in weights:
            if p.role == "num_batches_tracked":
                out[key] = np.array(0, dtype=np.int64)
                continue
            missing.append(key)
            continue
        arr = np.asarray(weights[key])
        if tuple(arr.shape) != p.shape:
            raise WeightsError(f"{what}: {key!r} has shape {tuple(arr.shape)}, the architecture "
                               f"needs {p.shape}")
        if p.dtype == "float32":
            if not np.issubdtype(arr.dtype, np.floating):
                raise WeightsError(f"{what}: {key!r} has dtype {arr.dtype}, expected floating point")
            if not np.all(np.isfinite(arr)):
                raise WeightsError(f"{what}: {key!r} holds NaN or infinite values")
            arr = arr.astype(np.float32, copy=False)
        else:
            arr = arr.astype(np.int64, copy=False)
        out[key] = arr
    if missing:
        raise WeightsError(f"{what}: missing key {missing[0]!r} ({len(missing)} missing in all); "
                           f"are these weights for another architecture?")
    return out


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over keys, dtypes, shapes and bytes in sorted key order: identifies the values."""
    h = hashlib.sha256()
    for key in sorted(weights):
        arr = np.asarray(weights[key], order="C")
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- files


def load_weights(path: str | os.PathLike) -> Weights:
    """Read a weights file into a numpy dict (no architecture check; see :func:`conform`)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    regular_file(path, WeightsError, "weights file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            return _load_npz(path)
        if suffix == ".safetensors":
            return _load_safetensors(path)
        if suffix in (".pth", ".pt"):
            return _load_torch(path)
    except (WeightsError, UnsafeFileError, MissingDependencyError):
        raise
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile,
            RecursionError) as e:
        raise WeightsError(f"cannot read weights from {path}: {e or type(e).__name__}") from None
    raise WeightsError(f"unsupported weights file {path.name!r}: expected one of "
                       f"{', '.join(WEIGHT_SUFFIXES)}")


def save_weights(weights: Mapping[str, np.ndarray], path: str | os.PathLike,
                 *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a numpy dict as .npz or .safetensors (or .pth with torch), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"unsupported weights file {path.name!r}: expected one of "
                           f"{', '.join(WEIGHT_SUFFIXES)}")
    arrays = {k: np.asarray(v, order="C") for k, v in weights.items()}  # keeps 0-d

    def write(tmp: Path) -> None:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        elif suffix == ".safetensors":
            tmp.write_bytes(_safetensors_bytes(arrays, metadata))
        else:
            torch = import_torch("writing .pth files")
            torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, tmp)

    return atomic_write(path, write)


def _load_npz(path: Path) -> Weights:
    """Each ``.npy`` member's header is read and its size checked (against the limit and the
    member's own size) before any array exists; object arrays are refused (no unpickling)."""
    out: Weights = {}
    total = 0
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            key = info.filename.removesuffix(".npy")
            if info.file_size > MAX_TENSOR_BYTES + 4096:
                raise UnsafeFileError(f"{path}: member {info.filename!r} unpacks to {info.file_size:,} bytes, "
                                      f"over the limit of {MAX_TENSOR_BYTES:,}; refused")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise WeightsError(f"{path}: member {info.filename!r} has .npy version {version}")
                if dtype.hasobject or dtype.kind not in "biuf" or dtype.names:
                    raise WeightsError(f"{path}: {key!r} has dtype {dtype}; only numeric arrays are read (no pickles)")
                nbytes = dtype.itemsize * math.prod(shape)
                total += nbytes
                if nbytes > MAX_TENSOR_BYTES or total > MAX_WEIGHTS_BYTES:
                    raise UnsafeFileError(f"{path}: {key!r} of shape {shape} is over the limit of "
                                          f"{MAX_TENSOR_BYTES:,} bytes per tensor / {MAX_WEIGHTS_BYTES:,} in all")
                data = f.read(nbytes + 1)
            if len(data) != nbytes:
                raise WeightsError(f"{path}: {key!r} holds {len(data)} bytes, its header says {nbytes}")
            out[key] = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
    return out


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_ST_MAX_HEADER = 100 << 20  # the format's own limit


def _load_safetensors(path: Path) -> Weights:
    data = read_capped(path, MAX_WEIGHTS_BYTES + _ST_MAX_HEADER + 8, WeightsError, "weights file")
    if len(data) < 8:
        raise WeightsError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _ST_MAX_HEADER or 8 + n > len(data):
        raise WeightsError(f"{path}: safetensors header length {n} is out of range")
    header = json_loads(data[8:8 + n], WeightsError, f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: bad safetensors header: not a JSON object")
    buf = memoryview(data)[8 + n:]
    out: Weights = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
            if any(d < 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise WeightsError(f"{path}: tensor {key!r} has an unsupported or malformed entry") from None
        if not 0 <= start <= end <= len(buf) or end - start != dtype.itemsize * math.prod(shape):
            raise WeightsError(f"{path}: tensor {key!r} has data offsets that do not fit its shape")
        out[key] = np.frombuffer(buf[start:end], dtype=dtype.newbyteorder("<")).reshape(shape).copy()
    return out


def _safetensors_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> bytes:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for key, arr in arrays.items():
        if arr.dtype not in _ST_NAMES:
            raise WeightsError(f"cannot store {key!r} of dtype {arr.dtype} in safetensors")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _load_torch(path: Path) -> Weights:
    from ._torch_pickle import check_archive_sizes

    try:
        import torch
    except ImportError:  # no torch: our own restricted reader of torch's formats
        from ._torch_pickle import load_state_dict

        return _plain_state_dict(load_state_dict(path), path)
    check_archive_sizes(path)  # a zip bomb is refused before torch inflates it
    try:
        # weights_only=True: only tensors and plain containers; anything needing code is refused
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError ... for refused content
        msg = _torch_reason(e)
        if _needs_code(str(e)):
            raise UnsafeFileError(f"{path}: refused, the checkpoint needs code execution to load "
                                  f"({msg})") from None
        # torch refused without saying why (an opcode it does not take, e.g. protocol 4's FRAME):
        # our restricted reader tells a global (code) from damage, and reads what is plain data
        from ._torch_pickle import load_state_dict

        try:
            return _plain_state_dict(load_state_dict(path), path)
        except UnsafeFileError:
            raise
        except WeightsError:
            raise WeightsError(f"cannot read {path}: {msg}") from None
    return _state_dict_to_numpy(obj, path)


def _torch_reason(e: Exception) -> str:
    """The informative line of torch's long weights_only message (else its first line)."""
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
    return m.group(1).strip() if m else one_line(e, line="first")


def _needs_code(message: str) -> bool:
    """Whether torch's weights_only refusal is about a global (code), not about damaged data."""
    return any(s in message for s in ("Unsupported global", "Unsupported class", "not an allowed global"))


def _state_dict_of(obj, tensor_type: type, path: Path) -> Mapping:
    """The state dict in what a reader returned, unwrapping the common wrappers ({"state_dict":
    ...}, {"model": ...}, {"model_state_dict": ...}; a mapping that holds tensors is the state
    dict itself)."""
    if isinstance(obj, Mapping) and not any(isinstance(v, tensor_type) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def _plain_state_dict(obj, path: Path) -> Weights:
    """The state dict that the torch-free reader returned, as a numpy dict."""
    obj = _state_dict_of(obj, np.ndarray, path)
    out: Weights = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise WeightsError(f"{path}: entry {k!r} is not a named tensor")
        out[k.removeprefix("module.")] = v
    return out


def _state_dict_to_numpy(obj, path: Path) -> Weights:
    """What torch.load returned, as a numpy dict (sizes capped before any copy)."""
    import torch

    obj = _state_dict_of(obj, torch.Tensor, path)
    out: Weights = {}
    total = 0
    for k, v in obj.items():
        if not isinstance(k, str):
            raise WeightsError(f"{path}: key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        k = k.removeprefix("module.")  # DataParallel / DDP wrappers
        nbytes = v.numel() * max(v.element_size(), 4)  # a view may be larger than its storage
        total += nbytes
        if nbytes > MAX_TENSOR_BYTES or total > MAX_WEIGHTS_BYTES:
            raise UnsafeFileError(f"{path}: {k!r} of shape {tuple(v.shape)} is over the limit of "
                                  f"{MAX_TENSOR_BYTES:,} bytes per tensor / {MAX_WEIGHTS_BYTES:,} in all")
        v = v.detach().cpu()
        if v.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):  # numpy has no such dtype
            v = v.float()
        out[k] = v.numpy().copy()
    return out


# --------------------------------------------------------------------------- one spelling


@dataclass(frozen=True)
class WeightSource:
    """Where weights came from, for provenance in exported models and reports."""

    kind: str  # "random" | "file" | "dict" | "run"
    description: str
    sha256: str  # of the file when there is one, else of the values (weights_digest)
    seed: int | None = None
    #: from a training run: its class names and the input size it was trained at
    labels: tuple[str, ...] | None = None
    input_size: int | None = None


def training_run(path: str | os.PathLike) -> tuple[Path, dict] | None:
    """``RUN/``, ``RUN/best`` or ``RUN/last`` of ``shufflenet train`` -> (weights file, run info)."""
    path = Path(path)
    if path.is_dir() and (path / "best.safetensors").is_file():
        file = path / "best.safetensors"
    elif not path.exists() and path.suffix == "" and path.with_suffix(".safetensors").is_file():
        file = path.with_suffix(".safetensors")
    elif path.is_file() and path.suffix == ".safetensors" and (path.parent / "classes.json").is_file():
        file = path
    else:
        return None
    run = file.parent
    classes = json_loads(read_text(run / "classes.json", WeightsError, "training run"), WeightsError,
                         f"{run / 'classes.json'}")
    config = json_loads(read_text(run / "config.json", WeightsError, "training run"), WeightsError,
                        f"{run / 'config.json'}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise WeightsError(f"{run / 'classes.json'}: expected a JSON list of class names")
    if not isinstance(config, dict):
        raise WeightsError(f"{run / 'config.json'}: expected a JSON object")
    img_size = config.get("img_size")
    if img_size is not None and (not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 1):
        raise WeightsError(f"{run / 'config.json'}: img_size {img_size!r} is not a positive integer")
    return file, {"classes": classes, "variant": config.get("variant"), "img_size": img_size}


def resolve_weights(
    source: str | os.PathLike | Mapping[str, np.ndarray] | None,
    variant: str | VariantSpec,
    *,
    num_classes: int | None = None,
    seed: int | None = None,
) -> tuple[Weights, WeightSource, int]:
    """Turn any accepted weights spelling into checked weights.

    ``source``: None or "random" (seed from ``seed``, default 0), "random:SEED", a path to a
    weights file, or a numpy dict. Returns (weights in graph order, provenance, num_classes).
    ``num_classes`` that contradicts the weights raises WeightsError.
    """
    spec = variant if isinstance(variant, VariantSpec) else get_spec(variant)
    if source is None or (isinstance(source, str) and (source == "random" or source.startswith("random:"))):
        seed = _random_seed(source, seed)
        n = 1000 if num_classes is None else num_classes
        w = random_weights(spec, seed=seed, num_classes=n)
        return w, WeightSource("random", f"random:{seed}", weights_digest(w), seed), n
    if seed is not None:
        raise WeightsError("seed only applies to random weights; it conflicts with the given weights")
    if isinstance(source, Mapping):
        raw = _Read(dict(source), "dict", "<numpy dict>")
    else:
        raw = _read_file(source, spec, num_classes)
    n = _num_classes(raw.weights, spec, num_classes)
    w = conform(raw.weights, spec.graph(n), what=raw.description)
    return w, WeightSource(raw.kind, raw.description, raw.sha256 or weights_digest(w),
                           labels=raw.labels, input_size=raw.input_size), n


@dataclass(frozen=True)
class _Read:
    """Weights as read, before the architecture check, and what the provenance needs."""

    weights: Weights
    kind: str  # as WeightSource.kind
    description: str
    sha256: str | None = None  # of the file; None: of the values, once checked
    labels: tuple[str, ...] | None = None
    input_size: int | None = None


def _random_seed(source: str | None, seed: int | None) -> int:
    """The seed of None or "random" (``seed``, default 0), or of "random:SEED" (which ``seed``
    may repeat but not contradict)."""
    if source is not None and source.startswith("random:"):
        text = source.split(":", 1)[1]
        if not re.fullmatch(r"[0-9]+", text):
            raise WeightsError(f"bad weights spec {source!r}: expected random:SEED with an integer seed")
        if seed is not None and int(text) != seed:
            raise WeightsError(f"weights {source!r} and seed={seed} disagree")
        seed = int(text)
    return 0 if seed is None else seed


def _read_file(source: str | os.PathLike, spec: VariantSpec, num_classes: int | None) -> _Read:
    """A weights file, a .onnx, a training run folder, or "torchvision" (the published file)."""
    if str(source) == "torchvision":
        source = _published_file(spec)
    path = Path(source)
    run = training_run(path)
    labels = input_size = None
    if run is not None:
        path, info = run
        if info["variant"] != spec.name:
            raise WeightsError(f"{source} is a training run of {info['variant']}, not {spec.name}")
        labels, input_size = tuple(info["classes"]), info["img_size"]
    if path.suffix.lower() == ".onnx" and path.is_file():
        raw = weights_from_onnx(path, spec, num_classes)
    else:
        raw = load_weights(path)
    return _Read(raw, "run" if run else "file", str(path), sha256_file(path), labels, input_size)


def _published_file(spec: VariantSpec) -> Path:
    """The published weights, fetched: torchvision's checkpoint, else (the Caffe2 V1) the Model
    Zoo's newest fp32 file of the same network, whose initializers are read."""
    from .hub import fetch

    artifact = default_artifact(spec.name)
    if artifact is None:
        raise WeightsError(f"no published weights exist for {spec.name}; use random or a path")
    return fetch(artifact)


def _num_classes(raw: Mapping[str, np.ndarray], spec: VariantSpec, num_classes: int | None) -> int:
    """The classifier's outputs: the weights' own, which ``num_classes`` must not contradict."""
    found = infer_num_classes(raw, spec)
    if num_classes is not None and found is not None and found != num_classes:
        raise WeightsError(f"num_classes={num_classes} contradicts the weights, whose classifier "
                           f"has {found} outputs")
    return found or num_classes or 1000


# --------------------------------------------------------------------------- ONNX initializers


def weights_from_onnx(path, spec: VariantSpec, num_classes: int | None = None) -> Weights:
    """The weights of a .onnx of the same architecture (ours, the zoo's, a torch export); ``path``
    may also be a loaded ``onnx.ModelProto`` (then named by its graph in errors).

    Matched by name first (our keys; Caffe2 converter names with their ``_0`` suffix), then by
    structure: the Conv / BatchNormalization / Gemm nodes in graph order against the description,
    shapes checked. A model whose BatchNorms were folded into its convolutions gives the same
    network with identity BatchNorms (gamma 1, beta = folded bias, mean 0, var 1 - eps).
    """
    import onnx
    from onnx import numpy_helper

    from .bundle import load_model_checked

    if isinstance(path, onnx.ModelProto):
        model, path = path, f"model {path.graph.name or '(unnamed)'}"
    else:
        path = Path(path)
        try:
            model = load_model_checked(path)  # external data: read from the model's folder, checked
        except (UnsafeFileError, WeightsError):
            raise
        except Exception as e:  # BundleError
            raise WeightsError(str(e)) from None
    inits = {}
    for t in model.graph.initializer:
        try:
            inits[t.name] = numpy_helper.to_array(t)
        except Exception as e:  # numpy_helper: ValueError/TypeError/KeyError for malformed fields
            raise WeightsError(f"{path}: initializer {t.name!r} is unreadable ({e})") from None
    if num_classes is None:
        gemm = next((n for n in model.graph.node if n.op_type == "Gemm"), None)
        if gemm is not None and gemm.input[1] in inits:
            transb = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
            num_classes = int(inits[gemm.input[1]].shape[0 if transb else 1])
    graph = spec.graph(num_classes or 1000)
    table = graph.param_table()
    by_name: Weights = {}
    for key, p in table.items():
        for cand in (key, f"{key}_0"):
            if cand in inits:
                by_name[key] = _unpad(inits[cand], p.shape)
                break
    float_keys = [k for k, p in table.items() if p.dtype == "float32"]
    if all(k in by_name for k in float_keys):
        return by_name
    return _weights_by_structure(model, inits, graph, path)


def _unpad(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A padded model's parameter (``export``'s default, ``optimize.pad_channels``) cut back to the
    architecture's shape: only when it is larger along some axes and everything cut is padding
    (zeros; ones for a padded BatchNorm variance). Anything else is returned as it is."""
    shape = tuple(shape)
    if arr.ndim != len(shape) or tuple(arr.shape) == shape or any(a < b for a, b in zip(arr.shape, shape)):
        return arr
    cut = arr[tuple(slice(0, b) for b in shape)]
    rest = arr.copy()
    rest[tuple(slice(0, b) for b in shape)] = 0
    if not np.all((rest == 0) | (rest == 1)):
        return arr
    return np.ascontiguousarray(cut)


def _weights_by_structure(model, inits, graph: Graph, path) -> Weights:
    """Pair the model's Conv/BatchNormalization/Gemm nodes with the description's layers in
    order; without BatchNorms (folded), identity BatchNorms carry the convolutions' biases."""
    onnx_layers = _onnx_layers(model, inits, path)
    has_bn = any(op == "BatchNormalization" for op, _ in onnx_layers)
    ours = [n for n in graph.nodes if n.op in ("conv", "linear") or (n.op == "bn" and has_bn)]
    if len(onnx_layers) != len(ours):
        raise WeightsError(f"{path}: {len(onnx_layers)} Conv/BatchNormalization/Gemm nodes, the "
                           f"architecture has {len(ours)}; not the same network")
    kind = {"Conv": "conv", "BatchNormalization": "bn", "Gemm": "linear"}
    table = graph.param_table()
    out: Weights = {}
    folded_biases: dict[str, np.ndarray] = {}
    for (op, arrays), node in zip(onnx_layers, ours):
        if kind[op] != node.op:
            raise WeightsError(f"{path}: found {op} where the architecture has {node.op} "
                               f"({node.output}); not the same network")
        roles = {"conv": ("weight", "bias"), "linear": ("weight", "bias"),
                 "bn": ("weight", "bias", "running_mean", "running_var")}[node.op]
        for role, arr in zip(roles, arrays):
            if role == "bias" and node.op == "conv" and "bias" not in node.params:
                folded_biases[node.output] = arr  # a folded BN's bias
                continue
            key = node.params[role]
            arr = _unpad(arr, table[key].shape)
            if tuple(arr.shape) != table[key].shape:
                raise WeightsError(f"{path}: {op} parameter for {key!r} has shape {tuple(arr.shape)}, "
                                   f"the architecture needs {table[key].shape}")
            out[key] = arr
    if not has_bn:
        _identity_batchnorms(graph, out, folded_biases)
    return out


def _onnx_layers(model, inits, path) -> list[tuple[str, list[np.ndarray]]]:
    """(op type, parameter arrays) of each Conv/BatchNormalization/Gemm node in graph order; a
    Gemm's weight as (out, in) whatever its transB."""
    from onnx import helper

    layers = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "BatchNormalization", "Gemm"):
            continue
        missing = [i for i in n.input[1:] if i and i not in inits]
        if missing:
            raise WeightsError(f"{path}: {n.op_type} node {n.name or n.output[0]} reads "
                               f"{missing[0]!r}, which is not an initializer")
        arrays = [inits[i] for i in n.input[1:] if i]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Gemm" and not attrs.get("transB", 0):
            arrays[0] = arrays[0].T
        layers.append((n.op_type, arrays))
    return layers


def _identity_batchnorms(graph: Graph, out: Weights, folded_biases: dict[str, np.ndarray]) -> None:
    """Fill each BatchNorm of a folded model as the identity (gamma 1, mean 0, var 1 - eps)
    whose beta is the bias folded into the convolution before it."""
    for bn in (n for n in graph.nodes if n.op == "bn"):
        conv_out = bn.inputs[0]
        c = bn.attrs["channels"]
        folded_bias = folded_biases.pop(conv_out, None)
        folded_bias = None if folded_bias is None else folded_bias[:c]  # a padded model's extra channels
        conv = next(n for n in graph.nodes if n.output == conv_out)
        if "bias" in conv.params:  # the folded bias sits in the conv's own slot
            folded_bias, out[conv.params["bias"]] = out[conv.params["bias"]], np.zeros(c, np.float32)
        out[bn.params["weight"]] = np.ones(c, np.float32)
        out[bn.params["bias"]] = np.zeros(c, np.float32) if folded_bias is None else folded_bias
        out[bn.params["running_mean"]] = np.zeros(c, np.float32)
        out[bn.params["running_var"]] = np.full(c, 1.0 - bn.attrs["eps"], np.float32)
