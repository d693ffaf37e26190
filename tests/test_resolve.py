"""One model resolver for every command: paths, archives, variants, zoo names, VARIANT:random."""

import urllib.request

import onnx
import pytest

from shufflenet.cli import main
from shufflenet.onnx_export import export_onnx, save_model
from shufflenet.runtime import ModelRunError, resolve_model
from shufflenet.synthetic import synthetic_images


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and no network: every download attempt fails as it would offline."""
    def refuse(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SHUFFLENET_MIRROR", raising=False)


def test_every_spelling(tmp_path):
    from shufflenet.export import export_to

    m, source = resolve_model("shufflenet_v2_x0_5:random:3")
    assert source == "shufflenet_v2_x0_5:random:3" and m.graph.node
    path = save_model(m, tmp_path / "m.onnx")
    assert onnx.load(str(path)).graph == resolve_model(str(path))[0].graph
    assert resolve_model(path)[1] == str(path)
    export_to("shufflenet_v2_x0_5", tmp_path / "b", test_data=1, tar=True, name="small")
    tar = next((tmp_path / "b").glob("*.tar.gz"))
    from_tar, src = resolve_model(tar)
    assert src == str(tar) and len(from_tar.graph.node) == len(export_onnx("shufflenet_v2_x0_5").graph.node)
    assert resolve_model(tmp_path / "b" / "small")[0].graph.node  # a bundle folder


def test_missing_and_unknown(tmp_path, offline):
    for spec in ("missing.onnx", "dir/missing", "m.tar.gz"):
        with pytest.raises(ModelRunError, match="no such file"):
            resolve_model(spec)
    with pytest.raises(ModelRunError, match="not a file, a variant"):
        resolve_model("resnet50")
    with pytest.raises(ModelRunError, match=":random"):
        resolve_model("shufflenet_v2_x0_5:torchvision")


def test_impossible_download_suggests_local_or_random(offline, tmp_path, capsys):
    from shufflenet.hub import HubError

    for spec, variant in (("shufflenet-v2-12", "shufflenet_v2_x1_0"), ("shufflenet_v2_x0_5", "shufflenet_v2_x0_5")):
        with pytest.raises(HubError, match=f"{variant}:random"):
            resolve_model(spec)
    img = tmp_path / "a.jpg"
    synthetic_images(1)[0].save(img)
    assert main(["classify", str(img), "--model", "shufflenet-v2-12"]) == 2
    err = capsys.readouterr().err
    assert "shufflenet_v2_x1_0:random" in err and len(err.strip().splitlines()) == 1


def test_local_arguments_are_checked_before_a_download(offline, tmp_path, capsys):
    """A typo in --data must not cost a download first."""
    assert main(["evaluate", "--model", "shufflenet-v2-12", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "download" not in err
    assert main(["classify", str(tmp_path / "nope.jpg"), "--model", "shufflenet-v2-12"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", "shufflenet-v2-12", "--images", str(tmp_path / "nope")]) == 2
    assert "download" not in capsys.readouterr().err


def test_missing_model_file_on_the_command_line(tmp_path, capsys):
    img = tmp_path / "a.jpg"
    synthetic_images(1)[0].save(img)
    for argv in (["classify", str(img), "--model", "missing.onnx"],
                 ["evaluate", "--model", "missing.onnx", "--data", str(tmp_path)],
                 ["quantize", "missing.onnx", "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path)],
                 ["bench", "missing.onnx", "--runs", "1"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "missing.onnx: no such file" in err and len(err.strip().splitlines()) == 1, err


def test_deprecated_runtime_error_name_still_imports():
    from shufflenet.runtime import RuntimeError_

    assert RuntimeError_ is ModelRunError


def test_offline_hint_keeps_the_hub_failure_class(monkeypatch):
    """A failed download of published weights says what to do offline, and stays the hub's
    failure class (with its per-URL failures) for callers that branch on it."""
    from shufflenet import hub

    cause = hub.DownloadConnectionError("https://example.invalid/w.pth: connection refused",
                                        "https://example.invalid/w.pth")

    def fail(*_a, **_k):
        raise hub.FetchFailedError("cannot download w.pth", [cause])

    monkeypatch.setattr(hub, "fetch", fail)
    with pytest.raises(hub.FetchFailedError, match="without the network") as info:
        resolve_model("shufflenet_v2_x1_0")
    assert list(info.value.failures) == [cause]
