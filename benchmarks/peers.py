"""ShuffleNetV2 x1.0 side by side, all peers in ONE process, in blocks (see docs/bench.md).

    python benchmarks/peers.py [--rounds 12] [--block 40] [--interleaved] [--images DIR] [--json F]

Latency at batch 1 on ``--threads`` (default 1) thread(s), then throughput at batch 8 and 32 on
``--tp-threads`` (default 2) threads, of:
(a) the zoo's recipe: torchvision's module exported with the TorchScript torch.onnx.export at
    opset 12 with a dynamic batch axis (as the zoo's export script does), ONNX Runtime defaults
    (threads pinned);
(b) PyTorch eager (torch.no_grad, the same weights);
(c) OpenVINO on (a)'s ONNX in f32 and bf16 (precision printed), and OpenVINO running our int8;
(d) ncnn (pip) fp32 and bf16 storage, its model converted from our faithful ONNX with pnnx (pip);
(e) ours, the default path: `shufflenet export` (padded graph) run by our runtime (load-time
    rewrites), and its int8 from `shufflenet quantize` (QDQ per-channel, fp32 stem, calibrated on
    generated images); plus the faithful graph without rewrites, and int8 from the
    shuffle-absorbed graph, for comparison.
Measurement: after warm-up, ``--block`` consecutive runs of each candidate in turn, ``--rounds``
rounds; p50 is the median of the per-block medians (``--interleaved``: one run of each in turn).
Peaks, measured in the same process with ONNX Runtime's own GEMMs (MLAS) on a 1024^3 product:
fp32 MatMul GFLOP/s and u8s8 MatMulInteger GOP/s, on 1 and on the throughput thread count;
"peak fraction" = 2 x MACs x images/s over that peak. Also numpy sgemm on one thread (the floor).
All models get the same seeded random weights (the graph, not the weights, decides the speed).
Needs the torch extra; OpenVINO, ncnn and pnnx are optional (`pip install 'shufflenet[peers]'`).
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


def ort_peak(kind: str, threads: int, n: int = 1024, reps: int = 10) -> float:
    """G(FL)OP/s of ONNX Runtime's fp32 MatMul or u8s8 MatMulInteger on an n^3 product."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b")
        node, in_t, out_t = helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "b")
        node, in_t, out_t = helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.UINT8, TensorProto.INT32
    g = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", in_t, [n, n])],
                          [helper.make_tensor_value_info("y", out_t, [n, n])], [b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    s.run(None, {"a": a})
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, {"a": a})
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def measure(candidates: dict, x_for, *, rounds: int, block: int, warmup: int, interleaved: bool) -> dict:
    """name -> (per-run samples ms, per-block medians ms)."""
    import torch

    samples = {k: [] for k in candidates}
    blocks = {k: [] for k in candidates}
    with torch.no_grad():
        for k, f in candidates.items():
            for _ in range(warmup):
                f()
        if interleaved:
            for _ in range(rounds * block):
                for k, f in candidates.items():
                    t = time.perf_counter()
                    f()
                    samples[k].append((time.perf_counter() - t) * 1e3)
            for k in candidates:
                blocks[k] = [statistics.median(samples[k][i:i + block]) for i in range(0, len(samples[k]), block)]
        else:
            for _ in range(rounds):
                for k, f in candidates.items():
                    got = []
                    for _ in range(block):
                        t = time.perf_counter()
                        f()
                        got.append((time.perf_counter() - t) * 1e3)
                    samples[k] += got
                    blocks[k].append(statistics.median(got))
    return {k: (samples[k], blocks[k]) for k in candidates}


def build(variant: str, work: Path, threads: int):
    """Every model file, and a function (threads, batch) -> {name: callable}."""
    import onnx
    import torch

    from shufflenet import build_model
    from shufflenet.onnx_export import export_onnx, save_model
    from shufflenet.optimize import PAD_MULTIPLE
    from shufflenet.quantize import QuantizeOptions, quantize
    from shufflenet.synthetic import synthetic_images
    from torchvision_reference import torchvision_shufflenet_v2

    ours_module = build_model(variant, seed=0)
    tv = torchvision_shufflenet_v2(variant).eval()
    tv.load_state_dict(ours_module.state_dict())
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(tv, torch.zeros(1, 3, 224, 224), buf, opset_version=12, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
                          do_constant_folding=True, dynamo=False)
    files = {"zoo": work / "zoo-recipe.onnx"}
    files["zoo"].write_bytes(buf.getvalue())
    # ours: `shufflenet export` writes the padded graph by default; --faithful the plain one
    files["faithful"] = save_model(export_onnx(variant, weights="random:0", opset=13), work / "faithful.onnx")
    files["fp32"] = save_model(export_onnx(variant, weights="random:0", opset=13, pad_channels=PAD_MULTIPLE),
                               work / "ours-fp32.onnx")
    files["absorbed"] = save_model(export_onnx(variant, weights="random:0", opset=13, pad_channels=PAD_MULTIPLE,
                                               absorb_shuffle=True), work / "ours-fp32-absorbed.onnx")
    calib = work / "calib"
    calib.mkdir(exist_ok=True)
    for i, img in enumerate(synthetic_images(64, seed=5)):
        img.save(calib / f"{i}.jpg")
    q = QuantizeOptions(format="qdq", calib_count=64, measure_latency=False)
    files["int8"] = work / "ours-int8.onnx"
    quantize(files["fp32"], files["int8"], calib, options=q)
    files["int8_absorbed"] = work / "ours-int8-absorbed.onnx"
    quantize(files["absorbed"], files["int8_absorbed"], calib, options=q)
    try:
        import pnnx

        cwd, saved = os.getcwd(), os.dup(1)
        os.chdir(work)  # pnnx writes its side files next to the working directory
        log = os.open(str(work / "pnnx.log"), os.O_WRONLY | os.O_CREAT)
        os.dup2(log, 1)  # and talks a lot on stdout (its own subprocess)
        try:
            pnnx.convert(str(files["faithful"]), input_shapes=[[1, 3, 224, 224]], input_types=["f32"],
                         ncnnparam=str(work / "ncnn.param"), ncnnbin=str(work / "ncnn.bin"), fp16=False)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(log)
            os.chdir(cwd)
    except Exception as e:  # pnnx is optional
        print(f"pnnx/ncnn unavailable ({type(e).__name__}: {e}): ncnn skipped", file=sys.stderr)
    nodes = {k: len(onnx.load(str(p)).graph.node) for k, p in files.items()}

    def candidates(t: int, batch: int, x: np.ndarray) -> dict:
        import onnxruntime as ort

        from shufflenet.bench import ort_session

        torch.set_num_threads(t)
        xt = torch.from_numpy(x)
        out = {}
        zoo_opts = ort.SessionOptions()
        zoo_opts.intra_op_num_threads = t  # threads pinned for all; otherwise ORT's defaults
        zoo = ort.InferenceSession(str(files["zoo"]), zoo_opts, providers=["CPUExecutionProvider"])
        out["zoo recipe: torch.onnx opset 12, ORT defaults"] = lambda: zoo.run(None, {"input": x})
        out["PyTorch eager"] = lambda: tv(xt)
        try:
            import openvino as ov

            core = ov.Core()
            for label, path, prec in (("zoo recipe ONNX", files["zoo"], "f32"), ("zoo recipe ONNX", files["zoo"], "bf16"),
                                      ("our int8", files["int8"], None)):
                cfg = {"INFERENCE_NUM_THREADS": t, "PERFORMANCE_HINT": "LATENCY"}
                if prec:
                    cfg["INFERENCE_PRECISION_HINT"] = prec
                compiled = core.compile_model(str(path), "CPU", cfg)
                ran = compiled.get_property("INFERENCE_PRECISION_HINT")
                req = compiled.create_infer_request()
                name = f"OpenVINO {ov.__version__.split('-')[0]} {getattr(ran, 'to_string', lambda: str(ran))()}, {label}"
                out[name] = (lambda r=req: r.infer({0: x}))
        except ImportError:
            pass
        if (work / "ncnn.param").exists():
            import ncnn

            for label, bf16 in (("fp32", False), ("bf16 storage", True)):
                net = ncnn.Net()
                net.opt.num_threads = t
                net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
                net.opt.use_bf16_storage = net.opt.use_bf16_packed = bf16
                net.load_param(str(work / "ncnn.param"))
                net.load_model(str(work / "ncnn.bin"))
                ins = [ncnn.Mat(np.ascontiguousarray(img)) for img in x]

                def run_ncnn(net=net, ins=ins):
                    for m in ins:  # ncnn runs one image per extractor
                        ex = net.create_extractor()
                        ex.input("in0", m)
                        ex.extract("out0")
                out[f"ncnn {ncnn.__version__} {label} (pnnx from our faithful ONNX)"] = run_ncnn
        sessions = {
            "ours fp32 faithful graph, no load-time rewrites": ort_session(onnx.load(str(files["faithful"])), t,
                                                                           optimize=False),
            "ours fp32 (default path: export + runtime)": ort_session(onnx.load(str(files["fp32"])), t),
            "ours int8 (default path: quantize of it)": ort_session(onnx.load(str(files["int8"])), t),
            "ours int8 from the shuffle-absorbed graph": ort_session(onnx.load(str(files["int8_absorbed"])), t),
        }
        for name, sess in sessions.items():
            out[name] = (lambda s=sess: s.run(None, {"input": x}))
        return out

    return files, nodes, candidates


def table(results: dict, ref: str, macs: int, batch: int, peak_fp32: float, peak_int8: float) -> list[dict]:
    rows = []
    ref_p50 = statistics.median(results[ref][1])
    for k, (samples, blocks) in results.items():
        p50 = statistics.median(blocks)
        p90 = float(np.percentile(samples, 90))
        ips = batch / (p50 / 1e3)
        peak = peak_int8 if "int8" in k else peak_fp32
        rows.append({"name": k, "batch": batch, "p50_ms": p50, "p90_ms": p90, "images_per_s": ips,
                     "vs_zoo_recipe": p50 / ref_p50, "peak_fraction": 2 * macs * ips / (peak * 1e9),
                     "peak_used": "int8" if "int8" in k else "fp32", "runs": len(samples)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=40, help="consecutive runs per candidate and round")
    ap.add_argument("--interleaved", action="store_true", help="one run of each candidate in turn instead")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="threads for the batch-1 latency table")
    ap.add_argument("--tp-threads", type=int, default=2, help="threads for the throughput tables")
    ap.add_argument("--tp-batches", default="8,32")
    ap.add_argument("--images", default=None, help="also measure end to end over this folder")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # tables appear as they are measured

    import onnxruntime as ort
    import torch

    from shufflenet.specs import get_spec

    variant = "shufflenet_v2_x1_0"
    macs = get_spec(variant).macs
    work = Path(tempfile.mkdtemp(prefix="shufflenet-peers-"))
    files, nodes, candidates = build(variant, work, args.threads)
    rng = np.random.default_rng(0)
    mode = "interleaved run by run" if args.interleaved else f"blocked ({args.block} consecutive runs per round)"

    peaks = {t: {"fp32": ort_peak("fp32", t), "int8": ort_peak("int8", t)} for t in sorted({args.threads, args.tp_threads})}
    gflops = sgemm_gflops()
    floor_ms = 2 * macs / (gflops * 1e9) * 1e3
    zoo = "zoo recipe: torch.onnx opset 12, ORT defaults"
    x1 = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    res = measure(candidates(args.threads, 1, x1), None, rounds=args.rounds, block=args.block, warmup=args.warmup,
                  interleaved=args.interleaved)
    latency = table(res, zoo, macs, 1, peaks[args.threads]["fp32"], peaks[args.threads]["int8"])
    print(f"{_cpu()}; {mode}; {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}; "
          f"ORT {ort.__version__}, torch {torch.__version__}, {_versions()}")
    print("peaks (ORT MLAS, 1024^3): " + "; ".join(
        f"{t} thread(s) fp32 {p['fp32']:.0f} GFLOP/s, u8s8 {p['int8']:.0f} GOP/s" for t, p in peaks.items()))
    print(f"floor: numpy sgemm {gflops:.0f} GFLOP/s on one thread -> 2 x {macs / 1e6:.0f}M MACs = {floor_ms:.2f} ms")
    print(f"\nbatch 1, {args.threads} thread(s)")
    print(f"{'':66s} {'p50 ms':>8s} {'p90 ms':>8s} {'vs zoo':>7s} {'peak frac':>9s}")
    for r in latency:
        print(f"{r['name']:66s} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['vs_zoo_recipe']:7.2f} {r['peak_fraction']:9.2f}")
    ours = {r["name"]: r["p50_ms"] for r in latency}
    fp, q = ours["ours fp32 (default path: export + runtime)"], ours["ours int8 (default path: quantize of it)"]
    print(f"ours int8 over ours fp32: {fp / q:.2f}x (target 2.0x); ours int8 vs zoo recipe: {q / ours[zoo]:.2f}x "
          f"(target <= 0.40x)")

    env = {"cpu": _cpu(), "threads": args.threads, "tp_threads": args.tp_threads, "mode": mode,
           "rounds": args.rounds, "block": args.block, "python": platform.python_version(),
           "onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "versions": _versions(), "sgemm_gflops_1thread_numpy": gflops, "floor_ms": floor_ms,
           "peaks_gops": peaks, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load": os.getloadavg(), "nodes": nodes}
    print(f"nodes: {nodes}")
    throughput: list[dict] = []

    def save() -> None:  # after every stage: a stopped run keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps({"env": env, "latency": latency, "throughput": throughput},
                                                  indent=2))

    save()
    for b in [int(v) for v in args.tp_batches.split(",") if v]:
        xb = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
        blk = max(2, args.block * 2 // b)  # about the same seconds per block as at batch 1
        r = measure(candidates(args.tp_threads, b, xb), None, rounds=max(4, args.rounds // 2), block=blk,
                    warmup=3, interleaved=args.interleaved)
        rows = table(r, zoo, macs, b, peaks[args.tp_threads]["fp32"], peaks[args.tp_threads]["int8"])
        throughput += rows
        print(f"\nthroughput, batch {b}, {args.tp_threads} threads")
        print(f"{'':66s} {'img/s':>8s} {'vs zoo':>7s} {'peak frac':>9s}")
        for row in rows:
            print(f"{row['name']:66s} {row['images_per_s']:8.0f} {1 / row['vs_zoo_recipe']:7.2f} "
                  f"{row['peak_fraction']:9.2f}")
        save()

    if args.images:
        env["end_to_end"] = {}
        for label, path in (("fp32", files["fp32"]), ("int8", files["int8"])):
            e2e = end_to_end(args.images, files["zoo"], path, args.threads)
            env["end_to_end"][label] = e2e
            print(f"end to end over {e2e['images']} images ({e2e['passes']} passes over the folder): zoo-style sequential loop "
                  f"{e2e['sequential_images_per_s']:.1f} img/s; ours {label} pipelined {e2e['ours_images_per_s']:.1f} "
                  f"img/s ({e2e['speedup']:.2f}x best of {e2e['repeats']}, median of ratios "
                  f"{e2e['speedup_median_of_repeats']:.2f}x); predictions identical to the exact path: "
                  f"{e2e['identical_predictions']}")
    save()


def _versions() -> dict:
    out = {}
    for mod in ("openvino", "ncnn", "pnnx"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except ImportError:
            out[mod] = None
    return out


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
