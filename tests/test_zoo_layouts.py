"""validate and `--model X.tar.gz` read every layout the Model Zoo's tarballs use, and refuse
anything ambiguous. Each layout is built here from one small bundle."""

import shutil
import tarfile

import numpy as np
import pytest

from shufflenet.bundle import BundleError, find_test_sets, locate_model, pack_tar
from shufflenet.cli import main
from shufflenet.errors import UnsafeFileError
from shufflenet.runtime import Classifier
from shufflenet.export import export_bundle
from shufflenet.validate import validate


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src")
    return export_bundle("shufflenet_v2_x0_5", out, opset=12, test_data=2, name="b", legacy_npz=True)["bundle"]


def _layout(source, tmp_path, root, model_file="model.onnx", *, pb=True, npz=True):
    """A copy of the bundle as ``<tmp>/<root>/<model_file>`` + test data, and its .tar.gz."""
    folder = tmp_path / "tree" / root if root else tmp_path / "tree"
    shutil.copytree(source, folder)
    (folder / "model.onnx").rename(folder / model_file)
    if not pb:
        for d in folder.glob("test_data_set_*"):
            shutil.rmtree(d)
    if not npz:
        for f in folder.glob("test_data_*.npz"):
            f.unlink()
    tar = pack_tar(folder, tmp_path / "bundle.tar.gz", root=root or "flat")
    return tmp_path / "tree", tar


LAYOUTS = {
    "zoo V1: shufflenet/model.onnx + .pb + .npz": ("shufflenet", "model.onnx", True, True),
    "zoo V2-10: model/test_shufflenetv2/model.onnx": ("model/test_shufflenetv2", "model.onnx", True, False),
    "zoo V2-12: <name>/<name>.onnx": ("shufflenet-v2-12", "shufflenet-v2-12.onnx", True, False),
    "legacy test_data_N.npz only": ("shufflenet", "model.onnx", False, True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_zoo_layout_validates_and_loads(source, tmp_path, layout):
    root, model_file, pb, npz = LAYOUTS[layout]
    tree, tar = _layout(source, tmp_path, root, model_file, pb=pb, npz=npz)
    with tarfile.open(tar) as t:
        assert f"{root}/{model_file}" in t.getnames()
    for path in (tar, tree):
        report = validate(path)
        assert report.passed, layout
        assert len(report.sets) == 2 * pb + 2 * npz
        assert any("[outputs][0]" in s.name for s in report.sets) == npz
    assert Classifier(str(tar)).num_classes == 1000  # --model X.tar.gz
    assert main(["validate", str(tar)]) == 0


def test_a_wrong_npz_output_fails(source, tmp_path):
    tree, _ = _layout(source, tmp_path, "shufflenet", pb=False)
    f = tree / "shufflenet" / "test_data_1.npz"
    with np.load(f) as d:
        inputs, outputs = d["inputs"], d["outputs"].copy()
    outputs[0, 0, 3] += 1.0
    np.savez(f, inputs=inputs, outputs=outputs)
    report = validate(tree)
    assert not report.passed and [s.passed for s in report.sets] == [True, False]


def test_pickled_npz_is_refused(source, tmp_path):
    tree, _ = _layout(source, tmp_path, "shufflenet", pb=False)
    f = tree / "shufflenet" / "test_data_0.npz"
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros(3), np.zeros(4)
    np.savez(f, inputs=ragged, outputs=ragged)
    with pytest.raises(UnsafeFileError, match="pickled"):
        find_test_sets(tree / "shufflenet")


def test_ambiguous_bundles_are_refused(source, tmp_path, capsys):
    two = tmp_path / "two"
    shutil.copytree(source, two / "x")
    shutil.copy(two / "x" / "model.onnx", two / "x" / "other.onnx")
    with pytest.raises(BundleError, match="ambiguous"):
        locate_model(two)
    sibling = tmp_path / "sibling"
    shutil.copytree(source, sibling / "a")
    shutil.copytree(source, sibling / "b")
    with pytest.raises(BundleError, match="ambiguous"):
        locate_model(sibling)
    tar = pack_tar(sibling, tmp_path / "sibling.tar.gz", root="model")
    assert main(["validate", str(tar)]) == 2
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "img.jpg")
    assert main(["classify", "--model", str(tar), str(tmp_path / "img.jpg")]) == 2
    assert "ambiguous" in capsys.readouterr().err
    deep = tmp_path / "deep" / "a" / "b" / "c"
    shutil.copytree(source, deep)
    with pytest.raises(BundleError, match="found 0"):
        locate_model(tmp_path / "deep")  # three folders down is not a zoo layout
    assert "Traceback" not in capsys.readouterr().err
