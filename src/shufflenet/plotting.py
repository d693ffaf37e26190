"""Small PNG charts with Pillow alone (no matplotlib): training curves, per-node bars."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

from ._io import atomic_write

__all__ = ["line_panel", "bar_panel", "save_panels"]

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
W, H, M = 560, 360, 48  # panel size and margin


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def _frame(title: str, ylabel: str, lo: float, hi: float) -> tuple[Image.Image, ImageDraw.ImageDraw, callable]:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    ticks = _ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

    def y_of(v: float) -> float:
        return H - M - (v - lo) / (hi - lo) * (H - 2 * M)

    d.rectangle([M, M, W - M // 2, H - M], outline="black")
    for t in ticks:
        if lo <= t <= hi:
            y = y_of(t)
            d.line([M - 4, y, M, y], fill="black")
            d.line([M + 1, y, W - M // 2 - 1, y], fill=(230, 230, 230))
            d.text((4, y - 6), f"{t:.3g}", fill="black")
    d.text((M, 12), title, fill="black")
    d.text((M, H - 20), ylabel, fill=(90, 90, 90))
    return img, d, y_of


def line_panel(series: dict[str, list[float]], *, title: str, xlabel: str = "epoch",
               robust: bool = False) -> Image.Image:
    """One chart: each named series against 1..n. ``robust`` caps the axis at 3x the median so
    one early spike (an unstable first epoch) does not flatten the rest; capped points sit on
    the top edge."""
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if robust and values:
        med = sorted(values)[len(values) // 2]
        if med > 0 and hi > 3 * med:
            hi = 3 * med
            title += f" (axis capped at {hi:.3g})"
            series = {k: [None if v is None else min(v, hi) for v in s] for k, s in series.items()}
    img, d, y_of = _frame(title, xlabel, lo, hi)
    n = max((len(s) for s in series.values()), default=1)

    def x_of(i: int) -> float:
        return M + (i / max(n - 1, 1)) * (W - 1.5 * M)

    for k, (name, s) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = [(x_of(i), y_of(v)) for i, v in enumerate(s) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        d.text((W - M // 2 - 150, M + 6 + 14 * k), f"- {name}", fill=colour)
    return img


def bar_panel(values: list[tuple[str, float]], *, title: str, ylabel: str = "") -> Image.Image:
    """Vertical bars (e.g. per-node SQNR), labels under the first and last bars only."""
    vals = [v for _, v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(0.0, min(vals)), max(vals)
    img, d, y_of = _frame(title, ylabel, lo, hi)
    n = max(len(values), 1)
    width = (W - 1.5 * M) / n
    for i, (_, v) in enumerate(values):
        if not math.isfinite(v):
            continue
        x0 = M + i * width
        d.rectangle([x0, min(y_of(v), y_of(0)), x0 + max(width - 1, 1), max(y_of(v), y_of(0))], fill=COLOURS[0])
    return img


def save_panels(panels: list[Image.Image], path: str | os.PathLike) -> Path:
    """Panels side by side into one PNG, written atomically."""
    sheet = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width
    return atomic_write(Path(path), lambda tmp: sheet.save(tmp, "PNG"))
