"""Class names: ImageNet-1k (shipped, index-aligned with torchvision and the zoo) and custom files."""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path

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
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LabelsError(f"cannot read labels from {path}: {e}") from None
    if path.suffix == ".json":
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelsError(f"{path}: bad JSON ({e})") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise LabelsError(f"{path}: expected a JSON list of strings")
        return labels
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if lines and lines[0].split("\t")[:2] == ["index", "wnid"]:
        return [line.split("\t")[2] for line in lines[1:]]
    if not lines:
        raise LabelsError(f"{path}: no labels in the file")
    return lines
