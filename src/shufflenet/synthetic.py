"""Seeded synthetic photographs-to-be: varied sizes, colours, shapes, gradients and noise.

Used for bundle test data, tests and offline demos; never a substitute for real images in
accuracy claims.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_image(rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """One RGB image: a colour gradient background with a few filled shapes, blur and noise."""
    w, h = size or (int(rng.integers(160, 640)), int(rng.integers(160, 640)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx * np.cos(a := rng.uniform(0, np.pi)) + yy * np.sin(a)) / max(w, h)
    bg = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(10, w / 2), y0 + rng.uniform(10, h / 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        [draw.ellipse, draw.rectangle][int(rng.integers(0, 2))]([x0, y0, x1, y1], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
    noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 12), (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def synthetic_images(n: int, *, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [synthetic_image(rng) for _ in range(n)]
