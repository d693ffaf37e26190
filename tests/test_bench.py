"""`bench` runs and reports what it should (never asserting a time)."""

import json

import pytest

from shufflenet.bench import BenchError, BenchRow, bench, bench_images, p50_ratios
from shufflenet.cli import main
from shufflenet.onnx_export import export_onnx, save_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return [str(save_model(export_onnx("shufflenet_v2_x0_5", opset=o), d / f"m{o}.onnx")) for o in (9, 17)]


def test_interleaved_rows_per_model_and_config(models):
    result = bench(models, batches=(1, 2), threads=(1,), runs=5, warmup=1)
    rows = result["rows"]
    assert [(r.model, r.batch) for r in rows] == [(models[0], 1), (models[1], 1), (models[0], 2), (models[1], 2)]
    for r in rows:
        assert len(r.samples_ms) == 5 and r.p50_ms <= r.p90_ms <= r.p99_ms and r.images_per_s > 0
        assert r.load_ms > 0
    assert result["env"]["peak_rss_mb"] > 0 and result["env"]["onnxruntime"]
    with pytest.raises(BenchError, match="backend"):
        bench(models, backend="tvm")


def test_blocked_by_default_and_interleaved_on_request(models, monkeypatch):
    """Blocks of consecutive runs per model by default; run by run only when asked."""
    import shufflenet.bench as b

    order = []
    real = b._Runner.__init__

    def spy_init(self, model, *a, **kw):
        real(self, model, *a, **kw)
        inner = self.run
        name = model.graph.name + str(id(model))
        self.run = lambda x, inner=inner, name=name: (order.append(name), inner(x))[1]

    monkeypatch.setattr(b._Runner, "__init__", spy_init)
    result = bench(models, runs=7, warmup=0, block=3)
    assert result["env"]["mode"].startswith("blocked (3 consecutive")
    assert all(r.mode == "blocked" and len(r.samples_ms) == 7 for r in result["rows"])
    timed = order[2:]  # after one warm-up run each
    a, c = timed[0], timed[3]
    assert a != c and timed == [a] * 3 + [c] * 3 + [a] * 3 + [c] * 3 + [a] + [c]
    order.clear()
    result = bench(models, runs=3, warmup=0, mode="interleaved")
    assert order[2:] == [order[2], order[3]] * 3 and result["rows"][0].mode == "interleaved"
    with pytest.raises(BenchError, match="mode"):
        bench(models, mode="random")


def test_load_time_rewrites_and_opt_out(models):
    import onnx

    from shufflenet.bench import ort_session

    m = onnx.load(models[1])
    assert bench(models[1:], runs=2, warmup=0)["env"]["load_time_rewrites"] is True
    assert bench(models[1:], runs=2, warmup=0, optimize=False)["env"]["load_time_rewrites"] is False
    # the rewritten graph pads convolution weights: the session sees more channels
    import numpy as np

    x = np.zeros((1, 3, 224, 224), np.float32)
    a = ort_session(m, 1).run(None, {"input": x})[0]
    b = ort_session(m, 1, optimize=False).run(None, {"input": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


def test_cli_json_and_plot(models, tmp_path, capsys):
    assert main(["bench", *models, "--runs", "3", "--warmup", "1", "--json", "--plot", str(tmp_path / "p.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 2 and (tmp_path / "p.png").stat().st_size > 1000
    assert all(r["mode"] == "blocked" for r in data["rows"])
    assert main(["bench", *models, "--runs", "2", "--warmup", "0", "--interleaved", "--no-optimize", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["env"]["mode"] == "interleaved" and data["env"]["load_time_rewrites"] is False


def test_end_to_end_images(models, tmp_path):
    from shufflenet.synthetic import synthetic_images

    for i, img in enumerate(synthetic_images(6, seed=2)):
        img.save(tmp_path / f"{i}.jpg")
    res = bench_images(models[1], tmp_path, batch=4, workers=2, repeat=1)
    assert res["images"] == 6 and len(res["predictions"]) == 6 and res["images_per_s"] > 0
    assert set(res["stage_seconds"]) == {"decode", "preprocess", "inference"}
    assert res["threads"] == 1  # as `shufflenet bench --images` and the latency bench: one thread unless asked


def test_openvino_backend_when_installed(models):
    pytest.importorskip("openvino")
    rows = bench(models[1:], runs=2, warmup=1, backend="openvino", precision="f32")["rows"]
    assert rows[0].precision == "f32"


def test_end_to_end_several_models_and_batches(models, tmp_path, capsys):
    """`bench A B --batch 1,8 --images DIR`: every model end to end at every batch size."""
    from shufflenet.bench import bench_images_many
    from shufflenet.synthetic import synthetic_images

    for i, img in enumerate(synthetic_images(5, seed=3)):
        img.save(tmp_path / f"{i}.jpg")
    rows = bench_images_many(models, tmp_path, batches=(1, 4), repeat=1)
    assert [(r["model"], r["batch"]) for r in rows] == [(models[0], 1), (models[1], 1), (models[0], 4), (models[1], 4)]
    assert all(r["images"] == 5 and len(r["predictions"]) == 5 and r["images_per_s"] > 0 for r in rows)
    assert rows[0]["predictions"] == rows[2]["predictions"]  # the batch size changes no answer
    assert main(["bench", *models, "--batch", "1,2", "--images", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["model"], d["batch"]) for d in data] == [(models[0], 1), (models[1], 1), (models[0], 2), (models[1], 2)]
    assert main(["bench", *models, "--images", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "m9.onnx" in out and "m17.onnx" in out


def test_p50_ratios_compare_with_the_first_model_in_the_first_config():
    def row(model, threads, batch, p50):
        return BenchRow(model, "onnxruntime", "f32", threads, batch, 1, p50, p50, p50, p50, batch / p50, 0.0, 0.0)

    rows = [row("a", 1, 1, 2.0), row("b", 1, 1, 1.0), row("c", 1, 1, 4.0), row("a", 1, 8, 9.0), row("b", 1, 8, 1.0)]
    assert p50_ratios(rows) == [("b", 2.0), ("c", 0.5)]
    assert p50_ratios(rows[:1]) == [] and p50_ratios([]) == []


def test_end_to_end_every_thread_count(models, tmp_path, capsys):
    """A thread list measures every (threads, batch, model), threads outermost."""
    from shufflenet.bench import bench_images_many
    from shufflenet.synthetic import synthetic_images

    for i, img in enumerate(synthetic_images(3, seed=4)):
        img.save(tmp_path / f"{i}.jpg")
    rows = bench_images_many(models[1:], tmp_path, batches=(2,), threads=(1, 2), repeat=1)
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 2), (2, 2)]
    assert main(["bench", models[1], "--threads", "1,2", "--images", str(tmp_path), "--json"]) == 0
    assert [(d["threads"], d["batch"]) for d in json.loads(capsys.readouterr().out)] == [(1, 8), (2, 8)]


@pytest.mark.parametrize("argv, refused", [
    (["--images", "IMGS", "--runs", "5", "--interleaved"], "--runs, --interleaved: not with --images"),
    (["--images", "IMGS", "--backend", "openvino"], "--backend: not with --images"),
    (["--workers", "3", "--limit", "2"], "--workers, --limit: only with --images"),
])
def test_options_of_the_other_measurement_are_refused(models, tmp_path, capsys, argv, refused):
    """An option that the chosen measurement would not read is an error (one line, exit 2),
    not silently ignored (as --address without --engine ray)."""
    argv = [str(tmp_path) if a == "IMGS" else a for a in argv]
    assert main(["bench", models[1], *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"shufflenet bench: error: {refused}" + (
        " (it measures end to end with ONNX Runtime)" if "not with" in refused else "")


def test_precision_is_openvino_only(models):
    with pytest.raises(BenchError, match="backend openvino only"):
        bench(models[1:], runs=1, warmup=0, precision="bf16")
    with pytest.raises(BenchError, match="backend openvino only"):
        bench(models[1:], runs=1, warmup=0, backend="openvino", precision="fp8")


def test_a_fixed_batch_model_is_refused_before_anything_runs(models, tmp_path):
    """A batch that a fixed-batch model cannot run is refused up front, not after the models
    before it were loaded and timed."""
    fixed = tmp_path / "b1.onnx"
    save_model(export_onnx("shufflenet_v2_x0_5", weights="random:0", input_size=32, batch=1), fixed)
    reports = []
    with pytest.raises(BenchError, match="fixed batch 1, cannot run batch 2"):
        bench([models[1], str(fixed)], batches=(1, 2), runs=1, warmup=0, progress=lambda d, t: reports.append(d))
    assert reports == []
