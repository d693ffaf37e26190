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
    opset = model_opset(model)
    if opset >= TARGET:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    new_nodes = [_upgrade_node(node, out, inits, opset) for node in out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    for imp in out.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = TARGET
    return out


def _upgrade_node(node: onnx.NodeProto, out: onnx.ModelProto, inits: dict[str, onnx.TensorProto],
                  opset: int) -> onnx.NodeProto:
    """The opset-7 spelling of one legacy node (new initializers are added to ``out``)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs.pop("consumed_inputs", None)
    op, inputs, outputs = node.op_type, list(node.input), list(node.output)
    if op == "BatchNormalization":
        if attrs.pop("is_test", 1) != 1:
            raise LegacyUpgradeError(f"node {_label(node)}: training-mode BatchNormalization cannot be checked")
        outputs = outputs[:1]
    elif op == "Dropout":
        outputs = outputs[:1]
        op, attrs = "Identity", {}
    elif op == "Reshape":
        if "shape" in attrs:
            inputs = inputs[:1] + [_shape_initializer(node, attrs.pop("shape"), out)]
    elif op == "Gemm":
        attrs.pop("broadcast", None)  # Gemm-7 broadcasts C unidirectionally
    elif op == "AveragePool":
        attrs.setdefault("count_include_pad", 0)  # AveragePool-1 always excluded padding
    elif op == "Concat":
        attrs.setdefault("axis", 1)  # Concat-1's default
    elif op in _BROADCAST_OPS:
        if attrs.pop("broadcast", 0):
            inputs = _align_broadcast(node, inputs, attrs.pop("axis", None), inits, out)
        attrs.pop("axis", None)
    elif op not in _SAME:
        raise LegacyUpgradeError(f"node {_label(node)}: no upgrade rule for {op} from opset {opset}")
    return helper.make_node(op, inputs, outputs, name=node.name, **attrs)


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _shape_initializer(node: onnx.NodeProto, shape, model: onnx.ModelProto) -> str:
    """Reshape-1's ``shape`` attribute as the int64 initializer Reshape-5 reads."""
    name = f"{node.output[0]}__shape"
    shape = np.asarray(shape, np.int64)
    model.graph.initializer.append(numpy_helper.from_array(shape, name))
    if model.ir_version < 4:  # IR 3: initializers are graph inputs too
        model.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, list(shape.shape)))
    return name


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
        raise LegacyUpgradeError(f"node {_label(node)}: legacy broadcast with "
                                 f"axis={axis} is not supported")
    name = f"{inputs[1]}__bcast"
    model.graph.initializer.append(numpy_helper.from_array(arr.reshape(-1, 1, 1), name))
    if model.ir_version < 4:
        model.graph.input.append(helper.make_tensor_value_info(name, b.data_type, [arr.size, 1, 1]))
    return [inputs[0], name]
