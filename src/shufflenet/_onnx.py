"""Shared helpers for ONNX models (one copy each): the opset a model imports, its graph inputs
and batch dimension, who consumes each tensor, and the ONNX Runtime session factory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

__all__ = ["model_opset", "graph_inputs", "input_names", "fixed_batch", "input_shape", "consumers",
           "ort_session"]


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (1 when it imports none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: old exporters also list every initializer as an input."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_names(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in graph_inputs(model)]


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the first input was exported with, or None for a dynamic batch."""
    inputs = graph_inputs(model) or list(model.graph.input)
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def input_shape(model: onnx.ModelProto, batch: int) -> tuple[int, ...]:
    """The first input's shape with ``batch`` rows (the other dimensions as exported)."""
    dims = graph_inputs(model)[0].type.tensor_type.shape.dim
    return (batch, *[d.dim_value for d in dims[1:]])


def consumers(nodes: Iterable) -> dict[str, list[tuple[object, int]]]:
    """tensor name -> [(node, input index)] for every node input (any node type with ``.input``)."""
    out: dict[str, list[tuple[object, int]]] = {}
    for n in nodes:
        for k, name in enumerate(n.input):
            out.setdefault(name, []).append((n, k))
    return out


def ort_session(model: onnx.ModelProto, *, threads: int | None = None,
                providers: Sequence[str] | None = None, graph_optimizations: bool = True):
    """An ONNX Runtime session on ``model`` with ONNX Runtime's defaults (all graph optimisations,
    sequential execution). ``threads``: intra-op threads (inter-op pinned to 1); None keeps
    ONNX Runtime's default. ``graph_optimizations=False`` runs the graph exactly as written.
    Errors are ONNX Runtime's own; callers say what failed."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not graph_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=list(providers or ["CPUExecutionProvider"]))
