"""One preprocessing definition: image -> float32 NCHW, exactly as torchvision evaluates.

``Resize(256)`` of the shorter side with Pillow bilinear (antialiased when shrinking, as PIL
always is), the long side truncated like torchvision (``int(256 * long / short)``), then
``CenterCrop(224)`` with torchvision's rounding of the offsets (Python's round-half-even), then
``ToTensor`` (/255 in float32) and ``Normalize`` (subtract mean, divide by std, in float32).
The recipe's numbers come from each variant's :class:`~shufflenet.specs.Preprocess`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ShuffleNetError
from .specs import Preprocess, get_spec

__all__ = ["ImageError", "preprocess_image", "preprocess_pil", "load_image", "RESIZE_MODES"]

RESIZE_MODES = ("shorter", "square")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageError(ShuffleNetError, ValueError):
    """An image that cannot be used (unreadable, refused format, too large, truncated)."""


def load_image(image) -> Image.Image:
    """Open a path, bytes or PIL image as an RGB PIL image."""
    if isinstance(image, Image.Image):
        img = image
    else:
        data = image if isinstance(image, (bytes, bytearray)) else None
        name = "<bytes>" if data is not None else str(image)
        try:
            img = Image.open(io.BytesIO(data) if data is not None else Path(os.fspath(image)))
            img.load()
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"{name}: cannot read image ({e})") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's output size for ``Resize(size)``: shorter side to size, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """torchvision's crop offsets: ``int(round((size - crop) / 2))`` (round half to even)."""
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def preprocess_pil(img: Image.Image, recipe: Preprocess, *, resize: str | None = None) -> np.ndarray:
    """RGB PIL image -> float32 [1, 3, crop, crop] by ``recipe``."""
    mode = resize or recipe.resize_mode
    if mode not in RESIZE_MODES:
        raise ImageError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    target = (recipe.resize, recipe.resize) if mode == "square" else resized_size(w, h, recipe.resize)
    if target != (w, h):
        img = img.resize(target, _RESAMPLE[recipe.interpolation])
    w, h = img.size
    c = recipe.crop
    if w < c or h < c:  # torchvision pads with zeros to the crop size first
        canvas = Image.new("RGB", (max(w, c), max(h, c)))
        canvas.paste(img, ((max(w, c) - w) // 2, (max(h, c) - h) // 2))
        img, (w, h) = canvas, canvas.size
    img = img.crop(center_crop_box(w, h, c))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(recipe.scale)
    if recipe.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def preprocess_image(image, *, variant: str | None = None, resize: str = "shorter",
                     recipe: Preprocess | None = None) -> np.ndarray:
    """A path, bytes or PIL image -> float32 NCHW ``[1, 3, 224, 224]`` for ``variant``'s recipe."""
    if recipe is not None and variant is not None:
        raise ImageError("give either variant or recipe, not both")
    recipe = recipe or (get_spec(variant).preprocess if variant else Preprocess())
    return preprocess_pil(load_image(image), recipe, resize=resize)
