"""ShuffleNet image classifiers as deployable software.

``import shufflenet`` needs only the base install (numpy, onnx, onnxruntime, pillow, tqdm) and
never imports torch; torch-backed functions import it when called. The choices and defaults of
every entry point are in :mod:`shufflenet.options`.
"""

from __future__ import annotations

from .errors import (
    CheckFailedError,
    MissingDependencyError,
    ShuffleNetError,
    UnknownVariantError,
    UnsafeFileError,
    WeightsError,
)
from .specs import Preprocess, VariantSpec, get_spec, list_variants

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ShuffleNetError",
    "UnknownVariantError",
    "WeightsError",
    "UnsafeFileError",
    "MissingDependencyError",
    "CheckFailedError",
    "Preprocess",
    "VariantSpec",
    "get_spec",
    "list_variants",
    "load_weights",
    "save_weights",
    "random_weights",
    "build_model",
    "preprocess_image",
    "Classifier",
    "export_onnx",
    "resolve_model",
    "QuantizeOptions",
]

# Heavier entry points load on first use (numpy, onnxruntime, Pillow): `import shufflenet` stays cheap.
_LAZY = {
    # weights needs numpy: `shufflenet --version` and `import shufflenet.errors` stay light
    "load_weights": ("weights", "load_weights"),
    "random_weights": ("weights", "random_weights"),
    "save_weights": ("weights", "save_weights"),
    "preprocess_image": ("preprocess", "preprocess_image"),
    "Classifier": ("runtime", "Classifier"),
    "export_onnx": ("onnx_export", "export_onnx"),
    "resolve_model": ("runtime", "resolve_model"),
    "QuantizeOptions": ("quantize", "QuantizeOptions"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'shufflenet' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (lazy entry points included), so ``dir(shufflenet)`` and completion show it."""
    return sorted(set(__all__) | {"__version__"})


def build_model(name: str, *, weights=None, num_classes: int | None = None, seed: int | None = None):
    """An eval-mode ``torch.nn.Module`` for a registry variant (needs the ``torch`` extra).

    ``weights``: None (seeded random init), a numpy dict, a path (.pth .safetensors .npz), or a
    weights spec string ("random", "random:SEED", a path).
    """
    from .torch_models import build_model as _build

    return _build(name, weights=weights, num_classes=num_classes, seed=seed)
