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
from ._io import atomic_write, one_line
from ._onnx import graph_inputs

__all__ = ["BundleError", "TestSet", "write_bundle", "pack_tar", "safe_extract", "find_test_sets",
           "locate_model", "is_archive", "load_model_checked", "load_any_model", "BUNDLE_METADATA", "MAX_MEMBERS",
           "MAX_UNPACKED_BYTES", "MAX_MEMBER_BYTES"]

BUNDLE_METADATA = "bundle.json"  # our facts about a bundle (expected outputs' reference)


class BundleError(ShuffleNetError, ValueError):
    """A bundle or archive that cannot be used as one."""


@dataclass(frozen=True)
class TestSet:
    path: Path
    inputs: list[tuple[str, np.ndarray]]
    outputs: list[tuple[str, np.ndarray]]

    __test__ = False  # not a pytest class


def write_bundle(model: onnx.ModelProto, out_dir: str | os.PathLike, name: str,
                 sets: list[tuple[np.ndarray, np.ndarray]], *, model_file: str = "model.onnx",
                 legacy_npz: bool = False, metadata: dict | None = None) -> Path:
    """Write ``<out_dir>/<name>/`` (model + test sets); an existing bundle is replaced whole.

    ``model_file``: the model's file name in the bundle (the zoo's V2-12 rows use ``<name>.onnx``).
    ``legacy_npz``: also write ``test_data_<k>.npz`` (arrays ``inputs``/``outputs``), as the zoo's
    V1 tarballs hold beside the ``.pb`` sets. ``metadata``: written as ``bundle.json`` (where the
    expected outputs came from); readers that do not know it ignore it.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise BundleError(f"bundle name {name!r} must be a plain file name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.onnx", model_file):
        raise BundleError(f"model file name {model_file!r} must be a plain NAME.onnx")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        (tmp / model_file).write_bytes(model.SerializeToString())
        for k, (x, y) in enumerate(sets):
            d = tmp / f"test_data_set_{k}"
            d.mkdir()
            (d / "input_0.pb").write_bytes(numpy_helper.from_array(x, in_name).SerializeToString())
            (d / "output_0.pb").write_bytes(numpy_helper.from_array(y, out_name).SerializeToString())
            if legacy_npz:
                with open(tmp / f"test_data_{k}.npz", "wb") as f:
                    np.savez(f, inputs=np.stack([x]), outputs=np.stack([y]))
        if metadata is not None:
            import json

            (tmp / BUNDLE_METADATA).write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
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


def pack_tar(bundle_dir: str | os.PathLike, tar_path: str | os.PathLike, *, root: str | None = None) -> Path:
    """``<name>.tar.gz`` holding ``<root>/...`` (default ``<bundle folder name>/``), as the zoo's
    downloads do; written atomically and byte-for-byte reproducibly: sorted members, mtime 0 in
    the tar and the gzip header, owner 0/0 without names, modes 0644/0755, no file name in gzip."""
    import gzip

    bundle_dir = Path(bundle_dir)
    root = (root or bundle_dir.name).strip("/")
    if not root or any(part in ("", ".", "..") for part in root.split("/")):
        raise BundleError(f"archive folder {root!r} must be a relative path without '..'")

    def info(arc: str, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
        t = tarfile.TarInfo(arc)
        t.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
        t.mode, t.size, t.mtime = (0o755 if is_dir else 0o644), size, 0
        t.uid = t.gid = 0
        t.uname = t.gname = ""
        return t

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                     compresslevel=9) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            parts = root.split("/")
            for i in range(1, len(parts) + 1):
                tar.addfile(info("/".join(parts[:i]), True))
            for path in sorted(bundle_dir.rglob("*"), key=lambda p: p.relative_to(bundle_dir).as_posix()):
                arc = f"{root}/{path.relative_to(bundle_dir).as_posix()}"
                if path.is_dir():
                    tar.addfile(info(arc, True))
                else:
                    with open(path, "rb") as f:
                        tar.addfile(info(arc, False, path.stat().st_size), f)

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
            raise BundleError(f"{archive}: not a readable tar archive ({one_line(e, line='first')})") from None
        with tar:
            _extract_members(tar, tmp, archive, max_members, max_bytes, max_member_bytes)
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
        raise BundleError(f"{archive}: corrupt archive ({one_line(e)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract_members(tar: tarfile.TarFile, root: Path, archive: Path, max_members: int, max_bytes: int,
                     max_member_bytes: int) -> None:
    """Copy each member into ``root`` after checking it (see :func:`safe_extract`)."""
    total, count = 0, 0
    for member in tar:
        count += 1
        if count > max_members:
            raise UnsafeFileError(f"{archive}: more than {max_members} members")
        target = _member_path(root, member.name)
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
    """The test data beside a model, read into arrays: ``test_data_set_*`` folders in numeric
    order, then the zoo's legacy ``test_data_<k>.npz`` files (arrays ``inputs`` and ``outputs``,
    read without pickle; tensors unnamed, matched by position)."""
    model_dir = Path(model_dir)
    dirs = [d for d in model_dir.iterdir() if d.is_dir() and re.fullmatch(r"test_data_set_\d+", d.name)]
    sets = []
    for d in sorted(dirs, key=lambda d: int(d.name.rsplit("_", 1)[1])):
        def files(kind):
            found = [f for f in d.iterdir() if re.fullmatch(rf"{kind}_\d+\.pb", f.name)]
            return [_read_tensor(f) for f in sorted(found, key=lambda f: int(f.stem.split("_")[1]))]
        sets.append(TestSet(d, files("input"), files("output")))
    npz = [f for f in model_dir.iterdir() if f.is_file() and re.fullmatch(r"test_data_\d+\.npz", f.name)]
    for f in sorted(npz, key=lambda f: int(f.stem.rsplit("_", 1)[1])):
        sets.append(_read_npz(f))
    return sets


def _read_npz(path: Path) -> TestSet:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "inputs" not in data.files or "outputs" not in data.files:
                raise BundleError(f"{path}: a legacy test file needs arrays 'inputs' and 'outputs', "
                                  f"found {sorted(data.files)}")
            inputs, outputs = data["inputs"], data["outputs"]
    except BundleError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UnsafeFileError(f"{path}: holds pickled objects; refused (only plain arrays are read)") from None
        raise BundleError(f"{path}: not a readable .npz ({e})") from None
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError
        raise BundleError(f"{path}: not a readable .npz ({e})") from None
    if inputs.ndim < 1 or outputs.ndim < 1:
        raise BundleError(f"{path}: 'inputs' and 'outputs' must be lists of tensors")
    return TestSet(path, [("", np.asarray(x)) for x in inputs], [("", np.asarray(y)) for y in outputs])


#: folders never searched for a model (archive tool litter)
_IGNORED_DIRS = ("__MACOSX",)


def locate_model(folder: str | os.PathLike, *, max_depth: int = 2) -> Path:
    """The one model of a bundle folder, in any of the zoo's layouts: the folder itself, one
    folder down (``shufflenet/model.onnx``, ``<name>/<name>.onnx``) or two
    (``model/test_shufflenetv2/model.onnx``). Anything ambiguous is refused: two .onnx files
    in one folder, or models in more than one folder."""
    folder = Path(folder)
    level = [folder]
    for depth in range(max_depth + 1):
        found = []
        for d in level:
            models = sorted(f for f in d.iterdir() if f.is_file() and f.suffix == ".onnx")
            if models:
                found.append((d, models))
        if len(found) == 1 and len(found[0][1]) == 1:
            return found[0][1][0]
        if found:
            names = [str(m.relative_to(folder)) for _, ms in found for m in ms]
            raise BundleError(f"{folder}: ambiguous bundle, {len(names)} models ({', '.join(names[:6])}); "
                              "expected exactly one .onnx")
        level = [s for d in level for s in sorted(d.iterdir()) if s.is_dir() and not s.is_symlink()
                 and not s.name.startswith(".") and s.name not in _IGNORED_DIRS
                 and not re.fullmatch(r"test_data_set_\d+", s.name)]
    raise BundleError(f"{folder}: expected exactly one .onnx model (in the folder or up to {max_depth} "
                      "folders down), found 0")


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).endswith((".tar.gz", ".tgz", ".tar"))


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
    if not graph_inputs(model) or not model.graph.output:  # an empty file parses as an empty model
        raise BundleError(f"{path}: not an ONNX model (no graph inputs or outputs)")
    root = path.parent.resolve()
    for t in all_tensors(model):
        _check_tensor_size(t, path)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _embed_external(t, root, path)
    return model


def load_any_model(path: str | os.PathLike) -> onnx.ModelProto:
    """A .onnx, a bundle folder or a bundle archive (any zoo layout, see :func:`locate_model`;
    archives are extracted safely into a temp folder that is removed afterwards)."""
    path = Path(path)
    if path.is_dir():
        return load_model_checked(locate_model(path))
    if path.is_file() and is_archive(path):
        with tempfile.TemporaryDirectory(prefix="shufflenet-bundle-") as tmp:
            return load_model_checked(locate_model(safe_extract(path, Path(tmp) / "bundle")))
    return load_model_checked(path)


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
