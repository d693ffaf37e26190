"""Class names: ImageNet-1k (shipped, index-aligned with torchvision and the zoo) and custom files."""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path

from ._safeio import json_loads, read_text
from .errors import ShuffleNetError

__all__ = ["LabelsError", "imagenet_labels", "imagenet_wnids", "load_labels", "wnid_index"]


class LabelsError(ShuffleNetError, ValueError):
    """A label file that cannot be used."""


@cache
def _imagenet() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("shufflenet").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    if [int(r[0]) for r in rows] != list(range(1000)):
        raise LabelsError("the packaged ImageNet class file is damaged")
    return tuple(r[1] for r in rows), tuple(r[2] for r in rows)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index i = sorted-WordNet-id order (torchvision, zoo)."""
    return list(_imagenet()[1])


def imagenet_wnids() -> list[str]:
    return list(_imagenet()[0])


@cache
def _wnid_map() -> dict[str, int]:
    return {w: i for i, w in enumerate(_imagenet()[0])}


def wnid_index(wnid: str) -> int | None:
    return _wnid_map().get(wnid)


def load_labels(path: str | os.PathLike) -> list[str]:
    """Read class names: one per line, a JSON list, or our TSV (index, wnid, name)."""
    path = Path(path)
    text = read_text(path, LabelsError, "labels file")  # a FIFO is refused, not waited on
    if path.suffix == ".json":
        labels = json_loads(text, LabelsError, str(path))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise LabelsError(f"{path}: expected a JSON list of strings")
        return labels
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if lines and lines[0].split("\t")[:2] == ["index", "wnid"]:
        rows = [line.split("\t") for line in lines[1:]]
        short = next((n for n, r in enumerate(rows, 2) if len(r) < 3), None)
        if short is not None:
            raise LabelsError(f"{path}:{short}: expected 'index<TAB>wnid<TAB>name'")
        return [r[2] for r in rows]
    if not lines:
        raise LabelsError(f"{path}: no labels in the file")
    return lines
