"""`classify`/`evaluate --engine ray` on a real two-node Ray cluster, row for row against local.

The cluster (``ray start --head`` plus one worker node, 1 CPU each, a temp dir each) runs inside a
private network and PID namespace made by tests/ray_sandbox.py, so it binds to 127.0.0.1 and
nothing leaves loopback; the Ray drivers (our CLI, a Python snippet) run in there too, and the
local engine runs here. One cluster serves the whole module and is stopped at the end, even on
failure (the namespace dies with it). Needs root (unshare) and the ``ray`` extra.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from shufflenet.cli import main  # noqa: E402
from shufflenet.evaluate import evaluate  # noqa: E402
from shufflenet.labels import imagenet_wnids  # noqa: E402
from shufflenet.onnx_export import export_onnx, save_model  # noqa: E402
from shufflenet.runtime import Classifier  # noqa: E402
from shufflenet.synthetic import synthetic_image, synthetic_images  # noqa: E402

UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]
BAD = {"n01440764_bad.jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "n01440764_empty.png": b"",
       "n01443537_text.gif": b"GIF89a" + b"\x00" * 7}


class Sandbox:
    """The namespace holding the cluster: ``run(argv)`` runs a command in there."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="snray", dir="/tmp"))  # short: Ray's socket paths
        self.proc = subprocess.Popen([*UNSHARE, sys.executable, str(Path(__file__).with_name("ray_sandbox.py")),
                                      str(self.tmp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        if not first.startswith("READY "):
            self.close()
            raise RuntimeError(f"the Ray cluster did not start: {first or 'no answer'}")
        self.address = first.split()[1]

    def run(self, argv, timeout=150) -> dict:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the sandbox died"
        return json.loads(line)

    def shufflenet(self, *args, timeout=150) -> dict:
        return self.run([sys.executable, "-m", "shufflenet", *args], timeout=timeout)

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the sandbox stops the cluster and exits
            self.proc.wait(timeout=90)
        except Exception:
            self.proc.kill()  # --kill-child: the namespace and every process in it go too
            self.proc.wait()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _can_sandbox() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run([*UNSHARE, "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot make a private network namespace: {probe.stderr.strip()}"


@pytest.fixture(scope="module")
def cluster():
    why = _can_sandbox()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the Ray cluster tests must run in CI: {why}")
        pytest.skip(why)
    box = Sandbox()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(export_onnx("shufflenet_v2_x0_5", weights="random:1"), tmp_path_factory.mktemp("m") / "v2.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory, model):
    """A flat `<wnid>_k` folder: generated images of several modes and formats (one large JPEG,
    decoded in draft mode), named so that a third are top-1 hits and a third top-5 hits of the
    random model, plus corrupt files."""
    d = tmp_path_factory.mktemp("data")
    clf = Classifier(str(model), threads=1)
    wnids = imagenet_wnids()
    import numpy as np

    images = synthetic_images(20, seed=7) + [synthetic_image(np.random.default_rng(3), (1300, 1100))]
    kinds = [("RGB", "JPEG", "jpg"), ("L", "PNG", "png"), ("RGBA", "PNG", "png"), ("P", "GIF", "gif"),
             ("RGB", "WEBP", "webp")]
    for k, img in enumerate(images):
        mode, fmt, ext = kinds[k % len(kinds)] if k < 20 else ("RGB", "JPEG", "jpg")
        buf = io.BytesIO()
        img.convert(mode).save(buf, fmt)
        top = [p.index for p in clf.predict(clf.preprocess(buf.getvalue()))]
        label = top[0] if k % 3 == 0 else top[3] if k % 3 == 1 else (top[0] + 500) % 1000
        (d / f"{wnids[label]}_{k:02d}.{ext}").write_bytes(buf.getvalue())
    jpeg = next(d.glob("*.jpg")).read_bytes()
    for name, content in {**BAD, "n01443537_cut.jpg": jpeg[: len(jpeg) // 3]}.items():
        (d / name).write_bytes(content)
    return d


def _local_rows(*args) -> dict:
    """Local classify's --json results, by path."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["classify", *map(str, args), "--json"])
    return {r["path"]: r for r in json.loads(out.getvalue())["results"]}


def _same(row: dict, local: dict) -> None:
    """One output row equals local classify's answer for the file, bit for bit."""
    if local["error"]:
        assert row["error"] == local["error"] and row["top_indices"] is None
        return
    assert row["error"] is None
    assert row["top_indices"] == [p["index"] for p in local["top"]]
    assert row["top_labels"] == [p["label"] for p in local["top"]]
    assert row["top_probabilities"] == [p["probability"] for p in local["top"]]  # exact floats


def test_classify_on_the_cluster_equals_local_row_for_row(cluster, model, data, tmp_path):
    out = tmp_path / "results.parquet"
    r = cluster.shufflenet("classify", data, "--model", model, "--engine", "ray", "--address", cluster.address,
                           "--output", out, "--batch-size", "4", "--json")
    assert r["rc"] == 1, r["stderr"]  # bad files: exit 1, as local classify
    report = json.loads(r["stdout"])
    assert report["workers"] == 2  # one 1-CPU actor on each node
    local = _local_rows(data, "--model", model)
    table = pq.read_table(out)  # readable by pyarrow, one row per input
    assert table.num_rows == len(local) == 25 and report["images"] == 25
    assert set(table.column_names) >= {"path", "top_indices", "top_labels", "top_probabilities", "error"}
    rows = {row["path"]: row for row in table.to_pylist()}
    assert rows.keys() == local.keys()
    for path, row in rows.items():
        _same(row, local[path])
    bad = {Path(f["path"]).name for f in report["failed"]}
    assert bad == set(BAD) | {"n01443537_cut.jpg"} and report["ok"] == 21
    assert not list(tmp_path.glob(".results.parquet.*"))  # the temp file was renamed, none left


def test_classify_a_list_of_paths_and_uris_to_jsonl(cluster, model, data, tmp_path):
    good = sorted(p.name for p in data.iterdir() if p.name not in BAD and "cut" not in p.name)[:5]
    listing = tmp_path / "inputs.txt"
    shutil.copy(data / good[0], tmp_path / good[0])  # a relative entry: beside the list
    listing.write_text("\n".join([good[0], *(str(data / n) for n in good[1:4]), (data / good[4]).as_uri(),
                                  "# a comment", str(data / "n01440764_bad.jpg"), str(data / "nope.jpg"), ""]))
    out = tmp_path / "out.jsonl"
    r = cluster.shufflenet("classify", listing, "--model", model, "--engine", "ray", "--address",
                           cluster.address, "-o", out, "--workers", "1", "--batch-size", "3", "--top", "3")
    assert r["rc"] == 1, r["stderr"]
    assert f"{data / 'nope.jpg'}: cannot read (No such file or directory)" in r["stderr"]
    assert "n01440764_bad.jpg: cannot read image" in r["stderr"]
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 7
    local = _local_rows(*(data / n for n in [*good, "n01440764_bad.jpg"]), "--model", model, "--top", "3")
    _same(rows[str(tmp_path / good[0])], local[str(data / good[0])])
    for n in [*good[1:4], "n01440764_bad.jpg"]:
        _same(rows[str(data / n)], local[str(data / n)])
    _same(rows[(data / good[4]).as_uri()], local[str(data / good[4])])
    assert rows[str(data / "nope.jpg")]["error"] and rows[str(data / "nope.jpg")]["top_indices"] is None


def test_evaluate_counts_equal_local(cluster, model, data):
    r = cluster.shufflenet("evaluate", "--model", model, "--data", data, "--engine", "ray", "--address",
                           cluster.address, "--batch-size", "5", "--json")
    assert r["rc"] == 1, r["stderr"]  # as local evaluate: 1 when images were skipped (4 bad files)
    ray_report = json.loads(r["stdout"])
    local = evaluate(str(model), data, threads=1)
    assert ray_report["images"] == local.images == 21
    assert (ray_report["top1"], ray_report["top5"]) == (local.top1, local.top5)
    assert 0 < local.top1 < local.top5 < 100  # the names make hits of both kinds
    assert sorted(map(tuple, ray_report["skipped"])) == sorted(local.skipped)
    assert len(local.skipped) == 4


def test_python_api_returns_a_ray_dataset(cluster, model, data):
    code = f"""
import json, ray
from shufflenet.ray_engine import list_sources, predict_dataset
ray.init(address={cluster.address!r}, logging_level="ERROR")
paths, problems = list_sources([{str(data)!r}])
ds = predict_dataset(paths, {str(model)!r}, top=2, batch_size=8)
assert isinstance(ds, ray.data.Dataset), type(ds)
files = ray.data.read_binary_files({str(data)!r}, include_paths=True)  # composes with Ray's own readers
rows = ds.take_all() + predict_dataset(files, {str(model)!r}, top=2).take_all()
print(json.dumps({{"columns": ds.columns(), "rows": rows}}))
"""
    r = cluster.run([sys.executable, "-c", code])
    assert r["rc"] == 0, r["stderr"]
    got = json.loads(r["stdout"].strip().splitlines()[-1])
    assert got["columns"] == ["path", "top_indices", "top_labels", "top_probabilities", "error"]
    local = {Path(p).name: row for p, row in _local_rows(data, "--model", model, "--top", "2").items()}
    assert len(got["rows"]) == 2 * len(local)
    for row in got["rows"]:
        want = local[Path(row["path"]).name]
        if want["error"]:  # the error names the path as given (read_binary_files drops nothing)
            assert row["error"] and row["top_indices"] is None
        else:
            _same(row, want)


def test_without_address_a_local_ray_starts_and_stops(cluster, model, data, tmp_path):
    out = tmp_path / "own.jsonl"
    files = sorted(p for p in data.glob("*.png") if p.name not in BAD)[:3]
    r = cluster.shufflenet("classify", *files, "--model", model, "--engine", "ray", "-o", out, "--json")
    assert r["rc"] == 0, r["stderr"]
    report = json.loads(r["stdout"])
    assert report["address"] is None and report["ok"] == 3
    local = _local_rows(*files, "--model", model)
    for row in map(json.loads, out.read_text().splitlines()):
        _same(row, local[row["path"]])
    # the command's own Ray is gone: only the module cluster's two raylets remain
    left = cluster.run(["pgrep", "-c", "-f", "raylet/raylet"])
    assert left["stdout"].strip() == "2", left


def test_sources_folders_globs_uris_and_lists(data, tmp_path):
    from shufflenet.ray_engine import list_sources
    from shufflenet.runtime import expand_inputs

    local, _ = expand_inputs([str(data)])
    assert list_sources([str(data)]) == ([str(p) for p in local], [])  # exactly local classify's
    pngs = sorted(str(p) for p in data.glob("*.png"))
    assert list_sources([str(data / "*.png")])[0] == pngs
    assert list_sources([data.as_uri()])[0] == [p.as_uri() for p in local]
    assert list_sources([data.as_uri() + "/*.png"])[0] == [Path(p).as_uri() for p in pngs]
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "l.txt"
    listing.write_text(f"a.jpg\n\n# note\n{pngs[0]}\n{data.as_uri()}/x.png\n")
    assert list_sources([str(listing)])[0] == [str(tmp_path / "sub" / "a.jpg"), pngs[0], f"{data.as_uri()}/x.png"]
    paths, problems = list_sources([str(data / "none*.jpg"), (data / "none.jpg").as_uri(), str(tmp_path / "sub")])
    assert paths == [] and [why for _, why in problems] == [
        "no file matches this pattern", "no such file or folder", "folder holds no images"]


def test_engine_options_are_checked(model, data, tmp_path, capsys):
    assert main(["classify", str(data), "--address", "127.0.0.1:1"]) == 2
    assert "--address: only with --engine ray" in capsys.readouterr().err
    assert main(["classify", str(data), "--engine", "ray"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["classify", str(data), "--engine", "ray", "-o", str(tmp_path / "x.csv")]) == 2
    assert ".parquet or .jsonl" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(data), "--engine", "ray", "--compare", str(model)]) == 2
    assert main(["evaluate", "--data", str(data), "--workers", "2"]) == 2
    capsys.readouterr()


def test_without_the_extra_or_a_cluster_one_line(model, data, tmp_path, monkeypatch, capsys):
    import ray

    from shufflenet.ray_engine import RayEngineError, predict_dataset

    if not ray.is_initialized():
        with pytest.raises(RayEngineError, match="not initialised"):
            predict_dataset([str(data)], str(model))
    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the extra
    assert main(["classify", str(data), "--model", str(model), "--engine", "ray", "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "pip install 'shufflenet[ray]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_no_optimize_reaches_the_ray_engine(model, data, tmp_path, monkeypatch, capsys):
    """`--no-optimize` means the same with either engine: the CLI passes it to the engine, whose
    driver-side Classifier runs the graph as given (the actors' own: the test below)."""
    from shufflenet import ray_engine

    seen = []
    real_prepare = ray_engine._prepare

    def prepare(*args, **kwargs):
        proto, source, clf = real_prepare(*args, **kwargs)
        seen.append((clf.optimize, clf.runner.rewrites))
        raise ray_engine.RayEngineError("stopped after preparing")  # no cluster needed

    monkeypatch.setattr(ray_engine, "_prepare", prepare)
    monkeypatch.setattr(ray_engine, "_require_ray", lambda: None)
    out = str(tmp_path / "o.jsonl")
    for flag in ([], ["--no-optimize"]):
        assert main(["classify", str(data), "--model", str(model), "--engine", "ray", "-o", out, *flag]) == 2
        assert main(["evaluate", "--data", str(data), "--model", str(model), "--engine", "ray", *flag]) == 2
    assert [optimize for optimize, _ in seen] == [True, True, False, False]
    assert all(rewrites is None for optimize, rewrites in seen if not optimize)
    capsys.readouterr()


def test_no_optimize_reaches_the_actors(cluster, model, data):
    """Each actor builds its own Classifier from the kwargs the engine gives it: with
    optimize=False it runs the graph as given (no load-time rewrites), on the cluster."""
    code = f"""
import json, ray
from shufflenet import ray_engine
ray.init(address={cluster.address!r}, logging_level="ERROR")

class Probe(ray_engine._Predictor):  # the engine's actor, reporting the Classifier it built
    def __call__(self, batch):
        import pyarrow as pa
        n = batch.num_rows
        return pa.table({{"optimize": [self.clf.optimize] * n, "rewrites": [self.clf.runner.rewrites] * n}})

ray_engine._Predictor = Probe
paths, _ = ray_engine.list_sources([{str(data)!r}])
seen = {{}}
for optimize in (True, False):
    rows = ray_engine.predict_dataset(paths[:4], {str(model)!r}, optimize=optimize, batch_size=2).take_all()
    seen[str(optimize)] = sorted({{(r["optimize"], r["rewrites"]) for r in rows}}, key=str)
print(json.dumps(seen))
"""
    r = cluster.run([sys.executable, "-c", code])
    assert r["rc"] == 0, r["stderr"]
    seen = json.loads(r["stdout"].strip().splitlines()[-1])
    (optimized,), (plain,) = seen["True"], seen["False"]
    assert optimized[0] is True and optimized[1]  # the rewrites apply to this model by default
    assert plain == [False, None]


def test_an_actor_loads_files_as_the_local_engine_does(model, data, tmp_path):
    """The actor's decode step (bytes in) gives local classify's rows and messages (a path in),
    a refusal at the preprocessing stage included (it named no file)."""
    import numpy as np
    from PIL import Image

    from shufflenet import ray_engine

    Image.new("RGB", (600, 1)).save(tmp_path / "panorama.png")  # resizes past MAX_RESIZED_PIXELS
    paths = sorted(str(p) for p in data.iterdir()) + [str(tmp_path / "panorama.png")]
    actor = object.__new__(ray_engine._Predictor)  # its __init__ fetches the model from a cluster
    actor.clf = Classifier(str(model), threads=1)
    errors, seconds = [None] * len(paths), {}
    tensors, good = actor._decode_all(paths, [(Path(p).read_bytes(), None) for p in paths], errors, seconds)
    local = _local_rows(*paths, "--model", model)
    assert errors == [local[p]["error"] for p in paths]
    assert errors[-1].startswith(f"{paths[-1]}: refused: resizing 600x1")
    assert [paths[i] for i in good] == [p for p in paths if local[p]["error"] is None]
    for i, rows in zip(good, tensors):
        assert np.array_equal(rows, actor.clf.preprocess(Path(paths[i])))
    assert set(seconds) == {"decode", "preprocess"}
