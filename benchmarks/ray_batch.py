"""Images/s of `classify` on the local engine and on Ray with 1 and 2 worker nodes (same images).

    python benchmarks/ray_batch.py [--images DIR] [--count 1000] [--model MODEL] [--rounds 2]

The cluster is real and local: a head node with 0 CPUs (it schedules, runs no actor) plus worker
nodes of 1 CPU each, started with ``ray start`` on 127.0.0.1. The script re-runs itself inside a
private network and PID namespace (``unshare``, needs root) so that Ray binds to loopback, nothing
leaves the machine, and every process it started ends with it.

Measured, per configuration: wall seconds of ``ray_engine.classify`` (connect, actor start-up,
streaming, Parquet written), the seconds to the first result row (actor start-up + first batch),
the steady images/s after it, and per-stage seconds summed over actors (read, decode, preprocess,
inference); Ray's own start-up (``ray start`` of each node, ``ray.init``) is timed separately.
Phase 1 runs local and Ray-with-1-worker interleaved ``--rounds`` times; a second worker node is
then added and phase 2 runs local and Ray-with-2-workers the same way, so each Ray figure has a
local figure measured next to it. Results go to stdout as JSON and to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ray_sandbox import stop_all  # noqa: E402  (one way to end a namespace's processes, shared with the tests)

SANDBOX_ENV = "SHUFFLENET_RAY_BENCH_SANDBOX"
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]
PORT = 6379
LOCAL_WORKERS = min(4, os.cpu_count() or 1)  # run_files' default, as `shufflenet classify` runs it


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default="/work/shared/data/imagenet-sample")
    p.add_argument("--count", type=int, default=1000, help="images per run (the folder's, repeated as needed)")
    p.add_argument("--model", default="shufflenet_v2_x1_0:random")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results-ray.json")
    return p.parse_args()


def ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def timed(argv) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_local(model_path: str, paths: list[str], batch_size: int) -> dict:
    """The local engine as `shufflenet classify` runs it on many files: one-thread session,
    every core decoding and running its own chunks."""
    from shufflenet.runtime import Classifier, run_files

    t0 = time.perf_counter()
    clf = Classifier(model_path, threads=1)
    timings: dict[str, float] = {}
    first = None

    def progress(done, total):
        nonlocal first
        first = first or (time.perf_counter(), done)

    results = list(run_files(clf, [Path(p) for p in paths], batch_size=batch_size, timings=timings,
                             progress=progress, workers=LOCAL_WORKERS))
    end = time.perf_counter()
    assert all(r.error is None for r in results)
    return {"seconds": end - t0, "images_per_s": len(paths) / (end - t0),
            "first_row_s": first[0] - t0,
            "steady_images_per_s": (len(paths) - first[1]) / (end - first[0]),
            "stage_seconds": timings}


def run_ray(model_path: str, listing: Path, n: int, batch_size: int, out: Path) -> dict:
    from shufflenet import ray_engine

    t0 = time.perf_counter()
    first = None

    def progress(done, total):
        nonlocal first
        first = first or (time.perf_counter(), done)

    report = ray_engine.classify([str(listing)], model_path, out, batch_size=batch_size, stage_times=True,
                                 progress=progress)
    end = time.perf_counter()
    assert report.ok == n and not report.failed, report.failed[:3]
    return {"seconds": end - t0, "images_per_s": n / (end - t0), "first_row_s": first[0] - t0,
            "steady_images_per_s": (n - first[1]) / (end - first[0]), "actors": report.workers,
            "stage_seconds": report.stage_seconds}


def summary(runs: list[dict], images: int, parallel: int) -> dict:
    """Medians over runs. ``busy_images_per_s``: images over the stage seconds summed over the
    ``parallel`` workers (actors or threads) and divided by them: what the pool sustains once
    it runs, start-up and driver excluded."""
    keys = ("seconds", "images_per_s", "first_row_s", "steady_images_per_s")
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    stages = {k: statistics.median(r["stage_seconds"][k] for r in runs) for k in runs[0]["stage_seconds"]}
    total = sum(stages.values())
    out["stage_seconds"] = stages
    out["stage_share"] = {k: v / total for k, v in stages.items()}
    out["busy_images_per_s"] = images / (total / parallel)
    out["ms_per_image"] = {k: 1000 * v / images for k, v in stages.items()}
    out["runs"] = len(runs)
    return out


def inside(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="snbench", dir="/tmp"))
    (tmp / "home").mkdir()
    # before Ray is imported (it reads these once): token auth with a token of this run only
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": str(tmp / "home"), "RAY_TMPDIR": str(tmp)})
    import onnxruntime
    import ray

    from shufflenet.onnx_export import save_model
    from shufflenet.runtime import IMAGE_SUFFIXES, resolve_model

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    try:
        files = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths = (files * (args.count // len(files) + 1))[:args.count]
        listing = tmp / "inputs.txt"
        listing.write_text("\n".join(paths) + "\n")
        model_path = str(save_model(resolve_model(args.model)[0], tmp / "model.onnx"))
        node = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                "--object-store-memory", str(200 * 1024 * 1024)]
        startup = {"head_s": timed([ray_cli(), "start", "--head", "--port", str(PORT), "--num-cpus", "0",
                                    "--include-dashboard=false", "--temp-dir", str(tmp / "head"), *node])}
        worker = [ray_cli(), "start", "--address", f"127.0.0.1:{PORT}", "--num-cpus", "1", *node]
        startup["worker1_s"] = timed([*worker, "--temp-dir", str(tmp / "w1")])
        t0 = time.perf_counter()
        ray.init(address=f"127.0.0.1:{PORT}", logging_level="ERROR", log_to_driver=False)
        startup["driver_connect_s"] = time.perf_counter() - t0

        run_local(model_path, paths[:64], args.batch_size)  # warm-up: imports, page cache
        local, ray1, ray2 = [], [], []
        for _ in range(args.rounds):
            local.append(run_local(model_path, paths, args.batch_size))
            ray1.append(run_ray(model_path, listing, len(paths), args.batch_size, tmp / "out.parquet"))
        startup["worker2_s"] = timed([*worker, "--temp-dir", str(tmp / "w2")])
        deadline = time.time() + 60
        while ray.cluster_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.2)
        for _ in range(args.rounds):
            local.append(run_local(model_path, paths, args.batch_size))
            ray2.append(run_ray(model_path, listing, len(paths), args.batch_size, tmp / "out.parquet"))
        n = len(paths)
        res = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared",
            "load_average": os.getloadavg(),
            "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__,
                         "python": platform.python_version()},
            "model": args.model, "images": len(paths), "distinct_images": len(files),
            "batch_size": args.batch_size, "rounds": args.rounds,
            "ray_startup_s": startup,
            "local_threads": LOCAL_WORKERS,
            "local": summary(local, n, LOCAL_WORKERS), "local_phase1": summary(local[:args.rounds], n, LOCAL_WORKERS),
            "local_phase2": summary(local[args.rounds:], n, LOCAL_WORKERS),
            "ray_1_worker": summary(ray1, n, 1), "ray_2_workers": summary(ray2, n, 2),
        }
        res["ratios"] = {
            "ray1_vs_local_phase1": res["ray_1_worker"]["images_per_s"] / res["local_phase1"]["images_per_s"],
            "ray2_vs_local_phase2": res["ray_2_workers"]["images_per_s"] / res["local_phase2"]["images_per_s"],
            # None when a run was too short to leave a steady phase after the first row
            "ray2_vs_ray1_steady": (res["ray_2_workers"]["steady_images_per_s"]
                                    / res["ray_1_worker"]["steady_images_per_s"]
                                    if res["ray_1_worker"]["steady_images_per_s"] else None),
        }
        return res
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    args = parse()
    if os.environ.get(SANDBOX_ENV) != "1":
        env = {**os.environ, SANDBOX_ENV: "1"}
        return subprocess.run([*UNSHARE, sys.executable, *sys.argv], env=env).returncode
    res = inside(args)
    text = json.dumps(res, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
