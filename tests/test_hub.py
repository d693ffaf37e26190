"""Verified downloads against a local HTTP server on 127.0.0.1 (never the network)."""

import contextlib
import hashlib
import http.server
import re
import socket
import threading

import onnx
import pytest

from shufflenet import hub
from shufflenet.specs import Artifact

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of generated data


class Server:
    """Serves PAYLOAD at /f.bin with switchable misbehaviour; records Range headers."""

    def __init__(self):
        self.mode = "ok"  # ok | cut | cut-once | wrong
        self.ranges, self.requests = [], 0
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.requests += 1
                body = PAYLOAD if srv.mode != "wrong" else PAYLOAD[::-1]
                rng = self.headers.get("Range")
                srv.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if srv.mode == "cut" or (srv.mode == "cut-once" and srv.requests == 1):
                    chunk = chunk[: len(chunk) // 2]  # the connection drops at 50%
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SHUFFLENET_MIRROR", raising=False)
    return tmp_path / "cache"


def _artifact(url, **kw):
    base = dict(name="test-file", variant="shufflenet_v2_x1_0", kind="zoo-onnx", urls=(url,),
                sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    return Artifact(**{**base, **kw})


def _leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert hub.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SHUFFLENET_HOME")
    assert hub.cache_dir() == tmp_path / "b" / "shufflenet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(hub.cache_dir()).endswith(".cache/shufflenet")


def test_success_and_verified_reload(server, cache):
    seen = []
    path = hub.fetch(_artifact(server.url), progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert _leftovers(cache) == ["f.bin"]
    requests = server.requests
    assert hub.fetch(_artifact(server.url)) == path and server.requests == requests  # cached
    assert hub.cached_path(_artifact(server.url)) == path


def test_cut_connection_leaves_nothing(server, cache):
    server.mode = "cut"
    with pytest.raises(hub.HubError, match="could not be downloaded.*put it at") as e:
        hub.fetch(_artifact(server.url))
    assert _leftovers(cache) == []
    assert type(e.value) is hub.FetchFailedError and e.value.exit_code == 2
    (failure,) = e.value.failures
    assert type(failure) is hub.DownloadConnectionError and failure.url == server.url
    assert server.requests == hub.ATTEMPTS  # a cut connection is resumed


def test_resume_with_range(server, cache):
    server.mode = "cut-once"
    path = hub.fetch(_artifact(server.url))
    assert path.read_bytes() == PAYLOAD
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_wrong_hash_is_refused(server, cache):
    server.mode = "wrong"
    with pytest.raises(hub.HashMismatchError, match="sha256") as e:
        hub.fetch(_artifact(server.url, urls=(server.url, "http://127.0.0.1:9/f.bin")))
    assert _leftovers(cache) == []
    assert e.value.exit_code == 1  # some mirror served the wrong bytes: a failed check
    assert [type(f) for f in e.value.failures] == [hub.HashMismatchError, hub.DownloadConnectionError]


def test_corrupted_cache_is_detected_on_load(server, cache):
    path = hub.fetch(_artifact(server.url))
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(hub.HashMismatchError, match="cached file"):
        hub.cached_path(_artifact(server.url))
    with pytest.raises(hub.HashMismatchError):
        hub.fetch(_artifact(server.url))
    assert hub.fetch(_artifact(server.url), force=True).read_bytes() == PAYLOAD


def test_concurrent_fetches_end_with_one_good_file(server, cache):
    results, errors = [], []

    def run():
        try:
            results.append(hub.fetch(_artifact(server.url)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and results[0].read_bytes() == PAYLOAD
    assert server.requests == 1 and _leftovers(cache) == ["f.bin"]


def test_publisher_hash_prefix_is_checked_and_recorded(server, cache):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    a = _artifact(server.url, sha256=None, size=None, sha256_prefix=digest[:10], kind="torchvision-pth")
    path = hub.fetch(a)
    assert path.with_name("f.bin.sha256").read_text().strip() == digest
    bad = _artifact(server.url, sha256=None, size=None, sha256_prefix="0000000000", kind="torchvision-pth")
    with pytest.raises(hub.HashMismatchError, match="does not start with"):
        hub.fetch(bad, force=True)


def test_mirror_is_tried_first(server, cache, monkeypatch):
    monkeypatch.setenv("SHUFFLENET_MIRROR", server.url.rsplit("/", 1)[0])
    a = _artifact("http://127.0.0.1:9/unreachable/f.bin")
    assert hub.fetch(a).read_bytes() == PAYLOAD


def test_no_network_says_what_to_download_and_where(cache):
    a = _artifact("http://127.0.0.1:9/f.bin")  # port 9 (discard): connection refused
    with pytest.raises(hub.HubError) as e:
        hub.fetch(a)
    msg = str(e.value)
    assert "http://127.0.0.1:9/f.bin" in msg and str(cache) in msg and "\n" not in msg
    with pytest.raises(hub.HubError, match="is not cached"):
        hub.cached_path(a)


def test_a_path_never_touches_the_network(tmp_path, monkeypatch):
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.runtime import Classifier

    def boom(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(hub, "_download", boom)
    path = save_model(export_onnx("shufflenet_v2_x0_5"), tmp_path / "m.onnx")
    assert Classifier(str(path)).num_classes == 1000


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET /CODE/... with that HTTP status."""

    hits = 0

    def log_message(self, *a):
        pass

    def do_GET(self):
        type(self).hits += 1
        self.send_error(int(self.path.split("/")[1]))


@pytest.mark.parametrize("code,attempts", [(404, 1), (403, 1), (503, hub.ATTEMPTS)])
def test_http_status_is_a_typed_failure_retried_only_for_server_errors(cache, code, attempts):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _StatusHandler.hits = 0
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{code}/f.bin"
    try:
        with pytest.raises(hub.FetchFailedError, match=f"could not be downloaded \\({re.escape(url)}: ") as e:
            hub.fetch(_artifact(url))
    finally:
        httpd.shutdown()
    (failure,) = e.value.failures
    assert type(failure) is hub.DownloadStatusError and failure.status == code
    assert _StatusHandler.hits == attempts and _leftovers(cache) == []


def test_an_answer_that_is_not_http_is_a_connection_failure(cache):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def garbage():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"garbage\r\n\r\n")

    threading.Thread(target=garbage, daemon=True).start()
    try:
        with pytest.raises(hub.FetchFailedError, match=r"f\.bin: garbage\)") as e:
            hub.fetch(_artifact(f"http://127.0.0.1:{listener.getsockname()[1]}/f.bin"))
    finally:
        listener.close()
    assert type(e.value.failures[0]) is hub.DownloadConnectionError and "\n" not in str(e.value)


def test_unsupported_scheme_is_refused_before_connecting(cache):
    with pytest.raises(hub.FetchFailedError, match="unsupported URL scheme") as e:
        hub.fetch(_artifact("ftp://example.invalid/f.bin"))
    assert type(e.value.failures[0]) is hub.UnsupportedURLError


def test_unknown_artifact_lists_known_ones():
    with pytest.raises(hub.HubError, match="shufflenet-v2-12"):
        hub.find_artifact("shufflenet-v2-99")


def test_cli_fetch_list_and_fetch(server, cache, monkeypatch, capsys):
    import json

    from shufflenet import specs
    from shufflenet.cli import main

    art = _artifact(server.url)
    monkeypatch.setattr(specs, "artifacts", lambda: (art,))
    monkeypatch.setattr(hub, "artifacts", lambda: (art,))
    assert main(["fetch", "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["artifacts"][0]["cached"] is False
    assert main(["fetch", "test-file", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["test-file"].endswith("f.bin")
    assert main(["fetch", "nope"]) == 2


def test_weights_torchvision_fetches_verifies_and_exports_without_torch(tmp_path, cache, monkeypatch):
    """The pretrained path end to end, offline: a local server plays download.pytorch.org."""
    torch = pytest.importorskip("torch")  # only to write the checkpoint
    import hashlib
    import sys

    import numpy as np

    from shufflenet import build_model, specs
    from shufflenet.onnx_export import export_onnx
    from shufflenet.runtime import Runner

    ckpt = tmp_path / "shufflenetv2_x0.5-test.pth"
    module = build_model("shufflenet_v2_x0_5", seed=9)
    torch.save(module.state_dict(), ckpt)
    body = ckpt.read_bytes()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()

    with _serve_once(body, ckpt.name) as url:
        art = Artifact(name="torchvision-shufflenet_v2_x0_5", variant="shufflenet_v2_x0_5", kind="torchvision-pth",
                       urls=(url,), default=True, sha256_prefix=hashlib.sha256(body).hexdigest()[:10])
        monkeypatch.setattr(specs, "artifacts", lambda: (art,))
        monkeypatch.setitem(sys.modules, "torch", None)  # the base install: no torch
        model = export_onnx("shufflenet_v2_x0_5", weights="torchvision", opset=12)
    r = Runner(model)
    got = r.run({r.input_names[0]: x})[0]
    assert np.abs(got - want).max() < 1e-4
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["weights_sha256"] == hashlib.sha256(body).hexdigest()
    assert (cache / "torchvision-pth" / ckpt.name).is_file()


def test_weights_torchvision_for_the_caffe2_v1_reads_the_zoo_file(tmp_path, cache, monkeypatch):
    """No torchvision checkpoint exists for the zoo's V1: its published weights are the zoo file."""
    import hashlib

    import numpy as np

    from shufflenet import specs
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.runtime import Runner

    zoo_file = save_model(export_onnx("shufflenet_v1_caffe2", weights="random:8", keep_batchnorm=True, opset=9),
                          tmp_path / "serve" / "shufflenet-9.onnx")
    body = zoo_file.read_bytes()

    with _serve_once(body, "shufflenet-9.onnx") as url:
        art = Artifact(name="shufflenet-9", variant="shufflenet_v1_caffe2", kind="zoo-onnx", urls=(url,), default=True,
                       sha256=hashlib.sha256(body).hexdigest(), size=len(body), opset=9)
        monkeypatch.setattr(specs, "artifacts", lambda: (art,))
        model = export_onnx("shufflenet_v1_caffe2", weights="torchvision", opset=12)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    a, b = Runner(model), Runner(onnx.load(str(zoo_file)))
    assert np.abs(a.run({a.input_names[0]: x})[0] - b.run({b.input_names[0]: x})[0]).max() < 1e-5


@contextlib.contextmanager
def _serve_once(body: bytes, name: str):
    """A local server returning ``body`` for any path; yields the URL of ``name``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    finally:
        httpd.shutdown()
