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
    rc = main(["zoo", "build", "--out", str(out), "--weights", "random:3", "--quiet", "--variants", VARIANTS])
    return out, rc


VARIANTS = "shufflenet-9,shufflenet-v2-12-int8,shufflenet-v2-12-qdq,shufflenet-v2-13-qdq"
BUILT = ["shufflenet-9", "shufflenet-v2-12", "shufflenet-v2-12-int8", "shufflenet-v2-12-qdq", "shufflenet-v2-13-qdq"]


@pytest.mark.slow
def test_reduced_build_validates_end_to_end(built):
    out, rc = built
    assert rc == 0
    for name in BUILT:
        assert validate(out / f"{name}.tar.gz").passed
        model = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        Runner(model)
    ops = {n.op_type for n in onnx.load(str(out / "shufflenet-v2-12-int8.onnx")).graph.node}
    assert "QLinearConv" in ops
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(out / "shufflenet-9.onnx")).graph.node}


def _hub_model_info(raw: dict) -> dict:
    """What onnx.hub's ModelInfo reads from one manifest entry (onnx/hub.py, onnx 1.10-1.16)."""
    return {"model": raw["model"], "model_path": raw["model_path"], "metadata": raw["metadata"],
            "model_sha": raw["metadata"].get("model_sha"), "tags": set(raw["metadata"].get("tags", [])),
            "opset": raw["opset_version"]}


@pytest.mark.slow
def test_manifest_is_the_onnx_hub_format_with_true_hashes(built):
    from shufflenet.hub_manifest import parse_manifest

    out, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert isinstance(manifest, list)  # onnx.hub iterates a list of entries
    infos = [_hub_model_info(e) for e in manifest]
    assert [(i["model"], i["opset"]) for i in infos] == [
        ("ShuffleNet-v1", 9), ("ShuffleNet-v2-fp32", 12), ("ShuffleNet-v2-int8", 12), ("ShuffleNet-v2-qdq", 12),
        ("ShuffleNet-v2-qdq", 13)]
    assert len(parse_manifest(manifest)) == 5
    entries = {e["model_path"]: e for e in manifest}
    assert set(entries) == {f"{n}.onnx" for n in BUILT}
    for path, e in entries.items():
        m = e["metadata"]
        assert {"model_sha", "model_bytes", "tags", "io_ports", "model_with_data_path", "model_with_data_sha",
                "model_with_data_bytes"} <= set(m)
        assert m["model_sha"] == sha256_file(out / path) and m["model_bytes"] == (out / path).stat().st_size
        assert m["model_with_data_sha"] == sha256_file(out / m["model_with_data_path"])
        assert m["shufflenet"]["weights_trained"] is False  # our facts, under a key hub readers ignore
    # onnx_version: the oldest release whose opset table reaches the model's opset
    assert [entries[f"{n}.onnx"]["onnx_version"] for n in BUILT] == ["1.4.1", "1.7", "1.7", "1.7", "1.8"]
    v1 = entries["shufflenet-9.onnx"]["metadata"]
    assert v1["io_ports"]["inputs"][0]["name"] == "gpu_0/data_0"
    assert v1["extra_ports"] == {"features": [{"name": "gpu_0/final_avg_1", "shape": ["N", 544, 1, 1]}]}
    assert "extra_ports" in entries["shufflenet-v2-12.onnx"]["metadata"]
    assert "extra_ports" not in entries["shufflenet-v2-12-qdq.onnx"]["metadata"]  # as the zoo's
    assert entries["shufflenet-v2-12-qdq.onnx"]["metadata"]["shufflenet"]["quantization"]["per_channel"] is False
    assert entries["shufflenet-v2-13-qdq.onnx"]["metadata"]["shufflenet"]["in_zoo"] is False
    readme = (out / "README.md").read_text()
    assert "UNTRAINED" in readme and "shufflenet-v2-12-qdq" in readme and "dynamic batch N" in readme


def test_quantized_rows_are_the_zoos_and_import_only_used_opsets(built):
    out, _ = built
    for name in BUILT:
        model = onnx.load(str(out / f"{name}.onnx"))
        used = {n.domain for n in model.graph.node} | {""}
        assert {o.domain for o in model.opset_import} <= used, name
    qdq12 = onnx.load(str(out / "shufflenet-v2-12-qdq.onnx"))
    assert [o.version for o in qdq12.opset_import if o.domain == ""] == [12]
    deq = [n for n in qdq12.graph.node if n.op_type == "DequantizeLinear"]
    assert deq and not any(a.name == "axis" for n in deq for a in n.attribute)  # per-tensor
    qdq13 = onnx.load(str(out / "shufflenet-v2-13-qdq.onnx"))
    assert [o.version for o in qdq13.opset_import if o.domain == ""] == [13]
    inits = {t.name: t for t in qdq13.graph.initializer}
    assert any(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
               for n in qdq13.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits)


def test_tarballs_have_the_zoos_layouts(built):
    import tarfile

    out, _ = built
    with tarfile.open(out / "shufflenet-9.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"shufflenet/model.onnx", "shufflenet/test_data_set_0/input_0.pb", "shufflenet/test_data_0.npz"} <= names
    for name in ("shufflenet-v2-12", "shufflenet-v2-12-int8", "shufflenet-v2-12-qdq"):
        with tarfile.open(out / f"{name}.tar.gz") as tar:
            members = tar.getmembers()
        assert f"{name}/{name}.onnx" in {m.name for m in members}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        assert (out / f"{name}.tar.gz").read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_build_is_byte_for_byte_reproducible(built, tmp_path):
    """A second build in another process (another hash seed) writes identical files."""
    import os
    import subprocess
    import sys

    out, _ = built
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "shufflenet", "zoo", "build", "--out", str(tmp_path), "--weights",
                    "random:3", "--quiet", "--variants", VARIANTS], check=True, env=env, capture_output=True)
    for name in [f"{n}{ext}" for n in BUILT for ext in (".onnx", ".tar.gz")] + ["manifest.json"]:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_fetch_reads_our_manifest(built, tmp_path, monkeypatch, capsys):
    out, _ = built
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    assert main(["fetch", "--quiet", "--manifest", str(out / "manifest.json"), "ShuffleNet-v2-qdq",
                 "shufflenet-v2-12-qdq.tar.gz", "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert sha256_file(paths["ShuffleNet-v2-qdq"]) == sha256_file(out / "shufflenet-v2-13-qdq.onnx")  # newest opset
    assert sha256_file(paths["shufflenet-v2-12-qdq.tar.gz"]) == sha256_file(out / "shufflenet-v2-12-qdq.tar.gz")
    assert main(["fetch", "--manifest", str(out / "manifest.json"), "ShuffleNet-v2-qdq", "--opset", "12",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ShuffleNet-v2-qdq"].endswith("shufflenet-v2-12-qdq.onnx")


def test_batch_1_writes_the_zoos_static_shapes(tmp_path):
    from shufflenet.zoo import build

    summary = build(tmp_path, weights="random:0", variants=["shufflenet-v2-10"], batch=1, test_data=1)
    assert summary["built"] == ["shufflenet-v2-10"]
    entry = json.loads((tmp_path / "manifest.json").read_text())[0]
    assert entry["metadata"]["io_ports"]["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert entry["metadata"]["io_ports"]["outputs"][0]["shape"] == [1, 1000]
    assert entry["metadata"]["shufflenet"]["differs_from_zoo"] == []
    assert validate(tmp_path / "shufflenet-v2-10.tar.gz").passed  # model/test_shufflenetv2/model.onnx


def test_plan_and_bad_names():
    assert [a.name for a in plan("zoo")] == ["shufflenet-3", "shufflenet-6", "shufflenet-7", "shufflenet-8",
                                            "shufflenet-9", "shufflenet-v2-10", "shufflenet-v2-12",
                                            "shufflenet-v2-12-int8", "shufflenet-v2-12-qdq", "shufflenet-v2-13-qdq"]
    assert len(plan("all")) == 10 + 2 * 24
    with pytest.raises(ZooError, match="neither"):
        plan(["shufflenet-99"])
    # the library takes the CLI's spelling too: one comma-separated string (it was split letter by letter)
    assert plan("shufflenet-v2-12-int8, shufflenet-9") == plan(["shufflenet-v2-12-int8", "shufflenet-9"])
    assert [a.name for a in plan("shufflenet-9")] == ["shufflenet-9"]


def test_missing_data_folders_are_refused_before_any_build(tmp_path, capsys):
    for flag in ("--calib", "--eval-data"):
        assert main(["zoo", "build", "-o", str(tmp_path / "z"), flag, str(tmp_path / "nope")]) == 2
        assert f"{flag} {tmp_path / 'nope'}: not a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing built, no staging folder left


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


def test_an_unexpected_error_is_recorded_with_where_it_happened(tmp_path, monkeypatch):
    """An error of no expected class (a bug) fails its artifact only; the record says the class,
    the message and the innermost line, once each."""
    import shufflenet.zoo as zoo

    def broken(variant, **kw):
        raise KeyError("no such key")

    monkeypatch.setattr(zoo, "export_onnx", broken)
    summary = zoo.build(tmp_path / "zoo", variants=["shufflenet-9"], calib=tmp_path)
    [(name, error)] = summary["failed"]
    assert name == "shufflenet-9" and summary["built"] == []
    assert error.startswith("KeyError: 'no such key' (at test_zoo.py:") and error.count("KeyError") == 1


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
