"""`zoo build`: a reduced build, offline, with random weights, validated end to end."""

import json

import onnx
import pytest

from shufflenet.cli import main
from shufflenet.runtime import Runner
from shufflenet.validate import validate
from shufflenet.weights import sha256_file
from shufflenet.zoo import ZooError, plan


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    rc = main(["zoo", "build", "--out", str(out), "--weights", "random:3", "--quiet",
               "--variants", "shufflenet-9,shufflenet-v2-12-int8,shufflenet-v2-12-qdq"])
    return out, rc


@pytest.mark.slow
def test_reduced_build_validates_end_to_end(built):
    out, rc = built
    assert rc == 0
    names = ["shufflenet-9", "shufflenet-v2-12", "shufflenet-v2-12-int8", "shufflenet-v2-12-qdq"]
    for name in names:
        assert validate(out / f"{name}.tar.gz").passed
        model = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        Runner(model)
    ops = {n.op_type for n in onnx.load(str(out / "shufflenet-v2-12-int8.onnx")).graph.node}
    assert "QLinearConv" in ops
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(out / "shufflenet-9.onnx")).graph.node}


@pytest.mark.slow
def test_manifest_has_the_zoo_keys_and_true_hashes(built):
    out, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_trained"] is False
    entries = {e["model_path"]: e for e in manifest["models"]}
    assert set(entries) == {"shufflenet-9.onnx", "shufflenet-v2-12.onnx", "shufflenet-v2-12-int8.onnx",
                            "shufflenet-v2-12-qdq.onnx"}
    for path, e in entries.items():
        assert {"model", "model_path", "onnx_version", "opset_version", "metadata"} <= set(e)
        m = e["metadata"]
        assert {"model_sha", "model_bytes", "tags", "io_ports", "model_with_data_path", "model_with_data_sha",
                "model_with_data_bytes"} <= set(m)
        assert m["model_sha"] == sha256_file(out / path) and m["model_bytes"] == (out / path).stat().st_size
        assert m["model_with_data_sha"] == sha256_file(out / m["model_with_data_path"])
    assert entries["shufflenet-9.onnx"]["metadata"]["io_ports"]["inputs"][0]["name"] == "gpu_0/data_0"
    assert entries["shufflenet-v2-12-int8.onnx"]["opset_version"] == 12
    assert entries["shufflenet-v2-12-qdq.onnx"]["opset_version"] == 13
    readme = (out / "README.md").read_text()
    assert "UNTRAINED" in readme and "shufflenet-v2-12-qdq" in readme


def test_plan_and_bad_names():
    assert [a.name for a in plan("zoo")] == ["shufflenet-3", "shufflenet-6", "shufflenet-7", "shufflenet-8",
                                            "shufflenet-9", "shufflenet-v2-10", "shufflenet-v2-12",
                                            "shufflenet-v2-12-int8", "shufflenet-v2-12-qdq"]
    assert len(plan("all")) == 9 + 2 * 24
    with pytest.raises(ZooError, match="neither"):
        plan(["shufflenet-99"])


@pytest.mark.slow
def test_one_failed_artifact_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    import shufflenet.zoo as zoo

    real = zoo.export_onnx

    def flaky(variant, **kw):
        if kw.get("opset") == 10:
            raise ValueError("simulated failure")
        return real(variant, **kw)

    monkeypatch.setattr(zoo, "export_onnx", flaky)
    summary = zoo.build(tmp_path, weights="random:0", variants=["shufflenet-v2-10", "shufflenet-9"])
    assert summary["built"] == ["shufflenet-9"] and summary["failed"][0][0] == "shufflenet-v2-10"
    assert "simulated failure" in (tmp_path / "README.md").read_text()


def test_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys, monkeypatch):
    import shufflenet.zoo as zoo

    out = tmp_path / "zoo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["zoo", "build", "-o", str(out), "--variants", "shufflenet-9"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()

    def fake(staging, items, **kw):  # the build itself is tested above (slow tier)
        (staging / "manifest.json").write_text("[]")
        return {"out": str(staging), "built": [i.name for i in items], "failed": [], "seconds": 0.0}

    monkeypatch.setattr(zoo, "_build_into", fake)
    summary = zoo.build(out, variants=["shufflenet-9"], force=True)
    assert summary["out"] == str(out) and summary["manifest"] == str(out / "manifest.json")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # no staging or old copy left

    def broken(staging, items, **kw):
        (staging / "half.onnx").write_text("x")
        raise ZooError("interrupted")

    monkeypatch.setattr(zoo, "_build_into", broken)
    with pytest.raises(ZooError):
        zoo.build(out, variants=["shufflenet-9"], force=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # untouched by a failed build
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]
