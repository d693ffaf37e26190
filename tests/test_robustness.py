"""Bad or unusual input found in review: each must be a typed error or work, never a traceback."""

import json
import struct

import numpy as np
import onnx
import pytest

from shufflenet.cli import main
from shufflenet.errors import WeightsError
from shufflenet.onnx_export import export_onnx, save_model
from shufflenet.weights import load_weights, resolve_weights


def test_safetensors_header_that_is_not_an_object(tmp_path):
    p = tmp_path / "w.safetensors"
    head = b"[]      "
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(WeightsError, match="not a JSON object"):
        load_weights(p)


def test_random_seed_must_be_ascii_digits():
    with pytest.raises(WeightsError, match="random:SEED"):
        resolve_weights("random:\u00b2", "shufflenet_v2_x0_5")


def test_bf16_checkpoint_loads(tmp_path):
    torch = pytest.importorskip("torch")
    from shufflenet import build_model

    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
          for k, v in build_model("shufflenet_v2_x0_5").state_dict().items()}
    torch.save(sd, tmp_path / "bf16.pth")
    loaded = build_model("shufflenet_v2_x0_5", weights=tmp_path / "bf16.pth").state_dict()
    assert torch.equal(loaded["conv5.0.weight"], sd["conv5.0.weight"].float())


def test_untrustworthy_preprocessing_metadata_falls_back(tmp_path):
    from shufflenet.runtime import Classifier
    from shufflenet.synthetic import synthetic_images

    model = export_onnx("shufflenet_v2_x0_5")
    meta = {p.key: p.value for p in model.metadata_props}
    pp = json.loads(meta["preprocessing"])
    pp["interpolation"], pp["crop"] = "nearest", 0
    meta["preprocessing"] = json.dumps(pp)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    clf = Classifier(model)
    assert clf.recipe.interpolation == "bilinear" and len(clf.predict(synthetic_images(1)[0])) == 5


def test_label_file_problems_are_clear(tmp_path, capsys):
    path = save_model(export_onnx("shufflenet_v2_x0_5"), tmp_path / "m.onnx")
    (tmp_path / "data").mkdir()
    assert main(["evaluate", "--model", str(path), "--data", str(tmp_path / "data"),
                 "--label-file", str(tmp_path / "missing.txt")]) == 2
    (tmp_path / "escape.txt").write_text("../m.onnx 1\n")
    assert main(["evaluate", "--model", str(path), "--data", str(tmp_path / "data"),
                 "--label-file", str(tmp_path / "escape.txt")]) == 2
    (tmp_path / "neg.txt").write_text("a.jpg -1\n")
    assert main(["evaluate", "--model", str(path), "--data", str(tmp_path / "data"),
                 "--label-file", str(tmp_path / "neg.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "outside" in err and "Traceback" not in err


def test_validate_refuses_test_sets_with_extra_tensors(tmp_path):
    from shufflenet.export import export_bundle

    folder = export_bundle("shufflenet_v2_x0_5", tmp_path, test_data=1)["bundle"]
    extra = folder / "test_data_set_0" / "input_1.pb"
    extra.write_bytes((folder / "test_data_set_0" / "input_0.pb").read_bytes())
    assert main(["validate", str(folder)]) == 2


def test_via_torch_with_a_fixed_batch(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "b2.onnx"
    assert main(["export", "shufflenet_v2_x0_5", "--via", "torch", "--batch", "2", "--opset", "13", "-o", str(out)]) == 0
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert not {"Shape", "Gather"} & {n.op_type for n in model.graph.node}


def test_quantize_a_fixed_batch_model(tmp_path):
    from shufflenet.quantize import QuantizeOptions, quantize
    from shufflenet.synthetic import synthetic_images

    for i, img in enumerate(synthetic_images(6, seed=4)):
        img.save(tmp_path / f"{i}.jpg")
    path = save_model(export_onnx("shufflenet_v2_x0_5", batch=4), tmp_path / "b4.onnx")
    report = quantize(path, tmp_path / "q.onnx", tmp_path, options=QuantizeOptions(calib_count=6, measure_latency=False))
    assert report.worst_nodes and np.isfinite(report.metrics["logit_cosine"])
