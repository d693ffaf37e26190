import os
import sys
from pathlib import Path

# One thread for every math library, set before any of them starts: tests run on busy 2-core
# machines, where oversubscribed thread pools turned a 26 s fixture into 900 s. Child processes
# (CLI subprocesses, torchrun) inherit these.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # torchvision_reference

_ort_session_init = ort.InferenceSession.__init__


def _one_thread_session(self, path_or_bytes, sess_options=None, *args, **kwargs):
    """ONNX Runtime sessions in tests run on one intra-op thread, without spinning, unless the
    code under test asks for a thread count itself (bench, classify --threads)."""
    opts = sess_options if sess_options is not None else ort.SessionOptions()
    if opts.intra_op_num_threads == 0:  # 0: ORT's default, one thread per core, spinning
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        except Exception:  # the code under test set it already: its choice stands
            pass
    _ort_session_init(self, path_or_bytes, opts, *args, **kwargs)


ort.InferenceSession.__init__ = _one_thread_session


@pytest.fixture(scope="session", autouse=True)
def _torch_one_thread():
    """torch (when installed) on one intra-op and one inter-op thread for the whole session."""
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def images224():
    """Four preprocessed synthetic images, [4, 3, 224, 224] float32 (realistic statistics)."""
    from shufflenet.preprocess import preprocess_pil
    from shufflenet.specs import Preprocess
    from shufflenet.synthetic import synthetic_images

    return np.concatenate([preprocess_pil(im, Preprocess()) for im in synthetic_images(4, seed=21)])


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny 'easy' demo set (3 classes x 10 images, 40 px) for the training tests; read only."""
    from shufflenet.demo_data import make_demo_data

    d = tmp_path_factory.mktemp("tiny")
    make_demo_data(d / "data", classes=3, per_class=10, size=40, seed=2, difficulty="easy")
    return d / "data"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A ShuffleNetV2 x0.5 trained on generated 'easy' data (4 classes, 56 px), exported.

    Seeded and on one thread, so it is the same model on every run of a machine; tests that use it
    still assert only what holds whatever the accuracy reached. Returns dict(data, run, onnx,
    result). Shared by the training and quantization tests.
    """
    pytest.importorskip("torch")
    from shufflenet.demo_data import make_demo_data
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    make_demo_data(root / "data", classes=4, per_class=120, size=64, seed=1, difficulty="easy", val_fraction=1 / 3)
    result = train(TrainConfig(data=str(root / "data"), out=str(root / "run"), variant="shufflenet_v2_x0_5",
                               epochs=30, batch_size=16, img_size=56, min_scale=0.5, threads=1, ema=0.99))
    onnx_path = save_model(export_onnx("shufflenet_v2_x0_5", weights=str(root / "run" / "best"), opset=13),
                           root / "model.onnx")
    return {"data": root / "data", "run": root / "run", "onnx": onnx_path, "result": result}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (CI runs every tier: .ci/run)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --runslow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
