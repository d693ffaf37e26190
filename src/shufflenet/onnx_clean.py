"""Clean an exported graph: fold shape arithmetic that does not depend on the batch.

torch.onnx's TorchScript exporter writes ``x.view(b, g, c // g, h, w)`` as a chain of Shape,
Gather, Unsqueeze, Cast, Div and Concat nodes per reshape (~600 nodes for ShuffleNetV2 x1.0 where
~170 do the work). Here every integer tensor the graph computes is probed by running the model at
two batch sizes: values that do not change are constants, and a Reshape target whose only
varying entry is the batch at index 0 becomes a constant with 0 there ("copy this dimension").
Dead nodes and Identity nodes are then removed, and the result is checked against the original
at two batch sizes before it is returned.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ._io import one_line
from ._onnx import consumers, fixed_batch, graph_inputs, model_opset, ort_session
from .errors import CheckFailedError

__all__ = ["clean_graph"]

_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
PROBE_BATCHES = (2, 3)  # two sizes > 1: a 1 could be a broadcast dimension


def _inputs(model: onnx.ModelProto, batch: int, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for i in graph_inputs(model):
        dims = [batch if k == 0 else d.dim_value for k, d in enumerate(i.type.tensor_type.shape.dim)]
        feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _batches(model: onnx.ModelProto, dynamic: tuple[int, ...]) -> tuple[int, ...]:
    """The batch sizes a model can run: its fixed one, else ``dynamic``."""
    fixed = fixed_batch(model)
    return (fixed,) if fixed else dynamic


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _prune(model: onnx.ModelProto) -> None:
    """Remove Identity nodes (rewiring) and nodes/initializers nothing reads."""
    graph_outputs = {o.name for o in model.graph.output}
    alias = {}
    nodes = []
    for n in model.graph.node:
        if n.op_type == "Identity" and n.output[0] not in graph_outputs:
            alias[n.output[0]] = n.input[0]
        else:
            nodes.append(n)

    def resolve(name):
        while name in alias:
            name = alias[name]
        return name

    for n in nodes:
        n.input[:] = [resolve(i) if i else i for i in n.input]
    while True:
        used = graph_outputs | {i for n in nodes for i in n.input}
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    used = {i for n in nodes for i in n.input} | graph_outputs
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    inputs = [i for i in model.graph.input if i.name in used or i.name not in {t.name for t in inits}]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    del model.graph.value_info[:]


def clean_graph(model: onnx.ModelProto, *, atol: float = 1e-5) -> onnx.ModelProto:
    """A cleaned copy of ``model`` (see module doc); raises CheckFailedError if outputs change."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _constants_to_initializers(out)
    _fold_integer_tensors(out)
    _prune(out)
    _slices_to_split(out)
    _prune(out)
    _check_same(model, out, atol)
    return out


def _fold_integer_tensors(out: onnx.ModelProto) -> None:
    """Every integer tensor that does not depend on the batch becomes an initializer (in place)."""
    inferred = shape_inference.infer_shapes(out)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    candidates = [o for n in out.graph.node for o in n.output if types.get(o) in _INT_TYPES]
    if not candidates:
        return
    values = _probe(out, candidates, types)
    readers = consumers(out.graph.node)
    for c in candidates:
        const = _batch_free(values[0][c], values[1][c], readers.get(c, []))
        if const is None:
            continue
        name = f"{c}__folded"
        out.graph.initializer.append(numpy_helper.from_array(const, name))
        for n, k in readers.get(c, []):
            n.input[k] = name


def _probe(model: onnx.ModelProto, candidates: list[str], types: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """The candidates' values at two batch sizes (one run twice for a fixed batch)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(c, types[c], None) for c in candidates)
    rng = np.random.default_rng(0)
    values: list[dict[str, np.ndarray]] = []
    batches = _batches(model, PROBE_BATCHES)  # a fixed batch: every shape is static, one probe
    sess = ort_session(probe, graph_optimizations=False)  # the graph as written: no tensor fused away
    for b in batches * (2 // len(batches)):
        res = sess.run(candidates, _inputs(probe, b, rng))
        values.append(dict(zip(candidates, res)))
    return values


def _batch_free(a: np.ndarray, b: np.ndarray, readers: list[tuple[onnx.NodeProto, int]]) -> np.ndarray | None:
    """The constant a tensor can be replaced by, given its values at the two probe batches; None
    when it depends on the batch in any other way than a Reshape target's leading entry."""
    if a.shape == b.shape and np.array_equal(a, b):
        const = np.asarray(a)
    elif (a.ndim == 1 and a.shape == b.shape and a[0] == PROBE_BATCHES[0] and b[0] == PROBE_BATCHES[1]
          and np.array_equal(a[1:], b[1:])
          and all(n.op_type == "Reshape" and k == 1 for n, k in readers)):
        const = a.copy()
        const[0] = 0  # Reshape: 0 copies the input's (batch) dimension
    else:
        return None
    return const.astype(a.dtype)


def _slices_to_split(model: onnx.ModelProto) -> None:
    """Slices of one tensor along one axis that tile it exactly become one Split (torch's chunk)."""
    opset = model_opset(model)
    if opset < 10:  # Slice-1 keeps starts/ends as attributes; not produced by torch >= opset 11
        return
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inferred = shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    groups: dict[tuple[str, int], list[tuple[int, int, onnx.NodeProto]]] = {}
    for n in model.graph.node:
        if n.op_type != "Slice" or len(n.input) < 4 or any(i not in inits for i in n.input[1:] if i):
            continue
        starts, ends, axes = (inits[i].reshape(-1) for i in n.input[1:4])
        steps = inits[n.input[4]].reshape(-1) if len(n.input) > 4 and n.input[4] else np.ones(1)
        shape = dims.get(n.input[0])
        if len(starts) != 1 or steps[0] != 1 or not shape:
            continue
        axis = int(axes[0]) % len(shape)
        size = shape[axis]
        if size is None:
            continue
        lo, hi = (int(np.clip(v + size if v < 0 else v, 0, size)) for v in (starts[0], ends[0]))
        groups.setdefault((n.input[0], axis), []).append((lo, hi, n))
    for (data, axis), parts in groups.items():
        parts.sort(key=lambda p: p[0])
        size = dims[data][axis]
        bounds = [p[0] for p in parts] + [parts[-1][1]]
        if len(parts) < 2 or bounds[0] != 0 or bounds[-1] != size or any(
                parts[k][1] != parts[k + 1][0] for k in range(len(parts) - 1)):
            continue
        sizes = [hi - lo for lo, hi, _ in parts]
        outs = [n.output[0] for _, _, n in parts]
        first = parts[0][2]
        if opset >= 13:
            name = f"{first.output[0]}__split_sizes"
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, np.int64), name))
            split = helper.make_node("Split", [data, name], outs, name=f"{first.name}__split", axis=axis)
        else:
            split = helper.make_node("Split", [data], outs, name=f"{first.name}__split", axis=axis, split=sizes)
        nodes = list(model.graph.node)  # protobuf hands out new wrappers: match by output name
        at = next(k for k, n in enumerate(nodes) if n.op_type == "Slice" and n.output[0] in outs)
        nodes = [n for n in nodes if not (n.op_type == "Slice" and n.output[0] in outs)]
        nodes.insert(at, split)
        del model.graph.node[:]
        model.graph.node.extend(nodes)


def _check_same(before: onnx.ModelProto, after: onnx.ModelProto, atol: float) -> None:
    """Both graphs on the same random inputs at two batch sizes (one session each)."""
    rng = np.random.default_rng(1)
    runs = []
    try:  # ORT errors are not ours to show raw
        sessions = [ort_session(m, graph_optimizations=False) for m in (before, after)]
        for batch in _batches(before, (1, 4)):
            feeds = _inputs(before, batch, rng)
            runs.append((batch, *(s.run(None, feeds) for s in sessions)))
    except Exception as e:
        raise CheckFailedError(f"graph cleaning could not be checked: {one_line(e, line='first')}") from None
    for batch, want, got in runs:
        for w, g in zip(want, got):
            if w.shape != g.shape or not np.allclose(w, g, rtol=0, atol=atol):
                raise CheckFailedError(f"graph cleaning changed the outputs at batch {batch}; "
                                       "keeping the original is safer")
