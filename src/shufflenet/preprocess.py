"""One preprocessing definition: image -> float32 NCHW, exactly as torchvision evaluates.

Two ways to decode a file, named in every report (:func:`describe`):

* ``exact`` (``evaluate``'s default, ``classify --exact``): torchvision's ImageNet evaluation,
  bit for bit: the file decoded at full size, EXIF orientation ignored, ``Image.convert("RGB")``
  as torchvision's ``pil_loader`` does.
* ``photo`` (``classify``'s default): EXIF orientation applied (a phone photo stands upright),
  large JPEGs decoded in draft mode (:data:`DRAFT_MARGIN`), transparency composited on white and
  16-bit images scaled rather than clamped (:func:`to_rgb`).

``Resize(256)`` of the shorter side with Pillow bilinear (antialiased when shrinking, as PIL
always is), the long side truncated like torchvision (``int(256 * long / short)``), then
``CenterCrop(224)`` with torchvision's rounding of the offsets (Python's round-half-even), then
``ToTensor`` (/255 in float32) and ``Normalize`` (subtract mean, divide by std, in float32).
The recipe's numbers come from each variant's :class:`~shufflenet.specs.Preprocess`.
"""

from __future__ import annotations

import io
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ._safeio import regular_file
from .errors import ShuffleNetError
from .limits import MAX_PIXELS, MAX_RESIZED_PIXELS
from .options import RESIZE_MODES
from .specs import Preprocess, get_spec

__all__ = ["ImageError", "preprocess_image", "preprocess_pil", "load_image", "to_rgb", "describe", "RESIZE_MODES",
           "ALLOWED_FORMATS", "MAX_PIXELS", "MAX_RESIZED_PIXELS", "DECODINGS"]

#: "exact": torchvision's eval decoding; "photo": EXIF orientation + JPEG draft decoding
DECODINGS = ("exact", "photo")

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageError(ShuffleNetError, ValueError):
    """An image that cannot be used (unreadable, refused format, too large, truncated)."""


#: formats opened at all; everything else is refused before decoding (camera MPO files open
#: through the JPEG plugin)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, like a web page
#: draft decoding keeps at least this many times the resize target on the shorter side, so the
#: antialiased resize still does the last 2x; measured error vs exact in docs/preprocessing.md
DRAFT_MARGIN = 2


def load_image(image, *, draft_size: int | None = None, max_pixels: int = MAX_PIXELS,
               exact: bool = False) -> Image.Image:
    """Open a path, bytes or PIL image as an RGB PIL image.

    Only :data:`ALLOWED_FORMATS` are opened; more than ``max_pixels`` is refused before decoding;
    truncated files raise. ``exact=True`` is torchvision's ``pil_loader``: EXIF orientation is
    ignored, ``draft_size`` must be None and the mode becomes RGB by ``Image.convert("RGB")``.
    Otherwise (photo decoding) EXIF orientation is applied and every mode is converted on purpose:
    palette/LA/RGBA transparency composited on :data:`BACKGROUND`, 16-bit and 32-bit integer
    images scaled (not clamped) to 8 bits, float images taken as [0, 1] or [0, 255].
    ``draft_size``: JPEGs may be decoded at 1/2, 1/4 or 1/8 scale (DCT domain) as long as both
    sides stay >= draft_size.
    """
    if exact and draft_size:
        raise ImageError("exact decoding reads every JPEG at full size: draft_size must be None")
    if isinstance(image, Image.Image):
        img, name = image, "<image>"
    else:
        img, name = _open(image, max_pixels)
        img = _decode(img, name, draft_size=draft_size, max_pixels=max_pixels)
    if exact:
        return _exact_rgb(img, name)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make the pixels unusable
        pass
    return to_rgb(img, name)


def _open(image, max_pixels: int) -> tuple[Image.Image, str]:
    """(the opened, not yet decoded, image; its name in messages) for a path or bytes; only
    :data:`ALLOWED_FORMATS` are opened."""
    data = image if isinstance(image, (bytes, bytearray, memoryview)) else None
    name = "<bytes>" if data is not None else str(image)
    if data is None and os.path.exists(image):
        regular_file(image, ImageError, "image")  # a FIFO would block the open forever
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if data is not None else Path(os.fspath(image)),
                             formats=ALLOWED_FORMATS)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError(f"{name}: refused, more than {max_pixels:,} pixels (decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image in an allowed format "
                         f"({', '.join(ALLOWED_FORMATS)})") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"{name}: cannot read image ({e})") from None
    return img, name


def _decode(img: Image.Image, name: str, *, draft_size: int | None, max_pixels: int) -> Image.Image:
    """The first frame decoded (in JPEG draft mode when ``draft_size``), the file closed; the
    image is closed on any failure. More than ``max_pixels`` is refused before decoding."""
    try:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"{name}: refused, {w}x{h} is more than {max_pixels:,} pixels")
        if draft_size and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_size, draft_size))
        img.seek(0)  # GIF/TIFF: the first frame
        img.load()
        if getattr(img, "fp", None) is not None:  # multi-frame files keep theirs open: detach
            loaded = img.copy()
            img.close()
            img = loaded
    except ImageError:
        img.close()
        raise
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        img.close()
        raise ImageError(f"{name}: cannot decode image ({e})") from None
    return img


def _exact_rgb(img: Image.Image, name: str) -> Image.Image:
    """torchvision's pil_loader: ``img.convert("RGB")``, the orientation tag ignored."""
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"{name}: cannot convert mode {img.mode!r} to RGB ({e})") from None


def describe(recipe: Preprocess, *, resize: str | None = None, exact: bool) -> str:
    """The one-line name of a preprocessing, as every report prints it."""
    mode = resize or recipe.resize_mode
    decoding = ("exact decoding (torchvision: full-size JPEG, EXIF orientation ignored)" if exact else
                "photo decoding (EXIF orientation applied, JPEG draft decoding)")
    return f"{mode} resize {recipe.resize}, crop {recipe.crop}, {decoding}"


def to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Every Pillow mode to RGB, on purpose (see :func:`load_image`)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX") or (mode == "P" and "transparency" not in img.info):
        return img.convert("RGB")
    if mode in ("P", "PA", "LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64) / 257.0  # 65535 -> 255: scaled, not clamped
    elif mode == "I":
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        if lo < 0 or hi > 65535:
            arr = (arr - lo) / max(hi - lo, 1.0) * 255.0
        elif hi > 255:
            arr = arr / 257.0
    elif mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    else:
        raise ImageError(f"{name}: unsupported image mode {mode!r}")
    gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    return gray.convert("RGB")


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
    if target[0] * target[1] > MAX_RESIZED_PIXELS:  # checked before the buffer exists
        raise ImageError(f"refused: resizing {w}x{h} gives {target[0]}x{target[1]}, more than "
                         f"{MAX_RESIZED_PIXELS:,} pixels (an extreme aspect ratio)")
    if target != (w, h):
        img = img.resize(target, _RESAMPLE[recipe.interpolation])
    w, h = img.size
    c = recipe.crop
    if w < c or h < c:  # torchvision pads with zeros to the crop size first
        canvas = Image.new("RGB", (max(w, c), max(h, c)))
        canvas.paste(img, ((max(w, c) - w) // 2, (max(h, c) - h) // 2))
        img, (w, h) = canvas, canvas.size
    return _normalise(np.asarray(img.crop(center_crop_box(w, h, c)), dtype=np.uint8), recipe)


def _normalise(pixels: np.ndarray, recipe: Preprocess) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [1, 3, H, W], scaled, reordered and normalised."""
    lut = _normalise_table(recipe.scale, tuple(recipe.mean), tuple(recipe.std))
    out = np.empty((1, 3, *pixels.shape[:2]), np.float32)
    for k in range(3):  # out channel k reads source channel k (RGB) or 2 - k (BGR)
        src = 2 - k if recipe.channel_order == "BGR" else k
        np.take(lut[k], pixels[:, :, src], out=out[0, k])
    return out


@lru_cache(maxsize=32)
def _normalise_table(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: ``(v / scale - mean[c]) / std[c]`` for every byte value ``v``.

    The same float32 operations the element-wise form ``(x / scale - mean) / std`` performs, so a
    lookup gives bit-identical values at a third of the cost (docs/preprocessing.md).
    """
    v = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(scale)
    table = (v[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.setflags(write=False)
    return table


def preprocess_image(image, *, variant: str | None = None, resize: str | None = None,
                     recipe: Preprocess | None = None, exact: bool = False) -> np.ndarray:
    """A path, bytes or PIL image -> float32 NCHW ``[1, 3, 224, 224]`` for ``variant``'s recipe.

    ``resize``: "shorter" (the recipe's default, torchvision's) or "square" (the zoo notebook's).
    ``exact=True``: torchvision's eval transform bit for bit (no EXIF transpose, no draft
    decoding); ``exact=False`` (photo decoding) applies EXIF orientation and lets large JPEGs
    decode in draft mode (see :data:`DRAFT_MARGIN`).
    """
    if recipe is not None and variant is not None:
        raise ImageError("give either variant or recipe, not both")
    recipe = recipe or (get_spec(variant).preprocess if variant else Preprocess())
    draft = None if exact else DRAFT_MARGIN * recipe.resize
    return preprocess_pil(load_image(image, draft_size=draft, exact=exact), recipe, resize=resize)
