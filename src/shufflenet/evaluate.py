"""Top-1/top-5 accuracy on a labelled folder, and agreement between two models.

Layouts: ImageFolder (one folder per WordNet id or class name), a flat folder plus a label file
(``filename index`` per line, the ImageNet val convention), and files named ``<wnid>_<anything>``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._safeio import read_text
from .errors import ShuffleNetError
from .labels import wnid_index
from ._io import class_folders, image_files
from .runtime import Classifier, agreement, run_files

__all__ = ["DatasetError", "Sample", "discover", "evaluate", "EvalReport"]


class DatasetError(ShuffleNetError, ValueError):
    """A data folder whose labels cannot be worked out."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def _images(folder: Path, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Regular image files directly in ``folder`` (a class folder's images, or a flat folder's);
    a folder that cannot be listed is an entry in ``skipped`` (an error when there is no list),
    never silently empty."""
    problems: list[tuple[str, str]] = []
    files = image_files(folder, problems, recursive=False)
    if problems and skipped is None:
        raise DatasetError(f"{problems[0][0]}: {problems[0][1]}")
    if skipped is not None:
        skipped.extend((str(where), why) for where, why in problems)  # the report is JSON: paths as text
    return files


def discover(data: str | os.PathLike, *, labels: list[str] | None = None,
             label_file: str | os.PathLike | None = None) -> tuple[list[Sample], list[tuple[str, str]], str]:
    """(samples, [(path, why skipped)], layout name) for a data folder."""
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    skipped: list[tuple[str, str]] = []
    if label_file is not None:
        return _from_label_file(root, label_file, labels, skipped), skipped, "label file"
    try:
        subdirs = [root / name for name in class_folders(root)]
    except OSError as e:  # as image_files words it: the flat layout's listing would fail the same way
        raise DatasetError(f"{root}: cannot list folder ({e.strerror or e})") from None
    if subdirs:
        return _from_class_folders(subdirs, labels, skipped), skipped, "image folder"
    samples = _from_wnid_names(root, skipped)
    if not samples and not skipped:
        raise DatasetError(f"{root}: no images found")
    return samples, skipped, "<wnid>_name files"


def _from_label_file(root: Path, label_file, labels: list[str] | None,
                     skipped: list[tuple[str, str]]) -> list[Sample]:
    """'filename index' per line, each file inside ``root``; a listed file that is missing is skipped."""
    lines = read_text(label_file, DatasetError, "label file").splitlines()  # a FIFO is refused
    samples = []
    top = root.resolve()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetError(f"{label_file}:{n}: expected 'filename index' (index >= 0), got {line!r}")
        if labels is not None and int(parts[1]) >= len(labels):
            raise DatasetError(f"{label_file}:{n}: class index {parts[1]} but the model has {len(labels)} classes")
        path = root / parts[0]
        if os.path.commonpath([str(top), str(path.resolve())]) != str(top):
            raise DatasetError(f"{label_file}:{n}: {parts[0]!r} is outside {root}")
        if not path.is_file():
            skipped.append((str(path), "listed in the label file but missing"))
            continue
        samples.append(Sample(path, int(parts[1])))
    return samples


def _from_class_folders(subdirs: list[Path], labels: list[str] | None,
                        skipped: list[tuple[str, str]]) -> list[Sample]:
    """One folder per class, named by WordNet id (1000-class models) or by class name."""
    by_name = {name: i for i, name in enumerate(labels or [])}
    samples = []
    for d in subdirs:
        idx = wnid_index(d.name) if labels is None or len(labels) == 1000 else None
        if idx is None:
            idx = by_name.get(d.name, by_name.get(d.name.replace("_", " ")))
        if idx is None:
            skipped.extend((str(p), f"folder {d.name!r} is neither a WordNet id nor a class name")
                           for p in _images(d, skipped))
            continue
        samples.extend(Sample(p, idx) for p in _images(d, skipped))
    return samples


def _from_wnid_names(root: Path, skipped: list[tuple[str, str]]) -> list[Sample]:
    """Files named ``<wnid>_<anything>`` directly in ``root``."""
    samples = []
    for p in _images(root):
        m = re.match(r"(n\d{8})_", p.name)
        idx = wnid_index(m.group(1)) if m else None
        if idx is None:
            skipped.append((str(p), "name does not start with a known WordNet id (<wnid>_...)"))
            continue
        samples.append(Sample(p, idx))
    return samples


@dataclass
class EvalReport:
    model: str
    data: str
    layout: str
    preprocessing: str
    images: int
    top1: float
    top5: float
    seconds: float
    images_per_second: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    compare: dict | None = None
    untrained: list[str] = field(default_factory=list)  # the models whose weights are random

    @property
    def top1_error(self) -> float:
        return 100.0 - self.top1

    @property
    def top5_error(self) -> float:
        return 100.0 - self.top5

    def to_dict(self) -> dict:
        return {**asdict(self), "top1_error": self.top1_error, "top5_error": self.top5_error}


def evaluate(model, data, *, limit: int | None = None, compare=None, label_file=None,
             batch_size: int = 32, threads: int | None = None, resize: str | None = None,
             exact: bool = True, optimize: bool = True, progress=None) -> EvalReport:
    """Accuracy of ``model`` on ``data``; with ``compare``, agreement of the two on the same images.

    ``exact=True`` (the default) preprocesses as torchvision's ImageNet evaluation does, bit for
    bit (full-size JPEG decoding, EXIF orientation ignored), the path published accuracies come
    from; ``exact=False`` opts into photo decoding (EXIF orientation, JPEG draft decoding: faster,
    not torchvision's). The report's ``preprocessing`` names the one used. ``optimize``: the
    runtime's exact load-time graph rewrites (same outputs, faster).
    """
    from .preprocess import describe

    # local arguments first: a typo must not cost a model download
    if not Path(data).is_dir():
        raise DatasetError(f"{data}: not a folder")
    if label_file is not None and not Path(label_file).is_file():
        raise DatasetError(f"{label_file}: no such label file")
    clf = Classifier(model, threads=threads, resize=resize, exact=exact, optimize=optimize)
    # the second model too, before the first one runs: a typo in it must not cost the evaluation
    other = None if compare is None else Classifier(compare, threads=threads, resize=resize, exact=exact,
                                                     optimize=optimize)
    samples, skipped, layout = discover(data, labels=clf.labels, label_file=label_file)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise DatasetError(f"{data}: no labelled images to evaluate ({len(skipped)} skipped)")
    start = time.perf_counter()
    results = list(run_files(clf, [s.path for s in samples], top=5, batch_size=batch_size,
                             progress=progress, keep_outputs=compare is not None))
    seconds = time.perf_counter() - start
    hit1 = hit5 = n = 0
    ok_rows, ok_idx = [], []
    for i, (s, r) in enumerate(zip(samples, results)):
        if r.error:
            skipped.append((str(s.path), r.error))
            continue
        top = [p.index for p in r.predictions]
        n += 1
        hit1 += top[0] == s.label
        hit5 += s.label in top
        if compare is not None:
            ok_rows.append(r.outputs)
            ok_idx.append(i)
    if n == 0:
        raise DatasetError(f"{data}: none of the {len(samples)} images could be read")
    report = EvalReport(clf.source, str(data), layout, describe(clf.recipe, resize=clf.resize, exact=clf.exact),
                        n, 100.0 * hit1 / n, 100.0 * hit5 / n, seconds, n / seconds, skipped)
    if clf.untrained:
        report.untrained.append(clf.source)
    if other is not None:
        report.compare = _compare(clf, np.stack(ok_rows), other, [samples[i].path for i in ok_idx], batch_size)
        if other.untrained:
            report.untrained.append(other.source)
    return report


def _compare(clf: Classifier, raw_a: np.ndarray, other: Classifier, paths, batch_size: int) -> dict:
    """``other`` on the images ``clf`` gave ``raw_a`` for: its agreement with ``clf``."""
    rows = []
    for r in run_files(other, paths, top=5, batch_size=batch_size, keep_outputs=True):
        if r.error:
            raise DatasetError(f"{r.path}: readable for one model, not the other ({r.error})")
        rows.append(r.outputs)
    return {"model": other.source, "images": len(raw_a),
            **agreement(raw_a, np.stack(rows), clf.output_kind, other.output_kind)}
