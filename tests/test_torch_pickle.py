"""Reading .pth without torch: equal to torch.load for both formats, code refused."""

import pickle
import sys

import numpy as np
import pytest

from shufflenet._torch_pickle import load_state_dict
from shufflenet.errors import UnsafeFileError, WeightsError
from shufflenet.weights import load_weights

torch = pytest.importorskip("torch")  # to write the files; reading never uses it


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_equals_torch_load(tmp_path, zipped):
    sd = {"w": torch.randn(3, 4), "t": torch.arange(12.0).reshape(3, 4).t(), "n": torch.tensor(7),
          "h": torch.randn(5).half(), "b": torch.randn(5).bfloat16(), "i": torch.arange(4, dtype=torch.int32),
          "e": torch.zeros(0, 2), "p": torch.nn.Parameter(torch.ones(2)), "s": torch.arange(10.0)[2:8:2]}
    path = tmp_path / "c.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    got = load_state_dict(path)
    for k, v in sd.items():
        want = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_code_is_refused_and_never_runs(tmp_path, zipped):
    target = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": _Payload(str(target))}, tmp_path / "evil.pth",
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeFileError, match="code execution|unexpected global"):
        load_state_dict(tmp_path / "evil.pth")
    assert not target.exists()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsError):
        load_state_dict(tmp_path / "x.pth")


def test_load_weights_without_torch_installed(tmp_path, monkeypatch):
    from shufflenet import build_model

    sd = build_model("shufflenet_v2_x0_5").state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    got = load_weights(tmp_path / "tv.pth")
    assert set(got) == set(sd) and all(np.array_equal(got[k], sd[k].numpy()) for k in sd)
