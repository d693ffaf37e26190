"""Read PyTorch ``.pth`` state dicts without torch, as safely as ``weights_only=True``.

Used when torch is not installed, so ``--weights torchvision`` works on the base install. Both of
torch's formats are read: the zip archive (torch >= 1.6: ``<name>/data.pkl`` + ``<name>/data/<key>``)
and the legacy stream (magic, protocol, sys_info, the pickled object, storage keys, raw storages).
The unpickler resolves only an allow-list of globals (OrderedDict, the tensor/parameter rebuild
functions and the typed storage classes); anything else is refused before it could run.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import UnsafeFileError, WeightsError
from .limits import MAX_NESTING, MAX_TENSOR_BYTES, MAX_WEIGHTS_BYTES

__all__ = ["load_state_dict", "check_archive_sizes"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    def __init__(self, kind: _StorageType, key: str, numel: int) -> None:
        self.kind, self.key, self.numel = kind, key, numel
        self.array: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size, stride) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _SafeUnpickler(pickle._Unpickler):
    """Python's own unpickler, not the C one: its memo is a dict, where the C unpickler's memo is
    an array that a 10-byte ``LONG_BINPUT 4294967295`` grows to gigabytes. BUILD (setting state
    on an object) is allowed only on dicts (OrderedDict's ``_metadata``), never on our functions."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self):
        if len(self.stack) < 2 or not isinstance(self.stack[-2], dict):
            raise UnsafeFileError(f"{self.path}: refused, the pickle sets state on a "
                                  f"{type(self.stack[-2]).__name__ if len(self.stack) > 1 else 'missing object'}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


class _Unpickler(_SafeUnpickler):
    def __init__(self, f, path: Path) -> None:
        super().__init__(f)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise UnsafeFileError(f"{self.path}: refused, the checkpoint needs code execution to load "
                              f"(global {module}.{name} is not a tensor or container)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage" or not isinstance(pid[1], _StorageType):
            raise UnsafeFileError(f"{self.path}: unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError(f"{self.path}: storage views are not supported")
        key = str(key)
        if key not in self.storages:
            numel = int(numel)
            if not 0 <= numel * kind.itemsize <= MAX_TENSOR_BYTES:
                raise UnsafeFileError(f"{self.path}: storage {key} declares {numel:,} elements, over the "
                                      f"limit of {MAX_TENSOR_BYTES:,} bytes; refused")
            self.storages[key] = _Storage(kind, key, numel)
        return self.storages[key]


def _to_array(raw: bytes, kind: _StorageType, numel: int) -> np.ndarray:
    if len(raw) < numel * kind.itemsize:
        raise WeightsError(f"storage holds {len(raw)} bytes, needs {numel * kind.itemsize}")
    if kind.dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 exactly
        bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(kind.dtype).newbyteorder("<"), count=numel)


def _tensor(ref: _TensorRef, path: Path) -> np.ndarray:
    base = ref.storage.array
    if (not all(isinstance(v, int) for v in (ref.offset, *ref.size, *ref.stride))
            or len(ref.size) != len(ref.stride) or any(s < 0 for s in ref.size)):
        raise WeightsError(f"{path}: a tensor has a malformed size/stride")
    n = math.prod(ref.size)
    # checked before the copy: a stride-0 view of a few bytes can describe gigabytes
    if n * base.itemsize > MAX_TENSOR_BYTES:
        raise UnsafeFileError(f"{path}: a tensor of shape {ref.size} is over the limit of "
                              f"{MAX_TENSOR_BYTES:,} bytes; refused")
    if n == 0:
        return np.zeros(ref.size, base.dtype)
    last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride))
    if ref.offset < 0 or last >= len(base) or any(st < 0 for st in ref.stride):
        raise WeightsError(f"{path}: a tensor's size/stride points outside its storage")
    view = np.lib.stride_tricks.as_strided(base[ref.offset:], shape=ref.size,
                                           strides=[st * base.itemsize for st in ref.stride])
    return np.array(view)  # a copy: contiguous, writable, independent of the file buffer


def _materialise(obj, path: Path):
    """Tensor references -> arrays in nested dicts, without recursion: nesting deeper than
    MAX_NESTING, a dict that contains itself, or more than MAX_WEIGHTS_BYTES in all is refused."""
    total = 0

    def convert(value):
        nonlocal total
        if isinstance(value, _TensorRef):
            arr = _tensor(value, path)
            total += arr.nbytes
            if total > MAX_WEIGHTS_BYTES:
                raise UnsafeFileError(f"{path}: tensors over the limit of {MAX_WEIGHTS_BYTES:,} bytes in all")
            return arr
        return value

    if not isinstance(obj, dict):
        return convert(obj)
    root: dict = {}
    stack = [(obj, root, 1, frozenset([id(obj)]))]
    while stack:
        src, dst, depth, seen = stack.pop()
        for k, v in src.items():
            if isinstance(v, dict):
                if id(v) in seen:
                    raise WeightsError(f"{path}: a dict contains itself")
                if depth >= MAX_NESTING:
                    raise WeightsError(f"{path}: dicts nested deeper than {MAX_NESTING} levels; refused")
                dst[k] = {}
                stack.append((v, dst[k], depth + 1, seen | {id(v)}))
            else:
                dst[k] = convert(v)
    return root


def load_state_dict(path: str | Path) -> dict:
    """A torch checkpoint as nested dicts of numpy arrays (no torch needed)."""
    path = Path(path)
    try:
        return _load(path)
    except (UnsafeFileError, WeightsError):
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, IndexError, KeyError,
            AttributeError, zipfile.BadZipFile, RecursionError, OverflowError, OSError, zlib.error,
            NotImplementedError) as e:
        raise WeightsError(f"{path}: cannot read torch checkpoint ({e or type(e).__name__})") from None


def check_archive_sizes(path: Path) -> None:
    """A zip checkpoint whose members unpack to more than the limits is refused before reading."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read torch checkpoint ({e})") from None
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > MAX_TENSOR_BYTES + (1 << 20) or total > MAX_WEIGHTS_BYTES + (64 << 20):
            raise UnsafeFileError(f"{path}: member {info.filename!r} unpacks to {info.file_size:,} bytes "
                                  f"({total:,} so far), over the limits of {MAX_TENSOR_BYTES:,} per tensor / "
                                  f"{MAX_WEIGHTS_BYTES:,} in all; refused")


def _read_member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    with z.open(name) as f:  # read with a cap: the declared size may lie
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFileError(f"member {name!r} unpacks to more than {limit:,} bytes; refused")
    return data


def _load(path: Path) -> dict:
    if zipfile.is_zipfile(path):
        check_archive_sizes(path)
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("data.pkl")]
            if len(pkl) != 1:
                raise WeightsError(f"{path}: not a torch checkpoint (no single data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            up = _Unpickler(io.BytesIO(_read_member(z, pkl[0], MAX_TENSOR_BYTES)), path)
            obj = up.load()
            for key, st in up.storages.items():
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise WeightsError(f"{path}: storage {key} is missing")
                st.array = _to_array(_read_member(z, member, st.numel * st.kind.itemsize), st.kind, st.numel)
        return _materialise(obj, path)
    if path.stat().st_size > MAX_WEIGHTS_BYTES + (64 << 20):
        raise UnsafeFileError(f"{path}: over the limit of {MAX_WEIGHTS_BYTES:,} bytes; refused")
    stream = io.BytesIO(path.read_bytes())  # the legacy stream
    if _plain_load(stream, path) != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a torch checkpoint")
    _plain_load(stream, path)  # protocol version
    _plain_load(stream, path)  # sys_info
    up = _Unpickler(stream, path)
    obj = up.load()
    for key in _plain_load(stream, path):  # then each storage: int64 element count, raw bytes
        st = up.storages.get(str(key))
        if st is None:
            raise WeightsError(f"{path}: unknown storage {key!r}")
        (numel,) = struct.unpack("<q", stream.read(8))
        if not 0 <= numel * st.kind.itemsize <= MAX_TENSOR_BYTES:
            raise UnsafeFileError(f"{path}: storage {key} declares {numel:,} elements; refused")
        st.array = _to_array(stream.read(numel * st.kind.itemsize), st.kind, numel)
    if any(st.array is None for st in up.storages.values()):
        raise WeightsError(f"{path}: a storage is missing")
    return _materialise(obj, path)


class _PlainUnpickler(_SafeUnpickler):
    """For the legacy header pickles: numbers, strings and dicts only."""

    def __init__(self, f, path: Path) -> None:
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        raise UnsafeFileError(f"{self.path}: refused, unexpected global {module}.{name} in the header")


def _plain_load(stream, path: Path):
    return _PlainUnpickler(stream, path).load()
