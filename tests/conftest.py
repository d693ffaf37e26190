import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # torchvision_reference


@pytest.fixture(scope="session")
def images224():
    """Four preprocessed synthetic images, [4, 3, 224, 224] float32 (realistic statistics)."""
    from shufflenet.preprocess import preprocess_pil
    from shufflenet.specs import Preprocess
    from shufflenet.synthetic import synthetic_images

    return np.concatenate([preprocess_pil(im, Preprocess()) for im in synthetic_images(4, seed=21)])


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A ShuffleNetV2 x0.5 trained ~25 s on generated 'easy' data (4 classes, 56 px), exported.

    Returns dict(data, run, onnx, result). Shared by the training and quantization tests.
    """
    pytest.importorskip("torch")
    from shufflenet.demo_data import make_demo_data
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    make_demo_data(root / "data", classes=4, per_class=120, size=64, seed=1, difficulty="easy", val_fraction=1 / 3)
    result = train(TrainConfig(data=str(root / "data"), out=str(root / "run"), variant="shufflenet_v2_x0_5",
                               epochs=30, batch_size=16, img_size=56, min_scale=0.5, threads=2, ema=0.99))
    onnx_path = save_model(export_onnx("shufflenet_v2_x0_5", weights=str(root / "run" / "best"), opset=13),
                           root / "model.onnx")
    return {"data": root / "data", "run": root / "run", "onnx": onnx_path, "result": result}
