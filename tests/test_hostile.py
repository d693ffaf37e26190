"""Hostile and broken input (issue 13): each case builds its hostile file here and checks that it
ends in one ShuffleNetError, bounded, before the work it would cost."""

import gzip
import json
import http.server
import io
import lzma
import os
import pickle
import struct
import tarfile
import threading
import time
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from shufflenet import hub
from shufflenet.bundle import BundleError, find_test_sets, load_model_checked, safe_extract
from shufflenet.errors import ShuffleNetError, UnsafeFileError, WeightsError
from shufflenet.labels import LabelsError, load_labels
from shufflenet.preprocess import ImageError, load_image, preprocess_image
from shufflenet.runtime import expand_inputs
from shufflenet.specs import Artifact
from shufflenet.weights import load_weights

SECRET = np.arange(4, dtype=np.float32) + 1000  # what a leak would print


def _if_model(location: str, *, offset=None, length=None) -> onnx.ModelProto:
    """y = If(cond) then <initializer in the then-branch, stored as external data> else zeros."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            w.external_data.add(key=key, value=str(value))
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])], initializer=[w])
    zeros = numpy_helper.from_array(np.zeros(4, np.float32), "z")
    other = helper.make_graph([helper.make_node("Constant", [], ["e"], value=zeros)], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                              "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


# --------------------------------------------------------------------------- 1, 2: no reads outside


def test_1_subgraph_external_data_never_resolves_against_the_working_directory(tmp_path, monkeypatch):
    cwd, models = tmp_path / "cwd", tmp_path / "models"
    cwd.mkdir(), models.mkdir()
    (cwd / "secret.bin").write_bytes(SECRET.tobytes())
    onnx.save(_if_model("secret.bin"), models / "evil.onnx")
    monkeypatch.chdir(cwd)
    with pytest.raises(BundleError, match="secret.bin.*missing"):
        load_model_checked(models / "evil.onnx")


def test_1_subgraph_external_data_inside_the_folder_is_embedded(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 8 + SECRET.tobytes())
    onnx.save(_if_model("w.bin", offset=8, length=16), tmp_path / "m.onnx")
    model = load_model_checked(tmp_path / "m.onnx")
    from shufflenet.bundle import all_tensors

    assert not any(t.data_location == TensorProto.EXTERNAL for t in all_tensors(model))
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"cond": np.array(True)})[0], SECRET)


def test_1_sparse_initializer_external_data_is_checked(tmp_path, monkeypatch):
    model = _if_model("w.bin")
    values = TensorProto(name="sv", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    values.external_data.add(key="location", value="../secret.bin")
    sp = model.graph.sparse_initializer.add()
    sp.values.CopyFrom(values)
    sp.indices.CopyFrom(numpy_helper.from_array(np.array([0], np.int64), "si"))
    sp.dims.extend([4])
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    (tmp_path / "m").mkdir()
    onnx.save(model, tmp_path / "m" / "m.onnx")
    with pytest.raises(UnsafeFileError, match="outside the model folder"):
        load_model_checked(tmp_path / "m" / "m.onnx")


def test_2_test_data_pb_external_data_never_reads_the_working_directory(tmp_path, monkeypatch):
    cwd, bundle = tmp_path / "cwd", tmp_path / "bundle"
    (bundle / "test_data_set_0").mkdir(parents=True), cwd.mkdir()
    (cwd / "secret.bin").write_bytes(SECRET.tobytes())
    t = TensorProto(name="x", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="secret.bin")
    (bundle / "test_data_set_0" / "input_0.pb").write_bytes(t.SerializeToString())
    monkeypatch.chdir(cwd)
    with pytest.raises(BundleError, match="missing"):
        find_test_sets(bundle)
    # inside its own folder it is read (and only from there)
    (bundle / "test_data_set_0" / "secret.bin").write_bytes(SECRET.tobytes())
    np.testing.assert_array_equal(find_test_sets(bundle)[0].inputs[0][1], SECRET)


# --------------------------------------------------------------------------- 3..7: bounded work


def test_3_resized_size_is_bounded_before_resizing(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (600, 1), (9, 9, 9)).save(buf, "PNG")  # resizes to 256 x 153,600
    with pytest.raises(ImageError, match="more than .* pixels"):
        preprocess_image(buf.getvalue())
    Image.new("RGB", (400, 1)).save(tmp_path / "ok.png")  # 256 x 102,400: allowed
    assert preprocess_image(tmp_path / "ok.png").shape == (1, 3, 224, 224)


class _Server:
    """One URL with a chosen body: ``body`` bytes then close, or a byte every ``drip`` seconds."""

    def __init__(self, body: bytes, *, length: int | None = None, drip: float | None = None):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    if drip is None:
                        self.wfile.write(body)
                    else:
                        for b in body:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(drip)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SHUFFLENET_MIRROR", raising=False)
    return tmp_path / "cache"


def _unsized(url):
    return Artifact(name="torchvision-x", variant="shufflenet_v2_x0_5", kind="torchvision-pth", urls=(url,),
                    sha256_prefix="00000000", size=None)


def _leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_4_unsized_download_is_capped(cache, monkeypatch):
    monkeypatch.setattr(hub, "MAX_UNSIZED_DOWNLOAD_BYTES", 1 << 20)
    with _Server(b"x" * (3 << 20)) as server:  # no Content-Length: only the cap stops it
        with pytest.raises(hub.HubError, match="more than the limit of 1,048,576 bytes") as e:
            hub.fetch(_unsized(server.url))
    assert [type(f) for f in e.value.failures] == [hub.DownloadTooLargeError]
    assert f"{server.url}: {server.url}" not in str(e.value)  # the URL once beside its reason
    assert _leftovers(cache) == []


def test_4_unsized_download_with_a_large_content_length_is_refused_before_reading(cache, monkeypatch):
    monkeypatch.setattr(hub, "MAX_UNSIZED_DOWNLOAD_BYTES", 1 << 20)
    with _Server(b"x" * 10, length=5 << 20) as server:
        with pytest.raises(hub.HubError, match="5,242,880 bytes, more than the limit") as e:
            hub.fetch(_unsized(server.url))
    assert [type(f) for f in e.value.failures] == [hub.DownloadTooLargeError]
    assert f"{server.url}: {server.url}" not in str(e.value)  # the URL once beside its reason
    assert _leftovers(cache) == []


def test_5_a_dripping_server_meets_the_overall_deadline(cache, monkeypatch):
    monkeypatch.setattr(hub, "DOWNLOAD_DEADLINE_S", 0.5)
    with _Server(b"y" * 200, drip=0.05) as server:  # 10 s in all, each read well inside the socket timeout
        with pytest.raises(hub.HubError, match="deadline") as e:
            hub.fetch(_unsized(server.url))
    assert [type(f) for f in e.value.failures] == [hub.DownloadDeadlineError]
    assert _leftovers(cache) == []


@pytest.fixture
def fifo(tmp_path):
    """A FIFO named like an image; a watchdog unblocks a reader that opened it anyway."""
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    stop = threading.Event()

    def unblock():
        while not stop.wait(2.0):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # EOF for a blocked reader
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    yield path
    stop.set()


def test_6_fifo_images_are_refused_not_opened(tmp_path, fifo):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    files, problems = expand_inputs([str(tmp_path / "*.png")])
    assert files == [tmp_path / "good.png"]
    assert problems == [(str(fifo), "is a FIFO, not a regular file; refused")]
    files, problems = expand_inputs([str(fifo)])
    assert not files and "FIFO" in problems[0][1]
    with pytest.raises(ImageError, match="FIFO"):
        load_image(fifo)


def test_6_fifo_labels_file_is_refused(fifo, tmp_path):
    with pytest.raises(LabelsError, match="FIFO"):
        load_labels(fifo)
    from shufflenet.evaluate import DatasetError, discover

    with pytest.raises(DatasetError, match="FIFO"):  # evaluate --label-file
        discover(tmp_path, label_file=fifo)


def _zip_checkpoint(path, pkl: bytes, members: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for name, data in (members or {}).items():
            z.writestr(f"archive/data/{name}", data)


def _global_pickle(size, stride, numel=1) -> bytes:
    """Hand-written protocol-2 pickle of {'w': _rebuild_tensor_v2(storage, 0, size, stride, False, {})}."""
    def s(text):
        b = text.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    storage = (b"(" + s("storage") + b"ctorch\nFloatStorage\n" + s("0") + s("cpu")
               + b"J" + struct.pack("<i", numel) + b"tQ")
    call = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"J\x00\x00\x00\x00"
            + ints(size) + ints(stride) + b"\x89}tR")
    return b"\x80\x02}" + s("w") + call + b"s."


def test_7_stride_zero_tensor_is_refused_before_it_is_materialised(tmp_path):
    from shufflenet._torch_pickle import load_state_dict

    path = tmp_path / "stride0.pth"
    _zip_checkpoint(path, _global_pickle((8192, 9600), (0, 0)), {"0": b"\0" * 4})  # 314 MB of one float
    assert path.stat().st_size < 1000
    with pytest.raises(UnsafeFileError, match="over the limit"):
        load_state_dict(path)


def test_7_stride_zero_tensor_is_refused_through_torch_too(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "stride0.pth"
    torch.save({"w": torch.zeros(1).expand(8192, 9600)}, path)
    with pytest.raises(UnsafeFileError, match="over the limit"):
        load_weights(path)


def test_7_zip_bomb_storage_is_refused_before_inflating(tmp_path):
    from shufflenet._torch_pickle import load_state_dict

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", _global_pickle((4,), (1,), numel=4))
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            block = b"\0" * (1 << 20)
            for _ in range(300):
                f.write(block)
    assert path.stat().st_size < 2 << 20
    with pytest.raises(UnsafeFileError, match="unpacks to"):
        load_state_dict(path)
    with pytest.raises(UnsafeFileError, match="unpacks to"):
        load_weights(path)


def test_7_npz_header_is_checked_before_allocating(tmp_path):
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100000, 100000)})
    member.write(b"\0" * 16)
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", member.getvalue())
    with pytest.raises(UnsafeFileError, match="over the limit"):
        load_weights(path)


def _sparse_tar(path, realsize):
    """A PAX (GNU sparse 1.0) member: a few header bytes that unpack to ``realsize`` bytes of holes."""
    info = tarfile.TarInfo("b/hole.bin")
    sparse_map = b"1\n0\n0\n".ljust(512, b"\0")  # one region: offset 0, 0 bytes; the rest is a hole
    info.size = len(sparse_map)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "b/hole.bin",
                        "GNU.sparse.realsize": str(realsize)}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(sparse_map))


def test_7_sparse_tar_member_is_refused(tmp_path):
    _sparse_tar(tmp_path / "s.tar.gz", 1 << 20)
    with tarfile.open(tmp_path / "s.tar.gz") as tar:
        assert tar.getmembers()[0].issparse()  # the hostile file is what it claims
    with pytest.raises(UnsafeFileError, match="sparse file"):
        safe_extract(tmp_path / "s.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_7_member_over_the_member_cap_is_refused_from_its_header(tmp_path):
    info = tarfile.TarInfo("b/big")
    info.size = 5000
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        tar.addfile(info, io.BytesIO(b"\0" * 5000))
    with pytest.raises(UnsafeFileError, match="5,000 bytes, more than the limit of 1,000"):
        safe_extract(tmp_path / "b.tar", tmp_path / "out", max_member_bytes=1000)


# --------------------------------------------------------------------------- 10: one clear error


def test_10_self_referencing_and_deep_dicts_in_a_pth(tmp_path):
    from shufflenet._torch_pickle import load_state_dict

    d: dict = {}
    d["self"] = d
    _zip_checkpoint(tmp_path / "loop.pth", pickle.dumps(d, protocol=2))
    with pytest.raises(WeightsError, match="contains itself"):
        load_state_dict(tmp_path / "loop.pth")
    n = 50_000
    deep = b"\x80\x02" + (b"}X\x01\x00\x00\x00a") * n + b"}" + b"s" * n + b"."
    _zip_checkpoint(tmp_path / "deep.pth", deep)
    with pytest.raises(WeightsError, match="nested deeper"):
        load_state_dict(tmp_path / "deep.pth")


def test_10_deep_safetensors_header(tmp_path):
    head = b"[" * 100_000
    (tmp_path / "d.safetensors").write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(WeightsError, match="nested deeper"):
        load_weights(tmp_path / "d.safetensors")


def test_10_deep_json_labels_and_short_tsv_rows(tmp_path):
    (tmp_path / "l.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LabelsError, match="nested deeper"):
        load_labels(tmp_path / "l.json")
    (tmp_path / "l.tsv").write_text("index\twnid\tname\n0\tn01\tcat\n1\tn02\n")
    with pytest.raises(LabelsError, match=r"l.tsv:3: expected"):
        load_labels(tmp_path / "l.tsv")


@pytest.mark.parametrize("offset,length", [(0, 1 << 40), (-5, 16), (20, 16), ("x", 16)])
def test_10_external_data_offset_and_length_are_checked(tmp_path, offset, length):
    (tmp_path / "w.bin").write_bytes(SECRET.tobytes())
    onnx.save(_if_model("w.bin", offset=offset, length=length), tmp_path / "m.onnx")
    with pytest.raises(ShuffleNetError, match="w.bin|offset"):
        load_model_checked(tmp_path / "m.onnx")


def _good_tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = os.urandom(4000)  # incompressible: corruption lands in data, not in a header
        info = tarfile.TarInfo("b/f.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_10_corrupt_compressed_streams_and_gzip_crc(tmp_path):
    raw = _good_tar_bytes()
    gz = bytearray(gzip.compress(raw))
    gz[-8] ^= 0xFF  # the CRC32 in the trailer
    (tmp_path / "crc.tar.gz").write_bytes(gz)
    with pytest.raises(BundleError, match="corrupt archive"):
        safe_extract(tmp_path / "crc.tar.gz", tmp_path / "o1")
    second = gzip.compress(raw) + bytearray(gzip.compress(b"\0" * 2048))[:12] + b"\xff" * 40
    (tmp_path / "two.tar.gz").write_bytes(second)
    with pytest.raises(BundleError, match="corrupt archive"):
        safe_extract(tmp_path / "two.tar.gz", tmp_path / "o2")
    xz = bytearray(lzma.compress(raw))
    xz[len(xz) // 2] ^= 0xFF
    (tmp_path / "bad.tar.xz").write_bytes(xz)
    with pytest.raises(BundleError):
        safe_extract(tmp_path / "bad.tar.xz", tmp_path / "o3")
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


def test_12_fifo_in_a_tar_is_called_a_fifo(tmp_path):
    info = tarfile.TarInfo("b/pipe")
    info.type = tarfile.FIFOTYPE
    with tarfile.open(tmp_path / "f.tar", "w") as tar:
        tar.addfile(info)
    with pytest.raises(UnsafeFileError, match="is a FIFO"):
        safe_extract(tmp_path / "f.tar", tmp_path / "out")


# --------------------------------------------------------------------------- 11, 12: one clear line


def _run(capsys, *argv):
    from shufflenet.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], err


def test_11_cache_folder_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    rc, _, err = _run(capsys, "fetch", "shufflenet-v2-12")
    assert rc == 2
    _one_line(err, "shufflenet fetch: error:", str(tmp_path / "cache"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rc, _, err = _run(capsys, "classify", tmp_path / "a.png", "--model", "shufflenet-v2-12")
    assert rc == 2
    _one_line(err, "shufflenet classify: error:", str(tmp_path / "cache"))


def test_11_demo_data_onto_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, _, err = _run(capsys, "demo-data", tmp_path / "f", "--classes", "2", "--per-class", "2")
    assert rc == 2
    _one_line(err, "shufflenet demo-data: error:", str(tmp_path / "f"))


def test_11_export_onto_a_folder_and_a_full_disk(tmp_path, monkeypatch, capsys):
    (tmp_path / "dir.onnx").mkdir()
    rc, _, err = _run(capsys, "export", "shufflenet_v2_x0_5", "-o", tmp_path / "dir.onnx")
    assert rc == 2
    _one_line(err, "shufflenet export: error:", str(tmp_path / "dir.onnx"))
    import errno

    import shufflenet.weights as weights

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(weights.os, "replace", full)
    rc, _, err = _run(capsys, "export", "shufflenet_v2_x0_5", "-o", tmp_path / "m.onnx")
    assert rc == 2
    _one_line(err, "shufflenet export: error:", "No space left on device")


def test_11_train_onto_a_file(tmp_path, capsys):
    pytest.importorskip("torch")
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "data" / c / "x.png")
    (tmp_path / "run").write_text("a file")
    rc, _, err = _run(capsys, "train", "--data", tmp_path / "data", "-o", tmp_path / "run", "--epochs", "1")
    assert rc == 2
    _one_line(err, "shufflenet train: error:", str(tmp_path / "run"))


@pytest.mark.parametrize("config,classes", [("[1]", '["a", "b"]'), ('{"variant": 5}', '["a", "b"]'),
                                            ('{"variant": "shufflenet_v2_x0_5"}', '{"a": 1}')])
def test_11_malformed_run_config_and_classes(tmp_path, capsys, config, classes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"")
    (run / "config.json").write_text(config)
    (run / "classes.json").write_text(classes)
    rc, _, err = _run(capsys, "export", "shufflenet_v2_x0_5", "--weights", run, "-o", tmp_path / "m.onnx")
    assert rc == 2
    _one_line(err, "shufflenet export: error:")


@pytest.mark.parametrize("config", ["[1]", '{"data": 5}', '{"data": "d", "epochs": "ten"}', "[" * 5000])
def test_11_malformed_config_on_resume(tmp_path, capsys, config):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(config)
    rc, _, err = _run(capsys, "train", "--resume", tmp_path / "run")
    assert rc == 2
    _one_line(err, "shufflenet train: error:", "config.json")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from shufflenet.onnx_export import export_onnx, save_model

    return save_model(export_onnx("shufflenet_v2_x0_5", weights="random:0"),
                      tmp_path_factory.mktemp("m") / "m.onnx")


def test_12_evaluate_exits_1_when_images_were_skipped(tmp_path, capsys, random_model, monkeypatch):
    folder = tmp_path / "data" / "n01440764"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    args = ("evaluate", "--model", random_model, "--data", tmp_path / "data", "--threads", "1")
    rc, out, _ = _run(capsys, *args)
    assert rc == 1 and "bad.png" in out
    rc, out, _ = _run(capsys, *args, "--json")
    assert rc == 1 and len(json.loads(out)["skipped"]) == 1
    # an unreadable class folder is reported, not silently empty
    (folder / "bad.png").unlink()
    (tmp_path / "data" / "n01443537").mkdir()
    real = os.scandir

    def scandir(path="."):  # as root, chmod would not stop the listing
        if os.path.basename(os.fspath(path)) == "n01443537":
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc, out, _ = _run(capsys, *args)
    assert rc == 1 and "n01443537: cannot list folder (Permission denied)" in out


def test_12_train_refuses_an_empty_class_folder(tmp_path):
    from shufflenet.train import TrainError, find_images

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / c / "x.png")
    (tmp_path / "c").mkdir()
    with pytest.raises(TrainError, match="holds no images"):
        find_images(tmp_path)


def test_12_labels_are_printed_with_control_characters_escaped(tmp_path, capsys, random_model):
    (tmp_path / "labels.txt").write_text("".join(f"\x1b[2J\x1b]0;pwned\x07class {i}\n" for i in range(1000)))
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "a.png")
    rc, out, _ = _run(capsys, "classify", tmp_path / "a.png", "--model", random_model,
                      "--labels", tmp_path / "labels.txt", "--top", "2")
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b]0;pwned\\x07class" in out


def test_12_validate_json_is_strict(tmp_path, capsys):
    from shufflenet.bundle import write_bundle

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # the expected output has another shape: infinite errors, which JSON cannot spell
    folder = write_bundle(model, tmp_path, "b", [(np.ones(3, np.float32), np.ones(4, np.float32))])
    rc, out, _ = _run(capsys, "validate", folder, "--json")
    assert rc == 1

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(out, parse_constant=refuse)
    assert data["sets"][0]["max_abs_err"] is None and data["passed"] is False


def test_12_damaged_torch_checkpoint_is_not_called_code_execution(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(b"\x80\x02" + b"\xfe" * 50)  # an unknown opcode: damaged, not code
    with pytest.raises(WeightsError, match="Unsupported operand") as info:
        load_weights(path)
    assert not isinstance(info.value, UnsafeFileError)


def test_12_bundle_and_extracted_folders_get_the_usual_mode(tmp_path):
    from shufflenet.bundle import pack_tar, write_bundle

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    mask = os.umask(0o022)
    try:
        folder = write_bundle(model, tmp_path, "b", [(np.ones(3, np.float32), np.ones(3, np.float32))])
        assert folder.stat().st_mode & 0o777 == 0o755
        out = safe_extract(pack_tar(folder, tmp_path / "b.tar.gz"), tmp_path / "x")
        assert out.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(mask)


def test_every_limit_is_in_the_docs_table():
    import re
    from pathlib import Path

    import shufflenet.limits as limits

    doc = (Path(__file__).parent.parent / "docs" / "limits.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", doc, re.M))
    assert set(rows) == set(limits.__all__)
    for name, shown in rows.items():
        digits = re.match(r"[\d,]+", shown.strip()).group(0).replace(",", "")
        value = getattr(limits, name)
        unit = {"GiB": 1 << 30, "MiB": 1 << 20}.get(shown.split()[1] if " " in shown.strip() else "", 1)
        assert int(digits) * unit == value, (name, shown, value)


def test_7_pickle_memo_index_cannot_allocate_gigabytes(tmp_path):
    from shufflenet._torch_pickle import load_state_dict

    # PROTO 2, EMPTY_DICT, LONG_BINPUT 2**32-1, STOP: the C unpickler grows its memo array to
    # 2**33 entries for this (found by tests/fuzz_readers.py)
    _zip_checkpoint(tmp_path / "memo.pth", b"\x80\x02}r\xff\xff\xff\xff.")
    assert load_state_dict(tmp_path / "memo.pth") == {}
    _zip_checkpoint(tmp_path / "build.pth", b"\x80\x02ctorch._utils\n_rebuild_parameter\n}b.")
    with pytest.raises(UnsafeFileError, match="sets state"):
        load_state_dict(tmp_path / "build.pth")
