"""The same optimisations on every family member: padded fp32 and fp32-stem int8 vs the plain graph.

    python benchmarks/variants.py [--runs 200] [--variants shufflenet_v2_x0_5,...] [--json out.json]

For each variant (seeded random weights; the graph, not the weights, decides the speed), in ONE
process with interleaved runs (batch 1, one thread, ONNX Runtime):
  plain fp32      the emitter's faithful graph (`shufflenet export`)
  padded fp32     `shufflenet export --pad-channels` (optimize.pad_channels; same outputs)
  int8 plain      `shufflenet quantize --int8-stem` of the plain graph (the previous recipe)
  int8 ours       `shufflenet quantize` of the padded graph (stem in fp32)
and checks that the padded graph's outputs equal the plain graph's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

DEFAULT = ("shufflenet_v2_x0_5,shufflenet_v2_x1_0,shufflenet_v2_x1_5,shufflenet_v2_x2_0,"
           "shufflenet_v1_g3_x1_0,shufflenet_v1_g8_x1_0,shufflenet_v1_caffe2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from shufflenet.bench import bench
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.quantize import QuantizeOptions, quantize
    from shufflenet.runtime import Runner
    from shufflenet.synthetic import synthetic_images

    work = Path(tempfile.mkdtemp(prefix="shufflenet-variants-"))
    calib = work / "calib"
    calib.mkdir()
    for i, img in enumerate(synthetic_images(32, seed=5)):
        img.save(calib / f"{i}.jpg")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    results = []
    for variant in args.variants.split(","):
        plain = export_onnx(variant, weights="random:0", opset=13)
        padded = export_onnx(variant, weights="random:0", opset=13, pad_channels=16)
        paths = {"plain fp32": save_model(plain, work / f"{variant}.onnx"),
                 "padded fp32": save_model(padded, work / f"{variant}-pad.onnx")}
        diff = float(np.abs(Runner(plain).outputs(x) - Runner(padded).outputs(x)).max())
        for label, src, stem in (("int8 plain", "plain fp32", False), ("int8 ours", "padded fp32", True)):
            out = work / f"{variant}-{label.replace(' ', '-')}.onnx"
            quantize(paths[src], out, calib, options=QuantizeOptions(calib_count=32, measure_latency=False,
                                                                      fp32_stem=stem))
            paths[label] = out
        rows = bench([str(p) for p in paths.values()], runs=args.runs)["rows"]
        p50 = dict(zip(paths, (r.p50_ms for r in rows)))
        results.append({"variant": variant, "p50_ms": p50, "padded_max_abs_diff": diff})
        base = p50["plain fp32"]
        print(f"{variant:24s} " + "  ".join(f"{k} {v:6.2f} ms ({base / v:4.2f}x)" for k, v in p50.items())
              + f"  | int8 ours vs padded fp32 {p50['padded fp32'] / p50['int8 ours']:.2f}x | max diff {diff:.1e}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
