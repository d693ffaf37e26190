"""A plain-numpy forward pass of a registry description: the independent computation a bundle's
expected outputs come from when torch is not installed (with torch, the PyTorch rendering).

Float64 throughout, one branch per op of :data:`shufflenet.specs.OPS`, inference BatchNorm with
the running statistics. It shares nothing with the ONNX emitter or ONNX Runtime; it is tested
against the PyTorch rendering (tests/test_reference.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._calibrate import _conv, _windows
from .specs import Graph

__all__ = ["forward"]


def forward(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The graph's output for float32 NCHW ``x``, computed in float64, returned as float32."""
    env: dict[str, np.ndarray] = {graph.input: np.asarray(x, np.float64)}
    for node in graph.nodes:
        a, ins = node.attrs, [env[i] for i in node.inputs]
        p = {role: np.asarray(weights[key], np.float64) for role, key in node.params.items()
             if role != "num_batches_tracked"}
        x = ins[0]
        if node.op == "conv":
            ys = [_conv(x, p["weight"], p.get("bias"), a["stride"], a["pad"], a["groups"])]
        elif node.op == "bn":
            scale = p["weight"] / np.sqrt(p["running_var"] + a["eps"])
            shift = p["bias"] - p["running_mean"] * scale
            ys = [x * scale[None, :, None, None] + shift[None, :, None, None]]
        elif node.op == "relu":
            ys = [np.maximum(x, 0.0)]
        elif node.op == "maxpool":
            ys = [_windows(x, a["kernel"], a["stride"], a["pad"], -np.inf).max((4, 5))]
        elif node.op == "avgpool":  # padding excluded from the count, as every rendering does
            s = _windows(x, a["kernel"], a["stride"], a["pad"], 0.0).sum((4, 5))
            ones = np.ones((1, 1, *x.shape[2:]))
            ys = [s / _windows(ones, a["kernel"], a["stride"], a["pad"], 0.0).sum((4, 5))]
        elif node.op == "global_avgpool":
            ys = [x.mean((2, 3), keepdims=True)]
        elif node.op == "shuffle":
            n, c, h, w = x.shape
            g = a["groups"]
            ys = [x.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)]
        elif node.op == "split":
            ys = np.split(x, np.cumsum(a["sizes"])[:-1], axis=1)
        elif node.op == "concat":
            ys = [np.concatenate(ins, 1)]
        elif node.op == "add":
            ys = [ins[0] + ins[1]]
        elif node.op == "flatten":
            ys = [x.reshape(len(x), -1)]
        elif node.op == "linear":
            ys = [x @ p["weight"].T + p["bias"]]
        elif node.op == "softmax":
            e = np.exp(x - x.max(1, keepdims=True))
            ys = [e / e.sum(1, keepdims=True)]
        else:
            raise ValueError(f"no numpy rendering for op {node.op!r}")
        env.update(zip(node.outputs, ys))
    return env[graph.output].astype(np.float32)
