"""A plain-numpy forward pass of a registry description: the independent computation a bundle's
expected outputs come from when torch is not installed (with torch, the PyTorch rendering).

Float64 throughout, one branch per op of :data:`shufflenet.specs.OPS`, inference BatchNorm with
the running statistics. It shares nothing with the ONNX emitter or ONNX Runtime; it is tested
against the PyTorch rendering (tests/test_reference.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import SpecError
from .specs import Graph

__all__ = ["forward", "apply_op", "conv2d", "windows"]


def windows(x: np.ndarray, k: int, stride: int, pad: int, fill: float) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N C Ho Wo k k


def conv2d(x, w, b, stride, pad, groups):
    n, c = x.shape[:2]
    o, cg, k, _ = w.shape
    win = windows(x, k, stride, pad, 0.0)
    ho, wo = win.shape[2:4]
    win = win.reshape(n, groups, cg, ho, wo, k, k)
    y = np.einsum("ngchwij,gocij->ngohw", win, w.reshape(groups, o // groups, cg, k, k), optimize=True)
    y = y.reshape(n, o, ho, wo)
    return y if b is None else y + b[None, :, None, None]


def forward(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The graph's output for float32 NCHW ``x``, computed in float64, returned as float32."""
    env: dict[str, np.ndarray] = {graph.input: np.asarray(x, np.float64)}
    for node in graph.nodes:
        p = {role: np.asarray(weights[key], np.float64) for role, key in node.params.items()
             if role != "num_batches_tracked"}
        env.update(zip(node.outputs, apply_op(node, [env[i] for i in node.inputs], p)))
    return env[graph.output].astype(np.float32)


def apply_op(node, ins: list[np.ndarray], p: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of one node in numpy (inference BatchNorm with the running statistics), in
    the inputs' dtype: float64 here, float32 in :mod:`shufflenet._calibrate`, which reuses it."""
    a = node.attrs
    x = ins[0]
    if node.op == "conv":
        return [conv2d(x, p["weight"], p.get("bias"), a["stride"], a["pad"], a["groups"])]
    elif node.op == "bn":
        scale = p["weight"] / np.sqrt(p["running_var"] + a["eps"])
        shift = p["bias"] - p["running_mean"] * scale
        return [x * scale[None, :, None, None] + shift[None, :, None, None]]
    elif node.op == "relu":
        return [np.maximum(x, 0.0)]
    elif node.op == "maxpool":
        return [windows(x, a["kernel"], a["stride"], a["pad"], -np.inf).max((4, 5))]
    elif node.op == "avgpool":  # padding excluded from the count, as every rendering does
        s = windows(x, a["kernel"], a["stride"], a["pad"], 0.0).sum((4, 5))
        ones = np.ones((1, 1, *x.shape[2:]), x.dtype)
        return [s / windows(ones, a["kernel"], a["stride"], a["pad"], 0.0).sum((4, 5))]
    elif node.op == "global_avgpool":
        return [x.mean((2, 3), keepdims=True)]
    elif node.op == "shuffle":
        n, c, h, w = x.shape
        g = a["groups"]
        return [x.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)]
    elif node.op == "split":
        return np.split(x, np.cumsum(a["sizes"])[:-1], axis=1)
    elif node.op == "concat":
        return [np.concatenate(ins, 1)]
    elif node.op == "add":
        return [ins[0] + ins[1]]
    elif node.op == "flatten":
        return [x.reshape(len(x), -1)]
    elif node.op == "linear":
        return [x @ p["weight"].T + p["bias"]]
    elif node.op == "softmax":
        e = np.exp(x - x.max(1, keepdims=True))
        return [e / e.sum(1, keepdims=True)]
    else:
        raise SpecError(f"no numpy rendering for op {node.op!r}")
