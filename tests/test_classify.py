"""The Classifier, `classify` and `evaluate` on generated images of every mode."""

import json
import threading

import pytest

from shufflenet.cli import main
from shufflenet.evaluate import DatasetError, discover, evaluate
from shufflenet.labels import imagenet_labels, imagenet_wnids, load_labels
from shufflenet.onnx_export import export_onnx, save_model
from shufflenet.runtime import Classifier
from shufflenet.synthetic import synthetic_images


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "v2": save_model(export_onnx("shufflenet_v2_x0_5", weights="random:1"), d / "v2.onnx"),
        "v2b1": save_model(export_onnx("shufflenet_v2_x0_5", weights="random:1", batch=1), d / "v2b1.onnx"),
        "v1": save_model(export_onnx("shufflenet_v1_caffe2", weights="random:1", opset=6), d / "v1.onnx"),
        "ten": save_model(export_onnx("shufflenet_v2_x0_5", num_classes=10,
                                      labels=[f"thing{i}" for i in range(10)]), d / "ten.onnx"),
    }


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """One generated image per mode/format, plus a broken file."""
    d = tmp_path_factory.mktemp("imgs")
    base = synthetic_images(8, seed=5)
    specs = [("RGB", "JPEG", "a.jpg"), ("L", "PNG", "b.png"), ("RGBA", "PNG", "c.png"),
             ("P", "GIF", "d.gif"), ("CMYK", "JPEG", "e.jpg"), ("1", "BMP", "f.bmp"),
             ("RGB", "WEBP", "g.webp"), ("LA", "PNG", "h.png")]
    for img, (mode, fmt, name) in zip(base, specs):
        img.convert(mode).save(d / name, fmt)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def test_labels():
    labels, wnids = imagenet_labels(), imagenet_wnids()
    assert len(labels) == len(wnids) == 1000 and wnids == sorted(wnids)
    assert labels[0] == "tench" and labels[999] == "toilet tissue" and wnids[1] == "n01443537"


def test_load_label_files(tmp_path):
    (tmp_path / "l.txt").write_text("cat\ndog\n")
    (tmp_path / "l.json").write_text('["cat", "dog"]')
    assert load_labels(tmp_path / "l.txt") == load_labels(tmp_path / "l.json") == ["cat", "dog"]


def test_classifier_reads_kind_recipe_and_labels(models):
    v2, v1, ten = Classifier(str(models["v2"])), Classifier(str(models["v1"])), Classifier(str(models["ten"]))
    assert (v2.output_kind, v1.output_kind) == ("logits", "probabilities")
    assert v2.labels[0] == "tench" and ten.labels == [f"thing{i}" for i in range(10)]
    assert "upgraded copy" in v1.runner.engine  # opset 6
    img = synthetic_images(1, seed=3)[0]
    for clf in (v2, v1, ten):
        top = clf.predict(img, top=3)
        assert len(top) == 3 and top[0].probability >= top[1].probability >= top[2].probability
        assert 0 < sum(p.probability for p in clf.predict(img, top=1000)) <= 1 + 1e-6
    assert Classifier(str(models["ten"]), labels=[str(i) for i in range(10)]).labels[3] == "3"
    with pytest.raises(Exception, match="3 labels for a model with 10 classes"):
        Classifier(str(models["ten"]), labels=["a", "b", "c"])


def test_batches_and_fixed_batch_models_agree(models):
    imgs = synthetic_images(5, seed=9)
    a = Classifier(str(models["v2"])).predict(imgs)
    b = Classifier(str(models["v2b1"])).predict(imgs)
    assert [[p.index for p in r] for r in a] == [[p.index for p in r] for r in b]


def test_predict_is_thread_safe(models):
    clf = Classifier(str(models["v2"]), threads=1)
    imgs = synthetic_images(6, seed=2)
    want = [clf.predict(im)[0].index for im in imgs]
    got, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                got.setdefault(i, set()).add(clf.predict(imgs[i])[0].index)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and all(got[i] == {want[i]} for i in range(6))


def test_classify_cli_reports_every_file(models, mixed_folder, capsys):
    assert main(["classify", str(mixed_folder), "--model", str(models["v2"]), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in data["results"]}
    assert len(by_name) == 9
    assert by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["top"] is None
    assert all(len(r["top"]) == 5 for n, r in by_name.items() if n != "broken.jpg")
    assert main(["classify", str(mixed_folder / "a.jpg"), str(mixed_folder / "c.png"), "--model",
                 str(models["v1"]), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(str(mixed_folder / "a.jpg"))
    assert main(["classify", str(mixed_folder / "*.png"), "--model", str(models["v2"])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["classify", str(mixed_folder / "nothing*.jpg"), "--model", str(models["v2"])]) == 2
    assert main(["classify", str(mixed_folder / "a.jpg"), "--model", "/no/such.onnx"]) == 2


def test_evaluate_counts_the_wnid_layout(models, tmp_path, capsys):
    clf = Classifier(str(models["v2"]))
    wnids = imagenet_wnids()
    imgs = synthetic_images(8, seed=17)
    hits = 0
    for k, img in enumerate(imgs):  # label half the images with the model's own answer
        pred = clf.predict(img, top=5)
        label = pred[0].index if k % 2 == 0 else next(i for i in range(1000) if i not in {p.index for p in pred})
        hits += k % 2 == 0
        img.save(tmp_path / f"{wnids[label]}_img{k}.png")
    (tmp_path / "readme_notes.png").write_bytes(b"x")  # no wnid: skipped with a reason
    report = evaluate(str(models["v2"]), tmp_path)
    assert report.layout == "<wnid>_name files" and report.images == 8
    assert report.top1 == pytest.approx(100 * hits / 8) and report.top5 >= report.top1
    assert len(report.skipped) == 1 and "WordNet" in report.skipped[0][1]
    assert main(["evaluate", "--model", str(models["v2"]), "--data", str(tmp_path), "--json",
                 "--compare", str(models["v2b1"])]) == 1  # a skipped image: exit 1, as classify
    data = json.loads(capsys.readouterr().out)
    assert data["compare"]["top1_agreement"] == 100.0 and data["compare"]["max_abs_diff"] < 1e-3


def test_evaluate_image_folder_and_label_file(models, tmp_path):
    wnids = imagenet_wnids()
    (tmp_path / "folder" / wnids[3]).mkdir(parents=True)
    (tmp_path / "folder" / "goldfish").mkdir()  # a class name works too
    (tmp_path / "flat").mkdir()
    lines = []
    for k, img in enumerate(synthetic_images(4, seed=1)):
        img.save(tmp_path / "folder" / (wnids[3] if k < 2 else "goldfish") / f"{k}.jpg")
        img.save(tmp_path / "flat" / f"ILSVRC_{k}.JPEG")
        lines.append(f"ILSVRC_{k}.JPEG {k}")
    (tmp_path / "val.txt").write_text("\n".join(lines))
    samples, skipped, layout = discover(tmp_path / "folder", labels=imagenet_labels())
    assert layout == "image folder" and sorted(s.label for s in samples) == [1, 1, 3, 3] and not skipped
    report = evaluate(str(models["v2"]), tmp_path / "flat", label_file=tmp_path / "val.txt", limit=3)
    assert report.layout == "label file" and report.images == 3


def test_evaluate_resolves_the_compared_model_before_running_the_first(models, tmp_path, monkeypatch):
    """A typo in --compare is an error before any image is run, not after the whole evaluation."""
    import shufflenet.evaluate as emod
    from shufflenet.errors import ShuffleNetError

    wnids = imagenet_wnids()
    (tmp_path / wnids[0]).mkdir()
    synthetic_images(1, seed=3)[0].save(tmp_path / wnids[0] / "a.png")
    monkeypatch.setattr(emod, "run_files", lambda *a, **k: pytest.fail("ran before the compared model was resolved"))
    with pytest.raises(ShuffleNetError, match="no_such"):
        evaluate(str(models["v2"]), tmp_path, compare=str(tmp_path / "no_such.onnx"))


def _unlistable(monkeypatch, folder):
    """``folder`` cannot be listed (chmod does not stop root, so os.scandir and os.listdir are told
    to refuse: Path.iterdir uses the one or the other by Python version)."""
    import os

    for name in ("scandir", "listdir"):
        def refuse(path=".", real=getattr(os, name)):
            if os.fspath(path) == str(folder):
                raise PermissionError(13, "Permission denied", path)
            return real(path)

        monkeypatch.setattr(os, name, refuse)


def test_discover_reports_a_class_folder_it_cannot_list(tmp_path, monkeypatch):
    """An unreadable class folder is a skipped entry (as text: the report is JSON), never silently
    empty; the folder's sub-folders are not read (one folder per class); an unreadable flat folder
    is an error."""
    wnids = imagenet_wnids()
    for w in wnids[:2]:
        (tmp_path / "data" / w / "nested").mkdir(parents=True)
        synthetic_images(1, seed=2)[0].save(tmp_path / "data" / w / "a.png")
        synthetic_images(1, seed=2)[0].save(tmp_path / "data" / w / "nested" / "b.png")
    _unlistable(monkeypatch, tmp_path / "data" / wnids[1])
    samples, skipped, _ = discover(tmp_path / "data")
    assert [(s.path.name, s.label) for s in samples] == [("a.png", 0)]
    assert skipped == [(str(tmp_path / "data" / wnids[1]), "cannot list folder (Permission denied)")]
    json.dumps(skipped)
    (tmp_path / "flat").mkdir()
    _unlistable(monkeypatch, tmp_path / "flat")
    with pytest.raises(DatasetError, match=r"flat: cannot list folder \(Permission denied\)"):
        discover(tmp_path / "flat")


@pytest.mark.parametrize("threads", [1, 2])  # 1: workers decode and run whole chunks; 2: main thread infers
def test_run_files_keeps_order_errors_and_answers(models, mixed_folder, threads):
    from shufflenet.runtime import expand_inputs, run_files

    files, _ = expand_inputs([str(mixed_folder)])
    files = files * 3  # several chunks in flight at once
    clf = Classifier(str(models["v2"]), threads=threads)
    timings = {}
    results = list(run_files(clf, files, top=2, batch_size=2, workers=2, keep_outputs=True, timings=timings))
    assert [r.path for r in results] == [str(f) for f in files]
    broken = [r for r in results if r.error]
    assert broken and all(r.predictions is None for r in broken)
    assert len(broken) == 3 * sum(1 for r in results[:len(files) // 3] if r.error)
    for r in results:
        if r.error is None:
            assert [p.index for p in r.predictions] == [p.index for p in clf.predict(r.path, top=2)]
    assert timings["decode"] > 0 and timings["inference"] > 0
