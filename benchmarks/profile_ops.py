"""Where the time goes, op by op: ONNX Runtime's profiler on one or more models (see docs/bench.md).

    python benchmarks/profile_ops.py MODEL.onnx [MODEL.onnx ...] [--runs 200] [--threads 1] [--no-optimize]

Each model runs with the runtime's load-time rewrites (as classify and bench run it) unless
--no-optimize, at batch 1, pinned threads, all graph optimisations; the kernel time of every
node is summed by operator type (after ONNX Runtime's own fusions and layout transforms, so
the Transpose nodes its NHWC int8 transformer inserts are counted too).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

import numpy as np


def profile(path: str, runs: int, threads: int, optimize: bool) -> dict:
    import onnx
    import onnxruntime as ort

    from shufflenet.onnx_legacy import upgrade_to_opset7
    from shufflenet.onnx_optimize import optimize_for_inference

    model = upgrade_to_opset7(onnx.load(path))
    if optimize:
        model = optimize_for_inference(model)
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.enable_profiling = True
    o.profile_file_prefix = tempfile.mkdtemp(prefix="shufflenet-prof-") + "/p"
    s = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(runs):
        s.run(None, {s.get_inputs()[0].name: x})
    with open(s.end_profiling()) as f:
        events = json.load(f)
    by, count = collections.defaultdict(float), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(by.values())
    return {"model": path, "kernel_ms_per_run": total / runs / 1e3,
            "ops": [{"op": op, "ms": d / runs / 1e3, "share": d / total, "nodes": count[op] // runs}
                    for op, d in sorted(by.items(), key=lambda kv: -kv[1])]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-optimize", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = [profile(m, args.runs, args.threads, not args.no_optimize) for m in args.models]
    for p in out:
        print(f"{p['model']}: kernel time {p['kernel_ms_per_run']:.3f} ms per run")
        for r in p["ops"]:
            print(f"  {r['op']:26s} {r['ms']:7.3f} ms {r['share'] * 100:5.1f}%  nodes {r['nodes']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
