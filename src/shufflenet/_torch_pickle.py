"""Read PyTorch ``.pth`` state dicts without torch, as safely as ``weights_only=True``.

Used when torch is not installed, so ``--weights torchvision`` works on the base install. Both of
torch's formats are read: the zip archive (torch >= 1.6: ``<name>/data.pkl`` + ``<name>/data/<key>``)
and the legacy stream (magic, protocol, sys_info, the pickled object, storage keys, raw storages).
The unpickler resolves only an allow-list of globals (OrderedDict, the tensor/parameter rebuild
functions and the typed storage classes); anything else is refused before it could run.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import UnsafeFileError, WeightsError

__all__ = ["load_state_dict"]

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


class _Unpickler(pickle.Unpickler):
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
            self.storages[key] = _Storage(kind, key, int(numel))
        return self.storages[key]


def _to_array(raw: bytes, kind: _StorageType, numel: int) -> np.ndarray:
    if len(raw) < numel * kind.itemsize:
        raise WeightsError(f"storage holds {len(raw)} bytes, needs {numel * kind.itemsize}")
    if kind.dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 exactly
        bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(kind.dtype).newbyteorder("<"), count=numel)


def _materialise(obj, path: Path):
    if isinstance(obj, _TensorRef):
        base = obj.storage.array
        n = int(np.prod(obj.size)) if obj.size else 1
        if n == 0:
            return np.zeros(obj.size, base.dtype)
        last = obj.offset + sum((s - 1) * st for s, st in zip(obj.size, obj.stride))
        if obj.offset < 0 or last >= len(base) or any(st < 0 for st in obj.stride):
            raise WeightsError(f"{path}: a tensor's size/stride points outside its storage")
        view = np.lib.stride_tricks.as_strided(base[obj.offset:], shape=obj.size,
                                               strides=[st * base.itemsize for st in obj.stride])
        return np.array(view)  # a copy: contiguous, writable, independent of the file buffer
    if isinstance(obj, dict):
        return {k: _materialise(v, path) for k, v in obj.items()}
    return obj


def load_state_dict(path: str | Path) -> dict:
    """A torch checkpoint as nested dicts of numpy arrays (no torch needed)."""
    path = Path(path)
    try:
        return _load(path)
    except (UnsafeFileError, WeightsError):
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, IndexError, KeyError,
            AttributeError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: cannot read torch checkpoint ({e})") from None


def _load(path: Path) -> dict:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("data.pkl")]
            if len(pkl) != 1:
                raise WeightsError(f"{path}: not a torch checkpoint (no single data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            up = _Unpickler(io.BytesIO(z.read(pkl[0])), path)
            obj = up.load()
            for key, st in up.storages.items():
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise WeightsError(f"{path}: storage {key} is missing")
                st.array = _to_array(z.read(member), st.kind, st.numel)
        return _materialise(obj, path)
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
        st.array = _to_array(stream.read(numel * st.kind.itemsize), st.kind, numel)
    if any(st.array is None for st in up.storages.values()):
        raise WeightsError(f"{path}: a storage is missing")
    return _materialise(obj, path)


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles: numbers, strings and dicts only."""

    def __init__(self, f, path: Path) -> None:
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        raise UnsafeFileError(f"{self.path}: refused, unexpected global {module}.{name} in the header")


def _plain_load(stream, path: Path):
    return _PlainUnpickler(stream, path).load()
