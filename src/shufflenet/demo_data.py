"""A procedurally drawn, offline image-classification dataset (``shufflenet demo-data``).

Classes are objects drawn at random hue, size, rotation and position, so a model has to learn
shape, not colour or position. Three difficulties: ``easy`` (a light grey object on a dark plain
background), ``normal`` (the default: light on dark or dark on light, random hues, gradients,
noise; learnable from scratch in minutes on a CPU) and ``hard`` (random colours over textured
backgrounds with clutter, strokes and blobs of other shapes, blur and JPEG noise; a weak model
stays well below 100%). Every image depends only on (seed, split, class, index): the set is the
same however it is generated.

| class | what is drawn |
|---|---|
| circle | a filled disc |
| stripes | a patch of parallel stripes |
| triangle | a filled triangle |
| checker | a patch of checkerboard |
| square | a filled square |
| cross | a plus sign |
| ring | an annulus (a disc with a hole) |
| star | a five-pointed star |
| arrow | an arrow |
| crescent | a disc with an offset bite |
| letter_e | the glyph E (three bars and a spine) |
| heart | a heart shape |
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ._io import atomic_write
from .errors import ShuffleNetError
from .options import DEMO_CLASSES as CLASSES, DEMO_DEFAULTS, DEMO_DIFFICULTIES as DIFFICULTIES

__all__ = ["CLASSES", "DemoDataError", "make_demo_data", "demo_image"]

class DemoDataError(ShuffleNetError, ValueError):
    pass


def _rot(points, angle, cx, cy):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_polygons(name: str, r: float) -> list[list[tuple[float, float]]]:
    """Polygons around (0, 0) with radius ~r; discs are drawn separately."""
    if name == "square":
        return [[(-r, -r), (r, -r), (r, r), (-r, r)]]
    if name == "triangle":
        return [[(0, -r), (r * 0.95, r * 0.8), (-r * 0.95, r * 0.8)]]
    if name == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return [pts]
    if name == "cross":
        w = r * 0.33
        return [[(-w, -r), (w, -r), (w, r), (-w, r)], [(-r, -w), (r, -w), (r, w), (-r, w)]]
    if name == "arrow":
        w = r * 0.25
        return [[(-r, -w), (r * 0.2, -w), (r * 0.2, -r * 0.6), (r, 0), (r * 0.2, r * 0.6), (r * 0.2, w), (-r, w)]]
    if name == "letter_e":
        t = r * 0.28
        return [[(-r * 0.7, -r), (-r * 0.7 + t, -r), (-r * 0.7 + t, r), (-r * 0.7, r)],
                [(-r * 0.7, -r), (r * 0.7, -r), (r * 0.7, -r + t), (-r * 0.7, -r + t)],
                [(-r * 0.7, -t / 2), (r * 0.5, -t / 2), (r * 0.5, t / 2), (-r * 0.7, t / 2)],
                [(-r * 0.7, r - t), (r * 0.7, r - t), (r * 0.7, r), (-r * 0.7, r)]]
    if name == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 17, y * r / 17))
        return [pts]
    raise KeyError(name)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == 0:  # gradient
        t = xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        arr = c0 + (c1 - c0) * t[..., None]
    elif kind == 1:  # smooth noise
        coarse = rng.uniform(0, 1, (6, 6))
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       np.float32) / 255
        arr = c0 + (c1 - c0) * t[..., None]
    else:  # waves
        f = rng.uniform(2, 9)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx * math.cos(a := rng.uniform(0, np.pi)) + yy * math.sin(a)))
        arr = c0 + (c1 - c0) * t[..., None] * 0.5
    arr = arr + rng.normal(0, rng.uniform(2, 14), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _colour(rng, avoid=None):
    while True:
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        if avoid is None or sum(abs(a - b) for a, b in zip(c, avoid)) > 120:
            return c


def _draw_object(draw: ImageDraw.ImageDraw, img: Image.Image, name: str, cx, cy, r, angle, fill, rng) -> None:
    """Draw one object of class ``name`` centred at (cx, cy), radius r, rotated by angle."""
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.35)))
    elif name == "crescent":  # a disc minus an offset disc, drawn through a mask
        side = int(2 * r) + 2
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) - side / 2
        dx, dy = r * 0.5 * math.cos(angle), r * 0.5 * math.sin(angle)
        inside = (xx**2 + yy**2 <= r**2) & ((xx - dx) ** 2 + (yy - dy) ** 2 > (0.8 * r) ** 2)
        mask = Image.fromarray((inside * 255).astype(np.uint8), "L")
        img.paste(Image.new("RGB", (side, side), fill), (int(cx - side / 2), int(cy - side / 2)), mask)
    elif name in ("stripes", "checker"):
        n = int(rng.integers(3, 7))
        side = int(2 * r)
        patch = Image.new("RGBA", (side * 2, side * 2), (0, 0, 0, 0))
        pd = ImageDraw.Draw(patch)
        step = side * 2 / (2 * n)
        other = _colour(rng, fill)
        for i in range(2 * n):
            for j in range(2 * n if name == "checker" else 1):
                c = fill if (i + j) % 2 == 0 else other
                if name == "stripes":
                    pd.rectangle([i * step, 0, (i + 1) * step, side * 2], fill=c + (255,))
                else:
                    pd.rectangle([i * step, j * step, (i + 1) * step, (j + 1) * step], fill=c + (255,))
        patch = patch.rotate(math.degrees(angle), resample=Image.BILINEAR)
        patch = patch.crop((side // 2, side // 2, side // 2 + side, side // 2 + side))
        img.paste(patch, (int(cx - side / 2), int(cy - side / 2)), patch)
    else:
        for poly in _shape_polygons(name, r):
            draw.polygon(_rot(poly, angle, cx, cy), fill=fill)


def _normal_image(cls: str, rng: np.random.Generator, size: int) -> Image.Image:
    """The default: one object on a plain or gradient background, one dark and the other light.

    Shape is the only signal (hue, position, size and rotation are random), and the contrast is
    clear enough that ShuffleNet learns the classes from scratch in a few minutes on a CPU. With
    fully random colours and a few thousand images (``hard``), the same network stays near
    chance for hundreds of steps.
    """
    dark = rng.uniform() < 0.5  # dark background and light object, or the reverse
    c0 = rng.uniform(0, 80, 3) if dark else rng.uniform(175, 255, 3)
    c1 = np.clip(c0 + rng.uniform(-40, 40, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    arr = c0 + (c1 - c0) * t[..., None] + rng.normal(0, rng.uniform(1, 6), (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    r = size * rng.uniform(0.24, 0.38)
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(v) for v in (rng.uniform(175, 255, 3) if dark else rng.uniform(0, 80, 3)))
    _draw_object(ImageDraw.Draw(img), img, cls, cx, cy, r, rng.uniform(0, 2 * np.pi), fill, rng)
    return img


def demo_image(cls: str, seed: int, size: int = 224, difficulty: str = "normal") -> Image.Image:
    """One image of class ``cls``, a pure function of (cls, seed, size, difficulty).

    "easy" (for quick tests and smoke runs): a light object on a dark plain background, large,
    no clutter or blur. Colour carries no information there, so a small training set cannot be
    memorised by colour (with random colours and ~100 images per class, networks trained from
    scratch memorise colours and stay at chance on held-out images); "normal" (the default): one
    object, light on a dark background or dark on a light one, random hue; "hard":
    everything in the module doc (textures, clutter, blur, JPEG noise).
    """
    rng = np.random.default_rng(seed)
    if difficulty == "easy":
        dark = int(rng.integers(0, 70))
        img = Image.new("RGB", (size, size), (dark,) * 3)
        draw = ImageDraw.Draw(img)
        r = size * rng.uniform(0.25, 0.4)
        cx, cy = rng.uniform(r, size - r, 2)
        light = int(rng.integers(170, 256))
        _draw_object(draw, img, cls, cx, cy, r, rng.uniform(0, 2 * np.pi), (light,) * 3, rng)
        return img
    if difficulty == "normal":
        return _normal_image(cls, rng, size)
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    # clutter: strokes and small blobs that are not the class object
    for _ in range(int(rng.integers(2, 8))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line([x0, y0, x1, y1], fill=_colour(rng), width=int(rng.integers(1, max(2, size // 40))))
    for _ in range(int(rng.integers(0, 3))):
        other = CLASSES[int(rng.integers(len(CLASSES)))]
        if other == cls:
            continue
        r = size * rng.uniform(0.04, 0.09)
        _draw_object(draw, img, other, *rng.uniform(r, size - r, 2), r, rng.uniform(0, 2 * np.pi), _colour(rng), rng)
    r = size * rng.uniform(0.16, 0.32)
    cx, cy = rng.uniform(r, size - r, 2)
    bg = img.getpixel((int(cx), int(cy)))
    _draw_object(draw, img, cls, cx, cy, r, rng.uniform(0, 2 * np.pi), _colour(rng, bg), rng)
    if rng.uniform() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.6)) * size / 224))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(35, 90)))  # JPEG noise, like photos
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def make_demo_data(out: str | os.PathLike, *, classes: int = DEMO_DEFAULTS["classes"],
                   per_class: int = DEMO_DEFAULTS["per_class"], size: int = DEMO_DEFAULTS["size"],
                   seed: int = DEMO_DEFAULTS["seed"], val_fraction: float = 0.2,
                   difficulty: str = DEMO_DEFAULTS["difficulty"]) -> dict:
    """Write ``out/train/<class>/*.jpg`` and ``out/val/<class>/*.jpg`` (+ ``classes.txt``)."""
    if not 2 <= classes <= len(CLASSES):
        raise DemoDataError(f"classes must be from 2 to {len(CLASSES)}, got {classes}")
    if per_class < 2:
        raise DemoDataError(f"per_class must be at least 2, got {per_class}")
    if difficulty not in DIFFICULTIES:
        raise DemoDataError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if not 16 <= size <= 1024:
        raise DemoDataError(f"size must be from 16 to 1024, got {size}")
    if seed < 0:  # numpy's seed sequences take no negative entropy
        raise DemoDataError(f"seed must be >= 0, got {seed}")
    if not 0 <= val_fraction < 1:
        raise DemoDataError(f"val_fraction must be from 0 to below 1, got {val_fraction}")
    n_val = max(1, int(round(per_class * val_fraction)))
    if n_val >= per_class:
        raise DemoDataError(f"val_fraction {val_fraction} of {per_class} images per class leaves none to train on")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DemoDataError(f"{out} exists and is not empty; choose a new folder")
    names = CLASSES[:classes]
    counts = {"train": 0, "val": 0}
    for ci, name in enumerate(names):
        for split, n in (("train", per_class - n_val), ("val", n_val)):
            d = out / split / name
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                image_seed = np.random.SeedSequence([seed, 0 if split == "train" else 1, ci, k]).generate_state(1)[0]
                demo_image(name, int(image_seed), size, difficulty).save(d / f"{name}_{k:04d}.jpg", quality=92)
                counts[split] += 1
    info = {"classes": list(names), "train": counts["train"], "val": counts["val"], "size": size, "seed": seed,
            "difficulty": difficulty}
    # written last and whole: a set with dataset.json is complete
    atomic_write(out / "classes.txt", lambda t: t.write_text("\n".join(names) + "\n"))
    atomic_write(out / "dataset.json", lambda t: t.write_text(json.dumps(info, indent=2) + "\n"))
    return info
