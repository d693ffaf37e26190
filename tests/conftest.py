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
