"""Zoo-style bundles, `validate`, and archives treated as untrusted."""

import io
import json
import os
import tarfile

import numpy as np
import onnx
import pytest

from shufflenet.bundle import BundleError, find_test_sets, load_model_checked, safe_extract
from shufflenet.cli import main
from shufflenet.errors import UnsafeFileError
from shufflenet.export import export_bundle
from shufflenet.validate import validate


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return export_bundle("shufflenet_v1_caffe2", out, opset=9, test_data=3, name="shufflenet-9", tar=True)


def test_bundle_layout(bundle):
    folder = bundle["bundle"]
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.onnx", "test_data_set_0",
                                                        "test_data_set_1", "test_data_set_2"]
    sets = find_test_sets(folder)
    assert [s.inputs[0][0] for s in sets] == ["gpu_0/data_0"] * 3
    assert [s.outputs[0][0] for s in sets] == ["gpu_0/softmax_1"] * 3
    batches = [s.inputs[0][1].shape[0] for s in sets]
    assert max(batches) > 1 and all(s.inputs[0][1].shape[1:] == (3, 224, 224) for s in sets)
    assert not np.array_equal(sets[0].inputs[0][1], sets[2].inputs[0][1])  # varied images
    with tarfile.open(bundle["tar"]) as tar:
        names = tar.getnames()
    assert "shufflenet-9/model.onnx" in names and "shufflenet-9/test_data_set_1/output_0.pb" in names


@pytest.mark.parametrize("which", ["model", "bundle", "tar"])
def test_validate_accepts_every_form(bundle, which):
    report = validate(bundle[which])
    assert report.passed and report.checker == "passed" and report.engine == "onnxruntime"
    assert len(report.sets) == 3 and all(s.top1_match == 1.0 for s in report.sets)


def test_validate_legacy_opset_runs_an_upgraded_copy(tmp_path):
    paths = export_bundle("shufflenet_v2_x0_5", tmp_path, opset=3, test_data=2)
    report = validate(paths["bundle"])
    assert report.passed and "upgraded copy at opset 7" in report.engine


def test_a_flipped_byte_fails_and_says_where(bundle, tmp_path, capsys):
    import shutil

    folder = shutil.copytree(bundle["bundle"], tmp_path / "b")
    pb = folder / "test_data_set_1" / "output_0.pb"
    data = bytearray(pb.read_bytes())
    data[-1] ^= 0x40  # the exponent byte of the last float: one element changes
    pb.write_bytes(bytes(data))
    report = validate(folder)
    assert not report.passed
    bad = [s for s in report.sets if not s.passed]
    assert len(bad) == 1 and bad[0].name == "test_data_set_1/output_0.pb" and bad[0].mismatched == 1
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"gpu_0/softmax_1[{','.join(map(str, bad[0].worst_index))}]" in out


def test_validate_exit_codes(bundle, tmp_path, capsys):
    assert main(["validate", str(bundle["tar"])]) == 0
    assert main(["validate", "--json", str(bundle["model"])]) == 0
    assert main(["validate", str(tmp_path / "missing.tar.gz")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    assert main(["validate", str(tmp_path / "junk.tar.gz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err


@pytest.mark.parametrize("meta, says", [
    ("[" * 100_000, "nested deeper than 64"),  # json.loads alone: RecursionError, a traceback
    ("{not json", "bad JSON"),
    ("[1, 2]", "not stated in bundle.json"),
    ('{"expected_outputs": "numpy reference"}', "numpy reference"),
    (None, "is a FIFO"),  # a FIFO would block the read forever
])
def test_validate_reads_an_untrusted_bundle_json_and_still_checks(bundle, tmp_path, capsys, meta, says):
    """bundle.json only says where the expected outputs came from: whatever it holds, validate
    runs every set, reports it in one field, and the CLI prints no traceback."""
    import shutil

    folder = shutil.copytree(bundle["bundle"], tmp_path / "b")
    (folder / "bundle.json").unlink()
    if meta is None:
        os.mkfifo(folder / "bundle.json")
    else:
        (folder / "bundle.json").write_text(meta)
    report = validate(folder)
    assert report.passed and says in report.expected_outputs
    assert main(["validate", str(folder)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_validate_refuses_a_device_or_fifo_in_one_line(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    for path in ("/dev/null", str(tmp_path / "pipe")):
        assert main(["validate", path]) == 2
        assert capsys.readouterr().err == (f"shufflenet validate: error: {path}: expected a .onnx, "
                                           "a bundle folder or a .tar.gz\n")


def test_validate_json_is_exact(bundle, capsys):
    assert main(["validate", "--json", str(bundle["model"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and data["opset"] == 9 and len(data["sets"]) == 3


# --------------------------------------------------------------------------- hostile archives


def _tar(path, members):
    """members: list of (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


HOSTILE = {
    "absolute": [_file("/tmp/evil")],
    "dotdot": [_file("b/../../evil")],
    "dotdot-prefix": [_file("../b-evil/x")],
    "symlink": [_special("b/link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [_special("b/hard", tarfile.LNKTYPE, "/etc/passwd")],
    "device": [_special("b/dev", tarfile.CHRTYPE)],
    "fifo": [_special("b/fifo", tarfile.FIFOTYPE)],
    "duplicate": [_file("b/model.onnx"), _file("b/model.onnx", b"second")],
    "windows": [_file("C:/evil")],
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archives_are_refused_and_nothing_escapes(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(tmp_path / "evil.tar.gz", [_file("b/ok.txt")] + HOSTILE[case])
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeFileError):
        safe_extract(archive, work / "out")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert main(["validate", str(archive)]) == 2


def test_member_count_and_size_caps(tmp_path):
    many = _tar(tmp_path / "many.tar.gz", [_file(f"b/f{i}") for i in range(20)])
    with pytest.raises(UnsafeFileError, match="more than 10 members"):
        safe_extract(many, tmp_path / "o1", max_members=10)
    big = _tar(tmp_path / "big.tar.gz", [_file("b/big", b"\0" * 5000)])
    with pytest.raises(UnsafeFileError, match="more than 1000 bytes"):
        safe_extract(big, tmp_path / "o2", max_bytes=1000)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_safe_extract_good_archive(bundle, tmp_path):
    out = safe_extract(bundle["tar"], tmp_path / "x")
    assert (out / "shufflenet-9" / "model.onnx").is_file()
    with pytest.raises(BundleError, match="already exists"):
        safe_extract(bundle["tar"], out)


def test_external_data_must_stay_inside_the_bundle(tmp_path):
    from shufflenet.onnx_export import export_onnx

    model = export_onnx("shufflenet_v2_x0_5")
    inside = tmp_path / "inside"
    inside.mkdir()
    onnx.save(model, str(inside / "model.onnx"), save_as_external_data=True, location="weights.bin")
    assert load_model_checked(inside / "model.onnx").graph.initializer[0].raw_data
    outside = tmp_path / "outside"
    outside.mkdir()
    m = onnx.load(str(inside / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../inside/weights.bin"
    onnx.save(m, str(outside / "model.onnx"))
    with pytest.raises(UnsafeFileError, match="outside the model folder"):
        load_model_checked(outside / "model.onnx")
    os.symlink(inside / "weights.bin", outside / "link.bin")
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "link.bin"
    onnx.save(m, str(outside / "model.onnx"))
    with pytest.raises(UnsafeFileError):
        load_model_checked(outside / "model.onnx")


@pytest.mark.parametrize("content", [b"", b"\x08\x07"], ids=["empty", "ir-version-only"])
def test_a_file_that_parses_as_an_empty_model_is_refused(tmp_path, capsys, content):
    """protobuf reads an empty file (or one holding a lone field) as a ModelProto without a
    graph: every command that loads a model says so in one line instead of an IndexError."""
    model = tmp_path / "m.onnx"
    model.write_bytes(content)
    with pytest.raises(BundleError, match="not an ONNX model"):
        load_model_checked(model)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    for argv in (["classify", str(image), "--model", str(model)], ["bench", str(model)],
                 ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not an ONNX model" in err, (argv, err)
