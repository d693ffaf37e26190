"""Verified downloads of the official artifacts, and the cache they live in.

The only module that touches the network, and only when asked for a named artifact that is not
cached. Every file is identified by its sha256: the full digest for the zoo's files, the
publisher's prefix for torchvision's checkpoints (the full digest seen at first download is then
recorded beside the file and checked on every later load). Downloads stream into a temp file in
the cache folder, resume with HTTP Range, are checked for size and hash, and are renamed into
place; a lock file makes concurrent fetches of one artifact end with one good file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import CheckFailedError, ShuffleNetError
from .limits import DOWNLOAD_DEADLINE_S, MAX_UNSIZED_DOWNLOAD_BYTES
from .specs import Artifact, artifacts
from ._io import sha256_file

__all__ = ["HubError", "HashMismatchError", "cache_dir", "find_artifact", "artifact_path", "fetch",
           "cached_path", "Progress"]

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)
CHUNK = 1 << 16
TIMEOUT = 30  # seconds per network operation (the whole fetch: limits.DOWNLOAD_DEADLINE_S)
ATTEMPTS = 4  # per mirror: a cut connection resumes with an HTTP Range request


class HubError(ShuffleNetError, OSError):
    """An artifact that could not be fetched or found; the message says what to do instead."""


class HashMismatchError(CheckFailedError):
    """A file whose size or sha256 is not the published one."""


def cache_dir() -> Path:
    """``$SHUFFLENET_HOME``, else ``$XDG_CACHE_HOME/shufflenet``, else ``~/.cache/shufflenet``."""
    if os.environ.get("SHUFFLENET_HOME"):
        return Path(os.environ["SHUFFLENET_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "shufflenet"
    return Path.home() / ".cache" / "shufflenet"


def find_artifact(name: str, *, manifest: tuple[Artifact, ...] | None = None) -> Artifact:
    """An artifact by its name (``shufflenet-v2-12``, ``shufflenet-9.tar.gz``,
    ``torchvision-shufflenet_v2_x1_0``)."""
    items = manifest if manifest is not None else artifacts()
    for a in items:
        if a.name == name:
            return a
    raise HubError(f"unknown artifact {name!r}; known: {', '.join(a.name for a in items)}")


def _filename(a: Artifact) -> str:
    return Path(urlparse(a.urls[0]).path).name


def artifact_path(a: Artifact) -> Path:
    """Where the artifact lives in the cache (it may not be there yet)."""
    return cache_dir() / a.kind / _filename(a)


def _urls(a: Artifact) -> list[str]:
    mirror = os.environ.get("SHUFFLENET_MIRROR")
    urls = [f"{mirror.rstrip('/')}/{_filename(a)}"] if mirror else []
    return urls + list(a.urls)


def _verify(a: Artifact, path: Path, *, what: str) -> str:
    size = path.stat().st_size
    if a.size is not None and size != a.size:
        raise HashMismatchError(f"{what} {path}: {size} bytes, the published size is {a.size}")
    digest = sha256_file(path)
    if a.sha256 is not None and digest != a.sha256:
        raise HashMismatchError(f"{what} {path}: sha256 {digest}, expected {a.sha256}")
    if a.sha256_prefix is not None:
        if not digest.startswith(a.sha256_prefix):
            raise HashMismatchError(f"{what} {path}: sha256 {digest} does not start with the "
                                    f"published {a.sha256_prefix}")
        recorded = path.with_name(path.name + ".sha256")
        if recorded.exists() and recorded.read_text().strip() != digest:
            raise HashMismatchError(f"{what} {path}: sha256 {digest} differs from the {recorded.read_text().strip()} "
                                    "recorded at download")
    return digest


def cached_path(name_or_artifact: str | Artifact) -> Path:
    """The verified cached file (re-hashed now), or HubError if it is not cached.

    A cached file that fails the check raises HashMismatchError and is left in place for
    inspection; ``fetch(..., force=True)`` replaces it.
    """
    a = name_or_artifact if isinstance(name_or_artifact, Artifact) else find_artifact(name_or_artifact)
    path = artifact_path(a)
    if not path.is_file():
        raise HubError(_offline_hint(a, path, "is not cached"))
    _verify(a, path, what="cached file")
    return path


def _offline_hint(a: Artifact, path: Path, why: str) -> str:
    return (f"{a.name} {why}: download {a.urls[0]} and put it at {path} "
            f"(or serve a copy and set SHUFFLENET_MIRROR to its base URL)")


@contextlib.contextmanager
def _lock(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(path.name + ".lock"), "a+b")
    except OSError as e:
        raise HubError(f"cannot use the cache folder {path.parent}: {e.strerror or e} "
                       f"(set SHUFFLENET_HOME to a writable folder)") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(name_or_artifact: str | Artifact, *, progress: Progress | None = None, force: bool = False) -> Path:
    """The artifact's verified path, downloading it when it is not cached (see module doc)."""
    a = name_or_artifact if isinstance(name_or_artifact, Artifact) else find_artifact(name_or_artifact)
    path = artifact_path(a)
    with _lock(path):
        if path.is_file() and not force:
            _verify(a, path, what="cached file")
            return path
        part = path.with_name(path.name + ".part")
        errors = []
        deadline = time.monotonic() + DOWNLOAD_DEADLINE_S  # all mirrors and retries together
        try:
            for url in _urls(a):
                part.unlink(missing_ok=True)  # bytes from another mirror are not resumed
                if time.monotonic() >= deadline:
                    errors.append(f"{url}: not tried, the {DOWNLOAD_DEADLINE_S} s deadline had passed")
                    continue
                error = _download_with_retries(url, part, a.size, progress, deadline)
                if error:
                    errors.append(error)
                    continue
                try:
                    digest = _verify(a, part, what="downloaded file")
                except HashMismatchError as e:
                    errors.append(str(e))
                    continue
                if a.sha256_prefix is not None:
                    path.with_name(path.name + ".sha256").write_text(digest + "\n")
                os.replace(part, path)
                return path
        finally:
            part.unlink(missing_ok=True)  # a failed fetch leaves nothing behind
        if any("sha256" in e or "bytes, the published" in e for e in errors):
            raise HashMismatchError(f"{a.name}: no mirror served the right file ({'; '.join(errors)})")
        raise HubError(_offline_hint(a, path, f"could not be downloaded ({'; '.join(errors)})"))


class _Refused(ValueError):
    """A download that broke a limit: not retried."""


def _download_with_retries(url: str, part: Path, size: int | None, progress: Progress | None,
                           deadline: float | None = None) -> str | None:
    """None when ``part`` holds the whole file, else the last error (after resuming ATTEMPTS times)."""
    error = None
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S if deadline is None else deadline
    for _ in range(ATTEMPTS):
        try:
            _download(url, part, size, progress, deadline)
            return None
        except (OSError, urllib.error.URLError, ValueError) as e:
            error = f"{url}: {getattr(e, 'reason', e)}"
            if isinstance(e, ValueError) or (isinstance(e, urllib.error.HTTPError) and e.code < 500):
                break  # a wrong answer, not a cut connection: retrying will not help
            if time.monotonic() >= deadline:
                break
    return error


def _download(url: str, part: Path, size: int | None, progress: Progress | None,
              deadline: float | None = None) -> None:
    """Stream ``url`` into ``part``, resuming from its current length with an HTTP Range.

    At most ``size`` bytes (else MAX_UNSIZED_DOWNLOAD_BYTES), and until ``deadline`` (monotonic
    seconds; a byte every few seconds never trips the per-read timeout, this does).
    """
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S if deadline is None else deadline
    cap = size if size is not None else MAX_UNSIZED_DOWNLOAD_BYTES
    if urlparse(url).scheme not in ("http", "https", "file"):
        raise ValueError(f"unsupported URL scheme in {url!r}")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": "shufflenet"})
    if have and size is not None and have == size:
        return
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=max(min(TIMEOUT, deadline - time.monotonic()), 0.1)) as resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # the server ignored the range: start over
            have = 0
        total = size
        length = resp.headers.get("Content-Length")
        if total is None:
            total = have + int(length) if length and length.isdigit() else None
        if size is None and total is not None and total > cap:  # refused before any byte
            raise _Refused(f"{url}: {total:,} bytes, more than the limit of {cap:,} for an artifact "
                           "without a published size")
        read = getattr(resp, "read1", resp.read)  # read1: returns what arrived, so the deadline is seen
        with open(part, "ab" if have else "wb") as f:
            done = have
            while block := read(CHUNK):
                f.write(block)
                done += len(block)
                if done > cap:
                    raise _Refused(f"{url}: more bytes than the published {size}" if size is not None else
                                   f"{url}: more than the limit of {cap:,} bytes for an artifact without a "
                                   "published size")
                if time.monotonic() > deadline:
                    raise _Refused(f"{url}: not finished within the {DOWNLOAD_DEADLINE_S} s download "
                                   f"deadline ({done:,} bytes received)")
                if progress:
                    progress(done, total)
    if size is not None and part.stat().st_size != size:
        raise OSError(f"{url}: connection ended at {part.stat().st_size} of {size} bytes")


@dataclass(frozen=True)
class CacheEntry:
    artifact: Artifact
    path: Path
    present: bool


def list_cache() -> list[CacheEntry]:
    return [CacheEntry(a, artifact_path(a), artifact_path(a).is_file()) for a in artifacts()]
