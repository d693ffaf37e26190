"""Training on generated data: learns, resumes exactly, DDP ranks agree, flows into export."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from shufflenet.cli import main  # noqa: E402
from shufflenet.demo_data import CLASSES, DemoDataError, make_demo_data  # noqa: E402
from shufflenet.train import TrainConfig, TrainError, train  # noqa: E402
from shufflenet.weights import load_weights  # noqa: E402


def test_demo_data_is_deterministic_and_well_formed(tmp_path):
    a = make_demo_data(tmp_path / "a", classes=3, per_class=5, size=48, seed=7)
    make_demo_data(tmp_path / "b", classes=3, per_class=5, size=48, seed=7)
    make_demo_data(tmp_path / "c", classes=3, per_class=5, size=48, seed=8)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 15 and a["train"] == 12 and a["val"] == 3
    assert {f.parts[1] for f in files} == set(CLASSES[:3])
    same = all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    differ = any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    assert same and differ
    with pytest.raises(DemoDataError, match="not empty"):
        make_demo_data(tmp_path / "a", classes=3, per_class=5)
    with pytest.raises(DemoDataError, match="classes"):
        make_demo_data(tmp_path / "d", classes=99)


@pytest.mark.slow
def test_training_learns_well_above_chance(trained, tmp_path):
    """4 classes (chance 25%): ShuffleNetV2 x0.5 from scratch, 56 px, 30 epochs of 320 images, EMA.
    Measured here: 70% on the 160 held-out images in ~26 s on 2 cores (see docs/training.md)."""
    result, run = trained["result"], trained["run"]
    assert not result.interrupted and result.epochs_done == 30
    assert result.final_val_acc >= 50.0, result.history
    for name in ("config.json", "classes.json", "checkpoint.pt", "best.safetensors", "last.safetensors",
                 "metrics.csv", "metrics.json", "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "classes.json").read_text()) == sorted(CLASSES[:4])  # folder order
    assert len(json.loads((run / "metrics.json").read_text())) == 30
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc")

    # the run flows on: export keeps the class names and input size; evaluate agrees with training
    out = tmp_path / "m.onnx"
    assert main(["export", "shufflenet_v2_x0_5", "--weights", str(run / "best"), "-o", str(out)]) == 0
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == sorted(CLASSES[:4]) and meta["weights_trained"] == "true"
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 56
    from shufflenet.evaluate import evaluate

    report = evaluate(str(out), trained["data"] / "val")
    assert report.images == 160 and abs(report.top1 - result.best_val_acc) <= 100 / 160 + 1e-9


def _same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_resume_after_interruption_gives_identical_weights(tiny, tmp_path):
    cfg = dict(data=str(tiny), variant="shufflenet_v2_x0_5", epochs=3, batch_size=8, img_size=32, threads=1, ema=0.9)
    full = train(TrainConfig(out=str(tmp_path / "full"), **cfg))
    cut = train(TrainConfig(out=str(tmp_path / "cut"), **cfg), stop_after_steps=5)  # mid-epoch 2
    assert cut.interrupted and (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), **cfg), resume=True)
    assert not resumed.interrupted and resumed.epochs_done == 3
    assert _same_weights(tmp_path / "full" / "last.safetensors", tmp_path / "cut" / "last.safetensors")
    assert [h["val_acc"] for h in full.history] == [h["val_acc"] for h in resumed.history]


def test_bf16_autocast_and_workers_run(tiny, tmp_path):
    result = train(TrainConfig(data=str(tiny), out=str(tmp_path / "amp"), epochs=1, batch_size=8, img_size=32,
                               threads=1, amp="bf16", workers=1))
    assert result.epochs_done == 1 and result.history[0]["train_loss"] == result.history[0]["train_loss"]  # not NaN


def test_bad_requests_are_clear_errors(tiny, tmp_path, capsys):
    with pytest.raises(TrainError, match="not a folder"):
        train(TrainConfig(data=str(tmp_path / "nope"), out=str(tmp_path / "r")))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["train", "--data", str(tiny), "-o", str(tmp_path / "busy"), "--epochs", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--data", str(tiny), "-o", str(tmp_path / "r2"), "--variant", "nope"]) == 2


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tiny, tmp_path):
    # --standalone: torchrun picks its own free port (no race with a port chosen here); gloo on
    # the loopback interface, which exists in every sandbox
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "shufflenet", "train", "--data", str(tiny), "-o",
           str(tmp_path / "ddp"), "--epochs", "2", "--batch-size", "4", "--img-size", "32", "--threads", "1", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["ddp"]["world_size"] == 2 and summary["ddp"]["identical_weights"] is True
    assert len(set(summary["ddp"]["digests"])) == 1


def test_demo_difficulties_and_default_input_size(tmp_path):
    from shufflenet.demo_data import DIFFICULTIES, demo_image
    from shufflenet.train import default_img_size, find_images

    assert DIFFICULTIES == ("easy", "normal", "hard")
    for d in DIFFICULTIES:  # each a pure function of its arguments
        assert demo_image("star", 3, 48, d).tobytes() == demo_image("star", 3, 48, d).tobytes()
    info = make_demo_data(tmp_path / "d", classes=2, per_class=3, size=72)
    assert info["difficulty"] == "normal"
    _, samples, _ = find_images(tmp_path / "d")
    assert default_img_size(samples) == 72  # small images are not upscaled to 224
    assert default_img_size([]) == 224


def test_cli_prints_one_line_per_epoch_as_it_ends(tiny, tmp_path, capsys):
    assert main(["train", "--data", str(tiny), "-o", str(tmp_path / "r"), "--epochs", "2", "--batch-size", "8",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/2", "2/2"]
    assert all("val loss" in ln and "eta" in ln for ln in epochs)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["img_size"] == 40 and config["ema"] == 0.99  # resolved from the 40 px images; EMA on


def test_train_refuses_the_input_sizes_export_refuses(tiny, tmp_path):
    """A trained model must be exportable: train's img_size range is export's input-size range."""
    from shufflenet.onnx_export import ExportError, export_onnx

    for size in (31, 1025, 48.0, True, "64"):
        with pytest.raises(ExportError, match="input size"):
            export_onnx("shufflenet_v2_x0_5", input_size=size)
        with pytest.raises(TrainError, match="img_size must be from 32 to 1024"):
            train(TrainConfig(data=str(tiny), out=str(tmp_path / "r"), img_size=size, epochs=1))
    assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_a_damaged_checkpoint_is_a_one_line_error(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint\nsecond line")
    with pytest.raises(TrainError, match="not a usable checkpoint") as e:
        train(TrainConfig(data=str(tiny), out=str(run), img_size=32), resume=True)
    assert "\n" not in str(e.value)


def test_an_epoch_ending_in_a_lone_image_trains(tiny, tmp_path):
    """24 training images in batches of 23 leave one image for the epoch's last step: at 32 px
    the last stage's BatchNorm would see one value per channel, so that step is skipped."""
    losses = []
    result = train(TrainConfig(data=str(tiny), out=str(tmp_path / "r"), img_size=32, batch_size=23,
                               epochs=1, threads=1), progress=lambda epoch, step, steps, loss: losses.append(loss))
    assert result.epochs_done == 1 and result.history[-1]["train_loss"] == result.history[-1]["train_loss"]
    assert len(losses) == 2 and np.isfinite(losses[0]) and np.isnan(losses[1])  # the lone image's step: none


def test_a_checkpoints_saved_settings_are_checked_on_resume(tiny, tmp_path):
    """The config inside checkpoint.pt replaces the given one on resume: it is checked as a new
    run's options are (a bad value is one line, never a TypeError mid-run)."""
    import json

    import torch

    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny), out=str(run), img_size=32, batch_size=8, epochs=2, threads=1),
          stop_after_steps=2)
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    for key, bad in (("optimizer", "rmsprop"), ("batch_size", "64"), ("img_size", 16), ("seed", None)):
        ckpt = dict(good, config=json.dumps({**json.loads(good["config"]), key: bad}))
        torch.save(ckpt, run / "checkpoint.pt")
        with pytest.raises(TrainError, match=key) as e:
            train(TrainConfig(data=str(tiny), out=str(run), img_size=32, batch_size=8, epochs=2), resume=True)
        assert "\n" not in str(e.value)
    torch.save(dict(good, config="[1, 2]"), run / "checkpoint.pt")
    with pytest.raises(TrainError, match="not a JSON object"):
        train(TrainConfig(data=str(tiny), out=str(run), img_size=32, batch_size=8, epochs=2), resume=True)


def test_a_run_with_optional_settings_off_resumes_from_its_folder(tiny, tmp_path):
    """`ema` and `grad_clip` may be None (off): config.json then records null, which the
    resume's type check accepts (their annotations allow it)."""
    from shufflenet.train import resume

    run = tmp_path / "run"
    cfg = TrainConfig(data=str(tiny), out=str(run), img_size=32, batch_size=8, epochs=2, threads=1,
                      ema=None, grad_clip=None)
    train(cfg, stop_after_steps=2)
    result = resume(run)
    assert result.epochs_done == 2 and not result.interrupted


@pytest.mark.parametrize("field, bad", [
    ("epochs", 0), ("batch_size", "8"), ("lr", -1.0), ("lr", float("nan")), ("weight_decay", -1e-4),
    ("warmup_epochs", float("inf")), ("label_smoothing", 5.0), ("grad_clip", -1.0), ("ema", 2.0),
    ("freeze_backbone_epochs", -1), ("workers", -1), ("seed", -1), ("val_fraction", 2.0),
    ("min_scale", 2.0), ("threads", 0), ("amp", "fp16"), ("optimizer", "rmsprop"), ("variant", None),
])
def test_every_option_is_checked_before_the_run_starts(tiny, tmp_path, field, bad):
    """A bad option is one TrainError naming it, before the run folder is made (torch, numpy and
    the DataLoader would each fail mid-run with their own traceback, or train on nonsense)."""
    cfg = TrainConfig(data=str(tiny), out=str(tmp_path / "r"), img_size=32, threads=1)
    setattr(cfg, field, bad)
    with pytest.raises(TrainError, match=field) as e:
        train(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_the_cli_refuses_a_bad_option_in_one_line(tiny, tmp_path, capsys):
    assert main(["train", "--data", str(tiny), "-o", str(tmp_path / "r"), "--workers", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "shufflenet train: error: workers must be an integer >= 0, got -1"]


def test_a_batch_of_one_is_refused_where_batchnorm_would_see_one_value(tiny, tmp_path):
    """At 32 px the last stage is 1x1: a batch of one image would fail in torch's BatchNorm at
    the first step. At 64 px (2x2) it trains."""
    with pytest.raises(TrainError, match="batch_size 1 cannot train shufflenet_v2_x0_5 at img_size 32"):
        train(TrainConfig(data=str(tiny), out=str(tmp_path / "r"), img_size=32, batch_size=1, threads=1))
    assert not (tmp_path / "r").exists()
    result = train(TrainConfig(data=str(tiny), out=str(tmp_path / "r64"), img_size=64, batch_size=1, epochs=1,
                               threads=1, ema=None), stop_after_steps=3)
    assert result.interrupted and result.epochs_done == 0  # three steps of one image ran


def test_a_resume_takes_every_setting_from_the_checkpoint(tiny, tmp_path):
    """``train(cfg, resume=True)``: the saved settings replace cfg's before anything is derived
    from them (the model, the input size): the given variant and img_size do not matter."""
    cfg = dict(data=str(tiny), epochs=1, batch_size=8, img_size=32, threads=1)
    train(TrainConfig(out=str(tmp_path / "full"), **cfg))
    train(TrainConfig(out=str(tmp_path / "cut"), **cfg), stop_after_steps=2)
    other = dict(cfg, img_size=48, variant="shufflenet_v2_x1_0")
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), **other), resume=True)
    assert resumed.variant == "shufflenet_v2_x0_5" and not resumed.interrupted
    assert _same_weights(tmp_path / "full" / "last.safetensors", tmp_path / "cut" / "last.safetensors")


def test_demo_data_refuses_a_bad_seed_or_split_before_writing(tmp_path):
    """A negative seed was a numpy traceback after the class folders were made."""
    for kwargs, why in ((dict(seed=-1), "seed must be >= 0"), (dict(val_fraction=1.5), "val_fraction must be"),
                        (dict(per_class=2, val_fraction=0.9), "leaves none to train on")):
        with pytest.raises(DemoDataError, match=why):
            make_demo_data(tmp_path / "d", **{"classes": 2, "per_class": 3, **kwargs})
        assert not (tmp_path / "d").exists()
