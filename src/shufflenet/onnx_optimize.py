"""Exact rewrites of any ONNX classifier graph, applied in memory when a model is loaded.

``optimize_for_inference(model)`` returns a model that computes the same outputs (float rounding
aside: within 1e-5 on the tests' models) and runs faster on ONNX Runtime's CPU kernels, or the
model itself when no rewrite applies. It works on the graph's structure, not on names or
metadata, so it applies to files from anywhere (the Model Zoo's, torch.onnx exports, ours):

* **channel padding** (the ONNX form of :func:`shufflenet.optimize.pad_channels`): a dense
  convolution whose output channel count is not a multiple of :data:`PAD_MULTIPLE`, read only
  through per-channel ops (BatchNormalization, Relu, MaxPool, depthwise Conv, per-tensor
  Quantize/DequantizeLinear) by dense convolutions, gets zero filters; the per-channel ops get
  parameters that keep the new channels exactly 0 and the readers get zero weight columns.
  ONNX Runtime's blocked (NCHWc) fp32 kernels and its int8 depthwise kernel then apply.
  Works on fp32 graphs and on int8 QDQ graphs (int8 weights padded with 0, per-channel scales
  with 1, so the dead channels quantize to the zero point and dequantize to exactly 0).
* **the fp32 stem rule**, for int8 graphs whose first convolution runs in fp32: its
  Conv -> Relu -> MaxPool is written Conv -> MaxPool -> Relu (max and ReLU commute), so ONNX
  Runtime's QDQ propagation cannot pull the first QuantizeLinear above the pooling, where a
  uint8 MaxPool in NCHW is 60x slower than the fp32 one.

Shuffle absorption needs the architecture's description and is applied by ``export``
(``optimize.absorb_shuffles``); a region or graph the rules do not recognise is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ._onnx import consumers
from .options import PAD_MULTIPLE

__all__ = ["optimize_for_inference", "PAD_MULTIPLE", "OPTIMIZED_KEY"]

#: metadata key recording what was rewritten (a model already rewritten is not touched again)
OPTIMIZED_KEY = "inference_rewrites"

_PASS = ("Relu", "MaxPool")  # ops that keep channels apart and map 0 to 0 (no parameters)


def optimize_for_inference(model: onnx.ModelProto, *, multiple: int = PAD_MULTIPLE) -> onnx.ModelProto:
    """The model with the exact rewrites above applied, or ``model`` itself when none applies
    (or the graph is not one the rules understand). The input is never modified."""
    if any(p.key == OPTIMIZED_KEY for p in model.metadata_props):
        return model
    try:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        done = []
        padded = _pad(out.graph, multiple)
        if padded:
            done.append(f"padded {padded} convolution outputs to a multiple of {multiple}")
        if _stem_pool_before_relu(out.graph):
            done.append("fp32 stem written Conv -> MaxPool -> Relu")
    except _Skip:
        return model
    if not done:
        return model
    onnx.helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props}, OPTIMIZED_KEY: "; ".join(done)})
    return out


class _Skip(Exception):
    """The graph is not one these rules understand: leave it as it is."""


class _Graph:
    def __init__(self, g: onnx.GraphProto) -> None:
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {
            t: [n for n, _ in uses] for t, uses in consumers(g.node).items()}
        self.outputs = {o.name for o in g.output}
        self.graph_inputs = {i.name for i in g.input}

    def array(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def private(self, name: str) -> bool:
        """An initializer read by one node and not listed as a graph input (IR < 4)."""
        return name in self.inits and len(self.readers.get(name, [])) == 1 and name not in self.graph_inputs

    def set(self, name: str, array: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(onnx.helper.make_attribute(name, value))
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


class _Param:
    """A Conv weight or bias: an fp32 initializer, or DequantizeLinear(int initializer, scale, zp)
    with a per-tensor scale or a per-channel one along axis 0."""

    def __init__(self, gr: _Graph, name: str) -> None:
        self.gr = gr
        if gr.private(name):
            self.data, self.scale, self.zp = name, None, None
            return
        dq = gr.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(gr.readers.get(name, [])) != 1:
            raise _Skip
        self.data = dq.input[0]
        self.scale = dq.input[1]
        self.zp = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        for t in (self.data, self.scale, self.zp):
            if t is not None and not gr.private(t):
                raise _Skip
        self.per_channel = gr.array(self.scale).size > 1
        if self.per_channel and _attr(dq, "axis", 1) != 0:
            raise _Skip

    def shape(self) -> tuple[int, ...]:
        return tuple(self.gr.inits[self.data].dims)

    def pad(self, extra: int, axis: int) -> None:
        a = self.gr.array(self.data)
        self.gr.set(self.data, _pad_axis(a, extra, axis, 0))
        if axis == 0 and self.scale is not None and self.per_channel:
            self.gr.set(self.scale, _pad_axis(self.gr.array(self.scale), extra, 0, 1))
            if self.zp is not None:
                self.gr.set(self.zp, _pad_axis(self.gr.array(self.zp), extra, 0, 0))


def _pad_axis(a: np.ndarray, extra: int, axis: int, fill) -> np.ndarray:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths, constant_values=np.asarray(fill, dtype=a.dtype))


def _scalar_qdq(gr: _Graph, n: onnx.NodeProto) -> bool:
    """A per-tensor Quantize/DequantizeLinear on an activation: 0 stays exactly 0."""
    if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[0] in gr.inits:
        return False
    return all(t in gr.inits and gr.array(t).size == 1 for t in n.input[1:3] if t)


def _conv_params(gr: _Graph, n: onnx.NodeProto) -> tuple[_Param, _Param | None]:
    w = _Param(gr, n.input[1])
    b = _Param(gr, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if len(w.shape()) != 4:
        raise _Skip
    return w, b


def _is_dense(n: onnx.NodeProto) -> bool:
    return n.op_type == "Conv" and _attr(n, "group", 1) == 1


def _pad(g: onnx.GraphProto, multiple: int) -> int:
    """Pad every region that qualifies (see the module doc); the number of regions padded."""
    gr = _Graph(g)
    count = 0
    changed_tensors: set[str] = set()
    for n in list(g.node):
        if not _is_dense(n):
            continue
        try:
            w, b = _conv_params(gr, n)
        except _Skip:
            continue
        c = w.shape()[0]
        if c % multiple == 0:
            continue
        region = _region(gr, n.output[0], c)
        if region is None:
            continue
        inner, readers, tensors = region
        extra = -c % multiple
        w.pad(extra, 0)
        if b is not None:
            b.pad(extra, 0)
        for m in inner:
            if m.op_type == "BatchNormalization":
                for k, fill in zip(m.input[1:5], (0.0, 0.0, 0.0, 1.0)):
                    gr.set(k, _pad_axis(gr.array(k), extra, 0, fill))
            elif m.op_type == "Conv":  # depthwise
                mw, mb = _conv_params(gr, m)
                mw.pad(extra, 0)
                if mb is not None:
                    mb.pad(extra, 0)
                _set_attr(m, "group", c + extra)
        for r in readers:
            _conv_params(gr, r)[0].pad(extra, 1)
        changed_tensors |= tensors
        count += 1
    if count:  # shapes recorded for the padded tensors are stale: ONNX Runtime infers them again
        keep = [v for v in g.value_info if v.name not in changed_tensors]
        del g.value_info[:]
        g.value_info.extend(keep)
    return count


def _region(gr: _Graph, start: str, c: int):
    """(per-channel nodes, dense readers, tensors) reached from ``start``, or None when the
    region reaches anything where the channel count or order matters."""
    inner, readers, tensors, todo, seen = [], [], set(), [start], set()
    try:
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            tensors.add(t)
            if t in gr.outputs or not gr.readers.get(t):
                return None
            for m in gr.readers[t]:
                if m.input[0] != t or list(m.input).count(t) != 1:
                    return None
                if m.op_type in _PASS or _scalar_qdq(gr, m):
                    if m.op_type == "MaxPool" and len(m.output) > 1:
                        return None  # the indices output depends on the channel count
                    inner.append(m)
                    todo.append(m.output[0])
                elif m.op_type == "BatchNormalization":
                    if len(m.output) > 1 or not all(gr.private(k) for k in m.input[1:5]):
                        return None
                    inner.append(m)
                    todo.append(m.output[0])
                elif m.op_type == "Conv" and _attr(m, "group", 1) == c:
                    w, _ = _conv_params(gr, m)
                    if w.shape()[:2] != (c, 1):
                        return None
                    inner.append(m)
                    todo.append(m.output[0])
                elif _is_dense(m):
                    w, _ = _conv_params(gr, m)
                    if w.shape()[1] != c or m.input[1] == t:
                        return None
                    readers.append(m)
                else:
                    return None
    except _Skip:
        return None
    if not readers:
        return None
    return inner, readers, tensors


def _stem_pool_before_relu(g: onnx.GraphProto) -> bool:
    """In an int8 graph whose first Conv is fp32: Conv -> Relu -> MaxPool becomes
    Conv -> MaxPool -> Relu. True when rewritten."""
    gr = _Graph(g)
    if not any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in g.node):
        return False
    first = [n for n in gr.readers.get(g.input[0].name, [])]
    if len(first) != 1 or first[0].op_type != "Conv" or not gr.private(first[0].input[1]):
        return False
    conv = first[0]
    r = gr.readers.get(conv.output[0], [])
    if len(r) != 1 or r[0].op_type != "Relu" or conv.output[0] in gr.outputs:
        return False
    relu = r[0]
    p = gr.readers.get(relu.output[0], [])
    if len(p) != 1 or p[0].op_type != "MaxPool" or len(p[0].output) > 1 or relu.output[0] in gr.outputs:
        return False
    pool = p[0]
    relu_out, pool_out = relu.output[0], pool.output[0]
    pool.input[0], pool.output[0] = conv.output[0], relu_out
    relu.input[0], relu.output[0] = relu_out, pool_out
    nodes = list(g.node)
    nodes.remove(relu)
    nodes.insert(nodes.index(pool) + 1, relu)
    del g.node[:]
    g.node.extend(nodes)
    keep = [v for v in g.value_info if v.name != relu_out]
    del g.value_info[:]
    g.value_info.extend(keep)
    return True
