"""A model whose metadata marks random weights says so: one line on stderr from classify,
evaluate, quantize and bench; quantize calls its fidelity figures not meaningful."""

import json

import pytest

from shufflenet.cli import main
from shufflenet.onnx_export import export_onnx, save_model
from shufflenet.synthetic import synthetic_images

NOTE = "untrained (random) weights"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrained")
    (root / "imgs" / "n01440764").mkdir(parents=True)  # an ImageFolder by WordNet id
    for i, img in enumerate(synthetic_images(6, seed=8)):
        img.save(root / "imgs" / "n01440764" / f"{i}.jpg", quality=90)
    save_model(export_onnx("shufflenet_v2_x0_5", weights="random:1", opset=13), root / "random.onnx")
    trained = export_onnx("shufflenet_v2_x0_5", weights="random:1", opset=13)
    for p in trained.metadata_props:
        if p.key == "weights_trained":
            p.value = "true"  # as a training run's export says
    save_model(trained, root / "trained.onnx")
    return root


def _note_lines(err):
    return [line for line in err.splitlines() if NOTE in line]


@pytest.mark.parametrize("command", ["classify", "evaluate", "bench", "bench-images", "quantize"])
def test_notice_on_random_weights_only(files, tmp_path, capsys, command):
    imgs = str(files / "imgs")
    for model, expected in (("random.onnx", 1), ("trained.onnx", 0)):
        path = str(files / model)
        argv = {"classify": ["classify", imgs, "--model", path],
                "evaluate": ["evaluate", "--model", path, "--data", imgs],
                "bench": ["bench", path, "--runs", "2", "--warmup", "1"],
                "bench-images": ["bench", path, "--images", imgs, "--batch", "2"],
                "quantize": ["quantize", path, "-o", str(tmp_path / "q.onnx"), "--calib", imgs,
                             "--calib-count", "4", "--max-loss", "100"]}[command]
        # a (fake) trained model's criterion may fail (exit 1); an untrained one's is not judged
        ok = {0, 1} if command == "quantize" and not expected else {0}
        assert main(argv) in ok, capsys.readouterr().err
        out, err = capsys.readouterr()
        assert len(_note_lines(err)) == expected, err
        if command == "quantize":
            assert ("not meaningful" in out) == bool(expected), out
            assert "criterion" in out and (": met" not in out if expected else "not meaningful" not in out), out
        assert main([*argv, "-q"]) in ok
        assert not _note_lines(capsys.readouterr().err)


def test_library_reports_carry_the_flag(files, tmp_path):
    from shufflenet.evaluate import evaluate
    from shufflenet.quantize import QuantizeOptions, quantize
    from shufflenet.runtime import Classifier

    assert Classifier(files / "random.onnx").untrained and not Classifier(files / "trained.onnx").untrained
    assert Classifier("shufflenet_v2_x0_5:random").untrained
    report = evaluate(str(files / "trained.onnx"), files / "imgs", compare=str(files / "random.onnx"))
    assert report.untrained == [str(files / "random.onnx")]
    q = quantize(files / "random.onnx", tmp_path / "q.onnx", files / "imgs",
                 options=QuantizeOptions(calib_count=4, max_loss=1.0, measure_latency=False))
    assert q.untrained and q.criterion["meaningful"] is False
    json.dumps(q.to_dict())
