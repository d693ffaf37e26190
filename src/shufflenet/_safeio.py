"""Small helpers for reading untrusted files: regular files only, capped reads, bounded JSON,
printable text and strict JSON out."""

from __future__ import annotations

import json
import math
import os
import re
import stat

import numpy as np

from .limits import MAX_NESTING, MAX_TEXT_BYTES


def regular_file(path: str | os.PathLike, error: type[Exception], what: str = "file") -> int:
    """``path``'s size; ``error`` unless it is a regular file (a FIFO would block the open)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path}: is a folder")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise error(f"{what} {path}: is {kind}, not a regular file; refused")
    return st.st_size


def read_capped(path: str | os.PathLike, limit: int, error: type[Exception], what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading)."""
    size = regular_file(path, error, what)
    if size > limit:
        raise error(f"{what} {path}: {size:,} bytes, more than the limit of {limit:,}")
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)  # read(n) allocates n bytes first: never more than the file
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{what} {path}: more than the limit of {limit:,} bytes")
    return data


def read_text(path: str | os.PathLike, error: type[Exception], what: str = "file") -> str:
    data = read_capped(path, MAX_TEXT_BYTES, error, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path}: not UTF-8 text ({e})") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str | bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (strings ignored), without parsing it."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    data = _JSON_STRING.sub(b"", data)
    arr = np.frombuffer(data, np.uint8)
    steps = (np.isin(arr, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(arr, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(steps).max(initial=0))


def json_loads(text: str | bytes, error: type[Exception], what: str, *, max_depth: int = MAX_NESTING):
    """``json.loads`` that refuses nesting deeper than ``max_depth`` before parsing."""
    if json_depth(text) > max_depth:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels; refused")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{what}: bad JSON ({e})") from None


def printable(text: str) -> str:
    """``text`` with control and other non-printing characters escaped (``\\x1b``, ``\\n``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def finite_json(obj):
    """``obj`` with every non-finite float (NaN, +-inf) as None, so ``json.dumps`` writes strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "to_dict"):  # a recipe (specs.Preprocess) inside an artifact's record
        return finite_json(obj.to_dict())
    return obj


def dumps(obj, **kw) -> str:
    """Strict JSON: non-finite numbers become null (never ``NaN``/``Infinity``)."""
    return json.dumps(finite_json(obj), allow_nan=False, **kw)
