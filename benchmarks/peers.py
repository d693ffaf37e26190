"""ShuffleNetV2 x1.0 side by side, in ONE process, interleaved (see docs/bench.md).

    python benchmarks/peers.py [--runs 300] [--images ../shared/data/imagenet-sample]

(a) the zoo's recipe: torchvision's module exported with the TorchScript torch.onnx.export at
    opset 12 with a dynamic batch axis (as the zoo's export script does), ONNX Runtime defaults;
(b) PyTorch eager (torch.no_grad, the same weights);
(c) OpenVINO on (a)'s ONNX, f32 and its default bf16 (precision printed);
(d) ours: `export --pad-channels` (the emitter's graph with NCHWc-aligned branch interiors;
    same outputs) and its int8 QDQ (`quantize`: per-channel, stem kept fp32, calibrated on
    generated images), ONNX Runtime with pinned threads; plus the unpadded emitter graph.
Plus the floor: numpy sgemm GFLOP/s on one thread and the time 2 x MACs would take at that rate.
All models get the same seeded random weights (the graph, not the weights, decides the speed).
Needs the torch extra; OpenVINO is optional (`pip install openvino`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # torchvision_reference


def sgemm_gflops(n: int = 1024, reps: int = 10) -> float:
    """Single-thread float32 GEMM rate (run this script with OMP/OPENBLAS threads = 1)."""
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", default=None, help="also measure end to end over this folder")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort
    import torch

    from shufflenet import build_model
    from shufflenet.bench import ort_session
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.quantize import QuantizeOptions, quantize
    from shufflenet.specs import get_spec
    from shufflenet.synthetic import synthetic_images
    from torchvision_reference import torchvision_shufflenet_v2

    torch.set_num_threads(args.threads)
    variant = "shufflenet_v2_x1_0"
    ours_module = build_model(variant, seed=0)
    tv = torchvision_shufflenet_v2(variant).eval()
    tv.load_state_dict(ours_module.state_dict())
    work = Path(tempfile.mkdtemp(prefix="shufflenet-peers-"))

    # (a) the zoo's recipe
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(tv, torch.zeros(1, 3, 224, 224), buf, opset_version=12, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
                          do_constant_folding=True, dynamo=False)
    zoo_path = work / "zoo-recipe.onnx"
    zoo_path.write_bytes(buf.getvalue())
    zoo_model = onnx.load(str(zoo_path))

    # (d) ours
    plain = export_onnx(variant, weights="random:0", opset=13)  # the same weights as build_model(seed=0)
    fp32 = export_onnx(variant, weights="random:0", opset=13, pad_channels=16)
    fp32_path = save_model(fp32, work / "ours-fp32.onnx")
    calib = work / "calib"
    calib.mkdir()
    for i, img in enumerate(synthetic_images(64, seed=5)):
        img.save(calib / f"{i}.jpg")
    quantize(fp32_path, work / "ours-int8.onnx", calib, options=QuantizeOptions(format="qdq", calib_count=64,
                                                                                measure_latency=False))
    int8 = onnx.load(str(work / "ours-int8.onnx"))
    absorbed_path = save_model(export_onnx(variant, weights="random:0", opset=13, absorb_shuffle=True),
                               work / "ours-fp32-absorbed.onnx")

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)
    candidates = {}
    zoo_opts = ort.SessionOptions()
    zoo_opts.intra_op_num_threads = args.threads  # threads pinned for all; otherwise ORT defaults
    zoo_sess = ort.InferenceSession(zoo_path.read_bytes(), zoo_opts, providers=["CPUExecutionProvider"])
    candidates["zoo recipe (torch.onnx opset 12, ORT defaults)"] = lambda: zoo_sess.run(None, {"input": x})
    candidates["PyTorch eager"] = lambda: tv(xt)
    try:
        import openvino as ov

        core = ov.Core()
        for prec in ("f32", "bf16"):
            compiled = core.compile_model(str(zoo_path), "CPU", {"INFERENCE_PRECISION_HINT": prec,
                                                                 "INFERENCE_NUM_THREADS": args.threads,
                                                                 "PERFORMANCE_HINT": "LATENCY"})
            req = compiled.create_infer_request()
            ran = compiled.get_property("INFERENCE_PRECISION_HINT")
            candidates[f"OpenVINO {ov.__version__.split('-')[0]} {getattr(ran, 'to_string', lambda: str(ran))()}"] = \
                (lambda r=req: r.infer({0: x}))
        compiled = core.compile_model(str(absorbed_path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                                  "INFERENCE_NUM_THREADS": args.threads,
                                                                  "PERFORMANCE_HINT": "LATENCY"})
        req_abs = compiled.create_infer_request()
        candidates["ours fp32 --absorb-shuffle, OpenVINO bf16"] = lambda: req_abs.infer({0: x})
    except ImportError:
        print("openvino not installed: skipped", file=sys.stderr)
    s32 = ort_session(fp32, args.threads)
    s8 = ort_session(int8, args.threads)
    s_plain = ort_session(plain, args.threads)
    candidates["ours fp32, unpadded emitter graph (ORT)"] = lambda: s_plain.run(None, {"input": x})
    candidates["ours fp32 --pad-channels (ORT)"] = lambda: s32.run(None, {"input": x})
    candidates["ours int8 QDQ, fp32 stem (ORT)"] = lambda: s8.run(None, {"input": x})

    with torch.no_grad():
        for f in candidates.values():
            for _ in range(args.warmup):
                f()
        samples = {k: [] for k in candidates}
        for _ in range(args.runs):
            for k, f in candidates.items():
                t = time.perf_counter()
                f()
                samples[k].append((time.perf_counter() - t) * 1e3)

    gflops = sgemm_gflops()
    macs = get_spec(variant).macs
    floor_ms = 2 * macs / (gflops * 1e9) * 1e3
    zoo_p50 = statistics.median(samples["zoo recipe (torch.onnx opset 12, ORT defaults)"])
    rows = []
    for k, s in samples.items():
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        rows.append({"name": k, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "vs_zoo_recipe": p50 / zoo_p50,
                     "fraction_of_floor": floor_ms / p50})
    env = {"cpu": _cpu(), "threads": args.threads, "runs": args.runs, "python": platform.python_version(),
           "onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "sgemm_gflops_1thread": gflops, "floor_ms": floor_ms, "date": time.strftime("%Y-%m-%d"),
           "nodes": {"zoo recipe": len(zoo_model.graph.node), "ours fp32": len(fp32.graph.node),
                     "ours int8": len(int8.graph.node)}}
    print(f"{env['cpu']}; {args.threads} thread(s); {args.runs} interleaved runs after {args.warmup} warm-up; "
          f"ORT {ort.__version__}, torch {torch.__version__}")
    print(f"floor: numpy sgemm {gflops:.0f} GFLOP/s on one thread -> 2 x {macs / 1e6:.0f}M MACs = {floor_ms:.2f} ms")
    print(f"{'':48s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'vs zoo':>7s} {'floor/p50':>9s}")
    for r in rows:
        print(f"{r['name']:48s} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['p99_ms']:8.2f} {r['vs_zoo_recipe']:7.2f} "
              f"{r['fraction_of_floor']:9.2f}")
    ours = {r["name"]: r["p50_ms"] for r in rows}
    print(f"ours int8 speed-up over ours fp32: "
          f"{ours['ours fp32 --pad-channels (ORT)'] / ours['ours int8 QDQ, fp32 stem (ORT)']:.2f}x")
    print(f"nodes: {env['nodes']}")

    if args.images:
        env["end_to_end"] = {}
        for label, path in (("fp32", work / "ours-fp32.onnx"), ("int8", work / "ours-int8.onnx")):
            e2e = end_to_end(args.images, zoo_path, path, args.threads)
            env["end_to_end"][label] = e2e
            print(f"end to end over {e2e['images']} images ({e2e['passes']} passes over the folder): zoo-style sequential loop "
                  f"{e2e['sequential_images_per_s']:.1f} img/s; ours {label} pipelined {e2e['ours_images_per_s']:.1f} "
                  f"img/s ({e2e['speedup']:.2f}x best of {e2e['repeats']}, median of ratios "
                  f"{e2e['speedup_median_of_repeats']:.2f}x); predictions identical to the exact path: "
                  f"{e2e['identical_predictions']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2))


def end_to_end(folder: str, zoo_path: Path, ours_path: Path, threads: int, repeats: int = 7,
               passes: int = 3) -> dict:
    """The zoo's loop (Pillow, one image at a time, ORT defaults) vs our pipelined classify."""
    import onnxruntime as ort
    from PIL import Image

    from shufflenet.runtime import Classifier, expand_inputs, run_files

    files, _ = expand_inputs([folder])
    files = files * passes  # the folder several times over: pipeline fill and drain amortised
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    sess = ort.InferenceSession(str(zoo_path), providers=["CPUExecutionProvider"])  # ORT defaults

    def zoo_loop():
        preds = []
        for f in files:
            img = Image.open(f).convert("RGB")
            w, h = img.size
            s = 256 / min(w, h)
            img = img.resize((int(w * s) if w > h else 256, int(h * s) if h > w else 256), Image.BILINEAR)
            w, h = img.size
            left, top = int(round((w - 224) / 2)), int(round((h - 224) / 2))
            arr = (np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255 - mean) / std
            preds.append(int(sess.run(None, {"input": arr.transpose(2, 0, 1)[None].astype(np.float32)})[0].argmax()))
        return preds

    clf = Classifier(str(ours_path), threads=threads)
    exact = Classifier(str(ours_path), threads=threads, exact=True)

    def ours():
        return [r.predictions[0].index for r in run_files(clf, files, top=1, batch_size=8, workers=2)]

    times: dict[str, list[float]] = {"zoo": [], "ours": []}
    ours()  # warm-up: thread pool, sessions, file cache
    zoo_loop()
    for _ in range(repeats):  # interleaved repeats
        for name, fn in (("zoo", zoo_loop), ("ours", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    ratios = [z / o for z, o in zip(times["zoo"], times["ours"])]
    exact_preds = [r.predictions[0].index for r in run_files(exact, files, top=1, batch_size=8, workers=2)]
    return {"images": len(files), "sequential_images_per_s": len(files) / best["zoo"],
            "ours_images_per_s": len(files) / best["ours"], "speedup": best["zoo"] / best["ours"],
            "speedup_median_of_repeats": statistics.median(ratios), "repeats": repeats, "passes": passes,
            "identical_predictions": ours() == exact_preds}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} vCPU"
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
