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
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import CheckFailedError, ShuffleNetError
from .limits import DOWNLOAD_DEADLINE_S, MAX_UNSIZED_DOWNLOAD_BYTES
from .specs import Artifact, artifacts
from ._io import atomic_write, one_line, sha256_file

__all__ = ["HubError", "HashMismatchError", "FetchFailedError", "DownloadError", "DownloadConnectionError",
           "DownloadStatusError", "DownloadRefusedError", "DownloadTooLargeError", "DownloadDeadlineError",
           "UnsupportedURLError", "CacheWriteError", "cache_dir", "find_artifact", "artifact_path", "fetch",
           "cached_path", "Progress"]

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)
CHUNK = 1 << 16
TIMEOUT = 30  # seconds per network operation (the whole fetch: limits.DOWNLOAD_DEADLINE_S)
ATTEMPTS = 4  # per mirror: a cut connection resumes with an HTTP Range request


class HubError(ShuffleNetError, OSError):
    """An artifact that could not be fetched or found; the message says what to do instead."""


class HashMismatchError(CheckFailedError):
    """A file whose size or sha256 is not the published one.

    Raised by :func:`fetch` when some mirror served the wrong bytes; :attr:`failures` then holds
    what went wrong at each URL.
    """

    def __init__(self, message: str = "", failures: Sequence[Exception] = ()):
        super().__init__(message)
        self.failures = tuple(failures)


class FetchFailedError(HubError):
    """No URL gave the artifact; :attr:`failures` holds one :class:`DownloadError` (or
    :class:`HashMismatchError`) per URL, the message says how to get the file by hand."""

    def __init__(self, message: str = "", failures: Sequence[Exception] = ()):
        super().__init__(message)
        self.failures = tuple(failures)


# The failure classes of one URL. Each is raised where the failure happens; fetch decides
# whether to retry (``retry``) and which error to raise in the end by these types alone.

class DownloadError(HubError):
    """One URL that did not give the file: :attr:`url`, and the reason as the message."""

    #: whether another attempt at the same URL may succeed (resuming what arrived)
    retry = False

    def __init__(self, message: str = "", url: str = ""):
        super().__init__(message)
        self.url = url

    @property
    def line(self) -> str:
        """``URL: reason``, as the message of the error that :func:`fetch` raises lists it."""
        return f"{self.url}: {self}"


class DownloadConnectionError(DownloadError):
    """No answer, or a cut one: refused, reset, unknown host, a read that timed out, a
    connection that ended before the published size, an answer that is not HTTP."""

    retry = True


class DownloadStatusError(DownloadError):
    """The server answered with an HTTP error status (:attr:`status`; 404: not found). Retried
    only for a server error (5xx): a client error will be answered the same way again."""

    def __init__(self, message: str = "", url: str = "", status: int = 0):
        super().__init__(message, url)
        self.status = status
        self.retry = status >= 500


class DownloadRefusedError(DownloadError):
    """A download this side refused: it broke a limit or named a URL that is not opened."""


class DownloadTooLargeError(DownloadRefusedError):
    """More bytes than the published size, or than ``MAX_UNSIZED_DOWNLOAD_BYTES`` for an
    artifact without one."""


class DownloadDeadlineError(DownloadRefusedError):
    """Not finished (or not started) within ``DOWNLOAD_DEADLINE_S`` for all URLs and retries."""


class UnsupportedURLError(DownloadRefusedError):
    """A URL whose scheme is not http, https or file, or that urllib cannot use."""


class CacheWriteError(DownloadError):
    """The downloaded bytes could not be written to the cache folder."""


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
    """The artifact's verified path, downloading it when it is not cached (see module doc).

    Raises :class:`HashMismatchError` when a cached file fails its check or some mirror served
    the wrong bytes, else :class:`FetchFailedError` with each URL's :class:`DownloadError`.
    """
    a = name_or_artifact if isinstance(name_or_artifact, Artifact) else find_artifact(name_or_artifact)
    path = artifact_path(a)
    with _lock(path):
        if path.is_file() and not force:
            _verify(a, path, what="cached file")
            return path
        return _download_verified(a, path, progress)


def _download_verified(a: Artifact, path: Path, progress: Progress | None) -> Path:
    """Try each URL in turn until one gives the published file, and rename it into place."""
    part = path.with_name(path.name + ".part")
    failures: list[DownloadError | HashMismatchError] = []
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S  # all mirrors and retries together
    try:
        for url in _urls(a):
            part.unlink(missing_ok=True)  # bytes from another mirror are not resumed
            try:
                _download_with_retries(url, part, a.size, progress, deadline)
                digest = _verify(a, part, what="downloaded file")
            except (DownloadError, HashMismatchError) as e:
                failures.append(e)
                continue
            if a.sha256_prefix is not None:
                atomic_write(path.with_name(path.name + ".sha256"), lambda tmp: tmp.write_text(digest + "\n"))
            os.replace(part, path)
            return path
    finally:
        part.unlink(missing_ok=True)  # a failed fetch leaves nothing behind
    raise _gave_up(a, path, failures)


def _gave_up(a: Artifact, path: Path, failures: list[DownloadError | HashMismatchError]) -> ShuffleNetError:
    """A mirror that served the wrong bytes is a check that failed (exit 1); otherwise the
    message says what to download by hand and where to put it."""
    lines = "; ".join(f.line if isinstance(f, DownloadError) else str(f) for f in failures)
    if any(isinstance(f, HashMismatchError) for f in failures):
        return HashMismatchError(f"{a.name}: no mirror served the right file ({lines})", failures)
    return FetchFailedError(_offline_hint(a, path, f"could not be downloaded ({lines})"), failures)


def _download_with_retries(url: str, part: Path, size: int | None, progress: Progress | None,
                           deadline: float) -> None:
    """Fill ``part`` with the whole file, resuming up to ATTEMPTS times after a failure whose
    class says a retry may help; else raise the last :class:`DownloadError`."""
    if time.monotonic() >= deadline:
        raise DownloadDeadlineError(f"not tried, the {DOWNLOAD_DEADLINE_S} s deadline had passed", url)
    for attempt in range(ATTEMPTS):
        try:
            _download(url, part, size, progress, deadline)
            return
        except DownloadError as e:
            if not e.retry or attempt == ATTEMPTS - 1 or time.monotonic() >= deadline:
                raise


def _download(url: str, part: Path, size: int | None, progress: Progress | None, deadline: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current length with an HTTP Range.

    At most ``size`` bytes (else MAX_UNSIZED_DOWNLOAD_BYTES), and until ``deadline`` (monotonic
    seconds; a byte every few seconds never trips the per-read timeout, this does).
    """
    _Transfer(url, part, size, progress, deadline).run()


@contextlib.contextmanager
def _network_failures(url: str):
    """What urllib, http.client and the socket raise, as this module's failure classes."""
    try:
        yield
    except urllib.error.HTTPError as e:
        raise DownloadStatusError(str(e.reason), url, e.code) from e
    except urllib.error.URLError as e:  # no answer: refused, unknown host, a missing file:// path
        raise DownloadConnectionError(str(e.reason), url) from e
    except OSError as e:  # reset, cut, a read that timed out
        raise DownloadConnectionError(str(e), url) from e
    except http.client.HTTPException as e:  # an answer that is not HTTP
        raise DownloadConnectionError(one_line(e), url) from e
    except ValueError as e:  # urllib: a URL it cannot open
        raise UnsupportedURLError(str(e), url) from e


@contextlib.contextmanager
def _cache_write_failures(url: str):
    """An OSError of the part file (the network's are classified by :func:`_network_failures`)."""
    try:
        yield
    except DownloadError:
        raise
    except OSError as e:
        raise CacheWriteError(str(e), url) from e


@dataclass
class _Transfer:
    """One attempt at one URL (see :func:`_download`)."""

    url: str
    part: Path
    size: int | None
    progress: Progress | None
    deadline: float

    @property
    def cap(self) -> int:
        return self.size if self.size is not None else MAX_UNSIZED_DOWNLOAD_BYTES

    def run(self) -> None:
        if urlparse(self.url).scheme not in ("http", "https", "file"):
            raise UnsupportedURLError(f"unsupported URL scheme in {self.url!r}", self.url)
        with _cache_write_failures(self.url):  # the network's own failures are classified where they occur
            have = self._resumable_bytes()
            if have and self.size is not None and have == self.size:
                return
            with self._open(have) as resp:
                if have and getattr(resp, "status", 200) != 206:  # the server ignored the range: start over
                    have = 0
                self._stream(resp, have, self._announced_total(resp, have))
            got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            raise DownloadConnectionError(f"connection ended at {got} of {self.size} bytes", self.url)

    def _resumable_bytes(self) -> int:
        """The length of ``part`` to resume from (0: start over; more than the size is damage)."""
        have = self.part.stat().st_size if self.part.exists() else 0
        if self.size is not None and have > self.size:
            self.part.unlink()
            have = 0
        return have

    def _open(self, have: int):
        req = urllib.request.Request(self.url, headers={"User-Agent": "shufflenet"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        with _network_failures(self.url):
            return urllib.request.urlopen(req, timeout=max(min(TIMEOUT, self.deadline - time.monotonic()), 0.1))

    def _announced_total(self, resp, have: int) -> int | None:
        """The file's whole length: the published size, else what the server announces; an
        announced length over the cap is refused before any byte is read."""
        if self.size is not None:
            return self.size
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if total is not None and total > self.cap:
            raise DownloadTooLargeError(f"{total:,} bytes, more than the limit of {self.cap:,} for an "
                                        "artifact without a published size", self.url)
        return total

    def _stream(self, resp, have: int, total: int | None) -> None:
        read = getattr(resp, "read1", resp.read)  # read1: returns what arrived, so the deadline is seen
        done = have
        with open(self.part, "ab" if have else "wb") as f:
            while True:
                with _network_failures(self.url):
                    block = read(CHUNK)
                if not block:
                    break
                f.write(block)
                done += len(block)
                self._check_limits(done)
                if self.progress:
                    self.progress(done, total)

    def _check_limits(self, done: int) -> None:
        if done > self.cap:
            raise DownloadTooLargeError(
                f"more bytes than the published {self.size}" if self.size is not None else
                f"more than the limit of {self.cap:,} bytes for an artifact without a published size",
                self.url)
        if time.monotonic() > self.deadline:
            raise DownloadDeadlineError(f"not finished within the {DOWNLOAD_DEADLINE_S} s download "
                                        f"deadline ({done:,} bytes received)", self.url)


@dataclass(frozen=True)
class CacheEntry:
    artifact: Artifact
    path: Path
    present: bool


def list_cache() -> list[CacheEntry]:
    return [CacheEntry(a, artifact_path(a), artifact_path(a).is_file()) for a in artifacts()]
