"""Exact vs draft-mode JPEG preprocessing: speed and the difference it makes.

Usage: python benchmarks/preprocess_draft.py [IMAGE_DIR] [--size 4032x3024]
Each image is upscaled to a phone-photo size and saved as JPEG (q=92) first, so the decoder has
the work a real photo gives it. Reports per-image median times and the difference between the
two paths in 8-bit pixel units (the normalised tensor times std times 255).
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from shufflenet.preprocess import preprocess_image
from shufflenet.specs import Preprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="?", default="../shared/data/imagenet-sample")
    ap.add_argument("--size", default="4032x3024")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))[: args.limit]
    if not files:
        sys.exit(f"no JPEGs in {args.images}")
    std = np.asarray(Preprocess().std, np.float32).reshape(1, 3, 1, 1)
    t_exact, t_draft, max_px, mean_px = [], [], [], []
    for f in files:
        img = Image.open(f).convert("RGB")
        big = img.resize((w, h) if img.width >= img.height else (h, w), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=92)
        data = buf.getvalue()
        te, td = [], []
        for _ in range(args.repeat):  # interleaved: exact, draft, exact, draft ...
            t0 = time.perf_counter()
            a = preprocess_image(data, exact=True)
            t1 = time.perf_counter()
            b = preprocess_image(data, exact=False)
            t2 = time.perf_counter()
            te.append(t1 - t0)
            td.append(t2 - t1)
        t_exact.append(statistics.median(te))
        t_draft.append(statistics.median(td))
        diff = np.abs(a - b) * std * 255.0
        max_px.append(float(diff.max()))
        mean_px.append(float(diff.mean()))
    print(f"{len(files)} images at {w}x{h}, {args.repeat} interleaved runs each; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"Pillow {Image.__version__}")
    print(f"exact  median {statistics.median(t_exact) * 1e3:7.1f} ms/image")
    print(f"draft  median {statistics.median(t_draft) * 1e3:7.1f} ms/image "
          f"(speedup {statistics.median(t_exact) / statistics.median(t_draft):.1f}x)")
    print(f"difference in 8-bit pixel units: mean {np.mean(mean_px):.3f}, "
          f"max over images of the per-image max {max(max_px):.2f}, median per-image max {statistics.median(max_px):.2f}")


if __name__ == "__main__":
    main()
