"""Shared file helpers (one copy each): atomic writes, file hashes, image-folder listing,
optional imports, and an exception as one line of text.

Reading *untrusted* files (capped reads, bounded JSON) is :mod:`shufflenet._safeio`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import MissingDependencyError, install_hint

__all__ = ["IMAGE_SUFFIXES", "atomic_write", "sha256_file", "image_files", "class_folders", "one_line",
           "import_torch"]

#: the file suffixes every image-folder reader takes (decoding is checked by :mod:`preprocess`)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it into place: an
    interrupted write leaves the old file (or none) intact, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file asked for, not the temp name nobody chose
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        mask = os.umask(0)  # mkstemp makes 0600; a finished file gets the usual permissions
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """The full sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_files(folder: str | os.PathLike, problems: list[tuple[str, str]], *,
                recursive: bool = True) -> list[Path]:
    """Regular files with an image suffix in ``folder`` (and below it when ``recursive``), sorted;
    each folder that cannot be listed is added to ``problems`` as (path, reason), never skipped
    silently. FIFOs and devices are not regular files and are never listed."""
    folder = Path(folder)
    found: list[Path] = []

    def unreadable(e: OSError) -> None:
        problems.append((str(e.filename or folder), f"cannot list folder ({e.strerror or e})"))

    if not recursive:
        try:
            names = [e.name for e in os.scandir(folder)]
        except OSError as e:
            unreadable(e)
            return []
        walk = [(str(folder), [], names)]
    else:
        walk = os.walk(folder, onerror=unreadable)
    for dirpath, _dirs, names in walk:
        for name in names:
            f = Path(dirpath, name)
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                found.append(f)
    return sorted(found)


def class_folders(root: str | os.PathLike) -> list[str]:
    """The names of the sub-folders of ``root`` (one per class), sorted."""
    return sorted(d.name for d in Path(root).iterdir() if d.is_dir())


def one_line(e: BaseException, *, line: str = "join") -> str:
    """An exception as one line of text: ``line="join"`` folds all its lines, ``"first"`` /
    ``"last"`` keeps one (ONNX Runtime puts the informative line last); the type's name when
    the message is empty."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    if line == "first":
        return text.splitlines()[0].strip()
    if line == "last":
        return text.splitlines()[-1].strip()
    return " ".join(text.split())


def import_torch(why: str):
    """``torch``, or a :class:`MissingDependencyError` saying ``why`` it is needed and how to
    install it."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"{why} needs PyTorch: {install_hint('torch')}") from None
    return torch
