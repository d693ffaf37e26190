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


# --------------------------------------------------------------------------- channel padding


@pytest.mark.parametrize("variant", ["shufflenet_v2_x1_0", "shufflenet_v2_x2_0"])  # 58 / 122-channel branches
def test_padding_keeps_outputs_and_aligns_every_conv(variant, images224):
    plain = export_onnx(variant, opset=13, weights="random:5")
    padded = export_onnx(variant, opset=13, weights="random:5", pad_channels=16)
    onnx.checker.check_model(padded, full_check=True)
    np.testing.assert_allclose(_run(padded, images224[:3]), _run(plain, images224[:3]), atol=1e-4, rtol=0)
    inits = {t.name: t for t in padded.graph.initializer}
    before = {t.name: tuple(t.dims) for t in plain.graph.initializer}
    grown = []
    for n in padded.graph.node:
        if n.op_type != "Conv":
            continue
        dims = tuple(inits[n.input[1]].dims)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if dims != before[n.input[1]]:
            grown.append(n.name)
        if group > 1 and "branch2" in n.name:  # every branch-interior depthwise conv: a multiple of 16
            assert dims[0] % 16 == 0 and group == dims[0], (n.name, dims)
    assert "conv1.1" in grown and len(grown) > 16  # the stem and the branch interiors
    assert {p.key: p.value for p in padded.metadata_props}["channel_padding"] == "16"
    assert len(padded.graph.node) == len(plain.graph.node)


def test_padded_channels_are_exact_zeros():
    """The dead channels stay zero through BN, ReLU, max pooling and depthwise convs."""
    from shufflenet.optimize import pad_channels

    spec = get_spec("shufflenet_v2_x1_0")
    w = random_weights(spec, seed=2)
    graph, w2 = pad_channels(spec.graph(), w, 16)
    node = next(n for n in graph.nodes if n.outputs[0] == "stage2.1.branch2.4")  # BN after the depthwise
    assert node.attrs["channels"] == 64 and spec.graph().shapes()["stage2.1.branch2.4"][0] == 58
    for role in ("weight", "bias", "running_mean"):
        assert not w2[node.params[role]][58:].any()
    assert (w2[node.params["running_var"]][58:] == 1).all()
    reader = next(n for n in graph.nodes if n.params.get("weight") == "stage2.1.branch2.5.weight")
    assert w2["stage2.1.branch2.5.weight"].shape == (58, 64, 1, 1) and reader.attrs["in_channels"] == 64
    assert not w2["stage2.1.branch2.5.weight"][:, 58:].any()
    assert w["stage2.1.branch2.5.weight"].shape == (58, 58, 1, 1)  # the caller's dict is untouched


@pytest.mark.parametrize("variant", ["shufflenet_v1_g3_x0_5", "shufflenet_v1_caffe2"])
def test_padding_leaves_v1_alone(variant):
    """V1's channels meet grouped convolutions and shortcut concats: nothing may be padded."""
    from shufflenet.optimize import pad_channels

    spec = get_spec(variant)
    w = random_weights(spec)
    graph, w2 = pad_channels(spec.graph(), w, 16)
    assert graph is spec.graph() and w2 is w


def test_pad_cli_and_bad_values(tmp_path):
    from shufflenet.onnx_export import ExportError

    assert main(["export", "shufflenet_v2_x0_5", "--pad-channels", "-o", str(tmp_path / "p.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    assert meta["channel_padding"] == "16"
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line, exit status 2
        main(["export", "shufflenet_v2_x0_5", "--pad-channels", "0", "-o", str(tmp_path / "q.onnx")])
    assert exit_info.value.code == 2
    assert main(["export", "shufflenet_v2_x0_5", "--pad-channels", "--via", "torch", "-o",
                 str(tmp_path / "r.onnx")]) == 2
    with pytest.raises(ExportError, match="multiple"):
        export_onnx("shufflenet_v2_x0_5", pad_channels=True)
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "r.onnx").exists()


def test_export_writes_the_fast_graph_unless_faithful(tmp_path):
    """`export` pads by default (same outputs); --faithful writes the plain graph."""
    fast, plain = tmp_path / "fast.onnx", tmp_path / "plain.onnx"
    assert main(["export", "shufflenet_v2_x0_5", "--input-size", "64", "-o", str(fast)]) == 0
    assert main(["export", "shufflenet_v2_x0_5", "--input-size", "64", "--faithful", "-o", str(plain)]) == 0
    mf, mp = onnx.load(str(fast)), onnx.load(str(plain))
    assert {p.key: p.value for p in mf.metadata_props}["channel_padding"] == "16"
    assert "channel_padding" not in {p.key for p in mp.metadata_props}
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    a = Runner(mp, threads=1, optimize=False).outputs(x)
    b = Runner(mf, threads=1, optimize=False).outputs(x)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())
    assert main(["export", "shufflenet_v2_x0_5", "--faithful", "--pad-channels", "-o",
                 str(tmp_path / "x.onnx")]) == 2
    # a padded file is still a valid --weights: the padding is cut off again
    from shufflenet.weights import weights_from_onnx

    wf, wp = (weights_from_onnx(p, get_spec("shufflenet_v2_x0_5")) for p in (fast, plain))
    assert set(wf) == set(wp) and all(np.array_equal(wf[k], wp[k]) for k in wp)
