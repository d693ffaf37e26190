"""Check a model against its test data the way the Model Zoo does, and build such bundles.

``validate`` accepts a .onnx with ``test_data_set_*`` beside it, a bundle folder, or a .tar.gz
(extracted safely into a temp folder). It runs ``onnx.checker`` (full check), then every test set,
comparing with the zoo's tolerances (rtol 1e-3, atol 1e-5).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .bundle import (BundleError, find_test_sets, is_archive, load_model_checked, locate_model, pack_tar,
                     safe_extract, write_bundle)
from .onnx_export import export_onnx
from .preprocess import preprocess_pil
from ._onnx import model_opset
from .runtime import Runner
from .specs import get_spec
from .synthetic import synthetic_images

__all__ = ["SetResult", "ValidationReport", "validate", "export_bundle", "RTOL", "ATOL"]

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
    if path.is_file():
        if path.suffix != ".onnx":
            raise BundleError(f"{path}: expected a .onnx, a bundle folder or a .tar.gz")
        return path, path.parent
    model = locate_model(path)
    return model, model.parent


def _reference_of(folder: Path) -> str:
    """The bundle.json's account of where the expected outputs came from."""
    import json

    from .bundle import BUNDLE_METADATA

    meta = folder / BUNDLE_METADATA
    if not meta.is_file():
        return "unknown (no bundle.json)"
    try:
        if meta.stat().st_size > 1 << 20:
            raise ValueError("larger than 1 MiB")
        value = json.loads(meta.read_text("utf-8")).get("expected_outputs")
    except (OSError, ValueError, AttributeError) as e:
        return f"unknown (unreadable bundle.json: {e})"
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
            checker = f"failed: {str(e).strip().splitlines()[0]}"
        report = ValidationReport(str(path), model.graph.name, model_opset(model), checker, "")
        report.expected_outputs = _reference_of(data_dir)
        runner = Runner(model, threads=threads, optimize=False)  # check the graph as given
        report.engine = runner.engine
        for ts in sets:
            if len(ts.inputs) != len(runner.input_names) or len(ts.outputs) > len(runner.output_names):
                raise BundleError(f"{ts.path}: {len(ts.inputs)} inputs / {len(ts.outputs)} outputs, the model has "
                                  f"{len(runner.input_names)} / {len(runner.output_names)}")
            feeds = {}
            for k, (name, arr) in enumerate(ts.inputs):
                feeds[name if name in runner.input_names else runner.input_names[k]] = arr
            got = runner.run(feeds)
            for k, (name, expected) in enumerate(ts.outputs):
                tensor = name or runner.output_names[k]
                idx = runner.output_names.index(tensor) if tensor in runner.output_names else k
                label = (f"{ts.path.name}/output_{k}.pb" if ts.path.is_dir() else f"{ts.path.name}[outputs][{k}]")
                report.sets.append(_compare(label, tensor, expected, got[idx]))
        return report




def test_inputs(variant: str, count: int, *, batch: int | None = None, seed: int = 0,
                recipe=None) -> list[np.ndarray]:
    """Preprocessed synthetic images for ``count`` test sets; set 1 has batch 3 unless fixed."""
    recipe = recipe or get_spec(variant).preprocess
    sizes = [batch or (3 if k == 1 else 1) for k in range(count)]
    images = iter(synthetic_images(sum(sizes), seed=seed))
    return [np.concatenate([preprocess_pil(next(images), recipe) for _ in range(n)]) for n in sizes]


test_inputs.__test__ = False  # not a pytest test


def export_bundle(variant: str, out_dir: str | os.PathLike, *, test_data: int = 3, name: str | None = None,
                  tar: bool = False, seed: int = 0, model: onnx.ModelProto | None = None,
                  root: str | None = None, model_file: str = "model.onnx", legacy_npz: bool = False,
                  **export_kwargs) -> dict[str, Path]:
    """Export (or take ``model``) and write ``<out_dir>/<name>/`` with ``test_data`` sets, + tar.

    ``root``: the folder inside the archive (default ``<name>``; the zoo's V1 rows use
    ``shufflenet``, its V2-10 ``model/test_shufflenetv2``); ``model_file`` the model's file name;
    ``legacy_npz`` adds the zoo's old ``test_data_<k>.npz`` files.
    """
    if test_data < 1:
        raise BundleError(f"test_data must be at least 1, got {test_data}")
    if model is None:
        model = export_onnx(variant, **export_kwargs)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    fixed = dim0.dim_value if dim0.HasField("dim_value") else None
    name = name or f"{variant}-{model_opset(model)}"
    from .runtime import model_info

    inputs = test_inputs(variant, test_data, batch=fixed, seed=seed, recipe=model_info(model)[0])
    sets, reference = expected_outputs(variant, model, inputs)
    folder = write_bundle(model, out_dir, name, sets, model_file=model_file, legacy_npz=legacy_npz,
                          metadata={"expected_outputs": reference, "variant": variant})
    out = {"bundle": folder, "model": folder / model_file, "reference": reference}
    if tar:
        out["tar"] = pack_tar(folder, Path(out_dir) / f"{name}.tar.gz", root=root or name)
    return out


_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear"}


def expected_outputs(variant: str, model: onnx.ModelProto, inputs: list[np.ndarray], *,
                     engine: str = "auto") -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(input, expected output) pairs and the name of the computation that produced them.

    An fp32 model's expected outputs come from an independent rendering of its description with
    the model's own weights (read back from its initializers): PyTorch when torch is installed
    (``engine="torch"``), else the plain-numpy reference (``"numpy"``, :mod:`shufflenet.reference`).
    Int8 models have no independent reference that agrees to the zoo's tolerance, and graphs the
    description cannot read back (padded or shuffle-absorbed exports) neither: ONNX Runtime on
    the model computes those, and the returned name says so.
    """
    import tempfile

    from .errors import WeightsError
    from .specs import get_spec
    from .weights import weights_from_onnx

    why = None
    if any(n.op_type in _QUANT_OPS or n.domain == "com.microsoft" for n in model.graph.node):
        why = "int8: no independent reference"
    meta = {p.key for p in model.metadata_props}
    if why is None and meta & {"channel_padding", "channel_shuffle"}:
        why = "rewritten graph: not the description's weights"
    if why is None:
        spec = get_spec(variant)
        with tempfile.TemporaryDirectory(prefix="shufflenet-ref-") as tmp:
            onnx.save(model, f"{tmp}/m.onnx")
            try:
                weights = weights_from_onnx(f"{tmp}/m.onnx", spec)
            except WeightsError as e:
                weights, why = None, f"weights not readable from the model ({e})"
    if why is None:
        n_classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
        if engine in ("auto", "torch"):
            try:
                import torch

                from .torch_models import build_model
            except ImportError:
                if engine == "torch":
                    raise
            else:
                module = build_model(variant, weights=weights, num_classes=n_classes)
                with torch.no_grad():
                    sets = [(x, module(torch.from_numpy(x)).numpy()) for x in inputs]
                return sets, f"PyTorch rendering of {variant} (torch {torch.__version__}, float32)"
        from .reference import forward

        graph = spec.graph(n_classes or 1000)
        return [(x, forward(graph, weights, x)) for x in inputs], f"numpy reference of {variant} (float64)"
    runner = Runner(model, optimize=False)  # the graph as written
    return ([(x, runner.run({runner.input_names[0]: x})[0]) for x in inputs],
            f"{runner.engine} on this model ({why})")


def export_variant_via_torch(variant: str, *, weights=None, opset: int = 17, batch: int | None = None,
                     keep_batchnorm: bool = False, input_name: str | None = None,
                     output_name: str | None = None, num_classes: int | None = None,
                     seed: int | None = None, labels=None, input_size: int | None = None,
                     absorb_shuffle: bool = False, pad_channels: int | None = None) -> onnx.ModelProto:
    """The ``--via torch`` path: build the PyTorch module, torch.onnx.export it, clean the graph."""
    from .onnx_clean import clean_graph
    from .onnx_export import ExportError, set_metadata
    from .torch_models import build_model, export_via_torch as _torch_export

    if keep_batchnorm:
        raise ExportError("--keep-batchnorm is not available with --via torch (torch folds BatchNorm)")
    if absorb_shuffle:
        raise ExportError("--absorb-shuffle works on the emitter's graph, not with --via torch")
    if pad_channels is not None:
        raise ExportError("--pad-channels works on the emitter's graph, not with --via torch")
    module = build_model(variant, weights=weights, num_classes=num_classes, seed=seed)
    spec = get_spec(variant)
    size = input_size or module.weights_source.input_size or spec.preprocess.crop
    raw = _torch_export(module, opset=opset, batch=batch, input_name=input_name or spec.input_name,
                        output_name=output_name or spec.output_name, size=size)
    model = clean_graph(raw)
    model.producer_name = "shufflenet (via torch.onnx.export)"
    from dataclasses import replace

    recipe = spec.preprocess
    if size != recipe.crop:
        recipe = replace(recipe, crop=size, resize=int(round(size * recipe.resize / recipe.crop)))
    if labels is None and module.weights_source.labels is not None:
        labels = list(module.weights_source.labels)
    set_metadata(model, spec, module.weights_source, opset, False, module.graph.num_classes, labels, recipe)
    return model


def export_to(variant: str, output: str | os.PathLike, *, test_data: int = 0, tar: bool = False,
              name: str | None = None, via: str = "emitter", **export_kwargs) -> dict:
    """What ``shufflenet export`` does: a .onnx at ``output``, or with ``test_data`` a bundle
    folder ``<output>/<name>/`` (and ``<output>/<name>.tar.gz`` with ``tar``). Returns a summary."""
    from .onnx_export import save_model
    from ._io import sha256_file

    if tar and not test_data:
        raise BundleError("--tar packs a bundle: give --test-data K as well")
    if name is not None and not test_data:
        raise BundleError("--name names a bundle: give --test-data K as well")
    model = export_variant_via_torch(variant, **export_kwargs) if via == "torch" else export_onnx(variant, **export_kwargs)
    if test_data:
        paths = export_bundle(variant, output, test_data=test_data, name=name, tar=tar, model=model)
    else:
        output = Path(output)
        if output.suffix != ".onnx":
            raise BundleError(f"output {output} should end in .onnx (or give --test-data K for a bundle folder)")
        paths = {"model": save_model(model, output)}
    meta = {p.key: p.value for p in model.metadata_props}
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {
        **{k: str(v) for k, v in paths.items()},
        "variant": variant,
        "opset": model_opset(model),
        "input": model.graph.input[0].name,
        "output": model.graph.output[0].name,
        "nodes": len(model.graph.node),
        "op_counts": counts,
        "bytes": Path(paths["model"]).stat().st_size,
        "sha256": sha256_file(paths["model"]),
        "weights": meta.get("weights_source"),
        "batchnorm": meta.get("batchnorm"),
    }
