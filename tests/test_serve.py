"""`shufflenet serve` over real HTTP on 127.0.0.1: every endpoint, the binary tensor extension,
Triton's own client, limits and errors, batching, SIGTERM with requests in flight, the page in a
real headless Chromium. Small random-weight models, one ONNX Runtime thread; no timing asserts."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from shufflenet.runtime import Classifier  # noqa: E402
from shufflenet.serve import create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from shufflenet.onnx_export import export_onnx, save_model

    return save_model(export_onnx("shufflenet_v2_x0_5", weights="random:3", opset=13),
                      tmp_path_factory.mktemp("serve") / "tiny.onnx")


def _jpeg(seed: int, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)  # smooth blocks: a realistic JPEG
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Server:
    """A uvicorn server for one app in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app, *, wait_ready: bool = True) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # ready: every model loaded and warmed (or just live)
            try:
                if self.client.get("/v2/health/ready" if wait_ready else "/v2/health/live").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready")

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()

    def metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(self.client.get("/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


@pytest.fixture(scope="module")
def server(model_path):
    # two names for the same file, so /v1/classify has to name one; 8 MiB body limit so 413 is cheap
    app = create_app({"tiny": Classifier(model_path, threads=1), "other": Classifier(model_path, threads=1)},
                     max_batch=8, max_delay_ms=2, max_body_mb=8, decode_workers=2)
    s = Server(app)
    yield s
    s.close()


class Gate:
    """Holds the model's runs until opened, so queues and batches form deterministically."""

    def __init__(self, served) -> None:
        self.clf = served.clf
        self.inner = self.clf.outputs
        self.open_ = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.clf.outputs = self

    def __call__(self, batch):
        self.entered.set()
        self.open_.wait(60)
        self.batches.append(len(batch))
        return self.inner(batch)

    def release(self) -> None:
        self.open_.set()


@pytest.fixture
def gated(model_path):
    """make(**options) -> (server, gate) for a one-model app whose runs wait for the gate."""
    made = []

    def make(**options):
        options = {"max_batch": 8, "max_delay_ms": 0, "timeout_ms": 20_000, "decode_workers": 2, **options}
        app = create_app(Classifier(model_path, threads=1), **options)
        s = Server(app)
        made.append((s, Gate(app.state.shufflenet["tiny"])))
        return made[-1]

    yield make
    for s, gate in made:
        gate.release()
        s.close()


def _wait_for(cond, what: str, limit: float = 60) -> None:
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def _binary_request(x: np.ndarray, *, outputs=None, params=None, input_name="input") -> tuple[bytes, dict]:
    data = np.ascontiguousarray(x, "<f4").tobytes()
    req = {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                       "parameters": {"binary_data_size": len(data)}}]}
    if outputs is not None:
        req["outputs"] = outputs
    if params is not None:
        req["parameters"] = params
    head = json.dumps(req).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def _read_binary_response(r) -> tuple[dict, np.ndarray]:
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    out = head["outputs"][0]
    assert out["parameters"]["binary_data_size"] == len(r.content) - n
    return head, np.frombuffer(r.content[n:], "<f4").reshape(out["shape"])


# --------------------------------------------------------------------------- endpoints


def test_health_metadata_and_model_list(server):
    c = server.client
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get("/v2").json()
    assert meta["name"] == "shufflenet" and "binary_tensor_data" in meta["extensions"]
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        m = c.get(path).json()
        assert m["name"] == "tiny" and m["versions"] == ["1"]
        assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
        assert m["outputs"][0]["shape"] == [-1, 1000] and m["outputs"][0]["datatype"] == "FP32"
        assert m["parameters"]["output_kind"] == "logits"
    assert c.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert c.get("/v2/models/tiny/versions/1/ready").status_code == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/tiny/versions/2", "/no/such/route"):
        r = c.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert c.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    assert c.delete("/v2/models/tiny").status_code == 405
    models = c.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny", "other"] and models[0]["ready"] is True
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "<script>" in page.text


def test_ready_only_once_warmed(model_path, images224):
    app = create_app({"tiny": Classifier(model_path, threads=1)}, max_batch=4)
    gate = Gate(app.state.shufflenet["tiny"])  # holds the warm-up run
    s = Server(app, wait_ready=False)
    try:
        c = s.client
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": False}
        content, headers = _binary_request(images224[:1])
        r = c.post("/v2/models/tiny/infer", content=content, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "loading" in r.json()["error"]
        gate.release()
        _wait_for(lambda: c.get("/v2/health/ready").status_code == 200, "ready after warm-up")
        assert gate.batches[:2] == [1, 4]  # warmed at batch 1 and at --max-batch
        assert c.post("/v2/models/tiny/infer", content=content, headers=headers).status_code == 200
    finally:
        gate.release()
        s.close()


def test_infer_json_and_binary_match_the_runtime(server, images224):
    clf = server.app.state.shufflenet["tiny"].clf
    x = images224[:2]
    want = clf.outputs(x)
    # JSON in, JSON out: nested data
    r = server.client.post("/v2/models/tiny/infer", json={
        "id": "req-7", "inputs": [{"name": "input", "shape": [2, 3, 224, 224], "datatype": "FP32", "data": x.tolist()}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "tiny" and body["model_version"] == "1"
    out = body["outputs"][0]
    assert out["name"] == "output" and out["shape"] == [2, 1000] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(2, 1000), want, rtol=1e-4, atol=1e-4)
    # flat JSON data, one row
    r = server.client.post("/v2/models/tiny/versions/1/infer", json={
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x[0].ravel().tolist()}]})
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(1, 1000), want[:1], rtol=1e-4, atol=1e-4)
    # binary in, binary out (request-level and per-output parameter)
    for kw in ({"params": {"binary_data_output": True}},
               {"outputs": [{"name": "output", "parameters": {"binary_data": True}}]}):
        content, headers = _binary_request(x, **kw)
        r = server.client.post("/v2/models/tiny/infer", content=content, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        head, got = _read_binary_response(r)
        assert head["outputs"][0]["shape"] == [2, 1000]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # binary in, JSON out
    content, headers = _binary_request(x[:1])
    r = server.client.post("/v2/models/tiny/infer", content=content, headers=headers)
    assert "inference-header-content-length" not in r.headers
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(1, 1000), want[:1], rtol=1e-4, atol=1e-4)
    # gzip-compressed request body (tritonclient's request_compression_algorithm)
    content, headers = _binary_request(x[:1], params={"binary_data_output": True})
    r = server.client.post("/v2/models/tiny/infer", content=gzip.compress(content),
                           headers={**headers, "Content-Encoding": "gzip"})
    np.testing.assert_allclose(_read_binary_response(r)[1], want[:1], rtol=1e-4, atol=1e-4)


def test_tritonclient_works_unchanged(server, images224):
    httpclient = pytest.importorskip("tritonclient.http")
    clf = server.app.state.shufflenet["tiny"].clf
    x = images224[:3]
    want = clf.outputs(x)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        assert client.get_model_metadata("tiny")["inputs"][0]["shape"] == [-1, 3, 224, 224]
        for binary_in, binary_out, compression in ((True, None, None), (False, False, None), (True, True, "gzip")):
            rows = len(x) if binary_in else 1  # JSON text is ~10x the bytes: one row
            inp = httpclient.InferInput("input", [rows, 3, 224, 224], "FP32")
            inp.set_data_from_numpy(x[:rows], binary_data=binary_in)
            outputs = None if binary_out is None else [httpclient.InferRequestedOutput("output", binary_data=binary_out)]
            res = client.infer("tiny", [inp], outputs=outputs, request_id="t1",
                               request_compression_algorithm=compression)
            assert res.get_response()["id"] == "t1"
            np.testing.assert_allclose(res.as_numpy("output"), want[:rows], rtol=1e-4, atol=1e-4)
        with pytest.raises(Exception, match="FP32"):
            bad = httpclient.InferInput("input", [1, 3, 224, 224], "FP64")
            bad.set_data_from_numpy(x[:1].astype(np.float64))
            client.infer("tiny", [bad])
    finally:
        client.close()


def test_classify_gives_what_the_cli_gives(server, model_path, tmp_path, capsys):
    from shufflenet.cli import main

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_jpeg(5, (500, 375)))
    assert main(["classify", str(photo), "--model", str(model_path), "--json", "--top", "3"]) == 0
    cli = json.loads(capsys.readouterr().out)["results"][0]["top"]
    answers = [
        server.client.post("/v1/models/tiny/classify?top=3", content=photo.read_bytes(),
                           headers={"Content-Type": "image/jpeg"}),
        server.client.post("/v1/models/other/classify", params={"top": 3},
                           files={"file": ("photo.jpg", photo.read_bytes(), "image/jpeg")}),
        server.client.post("/v1/models/tiny/classify?top=3", content=photo.read_bytes()),  # no Content-Type
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["preprocessing"]["description"] == "shorter resize 256, crop 224"
        assert got["preprocessing"]["crop"] == 224 and got["output_kind"] == "logits"
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in cli]
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in cli]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p["probability"] for p in cli], rtol=1e-4)
    assert len(server.client.post("/v1/models/tiny/classify", content=photo.read_bytes()).json()["predictions"]) == 5
    # two models served: /v1/classify must be told which
    r = server.client.post("/v1/classify", content=photo.read_bytes())
    assert r.status_code == 404 and "tiny" in r.json()["error"]


# --------------------------------------------------------------------------- limits and errors


def _png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def test_limits_and_errors(server, images224):
    c = server.client
    post = c.post
    ok = images224[:1]

    def err(r, status):
        assert r.status_code == status, (r.status_code, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"]
        return r.json()["error"]

    # 413: declared and chunked (no Content-Length), over the 8 MiB limit
    big, headers = _binary_request(np.repeat(ok, 15, axis=0))
    assert "8,388,608" in err(post("/v2/models/tiny/infer", content=big, headers=headers), 413)
    chunks = [big[i:i + 1_000_000] for i in range(0, len(big), 1_000_000)]
    err(post("/v2/models/tiny/infer", content=iter(chunks), headers=headers), 413)
    err(post("/v1/models/tiny/classify", content=b"\xff" * 9_000_000, headers={"Content-Type": "image/jpeg"}), 413)
    # a gzip bomb: small on the wire, over the limit when inflated
    err(post("/v2/models/tiny/infer", content=gzip.compress(b" " * 20_000_000),
             headers={"Content-Encoding": "gzip"}), 413)
    err(post("/v2/models/tiny/infer", content=b"{}", headers={"Content-Encoding": "br"}), 415)

    # tensors: shape, datatype, names, sizes, malformed bodies -> 400
    def infer(inp, **kw):
        return post("/v2/models/tiny/infer", json={"inputs": [inp], **kw})

    good = {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": ok.ravel().tolist()}
    assert "shape" in err(infer({**good, "shape": [1, 3, 112, 112]}), 400)
    assert "shape" in err(infer({**good, "shape": [3, 224, 224]}), 400)
    assert "FP32" in err(infer({**good, "datatype": "FP64"}), 400)
    assert "INT8" in err(infer({**good, "datatype": "INT8"}), 400)
    assert "unknown input" in err(infer({**good, "name": "x"}), 400)
    assert "values" in err(infer({**good, "data": [1.0, 2.0]}), 400)
    assert "numbers" in err(infer({**good, "data": ["a"] * 10}), 400)
    assert "unknown output" in err(infer(good, outputs=[{"name": "probs"}]), 400)
    err(post("/v2/models/tiny/infer", json={"inputs": [good, good]}), 400)
    err(post("/v2/models/tiny/infer", content=b"{not json"), 400)
    err(post("/v2/models/tiny/infer", json=[1, 2]), 400)
    content, headers = _binary_request(ok)
    err(post("/v2/models/tiny/infer", content=content[:-4], headers=headers), 400)  # short binary data
    err(post("/v2/models/tiny/infer", content=content, headers={"Inference-Header-Content-Length": "x"}), 400)
    err(post("/v2/models/tiny/infer", content=content, headers={"Inference-Header-Content-Length": str(10**7)}), 400)
    assert "timeout" in err(infer(good, parameters={"timeout": -5}), 400)

    # images: not an image, a refused format, too many pixels before or after resizing
    cls = "/v1/models/tiny/classify"
    assert "allowed format" in err(post(cls, content=b"this is text, not a picture"), 400)
    ico = io.BytesIO()
    Image.new("RGB", (32, 32)).save(ico, "ICO")
    assert "allowed format" in err(post(cls, content=ico.getvalue(), headers={"Content-Type": "application/octet-stream"}), 400)
    err(post(cls, content=b"<svg/>", headers={"Content-Type": "image/svg+xml"}), 415)
    err(post(cls, content=b"hello", headers={"Content-Type": "text/plain"}), 415)
    err(post(cls, files={"file": ("a.txt", b"hello", "text/plain")}), 415)
    assert "'file'" in err(post(cls, files={"other": ("a.jpg", _jpeg(1), "image/jpeg")}), 400)
    assert "pixels" in err(post(cls, content=_png((10_000, 10_000), "1")), 400)  # 100 M pixels
    assert "resizes to" in err(post(cls, content=_png((2, 900))), 400)  # 256 x 115,200 after resizing
    err(post(cls, content=_jpeg(2)[:-400]), 400)  # truncated
    err(post(cls, content=_jpeg(2)[:200]), 400)
    err(post(cls, content=b""), 400)
    for top in ("0", "1001", "x"):
        assert "top" in err(post(f"{cls}?top={top}", content=_jpeg(3)), 400)
    err(post("/v1/models/nope/classify", content=_jpeg(3)), 404)

    # every one of those was counted, by model and status; unknown names share one label
    m = server.metrics()
    assert m[("shufflenet_requests_total", (("endpoint", "infer"), ("model", "tiny"), ("status", "413")))] >= 2
    assert m[("shufflenet_requests_total", (("endpoint", "classify"), ("model", "tiny"), ("status", "415")))] >= 3
    assert m[("shufflenet_requests_total", (("endpoint", "classify"), ("model", "<unknown>"), ("status", "404")))] >= 1
    # and the server still answers
    assert post(cls, content=_jpeg(3)).status_code == 200


# --------------------------------------------------------------------------- queue, deadline, batching


def test_queue_bound_503_and_deadline_504(gated, images224):
    s, gate = gated(max_queue=3)
    served = s.app.state.shufflenet["tiny"]
    body, headers = _binary_request(images224[:1])
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(s.client.post, "/v2/models/tiny/infer", content=body, headers=headers)
        _wait_for(gate.entered.is_set, "the first batch reached the model")
        # a request that asks for a 0.2 s deadline (Triton's "timeout", microseconds) while the model is busy
        late, late_headers = _binary_request(images224[:1], params={"timeout": 200_000})
        r = s.client.post("/v2/models/tiny/infer", content=late, headers=late_headers)
        assert r.status_code == 504 and "deadline" in r.json()["error"]
        assert served.rows_waiting == 0  # it left the queue
        queued = [pool.submit(s.client.post, "/v2/models/tiny/infer", content=body, headers=headers) for _ in range(3)]
        _wait_for(lambda: served.rows_waiting == 3, "three rows queued")
        r = s.client.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        r = s.client.post("/v1/classify", content=_jpeg(4))  # one model served: /v1/classify works
        assert r.status_code == 503 and "retry-after" in r.headers
        assert s.metrics()[("shufflenet_queue_depth", (("model", "tiny"),))] == 3
        gate.release()
        assert first.result().status_code == 200
        assert [q.result().status_code for q in queued] == [200, 200, 200]
    assert gate.batches == [1, 3]  # the late request never ran; the three queued rows ran as one batch
    assert s.client.post("/v1/classify", content=_jpeg(4)).status_code == 200


def test_image_deadline_504(gated):
    s, gate = gated(timeout_ms=300)
    r = s.client.post("/v1/classify", content=_jpeg(6))
    assert r.status_code == 504 and "deadline" in r.json()["error"]


def test_batches_form_and_a_bad_request_never_disturbs_its_batch(gated, images224):
    from shufflenet.runtime import ModelRunError

    s, gate = gated(max_queue=64)
    served = s.app.state.shufflenet["tiny"]
    clf = served.clf
    photos = [_jpeg(10 + i) for i in range(3)]
    alone = [clf.top(clf.probabilities_from(clf.runner.outputs(clf.preprocess(p))), 5)[0] for p in photos]
    x = images224[:2]
    want = gate.inner(x)
    poison = np.full((1, 3, 224, 224), 7.0, np.float32)

    real = gate.inner

    def model_that_fails_on_poison(batch):  # a model error caused by one request's data
        if np.any(batch[:, 0, 0, 0] == 7.0):
            raise ModelRunError("running the model failed: poisoned row")
        return real(batch)

    gate.inner = model_that_fails_on_poison
    with ThreadPoolExecutor(8) as pool:
        blocker = pool.submit(s.client.post, "/v1/classify", content=photos[0])
        _wait_for(gate.entered.is_set, "the first batch reached the model")
        futures = [pool.submit(s.client.post, "/v1/classify", content=p) for p in photos[1:]]
        body, headers = _binary_request(x, params={"binary_data_output": True})
        tensor = pool.submit(s.client.post, "/v2/models/tiny/infer", content=body, headers=headers)
        pbody, pheaders = _binary_request(poison)
        poisoned = pool.submit(s.client.post, "/v2/models/tiny/infer", content=pbody, headers=pheaders)
        bad = pool.submit(s.client.post, "/v1/classify", content=b"GIF89a broken")  # refused before batching
        _wait_for(lambda: served.rows_waiting == 5, "five rows queued (2 photos, 2 tensor rows, 1 poisoned)")
        gate.release()
        results = [blocker.result()] + [f.result() for f in futures]
        assert bad.result().status_code == 400
        assert poisoned.result().status_code == 500 and "failed" in poisoned.result().json()["error"]
        assert tensor.result().status_code == 200
    np.testing.assert_allclose(_read_binary_response(tensor.result())[1], want, rtol=1e-4, atol=1e-4)
    for r, expect in zip(results, alone):
        assert r.status_code == 200
        got = r.json()["predictions"]
        assert [p["index"] for p in got] == [p.index for p in expect]
        np.testing.assert_allclose([p["probability"] for p in got], [p.probability for p in expect], rtol=1e-4)
    assert 5 in gate.batches  # the four good rows and the poisoned one ran as one batch first
    m = s.metrics()
    count = m[("shufflenet_batch_size_count", (("model", "tiny"),))]
    ones = m[("shufflenet_batch_size_bucket", (("le", "1.0"), ("model", "tiny")))]
    assert count > ones  # a batch of more than one row formed, and the metrics show it
    assert m[("shufflenet_batch_size_sum", (("model", "tiny"),))] >= 6


def test_batches_form_under_plain_concurrency(server):
    photos = [_jpeg(30 + i) for i in range(4)]
    before = server.metrics()
    key = ("shufflenet_batch_size_count", (("model", "tiny"),))
    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda i: server.client.post("/v1/models/tiny/classify", content=photos[i % 4]), range(48)))
    assert all(r.status_code == 200 for r in rs)
    after = server.metrics()
    rows = after[("shufflenet_batch_size_sum", (("model", "tiny"),))] - before.get(
        ("shufflenet_batch_size_sum", (("model", "tiny"),)), 0)
    runs = after[key] - before.get(key, 0)
    assert rows == 48 and runs >= 1


# --------------------------------------------------------------------------- the CLI and SIGTERM


def test_cli_errors_are_one_line(model_path, capsys):
    from shufflenet.cli import main

    assert main(["serve", "--model", "missing.onnx"]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_path), "--model", str(model_path)]) == 2
    assert "two models are named 'tiny'" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(model_path), "--port", str(port), "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("shufflenet serve: error: cannot listen on") and err.count("\n") == 1
    # the CLI refuses a bad --port as a usage error (tests/test_cli_conventions.py); the library
    # refuses it too, for callers of serve(): one line, before any model loads (99999 was a traceback)
    from shufflenet.serve import ServeError, serve

    for port in (99999, -1):
        with pytest.raises(ServeError) as e:
            serve(["missing.onnx"], port=port)
        assert str(e.value) == f"cannot listen on 127.0.0.1:{port}: the port must be 0 to 65535 (0: a free one)"


def test_options_and_app_arguments(model_path):
    from shufflenet.serve import ServeError, ServeOptions

    with pytest.raises(ServeError, match="max_batch=0"):
        ServeOptions(max_batch=0)
    with pytest.raises(ServeError, match="not both"):
        create_app(str(model_path), options=ServeOptions(), max_batch=2)
    clf = Classifier(model_path, threads=1)
    app = create_app([clf], options=ServeOptions(max_batch=4))
    assert list(app.state.shufflenet) == ["tiny"] and app.state.options.max_batch == 4
    with pytest.raises(ServeError, match="two models are named 'tiny'"):
        create_app([clf, clf])
    with pytest.raises(ServeError, match="cannot be used in a URL"):
        create_app({"a b": clf})


def test_a_named_model_file_may_have_any_stem(model_path, tmp_path):
    """{name: path}: the name given is the one served, whatever the file is called."""
    spaced = tmp_path / "my model.onnx"
    shutil.copy(model_path, spaced)
    assert list(create_app({"tiny": str(spaced)}).state.shufflenet) == ["tiny"]
    assert list(create_app({"tiny": f"x={spaced}"}).state.shufflenet) == ["tiny"]  # as before: NAME= is dropped


def test_model_names(model_path, tmp_path):
    from shufflenet.serve import model_name

    assert model_name(str(model_path)) == "tiny"
    assert model_name("fast=" + str(model_path)) == "fast"
    assert model_name("shufflenet_v2_x0_5:random") == "shufflenet_v2_x0_5:random"
    (tmp_path / "m.tar.gz").write_bytes(b"")
    assert model_name(str(tmp_path / "m.tar.gz")) == "m"


def test_sigterm_finishes_requests_in_flight_and_exits_0(model_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a 3 s gathering window: requests sit in flight, waiting for their batch, when SIGTERM arrives
    proc = subprocess.Popen([sys.executable, "-m", "shufflenet", "serve", "--model", f"m={model_path}",
                             "--port", "0", "--threads", "1", "--max-batch", "64", "--max-delay-ms", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("shufflenet serve: ready at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[4]
        client = httpx.Client(base_url=url, timeout=60)
        photo = _jpeg(9)
        with ThreadPoolExecutor(4) as pool:
            inflight = [pool.submit(httpx.post, f"{url}/v1/classify", content=photo, timeout=60) for _ in range(4)]

            def queued():
                text = client.get("/metrics").text
                return 'shufflenet_queue_depth{model="m"} 4.0' in text

            _wait_for(queued, "four requests waiting for their batch")
            proc.send_signal(signal.SIGTERM)
            codes = [f.result().status_code for f in inflight]
        assert codes == [200, 200, 200, 200]
        assert proc.wait(60) == 0
        with pytest.raises(httpx.TransportError):
            client.get("/v2/health/live")
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- the page, in a real browser


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_page_in_headless_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = tmp_path / "drawn.png"
    img = Image.new("RGB", (400, 300), (250, 250, 240))
    from PIL import ImageDraw

    ImageDraw.Draw(img).ellipse((80, 50, 320, 260), fill=(200, 60, 20), outline=(20, 20, 20), width=8)
    img.save(photo)
    api = server.client.post("/v1/models/other/classify?top=5", content=photo.read_bytes(),
                             headers={"Content-Type": "image/png"}).json()["predictions"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking", "--disable-component-update",
                                          "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_selector("#model option[value='other']", state="attached")
            page.select_option("#model", "other")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("body[data-state='done']", timeout=60_000)
            rows = page.eval_on_selector_all(
                "#results li", "els => els.map(e => [Number(e.dataset.index), Number(e.dataset.probability),"
                               " e.querySelector('.label').textContent])")
            assert page.eval_on_selector("#preview", "e => e.naturalWidth") == 400  # the photo is shown
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert [r[0] for r in rows] == [p["index"] for p in api]
    assert [r[2] for r in rows] == [p["label"] for p in api]
    np.testing.assert_allclose([r[1] for r in rows], [p["probability"] for p in api], rtol=1e-6)
    assert shot.stat().st_size > 5000 and Image.open(shot).size[0] == 900
