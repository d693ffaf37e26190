"""Write a registry description + numpy weights as ONNX, at any opset from 3 to the newest.

No torch: every node is written directly from the description. What changes between opsets is
the data in :data:`RULES` (checked against ``onnx.defs`` by the tests), looked up with
:func:`form`; the emitter itself has no opset arithmetic.

The channel shuffle is one Reshape -> Transpose -> Reshape whose shapes use 0 for the batch, so
dynamic batch needs no Shape/Gather chain; the channel split is one Split; BatchNorm is folded
into the preceding Conv unless asked to keep it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ShuffleNetError
from ._io import atomic_write
from .options import DEFAULT_OPSET, INPUT_SIZES, MIN_OPSET
from .specs import Graph, Node, Preprocess, VariantSpec, get_spec
from .weights import WeightSource, resolve_weights

__all__ = ["RULES", "Rule", "form", "export_onnx", "save_model", "set_metadata", "scaled_recipe", "newest_opset",
           "MIN_OPSET", "DEFAULT_OPSET", "ExportError"]


class ExportError(ShuffleNetError, ValueError):
    """An export request that cannot be honoured (opset out of range, conflicting options)."""


def newest_opset() -> int:
    """The newest default-domain opset the installed onnx defines."""
    return onnx.defs.onnx_opset_version()


@dataclass(frozen=True)
class Rule:
    """From opset ``since`` on, ``op`` is written in ``form`` (until a later rule for ``op``)."""

    op: str
    since: int
    form: str
    why: str


#: Every opset difference the emitter honours. Each ``since`` is a schema version boundary in
#: onnx.defs, and each form's attributes/inputs are checked against that schema in the tests.
RULES: tuple[Rule, ...] = (
    Rule("BatchNormalization", 1, "consumed_inputs",
         "BN-1 requires consumed_inputs; is_test=1 selects inference, spatial=1 per-channel"),
    Rule("BatchNormalization", 6, "is_test", "BN-6 drops consumed_inputs; is_test=1 and spatial=1 stay"),
    Rule("BatchNormalization", 7, "spatial", "BN-7 drops is_test (inference is implied); spatial=1 stays"),
    Rule("BatchNormalization", 9, "plain", "BN-9 drops spatial: per-channel statistics always"),
    Rule("Reshape", 1, "shape_attribute", "Reshape-1 takes the target shape as an attribute"),
    Rule("Reshape", 5, "shape_input", "Reshape-5 takes the target shape as an int64 input"),
    Rule("Gemm", 1, "broadcast_attribute", "Gemm-1/6 broadcast C only with broadcast=1"),
    Rule("Gemm", 7, "numpy_broadcast", "Gemm-7 broadcasts C unidirectionally; no attribute"),
    Rule("Split", 1, "split_attribute", "Split-1/2/11 take the sizes as the 'split' attribute"),
    Rule("Split", 13, "split_input", "Split-13 takes the sizes as an int64 input"),
    Rule("AveragePool", 1, "implicit_exclude_pad", "AveragePool-1 always excludes padding"),
    Rule("AveragePool", 7, "count_include_pad", "AveragePool-7 adds count_include_pad (0 = exclude)"),
    Rule("Softmax", 1, "coerce_2d", "Softmax-1/11 flatten to 2-D at axis; on [N, K] axis=1 is per row"),
    Rule("Softmax", 13, "single_axis", "Softmax-13 normalises along one axis; axis=1 on [N, K]"),
)


def form(op: str, opset: int) -> str:
    """The form of ``op`` at ``opset`` according to :data:`RULES`."""
    found = [r for r in RULES if r.op == op and r.since <= opset]
    if not found:
        raise KeyError(f"no rule for {op} at opset {opset}")
    return max(found, key=lambda r: r.since).form


def _foldable_bns(graph: Graph) -> dict[str, Node]:
    """conv output -> the bn that is its only reader: each pair is written as one Conv."""
    producer, readers = graph.producers(), graph.consumers()
    folded = {}
    for n in graph.nodes:
        src = producer.get(n.inputs[0]) if n.op == "bn" else None
        if src is not None and src.op == "conv" and len(readers[src.output]) == 1:
            folded[src.output] = n
    return folded


class _Emitter:
    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], opset: int, fold_bn: bool,
                 rename: Mapping[str, str], size: int) -> None:
        self.graph, self.w, self.opset, self.fold_bn = graph, weights, opset, fold_bn
        self.rename = rename
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.folded = _foldable_bns(graph) if fold_bn else {}
        self.shapes = graph.shapes((size, size))

    def t(self, name: str) -> str:
        return self.rename.get(name, name)

    def init(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def int64s(self, values) -> str:
        arr = np.asarray(values, dtype=np.int64)
        return self.init("const_i64_" + "_".join(str(v).replace("-", "m") for v in arr.tolist()), arr)

    def node(self, op: str, inputs, outputs, name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def emit(self) -> None:
        for n in self.graph.nodes:
            if n.op == "bn" and self.fold_bn and self.folded.get(n.inputs[0]) is n:
                continue  # written together with its conv
            getattr(self, f"_{n.op}")(n)

    # ---------------------------------------------------------------- ops
    def _conv(self, n: Node) -> None:
        a = n.attrs
        w = self.w[n.params["weight"]].astype(np.float64)
        b = self.w[n.params["bias"]].astype(np.float64) if "bias" in n.params else None
        out, bn = n.output, self.folded.get(n.output)
        w_name, b_name = n.params["weight"], n.params.get("bias")
        if bn is not None:
            p = {r: self.w[k].astype(np.float64) for r, k in bn.params.items() if r != "num_batches_tracked"}
            scale = p["weight"] / np.sqrt(p["running_var"] + bn.attrs["eps"])
            w = w * scale[:, None, None, None]
            b = p["bias"] + ((0.0 if b is None else b) - p["running_mean"]) * scale
            # the folded bias lives in the BN bias slot, so these initializers are exactly the
            # weights of the same network with identity BatchNorms (see weights_from_onnx)
            b_name, out = bn.params["bias"], bn.output
        inputs = [self.t(n.inputs[0]), self.init(w_name, w.astype(np.float32))]
        if b is not None:
            inputs.append(self.init(b_name, b.astype(np.float32)))
        k, s, pad = a["kernel"], a["stride"], a["pad"]
        self.node("Conv", inputs, [self.t(out)], name=out, kernel_shape=[k, k], strides=[s, s],
                  pads=[pad] * 4, group=a["groups"], dilations=[1, 1])

    def _bn(self, n: Node) -> None:
        inputs = [self.t(n.inputs[0])] + [self.init(n.params[r], self.w[n.params[r]])
                                          for r in ("weight", "bias", "running_mean", "running_var")]
        attrs: dict = {"epsilon": n.attrs["eps"]}
        f = form("BatchNormalization", self.opset)
        if f == "consumed_inputs":
            attrs.update(consumed_inputs=[0, 0, 0, 1, 1], is_test=1, spatial=1)
        elif f == "is_test":
            attrs.update(is_test=1, spatial=1)
        elif f == "spatial":
            attrs.update(spatial=1)
        self.node("BatchNormalization", inputs, [self.t(n.output)], name=n.output, **attrs)

    def _relu(self, n: Node) -> None:
        self.node("Relu", [self.t(n.inputs[0])], [self.t(n.output)], name=n.output)

    def _pool(self, op: str, n: Node, **extra) -> None:
        a = n.attrs
        k, s, p = a["kernel"], a["stride"], a["pad"]
        self.node(op, [self.t(n.inputs[0])], [self.t(n.output)], name=n.output,
                  kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, **extra)

    def _maxpool(self, n: Node) -> None:
        self._pool("MaxPool", n)

    def _avgpool(self, n: Node) -> None:
        extra = {"count_include_pad": 0} if form("AveragePool", self.opset) == "count_include_pad" else {}
        self._pool("AveragePool", n, **extra)

    def _global_avgpool(self, n: Node) -> None:
        self.node("GlobalAveragePool", [self.t(n.inputs[0])], [self.t(n.output)], name=n.output)

    def _reshape(self, x: str, out: str, shape: list[int], name: str) -> None:
        if form("Reshape", self.opset) == "shape_attribute":
            self.node("Reshape", [x], [out], name=name, shape=shape)
        else:
            self.node("Reshape", [x, self.int64s(shape)], [out], name=name)

    def _shuffle(self, n: Node) -> None:
        c, h, w = self.shapes[n.inputs[0]]
        g = n.attrs["groups"]
        # 0 copies the batch dimension: dynamic batch without Shape/Gather arithmetic
        self._reshape(self.t(n.inputs[0]), f"{n.output}/grouped", [0, g, c // g, h, w], f"{n.output}/reshape1")
        self.node("Transpose", [f"{n.output}/grouped"], [f"{n.output}/transposed"],
                  name=f"{n.output}/transpose", perm=[0, 2, 1, 3, 4])
        self._reshape(f"{n.output}/transposed", self.t(n.output), [0, c, h, w], f"{n.output}/reshape2")

    def _split(self, n: Node) -> None:
        sizes = list(n.attrs["sizes"])
        outs = [self.t(o) for o in n.outputs]
        if form("Split", self.opset) == "split_attribute":
            self.node("Split", [self.t(n.inputs[0])], outs, name=n.outputs[0], axis=1, split=sizes)
        else:
            self.node("Split", [self.t(n.inputs[0]), self.int64s(sizes)], outs, name=n.outputs[0], axis=1)

    def _concat(self, n: Node) -> None:
        self.node("Concat", [self.t(i) for i in n.inputs], [self.t(n.output)], name=n.output, axis=1)

    def _add(self, n: Node) -> None:
        self.node("Add", [self.t(i) for i in n.inputs], [self.t(n.output)], name=n.output)

    def _flatten(self, n: Node) -> None:
        self.node("Flatten", [self.t(n.inputs[0])], [self.t(n.output)], name=n.output, axis=1)

    def _linear(self, n: Node) -> None:
        w = self.init(n.params["weight"], self.w[n.params["weight"]])
        b = self.init(n.params["bias"], self.w[n.params["bias"]])
        extra = {"broadcast": 1} if form("Gemm", self.opset) == "broadcast_attribute" else {}
        self.node("Gemm", [self.t(n.inputs[0]), w, b], [self.t(n.output)], name=n.output,
                  alpha=1.0, beta=1.0, transB=1, **extra)

    def _softmax(self, n: Node) -> None:
        self.node("Softmax", [self.t(n.inputs[0])], [self.t(n.output)], name=n.output, axis=1)


def export_onnx(
    variant: str | VariantSpec,
    *,
    weights=None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    keep_batchnorm: bool = False,
    input_name: str | None = None,
    output_name: str | None = None,
    num_classes: int | None = None,
    seed: int | None = None,
    labels: list[str] | None = None,
    input_size: int | None = None,
    absorb_shuffle: bool = False,
    pad_channels: int | None = None,
) -> onnx.ModelProto:
    """Build the ONNX model of a registry variant. See ``shufflenet export --help``.

    ``weights``: None/"random"/"random:SEED", a weights file path, a zoo/our .onnx of the same
    architecture, or a numpy dict. ``batch`` fixes the batch size (default: dynamic "N").
    ``pad_channels``: pad branch interiors and the stem to a multiple of this many channels
    (``optimize.pad_channels``: same outputs, ONNX Runtime's blocked kernels apply).
    """
    spec = variant if isinstance(variant, VariantSpec) else get_spec(variant)
    _check_opset_and_batch(opset, batch)
    w, source, n_classes = resolve_weights(weights, spec, num_classes=num_classes, seed=seed)
    graph = spec.graph(n_classes)
    if labels is None and source.labels is not None:
        labels = list(source.labels)  # a training run's class names travel with the model
    size = input_size or source.input_size or spec.preprocess.crop
    in_name, out_name = input_name or graph.input, output_name or graph.output
    _check_size_names_labels(size, in_name, out_name, labels, n_classes)
    graph, w = _rewrite(graph, w, absorb_shuffle, pad_channels)
    em = _Emitter(graph, w, opset, fold_bn=not keep_batchnorm,
                  rename={graph.input: in_name, graph.output: out_name}, size=size)
    em.emit()
    if spec.weights_naming == "caffe2":
        _caffe2_initializer_names(em, set(graph.param_table()))
    model = _make_model(em, spec.name, opset, in_name, out_name, [batch if batch is not None else "N", 3, size, size],
                        n_classes)
    model.doc_string = f"{spec.summary}; weights {source.description}"
    set_metadata(model, spec, source, opset, keep_batchnorm, n_classes, labels, scaled_recipe(spec.preprocess, size))
    _record_rewrites(model, absorb_shuffle, pad_channels)
    return model


def _check_opset_and_batch(opset, batch) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest_opset():
        raise ExportError(f"opset must be an integer from {MIN_OPSET} to {newest_opset()} "
                          f"(the newest this onnx {onnx.__version__} defines), got {opset!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be a positive integer, got {batch!r}")


def _check_size_names_labels(size, in_name: str, out_name: str, labels: list[str] | None, n_classes: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not INPUT_SIZES[0] <= size <= INPUT_SIZES[1]:
        raise ExportError(f"input size must be an integer from {INPUT_SIZES[0]} to {INPUT_SIZES[1]}, got {size!r}")
    if in_name == out_name:
        raise ExportError(f"input and output names must differ, both are {in_name!r}")
    if labels is not None and len(labels) != n_classes:
        raise ExportError(f"{len(labels)} labels given for a model with {n_classes} classes")


def _rewrite(graph: Graph, w: Mapping[str, np.ndarray], absorb_shuffle: bool,
             pad_channels: int | None) -> tuple[Graph, Mapping[str, np.ndarray]]:
    """The graph and weights after the requested exact rewrites (see :mod:`shufflenet.optimize`)."""
    from . import optimize

    if absorb_shuffle:  # V2: shuffles become weight permutations
        graph, w = optimize.absorb_shuffles(graph, w)
    if pad_channels is not None:
        try:
            graph, w = optimize.pad_channels(graph, w, pad_channels)
        except ValueError as e:
            raise ExportError(f"pad_channels: {e}") from None
    return graph, w


def _make_model(em: _Emitter, name: str, opset: int, in_name: str, out_name: str, in_shape: list,
                n_classes: int) -> onnx.ModelProto:
    """The emitted nodes as a model at ``opset``, in the oldest IR version that defines it."""
    onnx_graph = helper.make_graph(
        em.nodes, name,
        inputs=[helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
        outputs=[helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [in_shape[0], n_classes])],
        initializer=list(em.inits.values()),
    )
    ir_version = _ir_version(opset)
    if ir_version < 4:  # IR 3 requires every initializer to be listed as a graph input too
        onnx_graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                for t in em.inits.values())
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                             producer_name="shufflenet", producer_version=_version(), ir_version=ir_version)


def _record_rewrites(model: onnx.ModelProto, absorb_shuffle: bool, pad_channels: int | None) -> None:
    """Say in the metadata which rewrites the graph carries (readers of the weights need it)."""
    extra_meta = {}
    if absorb_shuffle:
        extra_meta["channel_shuffle"] = "absorbed into weights" if not any(
            n.op_type == "Transpose" for n in model.graph.node) else "kept"
    if pad_channels is not None:
        extra_meta["channel_padding"] = str(pad_channels)
    if extra_meta:
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **extra_meta})


def scaled_recipe(recipe: Preprocess, size: int) -> Preprocess:
    """``recipe`` for a crop of ``size``, keeping its crop ratio (224 of 256 = 0.875)."""
    if size == recipe.crop:
        return recipe
    return replace(recipe, crop=size, resize=int(round(size * recipe.resize / recipe.crop)))


def _caffe2_initializer_names(em: _Emitter, keys: set[str]) -> None:
    """Initializers named as the zoo's Caffe2 converter wrote them: the SSA suffix ``_0`` of a
    blob never written (``gpu_0/conv3_0_w`` -> ``gpu_0/conv3_0_w_0``). Weights load from both
    spellings (:func:`shufflenet.weights.weights_from_onnx`)."""
    renames = {name: f"{name}_0" for name in em.inits if name in keys}
    em.inits = {renames.get(k, k): t for k, t in em.inits.items()}
    for t in em.inits.values():
        t.name = renames.get(t.name, t.name)
    for node in em.nodes:
        node.input[:] = [renames.get(i, i) for i in node.input]


def _ir_version(opset: int) -> int:
    """The oldest IR version whose onnx release defines ``opset``: old runtimes can load it."""
    return min(ir for _, ir, ai_onnx, *_ in helper.VERSION_TABLE if ai_onnx >= opset)


def _version() -> str:
    from . import __version__

    return __version__


def set_metadata(model, spec: VariantSpec, source: WeightSource, opset: int, keep_bn: bool,
                 num_classes: int, labels: list[str] | None, recipe: Preprocess) -> None:
    """The model's ``metadata_props``: provenance, and the preprocessing ``recipe`` it expects."""
    meta = {
        "variant": spec.name,
        "weights_source": source.description,
        "weights_sha256": source.sha256,
        "weights_trained": {"random": "false", "run": "true"}.get(source.kind, "unknown"),
        "opset": str(opset),
        "batchnorm": "kept" if keep_bn else "folded",
        "preprocessing": json.dumps(recipe.to_dict()),
        "output_kind": spec.output_kind,
        "num_classes": str(num_classes),
        "producer": f"shufflenet {_version()}",
    }
    if labels is not None:
        meta["labels"] = json.dumps(labels)
    helper.set_model_props(model, meta)


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename): an interrupted save leaves the old file intact."""
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(model.SerializeToString()))
