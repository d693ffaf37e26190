"""`fetch --manifest`: the Model Zoo's own hub manifest entries (an embedded copy) served from a
local HTTP server on 127.0.0.1 in the zoo repository's layout; never the network."""

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from shufflenet.cli import main
from shufflenet.hub import HashMismatchError, HubError
from shufflenet.hub_manifest import entry_url, fetch_from_manifest, parse_manifest, select
from shufflenet.specs import artifacts

#: the nine ShuffleNet entries of github.com/onnx/models ONNX_HUB_MANIFEST.json, verbatim
ZOO_MANIFEST = Path(__file__).parent / "data" / "onnx_hub_manifest_shufflenet.json"
ZOO_ROOT = "https://github.com/onnx/models/raw/main/ONNX_HUB_MANIFEST.json"


@pytest.fixture
def zoo_entries():
    return json.loads(ZOO_MANIFEST.read_text())


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP at 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SHUFFLENET_MIRROR", raising=False)


def test_the_zoos_entries_parse_select_and_resolve_to_its_urls(zoo_entries):
    entries = parse_manifest(zoo_entries)
    assert len(entries) == 9
    v1, with_data = select(entries, "shufflenet-v1")  # case-insensitive, newest opset
    assert (v1.opset, with_data) == (9, False)
    assert select(entries, "ShuffleNet-v1", opset=7)[0].stem == "shufflenet-7"
    qdq, with_data = select(entries, "shufflenet-v2-12-qdq.tar.gz")
    assert with_data and qdq.opset == 12 and qdq.with_data_sha256.startswith("071594e2")
    # the URLs the zoo's manifest implies are the ones our own artifact table lists
    ours = {a.name: a for a in artifacts()}
    for e in entries:
        assert entry_url(e, ZOO_ROOT) == ours[e.stem].urls[1]
        assert entry_url(e, ZOO_ROOT, with_data=True) == ours[f"{e.stem}.tar.gz"].urls[1]
        assert e.sha256 == ours[e.stem].sha256 and e.size == ours[e.stem].size
    with pytest.raises(HubError, match="no manifest entry 'ShuffleNet-v1' at opset 10"):
        select(entries, "ShuffleNet-v1", opset=10)


def test_fetch_from_the_zoos_manifest_verifies_its_hashes(zoo_entries, served):
    """Served in the zoo repository's layout: the zoo's own hashes refuse our stand-in bytes;
    the same manifest with the stand-in's hash fetches it."""
    root, url = served
    entry = next(e for e in zoo_entries if e["model_path"].endswith("shufflenet-v2-12.onnx"))
    payload = (b"stand-in for shufflenet-v2-12.onnx " * 300_000)[:entry["metadata"]["model_bytes"]]  # same size
    target = root / entry["model_path"]
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    (root / "ONNX_HUB_MANIFEST.json").write_text(json.dumps(zoo_entries))
    with pytest.raises(HashMismatchError):
        fetch_from_manifest(url + "ONNX_HUB_MANIFEST.json", "ShuffleNet-v2-fp32")
    entry["metadata"].update(model_sha=hashlib.sha256(payload).hexdigest(), model_bytes=len(payload))
    (root / "ONNX_HUB_MANIFEST.json").write_text(json.dumps(zoo_entries))
    path = fetch_from_manifest(url + "ONNX_HUB_MANIFEST.json", "ShuffleNet-v2-fp32")
    assert path.read_bytes() == payload and path.name == "shufflenet-v2-12.onnx" and "hub" in path.parts
    # a local copy of the manifest with --base pointing at the server: the same file, from cache
    local = root.parent / "manifest.json"
    local.write_text(json.dumps(zoo_entries))
    assert fetch_from_manifest(local, "shufflenet-v2-12", base=url) == path


@pytest.mark.parametrize("bad,match", [
    ({"models": []}, "expected a JSON list"),
    ([{"model": "x", "opset_version": 1, "model_path": "../x.onnx", "metadata": {"model_sha": "0" * 64}}], "'..'"),
    ([{"model": "x", "opset_version": 1, "model_path": "/etc/x.onnx", "metadata": {"model_sha": "0" * 64}}], "relative"),
    ([{"model": "x", "opset_version": 1, "model_path": "x.onnx", "metadata": {"model_sha": "abc"}}], "sha256"),
    ([{"model": "x", "model_path": "x.onnx", "metadata": {"model_sha": "0" * 64}}], "opset_version"),
    (["x"], "expected an object"),
])
def test_malformed_manifests_are_refused(bad, match):
    with pytest.raises(HubError, match=match):
        parse_manifest(bad)


def test_cli_errors_are_one_line(tmp_path, zoo_entries, capsys):
    (tmp_path / "m.json").write_text(json.dumps(zoo_entries))
    assert main(["fetch", "--manifest", str(tmp_path / "m.json"), "nope"]) == 2
    assert main(["fetch", "--manifest", str(tmp_path / "missing.json"), "x"]) == 2
    assert main(["fetch", "shufflenet-9", "--opset", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err
