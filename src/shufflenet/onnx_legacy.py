"""Upgrade opset 1-6 models (the zoo's shufflenet-3 and -6, ours) to opset 7 so ONNX Runtime,
which starts at opset 7, can check them.

``onnx.version_converter`` cannot do this for these graphs (it needs static shapes everywhere and
fails on Reshape-1 and BatchNormalization-1), and onnx's reference evaluator has no kernels for
Reshape-1/BatchNormalization-1 and counts padding in AveragePool-1. The rewrite here is exact:
every change is a spelling change with the same semantics, op by op.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._onnx import model_opset
from .errors import ShuffleNetError

__all__ = ["LegacyUpgradeError", "upgrade_to_opset7", "model_opset"]

TARGET = 7


class LegacyUpgradeError(ShuffleNetError, ValueError):
    """A legacy node whose meaning at opset 7 we cannot guarantee."""




# ops whose opset-7 schema accepts the same attributes and inputs, once consumed_inputs is gone
_SAME = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Transpose", "Flatten",
         "Softmax", "Split", "Identity", "LRN", "Sigmoid", "Tanh", "LeakyRelu", "Max", "Min",
         "Sum", "Mean", "Constant"}
_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div"}


def upgrade_to_opset7(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` at opset 7 with identical semantics; models at >= 7 come back as is."""
    if model_opset(model) >= TARGET:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    new_nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.pop("consumed_inputs", None)
        op, inputs = node.op_type, list(node.input)
        if op == "BatchNormalization":
            if attrs.pop("is_test", 1) != 1:
                raise LegacyUpgradeError(f"node {node.name or node.output[0]}: training-mode "
                                         "BatchNormalization cannot be checked")
            outputs = list(node.output[:1])
        elif op == "Dropout":
            attrs.pop("is_test", None)
            outputs = list(node.output[:1])
            op, attrs = "Identity", {}
        elif op == "Reshape":
            if "shape" in attrs:
                name = f"{node.output[0]}__shape"
                shape = np.asarray(attrs.pop("shape"), np.int64)
                out.graph.initializer.append(numpy_helper.from_array(shape, name))
                if out.ir_version < 4:  # IR 3: initializers are graph inputs too
                    out.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.INT64,
                                                                         list(shape.shape)))
                inputs = inputs[:1] + [name]
            outputs = list(node.output)
        elif op == "Gemm":
            attrs.pop("broadcast", None)  # Gemm-7 broadcasts C unidirectionally
            outputs = list(node.output)
        elif op == "AveragePool":
            attrs.setdefault("count_include_pad", 0)  # AveragePool-1 always excluded padding
            outputs = list(node.output)
        elif op == "Concat":
            attrs.setdefault("axis", 1)  # Concat-1's default
            outputs = list(node.output)
        elif op in _BROADCAST_OPS:
            if attrs.pop("broadcast", 0):
                inputs = _align_broadcast(node, inputs, attrs.pop("axis", None), inits, out)
            attrs.pop("axis", None)
            outputs = list(node.output)
        elif op in _SAME:
            outputs = list(node.output)
        else:
            raise LegacyUpgradeError(f"node {node.name or node.output[0]}: no upgrade rule for {op} "
                                     f"from opset {model_opset(model)}")
        new_nodes.append(helper.make_node(op, inputs, outputs, name=node.name, **attrs))
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    for imp in out.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = TARGET
    return out


def _align_broadcast(node, inputs, axis, inits, model) -> list[str]:
    """Legacy broadcast=1: B (an initializer) aligned to A's dims from ``axis``.

    The common case, a per-channel [C] operand at axis 1 of NCHW, becomes [C, 1, 1] under numpy
    broadcasting; anything else is refused rather than guessed.
    """
    b = inits.get(inputs[1])
    arr = None if b is None else numpy_helper.to_array(b)
    if arr is not None and (axis is None or arr.size == 1):
        return inputs
    if arr is None or not (axis == 1 and arr.ndim == 1):
        raise LegacyUpgradeError(f"node {node.name or node.output[0]}: legacy broadcast with "
                                 f"axis={axis} is not supported")
    name = f"{inputs[1]}__bcast"
    model.graph.initializer.append(numpy_helper.from_array(arr.reshape(-1, 1, 1), name))
    if model.ir_version < 4:
        model.graph.input.append(helper.make_tensor_value_info(name, b.data_type, [arr.size, 1, 1]))
    return [inputs[0], name]
