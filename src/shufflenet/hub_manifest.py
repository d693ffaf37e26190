"""Manifests in the ONNX hub's format: the Model Zoo's own ``ONNX_HUB_MANIFEST.json`` and the
``manifest.json`` that ``zoo build`` writes.

A manifest is a JSON list of entries: ``model`` (the hub name, e.g. ``ShuffleNet-v2-fp32``),
``model_path`` (relative to the manifest's location), ``onnx_version``, ``opset_version`` and
``metadata`` with ``model_sha``/``model_bytes`` and optionally ``model_with_data_path``/``_sha``/
``_bytes``. Files are fetched through :mod:`shufflenet.hub` (cache, resume, full sha256 check) into
``<cache>/hub/<sha256 prefix>/``, so files of the same name from different manifests never collide.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlparse

from .hub import TIMEOUT, HubError, fetch
from .specs import Artifact

__all__ = ["HubEntry", "parse_manifest", "read_manifest", "select", "entry_url", "fetch_from_manifest", "MAX_MANIFEST_BYTES"]

MAX_MANIFEST_BYTES = 32 << 20  # the whole Model Zoo's manifest is ~1 MB


@dataclass(frozen=True)
class HubEntry:
    model: str
    model_path: str
    opset: int
    onnx_version: str
    sha256: str
    size: int | None
    with_data_path: str | None
    with_data_sha256: str | None
    with_data_size: int | None

    @property
    def stem(self) -> str:
        return PurePosixPath(self.model_path).name.removesuffix(".onnx")


def _sha(value, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise HubError(f"{where}: expected a full sha256 (64 hex digits), got {value!r}")
    return value


def _size(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HubError(f"{where}: expected a byte count, got {value!r}")
    return value


def _relpath(value, where: str) -> str:
    if not isinstance(value, str) or not value or value.startswith("/") or "\\" in value \
            or ".." in PurePosixPath(value).parts or urlparse(value).scheme:
        raise HubError(f"{where}: expected a relative path without '..', got {value!r}")
    return value


def parse_manifest(data, source: str = "<manifest>") -> list[HubEntry]:
    """Entries of a decoded hub manifest; anything malformed raises HubError naming the entry."""
    if not isinstance(data, list):
        raise HubError(f"{source}: not an ONNX hub manifest (expected a JSON list of entries, got "
                       f"{type(data).__name__})")
    entries = []
    for i, e in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(e, dict) or not isinstance(e.get("metadata"), dict):
            raise HubError(f"{where}: expected an object with 'metadata'")
        m = e["metadata"]
        if not isinstance(e.get("model"), str) or isinstance(e.get("opset_version"), bool) \
                or not isinstance(e.get("opset_version"), int):
            raise HubError(f"{where}: needs 'model' (text) and 'opset_version' (integer)")
        data_path = m.get("model_with_data_path")
        entries.append(HubEntry(
            e["model"], _relpath(e.get("model_path"), where), e["opset_version"], str(e.get("onnx_version", "")),
            _sha(m.get("model_sha"), where), _size(m.get("model_bytes"), where),
            None if data_path is None else _relpath(data_path, where),
            None if data_path is None else _sha(m.get("model_with_data_sha"), where),
            None if data_path is None else _size(m.get("model_with_data_bytes"), where)))
    return entries


def _is_url(text: str) -> bool:
    return urlparse(text).scheme in ("http", "https", "file")


def read_manifest(source: str | os.PathLike) -> tuple[list[HubEntry], str]:
    """(entries, base URL the model paths are relative to) for a manifest path or URL."""
    text = os.fspath(source)
    if _is_url(text):
        try:
            req = urllib.request.Request(text, headers={"User-Agent": "shufflenet"})
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                raw = resp.read(MAX_MANIFEST_BYTES + 1)
        except (OSError, ValueError) as e:
            raise HubError(f"{text}: cannot read the manifest ({getattr(e, 'reason', e)})") from None
        base = text
    else:
        path = Path(text)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as e:
            raise HubError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
        base = path.resolve().as_uri()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise HubError(f"{text}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise HubError(f"{text}: not JSON ({e})") from None
    return parse_manifest(data, text), base


def select(entries: list[HubEntry], name: str, *, opset: int | None = None) -> tuple[HubEntry, bool]:
    """(entry, with_data) for a hub model name (case-insensitive, as onnx.hub matches) or a file
    name (``shufflenet-v2-12``, ``shufflenet-v2-12.onnx``, ``shufflenet-v2-12.tar.gz`` for the
    bundle); of several opsets the newest unless ``opset`` is given."""
    with_data = name.endswith(".tar.gz")
    stem = name.removesuffix(".tar.gz").removesuffix(".onnx")
    found = [e for e in entries if e.model.lower() == name.lower() or e.stem == stem]
    if opset is not None:
        found = [e for e in found if e.opset == opset]
    if not found:
        known = sorted({e.model for e in entries} | {e.stem for e in entries})
        at = f" at opset {opset}" if opset is not None else ""
        raise HubError(f"no manifest entry {name!r}{at}; known: {', '.join(known)}")
    best = max(found, key=lambda e: e.opset)
    if with_data and best.with_data_path is None:
        raise HubError(f"{best.stem}: the manifest lists no model_with_data_path")
    return best, with_data


def entry_url(entry: HubEntry, base: str, *, with_data: bool = False) -> str:
    """Where the entry's file lives: its path relative to the manifest (or ``base``)."""
    rel = entry.with_data_path if with_data else entry.model_path
    return urljoin(base, rel)


def fetch_from_manifest(manifest: str | os.PathLike, name: str, *, opset: int | None = None,
                        base: str | None = None, progress=None, force: bool = False) -> Path:
    """Fetch ``name`` as a manifest describes it and return the verified cached path.

    ``base``: the URL model paths are relative to (default: the manifest's own location; the
    zoo's manifest lives at the root of github.com/onnx/models).
    """
    entries, where = read_manifest(manifest)
    entry, with_data = select(entries, name, opset=opset)
    if base is not None and not _is_url(base):
        base = Path(base).resolve().as_uri() + "/"
    elif base is not None and not base.endswith("/"):
        base += "/"
    url = entry_url(entry, base or where, with_data=with_data)
    sha = entry.with_data_sha256 if with_data else entry.sha256
    size = entry.with_data_size if with_data else entry.size
    artifact = Artifact(name=PurePosixPath(urlparse(url).path).name, variant="", kind=f"hub/{sha[:16]}",
                        urls=(url,), sha256=sha, size=size, opset=entry.opset)
    return fetch(artifact, progress=progress, force=force)
