"""The Model Zoo's bundle layout, and archives treated as untrusted.

A bundle is ``<name>/model.onnx`` plus ``<name>/test_data_set_<k>/{input_0,output_0}.pb``
(TensorProtos named after the graph's input and output); ``<name>.tar.gz`` holds the same tree.
Extraction never calls ``tarfile.extract``: each member is checked (no absolute paths, no ``..``,
only regular files and folders, capped count and size) and its bytes are copied by us into a temp
folder that is renamed into place. External data (of any tensor: initializers, sparse
initializers, attributes, If/Loop/Scan subgraphs, functions, test-data ``.pb``) is read by us from
inside the model's own folder, with its offset and length checked, and embedded before the model
reaches ONNX Runtime, so nothing is ever resolved against the working directory.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ._safeio import read_capped, regular_file
from .errors import ShuffleNetError, UnsafeFileError
from .limits import MAX_MEMBER_BYTES, MAX_MEMBERS, MAX_MODEL_BYTES, MAX_TENSOR_BYTES, MAX_UNPACKED_BYTES
from .weights import atomic_write

__all__ = ["BundleError", "TestSet", "write_bundle", "pack_tar", "safe_extract", "find_test_sets",
           "load_model_checked", "MAX_MEMBERS", "MAX_UNPACKED_BYTES", "MAX_MEMBER_BYTES"]


class BundleError(ShuffleNetError, ValueError):
    """A bundle or archive that cannot be used as one."""


@dataclass(frozen=True)
class TestSet:
    path: Path
    inputs: list[tuple[str, np.ndarray]]
    outputs: list[tuple[str, np.ndarray]]

    __test__ = False  # not a pytest class


def write_bundle(model: onnx.ModelProto, out_dir: str | os.PathLike, name: str,
                 sets: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``<out_dir>/<name>/`` (model + test sets); an existing bundle is replaced whole."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise BundleError(f"bundle name {name!r} must be a plain file name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        (tmp / "model.onnx").write_bytes(model.SerializeToString())
        for k, (x, y) in enumerate(sets):
            d = tmp / f"test_data_set_{k}"
            d.mkdir()
            (d / "input_0.pb").write_bytes(numpy_helper.from_array(x, in_name).SerializeToString())
            (d / "output_0.pb").write_bytes(numpy_helper.from_array(y, out_name).SerializeToString())
        return _replace_dir(tmp, out_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usual_mode(folder: Path) -> None:
    """mkdtemp makes 0700; a finished folder gets the usual permissions (0777 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)


def _replace_dir(src: Path, dest: Path) -> Path:
    """Rename ``src`` to ``dest``; an existing ``dest`` is moved aside first, then removed."""
    _usual_mode(src)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def pack_tar(bundle_dir: str | os.PathLike, tar_path: str | os.PathLike) -> Path:
    """``<name>.tar.gz`` holding ``<name>/...`` as the zoo's downloads do; written atomically."""
    bundle_dir = Path(bundle_dir)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(bundle_dir.rglob("*")):
                arc = f"{bundle_dir.name}/{path.relative_to(bundle_dir).as_posix()}"
                info = tar.gettarinfo(str(path), arcname=arc)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0  # reproducible archives
                if path.is_file():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)

    return atomic_write(Path(tar_path), write)


def _member_path(root: Path, name: str) -> Path:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise UnsafeFileError(f"archive member {name!r} has an absolute or non-portable path")
    if any(part == ".." for part in name.split("/")):
        raise UnsafeFileError(f"archive member {name!r} contains '..'")
    target = (root / name).resolve()
    if os.path.commonpath([str(root.resolve()), str(target)]) != str(root.resolve()):
        raise UnsafeFileError(f"archive member {name!r} would land outside the target folder")
    return target


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isfifo():  # before isdev(), which is also true for FIFOs
        return "FIFO"
    if member.isdev():
        return "device"
    if member.issparse():
        return "sparse file"
    return "special file"


def _copy_capped(src, dst, limit: int, what: str) -> int:
    """Copy at most ``limit`` bytes; more raises UnsafeFileError. Returns the count."""
    done = 0
    while block := src.read(1 << 20):
        done += len(block)
        if done > limit:
            raise UnsafeFileError(f"{what}: more than {limit:,} bytes unpacked")
        dst.write(block)
    return done


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *,
                 max_members: int = MAX_MEMBERS, max_bytes: int = MAX_UNPACKED_BYTES,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> Path:
    """Extract a .tar/.tar.gz into ``dest`` (which must not exist yet) after checking every member.

    Refused: absolute paths, ``..``, symlinks, hardlinks, devices, FIFOs, sparse files, more than
    ``max_members`` members, a member over ``max_member_bytes`` or ``max_bytes`` unpacked in all
    (each checked from the header before copying, and counted while copying), and a damaged
    compressed stream, its checksum included (the stream is read to its end). Nothing is left at
    ``dest`` on failure.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise BundleError(f"extraction target {dest} already exists")
    regular_file(archive, BundleError, "archive")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            tar = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(f"{archive}: not a readable tar archive ({reason})") from None
        with tar:
            total, count = 0, 0
            for member in tar:
                count += 1
                if count > max_members:
                    raise UnsafeFileError(f"{archive}: more than {max_members} members")
                target = _member_path(tmp, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile() or member.issparse():
                    raise UnsafeFileError(f"{archive}: member {member.name!r} is a {_member_kind(member)}; refused")
                if member.size > max_member_bytes:
                    raise UnsafeFileError(f"{archive}: member {member.name!r} is {member.size:,} bytes, "
                                          f"more than the limit of {max_member_bytes:,}")
                total += member.size
                if total > max_bytes:
                    raise UnsafeFileError(f"{archive}: unpacks to more than {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with src, open(target, "xb") as f:  # "x": a repeated name cannot overwrite
                    _copy_capped(src, f, member.size, f"{archive}: member {member.name!r}")
            # the end-of-archive marker is not the end of the stream: read on, so a damaged
            # gzip trailer (CRC, length) or a corrupt later member is an error, not ignored
            _copy_capped(tar.fileobj, _Discard(), max_bytes, f"{archive}: data after the end of the archive")
        _usual_mode(tmp)
        os.replace(tmp, dest)
        return dest
    except FileExistsError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UnsafeFileError(f"{archive}: member {Path(e.filename).name!r} appears twice") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ShuffleNetError):
            raise
        raise BundleError(f"{archive}: corrupt archive ({e or type(e).__name__})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Discard:
    def write(self, data) -> None:
        pass


def _read_tensor(path: Path) -> tuple[str, np.ndarray]:
    """A test-data ``.pb``; external data is read from the .pb's own folder, checked."""
    data = read_capped(path, MAX_TENSOR_BYTES + (1 << 20), BundleError, "test data")
    t = onnx.TensorProto()
    try:
        t.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError
        raise BundleError(f"{path}: not a readable TensorProto ({e})") from None
    _check_tensor_size(t, path)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        _embed_external(t, path.parent.resolve(), path)
    try:
        return t.name, numpy_helper.to_array(t)
    except Exception as e:  # numpy_helper raises ValueError/TypeError/KeyError for bad fields
        raise BundleError(f"{path}: not a readable TensorProto ({e})") from None


def find_test_sets(model_dir: str | os.PathLike) -> list[TestSet]:
    """The ``test_data_set_*`` folders beside a model, in numeric order, read into arrays."""
    model_dir = Path(model_dir)
    dirs = [d for d in model_dir.iterdir() if d.is_dir() and re.fullmatch(r"test_data_set_\d+", d.name)]
    sets = []
    for d in sorted(dirs, key=lambda d: int(d.name.rsplit("_", 1)[1])):
        def files(kind):
            found = [f for f in d.iterdir() if re.fullmatch(rf"{kind}_\d+\.pb", f.name)]
            return [_read_tensor(f) for f in sorted(found, key=lambda f: int(f.stem.split("_")[1]))]
        sets.append(TestSet(d, files("input"), files("output")))
    return sets


def load_model_checked(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model; external data of every tensor must lie inside the model's own folder.

    Every tensor is visited (initializers, sparse initializers, node attributes, subgraphs of
    If/Loop/Scan at any depth, functions); its external data is read by us, bounds-checked, and
    embedded, so the returned model has none left to resolve.
    """
    path = Path(path)
    data = read_capped(path, MAX_MODEL_BYTES, BundleError, "model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:
        raise BundleError(f"{path}: not a readable ONNX model ({e})") from None
    root = path.parent.resolve()
    for t in all_tensors(model):
        _check_tensor_size(t, path)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _embed_external(t, root, path)
    return model


def _check_tensor_size(t: onnx.TensorProto, path: Path) -> None:
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise BundleError(f"{path}: tensor {t.name!r} has a negative dimension {dims}")
    n = 1
    for d in dims:
        n *= d
    if n * 8 > MAX_TENSOR_BYTES:  # 8: the widest element type a ShuffleNet tensor uses
        raise UnsafeFileError(f"{path}: tensor {t.name!r} of shape {dims} is over the limit of "
                              f"{MAX_TENSOR_BYTES:,} bytes; refused")


def _embed_external(t: onnx.TensorProto, root: Path, path: Path) -> None:
    """Read ``t``'s external data from inside ``root`` (checked) into ``raw_data``."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    target = (root / location).resolve()
    if (not location or os.path.isabs(location) or (root / location).is_symlink()
            or os.path.commonpath([str(root), str(target)]) != str(root)):
        raise UnsafeFileError(f"{path}: tensor {t.name!r} points outside the model folder "
                              f"({location!r}); refused")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise BundleError(f"{path}: tensor {t.name!r} has a malformed external-data offset/length") from None
    if not target.exists():
        raise BundleError(f"{path}: external data {location!r} for {t.name!r} is missing")
    size = regular_file(target, BundleError, "external data")
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise BundleError(f"{path}: tensor {t.name!r} reads bytes {offset}..{offset + length} of "
                          f"{location!r}, which has {size}")
    if length > MAX_TENSOR_BYTES:
        raise UnsafeFileError(f"{path}: tensor {t.name!r} has {length:,} bytes of external data, over "
                              f"the limit of {MAX_TENSOR_BYTES:,}; refused")
    with open(target, "rb") as f:
        f.seek(offset)
        t.raw_data = f.read(length)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto in the model: graph and subgraph initializers (sparse ones too), node
    attributes at any depth, and functions' nodes."""
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for sp in g.sparse_initializer:
                yield sp.values
                yield sp.indices
            nodes.extend(g.node)
            continue
        node = nodes.pop()
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            for sp in a.sparse_tensors:
                yield sp.values
                yield sp.indices
            if a.HasField("g"):
                graphs.append(a.g)
            graphs.extend(a.graphs)
