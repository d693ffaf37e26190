"""The PyTorch rendering: torchvision parity, checkpoints, round trips, refused pickles."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shufflenet import build_model, list_variants, random_weights, save_weights  # noqa: E402
from shufflenet.errors import UnknownVariantError, UnsafeFileError, WeightsError  # noqa: E402
from shufflenet.preprocess import preprocess_pil  # noqa: E402
from shufflenet.specs import Preprocess  # noqa: E402
from shufflenet.synthetic import synthetic_images  # noqa: E402
from shufflenet.torch_models import to_numpy  # noqa: E402

from torchvision_reference import CONFIGS, torchvision_shufflenet_v2  # noqa: E402


def _x(n=2, size=224, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_v2_equals_torchvision(name):
    ours = build_model(name, seed=1)
    ref = torchvision_shufflenet_v2(name)
    assert list(ref.state_dict()) == list(ours.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref.eval()
    x = _x(size=160 if name != "shufflenet_v2_x1_0" else 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), rtol=0, atol=1e-4)


def test_torchvision_checkpoint_loads_strictly(tmp_path):
    ref = torchvision_shufflenet_v2("shufflenet_v2_x0_5").eval()
    with torch.no_grad():  # trained-looking statistics
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.normal_(0, 0.1)
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    # checkpoints from before torch 0.4.1 carry no BN counters; torchvision's still load
    torch.save({k: v for k, v in sd.items() if "num_batches_tracked" not in k}, tmp_path / "old.pth")
    x = _x(size=128)
    with torch.no_grad():
        want = ref(x)
        for f in ("tv.pth", "old.pth"):
            model = build_model("shufflenet_v2_x0_5", weights=tmp_path / f)
            assert torch.allclose(model(x), want, atol=1e-5)
            assert len(model.weights_source.sha256) == 64
    model = build_model("shufflenet_v2_x0_5")
    model.load_state_dict(torch.load(tmp_path / "old.pth", weights_only=True), strict=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pth"])
def test_round_trip_gives_identical_outputs(tmp_path, suffix):
    model = build_model("shufflenet_v1_caffe2", seed=5)
    path = save_weights(to_numpy(model), tmp_path / f"w{suffix}")
    again = build_model("shufflenet_v1_caffe2", weights=path)
    x = _x(size=96)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.slow
def test_every_variant_builds_and_runs():
    x = _x(n=1, size=64)
    for name in list_variants():
        model = build_model(name, num_classes=7)
        assert not model.training
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 7) and torch.isfinite(y).all(), name


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "shufflenet_v1_caffe2"])
def test_random_models_are_not_degenerate(name):
    model = build_model(name, seed=0)
    images = np.concatenate([preprocess_pil(im, Preprocess()) for im in synthetic_images(6, seed=11)])
    with torch.no_grad():
        y = model(torch.from_numpy(images))
    if name == "shufflenet_v1_caffe2":
        assert torch.allclose(y.sum(1), torch.ones(6), atol=1e-5)  # softmax probabilities
        y = torch.log(y)
    assert len(set(y.argmax(1).tolist())) >= 4  # different inputs, different answers
    assert 0.3 < float(y.std()) < 30


def test_training_mode_updates_statistics_and_gradients():
    model = build_model("shufflenet_v2_x0_5", num_classes=3).train()
    before = model.state_dict()["conv1.1.running_mean"].clone()
    loss = torch.nn.functional.cross_entropy(model(_x(n=4, size=64)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    params = dict(model.named_parameters())
    assert params["conv1.0.weight"].grad is not None and params["fc.weight"].grad.abs().sum() > 0
    assert not torch.equal(before, model.state_dict()["conv1.1.running_mean"])
    assert int(model.state_dict()["conv1.1.num_batches_tracked"]) == 1


def test_bad_arguments_get_typed_errors(tmp_path):
    with pytest.raises(UnknownVariantError, match="did you mean"):
        build_model("shufflenet_v2_x1")
    ten = tmp_path / "ten.npz"
    save_weights(random_weights("shufflenet_v2_x0_5", num_classes=10), ten)
    assert build_model("shufflenet_v2_x0_5", weights=ten).state_dict()["fc.weight"].shape == (10, 1024)
    with pytest.raises(WeightsError, match="num_classes=1000 contradicts"):
        build_model("shufflenet_v2_x0_5", weights=ten, num_classes=1000)
    with pytest.raises(WeightsError, match="has shape"):
        build_model("shufflenet_v2_x1_0", weights=ten)
    with pytest.raises(WeightsError, match="positive integer"):
        build_model("shufflenet_v2_x1_0", num_classes=0)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    sd = {"conv1.0.weight": torch.zeros(1), "evil": _Payload(str(target))}
    torch.save(sd, tmp_path / "evil.pth")  # pickling does not call __reduce__'s callable
    assert not target.exists()
    with pytest.raises(UnsafeFileError, match="code execution"):
        build_model("shufflenet_v2_x0_5", weights=tmp_path / "evil.pth")
    # the same payload as a bare (legacy, non-zip) pickle
    with open(tmp_path / "legacy.pt", "wb") as f:
        pickle.dump({"w": _Payload(str(target))}, f)
    with pytest.raises((UnsafeFileError, WeightsError)):  # refused or unreadable: never run
        build_model("shufflenet_v2_x0_5", weights=tmp_path / "legacy.pt")
    assert not target.exists()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.pth"
    torch.save({"a": torch.zeros(3)}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises((WeightsError, UnsafeFileError), match="broken.pth"):
        build_model("shufflenet_v2_x0_5", weights=p)
