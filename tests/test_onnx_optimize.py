"""Load-time rewrites (onnx_optimize): the same outputs as the graph as given, on every variant."""

import functools

import numpy as np
import onnx
import pytest

from shufflenet.onnx_export import export_onnx
from shufflenet.onnx_optimize import OPTIMIZED_KEY, optimize_for_inference
from shufflenet.runtime import Classifier, Runner
from shufflenet.specs import get_spec, list_variants

SIZE = 64  # padding does not depend on the spatial size; small inputs keep this fast
X = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def quick_weights(variant: str) -> dict:
    """He-normal weights, BN statistics away from identity (random_weights' calibration is slow)."""
    rng = np.random.default_rng(1)
    out = {}
    for key, p in get_spec(variant).graph(10).param_table().items():
        if p.role == "num_batches_tracked":
            out[key] = np.array(0, np.int64)
        elif p.role == "weight" and p.op in ("conv", "linear"):
            out[key] = rng.normal(0, np.sqrt(2.0 / np.prod(p.shape[1:])), p.shape).astype(np.float32)
        elif p.role == "running_var" or (p.op == "bn" and p.role == "weight"):
            out[key] = rng.uniform(0.5, 1.5, p.shape).astype(np.float32)
        else:
            out[key] = rng.normal(0, 0.1, p.shape).astype(np.float32)
    return out


def assert_same(plain: np.ndarray, fast: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(plain).max()))
    assert float(np.abs(plain - fast).max()) <= 1e-5 * scale


def outputs(model: onnx.ModelProto, **kw) -> tuple[np.ndarray, Runner]:
    r = Runner(model, threads=1, **kw)
    return r.outputs(X), r


@pytest.mark.parametrize("variant", list_variants())
def test_every_variant_same_outputs(variant):
    model = export_onnx(variant, weights=quick_weights(variant), input_size=SIZE)
    before = model.SerializeToString()
    plain, r_plain = outputs(model, optimize=False)
    fast, r_fast = outputs(model)
    assert model.SerializeToString() == before  # the caller's model is never modified
    assert r_plain.rewrites is None
    assert_same(plain, fast)
    dense_branches = variant.startswith("shufflenet_v2") or "_g1_" in variant
    if dense_branches:  # V2 and V1 with groups=1 have channel counts to pad: fast by default
        assert r_fast.rewrites and "padded" in r_fast.rewrites, variant
    else:  # grouped 1x1 convolutions and shortcut concats fix every channel count in V1
        assert r_fast.rewrites is None


def test_absorbed_and_old_opset_graphs():
    w = quick_weights("shufflenet_v2_x1_0")
    for kw in ({"absorb_shuffle": True}, {"opset": 9, "keep_batchnorm": True}, {"batch": 2}):
        model = export_onnx("shufflenet_v2_x1_0", weights=w, input_size=SIZE, **kw)
        plain, _ = outputs(model, optimize=False)
        fast, r = outputs(model)
        assert r.rewrites and "padded" in r.rewrites, kw
        assert_same(plain, fast)
    fast_model = optimize_for_inference(model)
    assert any(p.key == OPTIMIZED_KEY for p in fast_model.metadata_props)
    assert optimize_for_inference(fast_model) is fast_model  # applied once
    onnx.checker.check_model(fast_model, full_check=True)


def test_torch_exported_graph():
    """A raw torch.onnx.export (the zoo's recipe: shape arithmetic, its own names) is padded too."""
    pytest.importorskip("torch")
    from shufflenet.torch_models import build_model, export_via_torch

    module = build_model("shufflenet_v2_x0_5", seed=0)
    model = export_via_torch(module, opset=12, size=SIZE)
    plain, _ = outputs(model, optimize=False)
    fast, r = outputs(model)
    assert r.rewrites and "padded" in r.rewrites
    assert_same(plain, fast)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    from shufflenet.onnx_export import save_model
    from shufflenet.quantize import QuantizeOptions, quantize
    from shufflenet.synthetic import synthetic_images

    d = tmp_path_factory.mktemp("opt-int8")
    src = save_model(export_onnx("shufflenet_v2_x0_5", weights=quick_weights("shufflenet_v2_x0_5"),
                                 input_size=SIZE), d / "fp32.onnx")
    calib = d / "calib"
    calib.mkdir()
    for i, img in enumerate(synthetic_images(8, seed=3)):
        img.save(calib / f"{i}.png")
    quantize(src, d / "int8.onnx", calib, options=QuantizeOptions(calib_count=8, measure_latency=False,
                                                                   eval_count=4))
    return onnx.load(str(d / "int8.onnx"))


def test_int8_qdq_graph_padded_exactly(int8_model):
    plain, _ = outputs(int8_model, optimize=False)
    fast, r = outputs(int8_model)
    assert r.rewrites and "padded" in r.rewrites
    assert_same(plain, fast)


def test_int8_stem_rule(int8_model):
    """An int8 model whose fp32 stem is Conv -> Relu -> MaxPool gets Conv -> MaxPool -> Relu."""
    m = onnx.ModelProto()
    m.CopyFrom(int8_model)
    nodes = list(m.graph.node)
    conv = next(n for n in nodes if n.input[0] == m.graph.input[0].name)
    pool = next(n for n in nodes if n.input and n.input[0] == conv.output[0])
    relu = next(n for n in nodes if n.input and n.input[0] == pool.output[0])
    assert (pool.op_type, relu.op_type) == ("MaxPool", "Relu")  # how quantize writes it
    mid, end = pool.output[0], relu.output[0]  # undo: Conv -> Relu -> MaxPool
    relu.input[0], relu.output[0] = conv.output[0], mid
    pool.input[0], pool.output[0] = mid, end
    nodes.remove(relu)
    nodes.insert(nodes.index(pool), relu)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    plain, _ = outputs(m, optimize=False)
    fast, r = outputs(m)
    assert "fp32 stem written Conv -> MaxPool -> Relu" in r.rewrites
    assert_same(plain, fast)


def test_classifier_opt_out_and_untouched_graphs():
    model = export_onnx("shufflenet_v2_x0_5", weights=quick_weights("shufflenet_v2_x0_5"), input_size=SIZE)
    assert Classifier(model, threads=1).runner.rewrites
    assert Classifier(model, threads=1, optimize=False).runner.rewrites is None
    # a graph whose padded region would reach the output is left alone
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, 8, 8])
    w = onnx.numpy_helper.from_array(np.ones((5, 3, 1, 1), np.float32), "w")
    g = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["c"]),
                                onnx.helper.make_node("Relu", ["c"], ["y"])], "g", [x], [y], [w])
    tiny = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
    assert optimize_for_inference(tiny) is tiny
