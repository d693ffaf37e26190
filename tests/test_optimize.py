"""Absorbing V2's channel shuffles into weights: same function, no Reshape/Transpose."""

import collections

import numpy as np
import onnx
import pytest

from shufflenet import random_weights
from shufflenet.cli import main
from shufflenet.onnx_export import export_onnx
from shufflenet.optimize import absorb_shuffles
from shufflenet.runtime import Runner
from shufflenet.specs import get_spec


def _run(model, x):
    r = Runner(model)
    return r.run({r.input_names[0]: x})[0]


@pytest.mark.parametrize("variant", ["shufflenet_v2_x0_5", "shufflenet_v2_x2_0"])
@pytest.mark.parametrize("opset", [9, 17])
def test_same_outputs_without_shuffles(variant, opset, images224):
    plain = export_onnx(variant, opset=opset, weights="random:5")
    absorbed = export_onnx(variant, opset=opset, weights="random:5", absorb_shuffle=True)
    onnx.checker.check_model(absorbed, full_check=True)
    ops = collections.Counter(n.op_type for n in absorbed.graph.node)
    assert not {"Reshape", "Transpose"} & set(ops) and ops["Conv"] == 56
    np.testing.assert_allclose(_run(absorbed, images224[:3]), _run(plain, images224[:3]), atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in absorbed.metadata_props}
    assert meta["channel_shuffle"] == "absorbed into weights"


def test_v1_is_left_as_is():
    spec = get_spec("shufflenet_v1_g3_x0_5")
    w = random_weights(spec)
    graph, w2 = absorb_shuffles(spec.graph(), w)
    assert graph is spec.graph() and w2 is w


def test_cli_flag_and_its_conflict(tmp_path):
    assert main(["export", "shufflenet_v2_x0_5", "--absorb-shuffle", "-o", str(tmp_path / "a.onnx")]) == 0
    assert main(["export", "shufflenet_v2_x0_5", "--absorb-shuffle", "--via", "torch", "-o",
                 str(tmp_path / "b.onnx")]) == 2
