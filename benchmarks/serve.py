"""`shufflenet serve` under load, on loopback: throughput, p50/p99, where the time goes, RSS.

One run covers V2 x1.0 fp32 and int8, --max-batch 1 and 32, tensor requests (KServe v2 binary
extension) and image requests (real JPEGs), at 1/8/32/64 concurrent clients. All four servers run
side by side and the cells are measured in rounds (every cell once per round) so drift on a
shared machine falls on every configuration alike; per cell the median over rounds is reported.
Then 10,000 requests on one server, with its RSS before and after (a leak shows as growth).

    .venv/bin/python benchmarks/serve.py --data ../shared/data/imagenet-sample --out benchmarks/results-serve.json

The client is a small asyncio HTTP/1.1 client (keep-alive, one connection per client) in this
process, so it shares the machine's cores with the server: figures are for the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def prepare_models(work: Path, calib: Path) -> dict[str, Path]:
    """V2 x1.0 fp32 (random weights: speed does not depend on them) and its int8 QDQ."""
    work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = work / "v2_x1_0.onnx", work / "v2_x1_0-int8.onnx"
    cli = [sys.executable, "-m", "shufflenet"]
    if not fp32.exists():
        subprocess.run([*cli, "export", "shufflenet_v2_x1_0", "-o", str(fp32)], check=True)
    if not int8.exists():
        subprocess.run([*cli, "quantize", str(fp32), "-o", str(int8), "--calib", str(calib),
                        "--calib-count", "32", "--quiet"], check=True)
    return {"fp32": fp32, "int8": int8}


class ServerProc:
    def __init__(self, model: Path, name: str, max_batch: int, threads: int, delay_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shufflenet", "serve", "--model", f"{name}={model}", "--port", "0",
             "--threads", str(threads), "--max-batch", str(max_batch), "--max-delay-ms", str(delay_ms),
             "--max-queue", "4096"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline()
        if "ready at" not in line:
            raise SystemExit(f"server did not start: {line}{self.proc.stderr.read()}")
        url = line.split()[4]
        self.host, self.port = url.removeprefix("http://").split(":")
        self.port = int(self.port)
        self.name = name

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB, from /proc."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        get = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
        return get("VmRSS"), get("VmHWM")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


async def _roundtrip(reader, writer, payload: bytes) -> tuple[int, bytes]:
    writer.write(payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length)


def _payload(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


def tensor_payloads(srv: ServerProc, rng) -> list[bytes]:
    out = []
    for _ in range(4):
        x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32).tobytes()
        head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(x)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        out.append(_payload(srv.host, srv.port, f"/v2/models/{srv.name}/infer", head + x,
                            {"Inference-Header-Content-Length": str(len(head)),
                             "Content-Type": "application/octet-stream"}))
    return out


def image_payloads(srv: ServerProc, files: list[Path]) -> list[bytes]:
    return [_payload(srv.host, srv.port, f"/v1/models/{srv.name}/classify", f.read_bytes(),
                     {"Content-Type": "image/jpeg"}) for f in files]


async def load(srv: ServerProc, payloads: list[bytes], clients: int, seconds: float, warmup: float,
               max_requests: int | None = None) -> dict:
    """`clients` connections sending back to back; latencies of requests started after warm-up."""
    lat, fails = [], 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    sent = 0

    async def client(k: int) -> None:
        nonlocal fails, sent
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        i = k
        try:
            while time.perf_counter() < t_end and (max_requests is None or sent < max_requests):
                sent += 1
                t0 = time.perf_counter()
                status, _ = await _roundtrip(reader, writer, payloads[i % len(payloads)])
                t1 = time.perf_counter()
                i += clients
                if t0 >= t_measure or max_requests is not None:
                    if status == 200:
                        lat.append(t1 - t0)
                    else:
                        fails += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = (time.perf_counter() - (t_start if max_requests is not None else t_measure))
    lat_ms = np.asarray(lat) * 1000
    return {"requests": len(lat), "failed": fails, "throughput": len(lat) / elapsed,
            "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat) else None}


def scrape(srv: ServerProc) -> dict:
    """Sums and counts of the stage and batch-size histograms, from /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{srv.host}:{srv.port}/metrics").read().decode()
    out = {}
    for m in re.finditer(r'^shufflenet_stage_seconds_(sum|count)\{model="[^"]+",stage="(\w+)"\} (\S+)$', text, re.M):
        out[(m.group(2), m.group(1))] = float(m.group(3))
    for m in re.finditer(r'^shufflenet_batch_size_(sum|count)\{model="[^"]+"\} (\S+)$', text, re.M):
        out[("batch", m.group(1))] = float(m.group(2))
    return out


def breakdown(before: dict, after: dict) -> dict:
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    out = {}
    for stage in ("decode", "queue", "model", "encode"):
        n = d.get((stage, "count"), 0)
        out[f"{stage}_ms"] = 1000 * d.get((stage, "sum"), 0) / n if n else None
    n = d.get(("batch", "count"), 0)
    out["mean_batch"] = d.get(("batch", "sum"), 0) / n if n else None
    return out


def markdown(report: dict) -> str:
    """The docs' table from a results file."""
    lines = ["| model | requests | clients | max-batch | req/s (median of rounds) | p50 ms | p99 ms | failed | mean batch "
             "| decode ms | queue ms | model ms per batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in sorted(report["rows"], key=lambda r: (r["model"], r["kind"], r["clients"], r["max_batch"])):
        lines.append(f"| {r['model']} | {r['kind']} | {r['clients']} | {r['max_batch']} | {r['throughput_median']:.1f} "
                     f"({', '.join(f'{t:.0f}' for t in r['throughput_rounds'])}) | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
                     f"| {r['failed']} | {fmt(r['mean_batch'])} | {fmt(r['decode_ms'])} | {fmt(r['queue_ms'])} "
                     f"| {fmt(r['model_ms'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imagenet-sample"),
                    help="folder of JPEGs (image requests; int8 calibration)")
    ap.add_argument("--work", default="/tmp/shufflenet-serve-bench", help="where the models are written")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--max-batch", default="1,32")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell per round")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each cell")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per server")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="--max-delay-ms of the batching servers")
    ap.add_argument("--leak-requests", type=int, default=10_000)
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("--table", help="only print the markdown table of this results file")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return 0

    files = sorted(f for f in Path(args.data).iterdir() if f.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs in {args.data}")
    models = prepare_models(Path(args.work), Path(args.data))
    clients = [int(c) for c in args.clients.split(",")]
    batches = [int(b) for b in args.max_batch.split(",")]
    servers = {(m, b): ServerProc(path, f"v2_{m}", b, args.threads, args.delay_ms)
               for m, path in models.items() for b in batches}
    rng = np.random.default_rng(0)
    payloads = {(key, kind): (tensor_payloads(s, rng) if kind == "tensor" else image_payloads(s, files))
                for key, s in servers.items() for kind in ("tensor", "image")}
    cells = [(m, b, kind, c) for m in models for kind in ("tensor", "image") for c in clients for b in batches]
    per_round: dict[tuple, list[dict]] = {cell: [] for cell in cells}
    t_all = time.perf_counter()
    try:
        for r in range(args.rounds):
            for cell in cells:
                m, b, kind, c = cell
                srv = servers[(m, b)]
                before = scrape(srv)
                res = asyncio.run(load(srv, payloads[((m, b), kind)], c, args.seconds, args.warmup))
                res.update(breakdown(before, scrape(srv)))
                per_round[cell].append(res)
                print(f"round {r} {m:4s} max-batch {b:2d} {kind:6s} {c:2d} clients: "
                      f"{res['throughput']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  "
                      f"failed {res['failed']}  mean batch {res['mean_batch'] or 0:.1f}  ms per request: "
                      + "  ".join(f"{k[:-3]} {res[k]:.1f}" for k in ("decode_ms", "queue_ms", "model_ms", "encode_ms")
                                  if res[k] is not None), flush=True)
        rows = []
        for cell, results in per_round.items():
            m, b, kind, c = cell
            tp = [x["throughput"] for x in results]
            pick = results[int(np.argsort(tp)[len(tp) // 2])]  # the round with the median throughput
            rows.append({"model": m, "max_batch": b, "kind": kind, "clients": c,
                         "throughput_median": float(np.median(tp)), "throughput_rounds": tp,
                         "failed": sum(x["failed"] for x in results), **{k: v for k, v in pick.items()
                                                                         if k not in ("throughput", "failed")}})
        rss = {f"{m} max-batch {b}": dict(zip(("rss_mb", "peak_rss_mb"), s.rss_mb())) for (m, b), s in servers.items()}
        # 10,000 requests, images and tensors alternating, on the int8 batching server (the faster)
        key = ("int8", max(batches))
        srv = servers[key]
        mixed = [p for pair in zip(payloads[(key, "image")], payloads[(key, "tensor")] * 25) for p in pair]
        warm = asyncio.run(load(srv, mixed, 32, 1e9, 0, max_requests=1000))
        rss_after_1k = srv.rss_mb()
        leak = asyncio.run(load(srv, mixed, 32, 1e9, 0, max_requests=args.leak_requests))
        rss_after = srv.rss_mb()
        leak_result = {"requests": leak["requests"] + warm["requests"], "failed": leak["failed"] + warm["failed"],
                       "rss_after_1000_mb": rss_after_1k[0], "rss_after_all_mb": rss_after[0],
                       "peak_rss_mb": rss_after[1], "throughput": leak["throughput"]}
        print(f"leak check: {leak_result}")
    finally:
        codes = {f"{m} max-batch {b}": s.stop() for (m, b), s in servers.items()}
    speedup = {}
    for m in models:
        for kind in ("tensor", "image"):
            get = lambda b: next(r["throughput_median"] for r in rows  # noqa: E731
                                 if r["model"] == m and r["kind"] == kind and r["clients"] == 32 and r["max_batch"] == b)
            if 32 in clients and len(batches) > 1:
                speedup[f"{m} {kind}"] = get(max(batches)) / get(min(batches))
    import onnxruntime

    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
              "threads": args.threads, "delay_ms": args.delay_ms, "seconds_per_cell": args.seconds,
              "rounds": args.rounds, "warmup_s": args.warmup, "rows": rows, "rss": rss, "leak": leak_result,
              "speedup_at_32_clients": speedup, "exit_codes_on_sigterm": codes,
              "wall_s": time.perf_counter() - t_all, "load_average": os.getloadavg()}
    print("\nspeedup of batching at 32 clients:", {k: round(v, 2) for k, v in speedup.items()})
    print("RSS (MiB):", rss)
    print("exit codes after SIGTERM:", codes)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
