"""Independent expected outputs: the numpy reference agrees with the PyTorch rendering, bundles
say which computation produced their output_0.pb, and random-weight logits meet the zoo's
tolerance against PyTorch for every element."""

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from shufflenet.bundle import find_test_sets
from shufflenet.specs import get_spec
from shufflenet.export import expected_outputs, export_bundle, test_inputs
from shufflenet.validate import validate
from shufflenet.weights import random_weights

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("variant", ["shufflenet_v2_x0_5", "shufflenet_v1_caffe2", "shufflenet_v1_g3_x0_5"])
def test_numpy_reference_equals_the_pytorch_rendering(variant):
    from shufflenet.reference import forward
    from shufflenet.torch_models import build_model

    torch.set_num_threads(1)
    w = random_weights(variant, seed=1)
    x = np.concatenate(test_inputs(variant, 2, seed=4))
    with torch.no_grad():
        want = build_model(variant, weights=w)(torch.from_numpy(x)).numpy()
    got = forward(get_spec(variant).graph(1000), w, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_bundles_expect_pytorch_outputs_within_the_zoo_tolerance(tmp_path, seed):
    """output_0.pb from PyTorch, checked against ONNX Runtime: every element within rtol 1e-3,
    atol 1e-5 (the near-zero logits that used to miss it are gone)."""
    torch.set_num_threads(1)
    paths = export_bundle("shufflenet_v2_x1_0", tmp_path, test_data=3, weights=f"random:{seed}", opset=12,
                          seed=seed)
    assert paths["reference"].startswith("PyTorch rendering of shufflenet_v2_x1_0")
    report = validate(paths["bundle"], threads=1)
    assert report.passed, [(s.name, s.mismatched, s.max_abs_err) for s in report.sets]
    assert report.expected_outputs == paths["reference"]
    assert json.loads((paths["bundle"] / "bundle.json").read_text())["expected_outputs"] == paths["reference"]
    logits = np.concatenate([ts.outputs[0][1] for ts in find_test_sets(paths["bundle"])])
    assert logits.std() > 0.3 and np.abs(logits).min() > 0.5  # spread, and none near zero


def test_without_torch_the_numpy_reference_computes_them(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    paths = export_bundle("shufflenet_v1_caffe2", tmp_path, test_data=1, opset=9, keep_batchnorm=True)
    assert paths["reference"] == "numpy reference of shufflenet_v1_caffe2 (float64)"
    assert validate(paths["bundle"], threads=1).passed


def test_int8_models_say_onnxruntime_computed_them():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("s", onnx.TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("z", onnx.TensorProto.UINT8, [], [128])]),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    _, name = expected_outputs("shufflenet_v2_x0_5", model, [np.ones((1, 4), np.float32)])
    assert name.startswith("onnxruntime on this model (int8")
