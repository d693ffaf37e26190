"""Training under interruption and broken data (issue 13, cases 8 and 9)."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import shufflenet.train as train_mod  # noqa: E402
from shufflenet.train import TrainConfig, train  # noqa: E402
from shufflenet.weights import load_weights  # noqa: E402


CFG = dict(variant="shufflenet_v2_x0_5", epochs=2, batch_size=8, img_size=32, threads=1, ema=0.9)


def _same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_8_ctrl_c_mid_step_checkpoints_at_the_step_boundary(tiny, tmp_path, monkeypatch):
    full = train(TrainConfig(data=str(tiny), out=str(tmp_path / "full"), **CFG))
    real = train_mod._LogitsOnly
    calls = {"n": 0}

    def interrupting(model, logits_name):
        net = real(model, logits_name)
        forward = net.forward

        def run(x):
            out = forward(x)  # BatchNorm statistics (and its counter) are already updated here
            calls["n"] += 1
            if calls["n"] == 5:  # mid-epoch 2, mid-step: a Ctrl-C between forward and backward
                os.kill(os.getpid(), signal.SIGINT)
            return out

        net.forward = run
        return net

    monkeypatch.setattr(train_mod, "_LogitsOnly", interrupting)
    cut = train(TrainConfig(data=str(tiny), out=str(tmp_path / "cut"), **CFG))
    assert cut.interrupted
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    tracked = [v for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")]
    assert ckpt["global_step"] == 5 and all(int(t) == 5 for t in tracked)  # the step was finished
    monkeypatch.setattr(train_mod, "_LogitsOnly", real)
    resumed = train(TrainConfig(data=str(tiny), out=str(tmp_path / "cut"), **CFG), resume=True)
    assert not resumed.interrupted and resumed.epochs_done == 2
    assert _same_weights(tmp_path / "full" / "last.safetensors", tmp_path / "cut" / "last.safetensors")
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_9_corrupt_images_are_skipped_and_reported(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    cls = sorted(p.name for p in (data / "train").iterdir())[0]
    (data / "train" / cls / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "train" / cls / "text.png").write_text("not an image")  # 26 train images: no lone last batch
    (data / "val" / cls / "empty.png").write_bytes(b"")
    result = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), **CFG))
    assert not result.interrupted and result.epochs_done == 2
    run = tmp_path / "run"
    report = json.loads((run / "skipped_images.json").read_text())
    names = sorted(os.path.basename(i["path"]) for i in report["images"])
    assert report["count"] == 3 and names == ["broken.jpg", "empty.png", "text.png"]
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["skipped_images"]) == 3 and all(i["reason"] for i in summary["skipped_images"])
    assert json.loads((run / "metrics.json").read_text())[-1]["skipped_images"] == 3
    assert (run / "checkpoint.pt").is_file()


def test_9_checkpoint_before_validation_survives_a_failed_validation(tiny, tmp_path, monkeypatch):
    real = train_mod._evaluate

    def broken(*a, **k):
        raise RuntimeError("validation crashed")

    monkeypatch.setattr(train_mod, "_evaluate", broken)
    with pytest.raises(RuntimeError):
        train(TrainConfig(data=str(tiny), out=str(tmp_path / "run"), **CFG))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["step"] == ckpt["global_step"] > 0  # all of epoch 1's steps
    monkeypatch.setattr(train_mod, "_evaluate", real)
    resumed = train(TrainConfig(data=str(tiny), out=str(tmp_path / "run"), **CFG), resume=True)
    full = train(TrainConfig(data=str(tiny), out=str(tmp_path / "full"), **CFG))
    assert resumed.epochs_done == 2
    assert _same_weights(tmp_path / "full" / "last.safetensors", tmp_path / "run" / "last.safetensors")
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
