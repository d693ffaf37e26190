"""The --via torch path: torch.onnx.export of any module, then the graph cleaned."""

import collections
import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from shufflenet.cli import main  # noqa: E402
from shufflenet.onnx_clean import clean_graph  # noqa: E402
from shufflenet.runtime import Runner  # noqa: E402
from torchvision_reference import torchvision_shufflenet_v2  # noqa: E402


def _run(model, x):
    r = Runner(model)
    return r.run({r.input_names[0]: x})[0]


def test_cleaning_a_plain_torchvision_export(images224):
    module = torchvision_shufflenet_v2("shufflenet_v2_x0_5").eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(1, 3, 224, 224), buf, opset_version=13, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                          dynamo=False)
    raw = onnx.load_from_string(buf.getvalue())
    clean = clean_graph(raw)
    onnx.checker.check_model(clean, full_check=True)
    before = collections.Counter(n.op_type for n in raw.graph.node)
    after = collections.Counter(n.op_type for n in clean.graph.node)
    assert before["Shape"] > 50 and not {"Shape", "Gather", "Unsqueeze", "Cast", "Identity"} & set(after)
    assert sum(after.values()) <= 180 and after["Conv"] == 56
    for n in (1, 3):
        np.testing.assert_allclose(_run(clean, images224[:n]), _run(raw, images224[:n]), atol=1e-5, rtol=0)


def test_cli_via_torch_matches_the_emitter(tmp_path, images224):
    a, b = tmp_path / "torch.onnx", tmp_path / "emitter.onnx"
    assert main(["export", "shufflenet_v2_x1_0", "--via", "torch", "--opset", "12", "-o", str(a)]) == 0
    assert main(["export", "shufflenet_v2_x1_0", "--opset", "12", "-o", str(b)]) == 0
    ma = onnx.load(str(a))
    assert len(ma.graph.node) <= 180
    assert {p.key: p.value for p in ma.metadata_props}["variant"] == "shufflenet_v2_x1_0"
    assert np.abs(_run(ma, images224[:3]) - _run(onnx.load(str(b)), images224[:3])).max() < 1e-4
    assert main(["export", "shufflenet_v2_x1_0", "--via", "torch", "--opset", "10", "-o", str(a)]) == 2


def test_cleaning_that_changes_the_outputs_is_refused(monkeypatch):
    """clean_graph runs both graphs before it returns one: a rewrite that changed the function
    (here, a weight scaled by a step that should only move nodes) is a CheckFailedError."""
    from onnx import numpy_helper

    import shufflenet.onnx_clean as onnx_clean
    from shufflenet.errors import CheckFailedError
    from shufflenet.onnx_export import export_onnx

    def wrong(model):
        t = model.graph.initializer[0]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))

    monkeypatch.setattr(onnx_clean, "_slices_to_split", wrong)
    with pytest.raises(CheckFailedError, match="changed the outputs at batch 1"):
        clean_graph(export_onnx("shufflenet_v2_x0_5", input_size=64))
