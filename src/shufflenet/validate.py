"""Check a model against its test data the way the Model Zoo does.

``validate`` accepts a .onnx with ``test_data_set_*`` beside it, a bundle folder, or a .tar.gz
(extracted safely into a temp folder). It runs ``onnx.checker`` (full check), then every test set,
comparing with the zoo's tolerances (rtol 1e-3, atol 1e-5). Writing models and bundles is
:mod:`shufflenet.export`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ._io import one_line
from ._onnx import model_opset
from ._safeio import json_loads, read_text
from .bundle import (BUNDLE_METADATA, BundleError, TestSet, find_test_sets, is_archive, load_model_checked,
                     locate_model, safe_extract)
from .runtime import Runner

__all__ = ["SetResult", "ValidationReport", "validate", "RTOL", "ATOL"]

RTOL, ATOL = 1e-3, 1e-5  # the ONNX Model Zoo's test tolerances


@dataclass
class SetResult:
    name: str
    tensor: str
    passed: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: list[int]
    expected: float
    got: float
    top1_match: float | None  # fraction of rows whose argmax agrees (2-D outputs)
    mismatched: int  # elements outside the tolerance


@dataclass
class ValidationReport:
    path: str
    model: str
    opset: int
    checker: str
    engine: str
    sets: list[SetResult] = field(default_factory=list)
    #: what computed the expected outputs, from the bundle's bundle.json ("unknown" without one)
    expected_outputs: str = "unknown (no bundle.json)"

    @property
    def passed(self) -> bool:
        return self.checker == "passed" and bool(self.sets) and all(s.passed for s in self.sets)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _compare(name: str, tensor: str, expected: np.ndarray, got: np.ndarray) -> SetResult:
    if expected.shape != got.shape:
        return SetResult(name, tensor, False, float("inf"), float("inf"), [], float("nan"), float("nan"),
                         None, int(expected.size))
    e64, g64 = expected.astype(np.float64), got.astype(np.float64)
    diff = np.abs(g64 - e64)
    bad = ~(diff <= ATOL + RTOL * np.abs(e64))  # NaN anywhere is a mismatch
    rel = diff / np.maximum(np.abs(e64), np.finfo(np.float32).tiny)
    # the worst element: the one furthest outside the tolerance (or the largest error)
    excess = np.where(np.isnan(diff), np.inf, diff - RTOL * np.abs(e64))
    worst = np.unravel_index(int(np.argmax(excess)), diff.shape) if diff.size else ()
    top1 = None
    if expected.ndim == 2 and expected.size:
        top1 = float(np.mean(expected.argmax(1) == got.argmax(1)))
    return SetResult(name, tensor, not bad.any(), float(np.max(diff, initial=0)), float(np.max(rel, initial=0)),
                     [int(i) for i in worst], float(expected[worst]) if diff.size else float("nan"),
                     float(got[worst]) if diff.size else float("nan"), top1, int(bad.sum()))


def _locate(path: Path, tmp: Path) -> tuple[Path, Path]:
    """(model file, folder holding the test sets) for any accepted PATH form."""
    if not path.exists():
        raise BundleError(f"{path}: no such file or folder")
    if path.is_file() and is_archive(path):
        path = safe_extract(path, tmp / "bundle")
    if not path.is_dir() and (not path.is_file() or path.suffix != ".onnx"):  # a device or FIFO too
        raise BundleError(f"{path}: expected a .onnx, a bundle folder or a .tar.gz")
    if path.is_file():
        return path, path.parent
    model = locate_model(path)
    return model, model.parent


def _reference_of(folder: Path) -> str:
    """The bundle.json's account of where the expected outputs came from. The file is untrusted
    (it comes with the archive): read as :mod:`shufflenet._safeio` reads text and JSON, and any
    problem with it is reported in the answer, never raised."""
    meta = folder / BUNDLE_METADATA
    if not meta.exists():
        return "unknown (no bundle.json)"
    try:
        data = json_loads(read_text(meta, BundleError, BUNDLE_METADATA), BundleError, BUNDLE_METADATA)
    except BundleError as e:
        return f"unknown (unreadable {e})"
    value = data.get("expected_outputs") if isinstance(data, dict) else None
    return str(value)[:200] if value else "unknown (not stated in bundle.json)"


def validate(path: str | os.PathLike, *, threads: int | None = None) -> ValidationReport:
    """Run the checker and every test set; see the module doc. Never raises for a mismatch."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="shufflenet-validate-") as tmp:
        model_path, data_dir = _locate(path, Path(tmp))
        model = load_model_checked(model_path)
        sets = find_test_sets(data_dir)
        if not sets:
            raise BundleError(f"{data_dir}: no test_data_set_* folders or test_data_*.npz files beside {model_path.name}")
        try:
            onnx.checker.check_model(model, full_check=True)
            checker = "passed"
        except Exception as e:  # onnx raises ValidationError / InferenceError
            checker = f"failed: {one_line(e, line='first')}"
        report = ValidationReport(str(path), model.graph.name, model_opset(model), checker, "")
        report.expected_outputs = _reference_of(data_dir)
        runner = Runner(model, threads=threads, optimize=False)  # check the graph as given
        report.engine = runner.engine
        for ts in sets:
            report.sets.extend(_check_set(runner, ts))
        return report


def _check_set(runner: Runner, ts: TestSet) -> list[SetResult]:
    """Run one test set; one result per expected output (tensors matched by name, else position)."""
    if len(ts.inputs) != len(runner.input_names) or len(ts.outputs) > len(runner.output_names):
        raise BundleError(f"{ts.path}: {len(ts.inputs)} inputs / {len(ts.outputs)} outputs, the model has "
                          f"{len(runner.input_names)} / {len(runner.output_names)}")
    feeds = {}
    for k, (name, arr) in enumerate(ts.inputs):
        feeds[name if name in runner.input_names else runner.input_names[k]] = arr
    got = runner.run(feeds)
    results = []
    for k, (name, expected) in enumerate(ts.outputs):
        tensor = name or runner.output_names[k]
        idx = runner.output_names.index(tensor) if tensor in runner.output_names else k
        label = (f"{ts.path.name}/output_{k}.pb" if ts.path.is_dir() else f"{ts.path.name}[outputs][{k}]")
        results.append(_compare(label, tensor, expected, got[idx]))
    return results


#: names that lived here before writing moved to :mod:`shufflenet.export`
_MOVED_TO_EXPORT = ("export_to", "export_bundle", "export_variant_via_torch", "expected_outputs", "test_inputs")


def _faithful_export_to(*args, **kwargs):
    """``export_to`` as it was here: the plain graph unless a rewrite is asked for (the
    library's own default is now the fastest exact graph, as the CLI's). One difference remains:
    ``absorb_shuffle=True`` without ``pad_channels`` now pads as well (as the CLI always did);
    ``export_onnx(..., absorb_shuffle=True)`` writes the absorbed graph alone."""
    from .export import export_to

    if not kwargs.get("pad_channels") and not kwargs.get("absorb_shuffle"):
        kwargs.setdefault("faithful", True)
    return export_to(*args, **kwargs)


def __getattr__(name: str):
    """The writing functions under their old import path, with a DeprecationWarning."""
    if name in _MOVED_TO_EXPORT:
        import warnings

        from . import export

        warnings.warn(f"shufflenet.validate.{name} is deprecated; use shufflenet.export.{name}",
                      DeprecationWarning, stacklevel=2)
        return _faithful_export_to if name == "export_to" else getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
