"""Write models and bundles: what ``shufflenet export`` does.

:func:`export_to` writes a registry variant as a .onnx, or as a Model Zoo bundle
(:func:`export_bundle`: the model plus ``test_data_set_*``, optionally a .tar.gz). By default the
emitter writes the fastest exact graph (channel padding, :mod:`shufflenet.optimize`);
``faithful=True`` writes the plain graph, channel for channel as the architecture is described.
A bundle's expected outputs come from an independent computation where one exists
(:func:`expected_outputs`). Checking a model against its bundle is :mod:`shufflenet.validate`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from ._io import sha256_file
from ._onnx import fixed_batch, model_opset
from .bundle import BundleError, pack_tar, write_bundle
from .onnx_export import ExportError, export_onnx, save_model, scaled_recipe, set_metadata
from .preprocess import preprocess_pil
from .runtime import Runner, model_info
from .options import DEFAULT_OPSET, EXPORT_VIAS, PAD_MULTIPLE
from .specs import VariantSpec, get_spec
from .synthetic import synthetic_images

__all__ = ["export_to", "export_bundle", "export_variant_via_torch", "expected_outputs", "test_inputs"]

#: ops of quantized graphs: no independent rendering agrees with them to the zoo's tolerance
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear"}


def export_to(variant: str, output: str | os.PathLike, *, test_data: int = 0, tar: bool = False,
              name: str | None = None, via: str = EXPORT_VIAS[0], faithful: bool = False,
              pad_channels: int | None = None, absorb_shuffle: bool = False, **export_kwargs) -> dict:
    """What ``shufflenet export`` does: a .onnx at ``output``, or with ``test_data`` a bundle
    folder ``<output>/<name>/`` (and ``<output>/<name>.tar.gz`` with ``tar``). Returns a summary.

    ``pad_channels`` None: the emitter writes the fastest exact graph (padded to
    ``optimize.PAD_MULTIPLE``), unless ``faithful``: then the plain graph, and padding or shuffle
    absorption are refused as conflicting. ``via="torch"`` is never padded.
    """
    pad_channels = _rewrite_choice(via, faithful, pad_channels, absorb_shuffle)
    if tar and not test_data:
        raise BundleError("--tar packs a bundle: give --test-data K as well")
    if name is not None and not test_data:
        raise BundleError("--name names a bundle: give --test-data K as well")
    write = export_variant_via_torch if via == "torch" else export_onnx
    model = write(variant, pad_channels=pad_channels, absorb_shuffle=absorb_shuffle, **export_kwargs)
    if test_data:
        paths = export_bundle(variant, output, test_data=test_data, name=name, tar=tar, model=model)
    else:
        output = Path(output)
        if output.suffix != ".onnx":
            raise BundleError(f"output {output} should end in .onnx (or give --test-data K for a bundle folder)")
        paths = {"model": save_model(model, output)}
    return _summary(variant, model, paths)


def _rewrite_choice(via: str, faithful: bool, pad_channels: int | None, absorb_shuffle: bool) -> int | None:
    """The channel padding to write: the fastest exact graph unless ``faithful`` (which refuses
    the rewrites) or torch writes the graph."""
    if via not in EXPORT_VIAS:
        raise ExportError(f"via must be one of {', '.join(EXPORT_VIAS)}, got {via!r}")
    if faithful and (pad_channels is not None or absorb_shuffle):
        raise ExportError("--faithful writes the plain graph: drop --pad-channels/--absorb-shuffle")
    if not faithful and pad_channels is None and via == "emitter":
        return PAD_MULTIPLE  # same outputs, ONNX Runtime's blocked kernels apply (docs/export.md)
    return pad_channels


def _summary(variant: str, model: onnx.ModelProto, paths: dict) -> dict:
    """What was written: the paths, the graph's shape in numbers, the file's size and hash."""
    meta = {p.key: p.value for p in model.metadata_props}
    return {
        **{k: str(v) for k, v in paths.items()},
        "variant": variant,
        "opset": model_opset(model),
        "input": model.graph.input[0].name,
        "output": model.graph.output[0].name,
        "nodes": len(model.graph.node),
        "op_counts": dict(Counter(n.op_type for n in model.graph.node)),
        "bytes": Path(paths["model"]).stat().st_size,
        "sha256": sha256_file(paths["model"]),
        "weights": meta.get("weights_source"),
        "batchnorm": meta.get("batchnorm"),
    }


def export_variant_via_torch(variant: str, *, weights=None, opset: int = DEFAULT_OPSET, batch: int | None = None,
                             keep_batchnorm: bool = False, input_name: str | None = None,
                             output_name: str | None = None, num_classes: int | None = None,
                             seed: int | None = None, labels=None, input_size: int | None = None,
                             absorb_shuffle: bool = False, pad_channels: int | None = None) -> onnx.ModelProto:
    """The ``--via torch`` path: build the PyTorch module, torch.onnx.export it, clean the graph."""
    from .onnx_clean import clean_graph
    from .torch_models import build_model, export_via_torch

    if keep_batchnorm:
        raise ExportError("--keep-batchnorm is not available with --via torch (torch folds BatchNorm)")
    if absorb_shuffle:
        raise ExportError("--absorb-shuffle works on the emitter's graph, not with --via torch")
    if pad_channels is not None:
        raise ExportError("--pad-channels works on the emitter's graph, not with --via torch")
    module = build_model(variant, weights=weights, num_classes=num_classes, seed=seed)
    spec = get_spec(variant)
    size = input_size or module.weights_source.input_size or spec.preprocess.crop
    raw = export_via_torch(module, opset=opset, batch=batch, input_name=input_name or spec.input_name,
                           output_name=output_name or spec.output_name, size=size)
    model = clean_graph(raw)
    model.producer_name = "shufflenet (via torch.onnx.export)"
    if labels is None and module.weights_source.labels is not None:
        labels = list(module.weights_source.labels)
    set_metadata(model, spec, module.weights_source, opset, False, module.graph.num_classes, labels,
                 scaled_recipe(spec.preprocess, size))
    return model


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
    name = name or f"{variant}-{model_opset(model)}"
    inputs = test_inputs(variant, test_data, batch=fixed_batch(model), seed=seed, recipe=model_info(model)[0])
    sets, reference = expected_outputs(variant, model, inputs)
    folder = write_bundle(model, out_dir, name, sets, model_file=model_file, legacy_npz=legacy_npz,
                          metadata={"expected_outputs": reference, "variant": variant})
    out = {"bundle": folder, "model": folder / model_file, "reference": reference}
    if tar:
        out["tar"] = pack_tar(folder, Path(out_dir) / f"{name}.tar.gz", root=root or name)
    return out


def test_inputs(variant: str, count: int, *, batch: int | None = None, seed: int = 0,
                recipe=None) -> list[np.ndarray]:
    """Preprocessed synthetic images for ``count`` test sets; set 1 has batch 3 unless fixed."""
    recipe = recipe or get_spec(variant).preprocess
    sizes = [batch or (3 if k == 1 else 1) for k in range(count)]
    images = iter(synthetic_images(sum(sizes), seed=seed))
    return [np.concatenate([preprocess_pil(next(images), recipe) for _ in range(n)]) for n in sizes]


test_inputs.__test__ = False  # not a pytest test


def expected_outputs(variant: str, model: onnx.ModelProto, inputs: list[np.ndarray], *,
                     engine: str = "auto") -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(input, expected output) pairs and the name of the computation that produced them.

    An fp32 model's expected outputs come from an independent rendering of its description with
    the model's own weights (read back from its initializers): PyTorch when torch is installed
    (``engine="torch"``), else the plain-numpy reference (``"numpy"``, :mod:`shufflenet.reference`).
    Int8 models have no independent reference that agrees to the zoo's tolerance, and graphs the
    description cannot read back (shuffle-absorbed exports) neither: ONNX Runtime on the model
    computes those, and the returned name says so. A padded graph (``export_to``'s default) is
    read back with its padding cut off and gets an independent reference too.
    """
    why = _no_independent_reference(model)
    if why is None:
        spec = get_spec(variant)
        weights, why = _description_weights(model, spec)
        if why is None:
            n_classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
            return _independent_outputs(spec, weights, n_classes, inputs, engine)
    runner = Runner(model, optimize=False)  # the graph as written
    return ([(x, runner.run({runner.input_names[0]: x})[0]) for x in inputs],
            f"{runner.engine} on this model ({why})")


def _no_independent_reference(model: onnx.ModelProto) -> str | None:
    """Why no rendering of the description can reproduce this graph, or None when one can.

    Channel padding is no obstacle: ``weights_from_onnx`` cuts the padding off again (checking
    that it is padding), and the padded graph computes the same function. Absorbed shuffles are:
    the weights keep their shapes but are permuted, so reading them back cannot tell.
    """
    if any(n.op_type in _QUANT_OPS or n.domain == "com.microsoft" for n in model.graph.node):
        return "int8: no independent reference"
    if {p.key: p.value for p in model.metadata_props}.get("channel_shuffle") == "absorbed into weights":
        return "shuffles absorbed: the weights are permuted"
    return None


def _description_weights(model: onnx.ModelProto, spec: VariantSpec) -> tuple[dict | None, str | None]:
    """(the model's weights as the description names them, None), or (None, why not)."""
    from .errors import WeightsError
    from .weights import weights_from_onnx

    try:
        return weights_from_onnx(model, spec), None
    except WeightsError as e:
        return None, f"weights not readable from the model ({e})"


def _independent_outputs(spec: VariantSpec, weights: dict, n_classes: int | None, inputs: list[np.ndarray],
                         engine: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The description rendered with ``weights``: PyTorch where allowed and installed, else numpy."""
    if engine in ("auto", "torch"):
        try:
            import torch

            from .torch_models import build_model
        except ImportError:
            if engine == "torch":
                raise
        else:
            module = build_model(spec.name, weights=weights, num_classes=n_classes)
            with torch.no_grad():
                sets = [(x, module(torch.from_numpy(x)).numpy()) for x in inputs]
            return sets, f"PyTorch rendering of {spec.name} (torch {torch.__version__}, float32)"
    from .reference import forward

    graph = spec.graph(n_classes or 1000)
    return [(x, forward(graph, weights, x)) for x in inputs], f"numpy reference of {spec.name} (float64)"
