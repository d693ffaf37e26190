"""``shufflenet zoo build``: every row of the ONNX Model Zoo's ShuffleNet table, from source.

| artifact | network | opset | form | tarball |
|---|---|---|---|---|
| shufflenet-3, -6, -7, -8, -9 | Caffe2 V1 | 3, 6, 7, 8, 9 | fp32, BatchNormalization kept | ``shufflenet/model.onnx`` + ``.npz`` |
| shufflenet-v2-10 | V2 x1.0 | 10 | fp32, BatchNorm folded | ``model/test_shufflenetv2/model.onnx`` |
| shufflenet-v2-12 | V2 x1.0 | 12 | fp32, BatchNorm folded | ``<name>/<name>.onnx`` |
| shufflenet-v2-12-int8 | V2 x1.0 | 12 | int8 QOperator, per-channel | ``<name>/<name>.onnx`` |
| shufflenet-v2-12-qdq | V2 x1.0 | 12 | int8 QDQ, per-tensor (per-channel DequantizeLinear needs 13) | ``<name>/<name>.onnx`` |
| shufflenet-v2-13-qdq (ours) | V2 x1.0 | 13 | int8 QDQ, per-channel | ``<name>/<name>.onnx`` |

``--variants all`` adds every V2 width and V1 group/width at the default opset, each with an
int8 QDQ twin. Each artifact is ``<name>.onnx`` plus ``<name>.tar.gz`` with ``test_data_set_0..2``,
validated after it is written; ``manifest.json`` is in the ONNX hub's format (a list of entries)
and a README table describes the build. The build is byte-for-byte reproducible. One failed
artifact is reported and the others still build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ._io import atomic_write, one_line, sha256_file
from ._onnx import graph_inputs, model_opset
from .errors import ShuffleNetError
from .export import export_bundle
from .onnx_export import DEFAULT_OPSET, export_onnx, save_model
from .quantize import QuantizeOptions, quantize
from .options import ZOO_WEIGHTS
from .specs import get_spec, list_variants
from .validate import validate

__all__ = ["ZooError", "Artifact", "plan", "build", "onnx_release", "manifest_entry"]


class ZooError(ShuffleNetError, ValueError):
    pass


@dataclass(frozen=True)
class Artifact:
    name: str
    variant: str
    opset: int
    keep_batchnorm: bool = False
    quant: str | None = None  # "qoperator" | "qdq": quantized from `source`
    source: str | None = None  # the fp32 artifact it is quantized from
    zoo_model: str = ""  # the zoo manifest's "model" field
    per_channel: bool = True  # int8 weight scales per output channel (QDQ needs opset 13 for it)
    root: str = "{name}"  # the folder inside the .tar.gz
    model_file: str = "model.onnx"  # the model's file name in that folder
    legacy_npz: bool = False  # also the old test_data_<k>.npz files (the zoo's V1 tarballs)
    extra_ports: bool = False  # the zoo lists the pooled features as an extra port
    in_zoo: bool = True  # a row of the zoo's own manifest (else an addition of ours)


_V1 = dict(variant="shufflenet_v1_caffe2", keep_batchnorm=True, zoo_model="ShuffleNet-v1", root="shufflenet",
           legacy_npz=True)
_V2_12 = dict(variant="shufflenet_v2_x1_0", root="{name}", model_file="{name}.onnx")
ZOO = (
    *(Artifact(f"shufflenet-{o}", opset=o, extra_ports=o >= 7, **_V1) for o in (3, 6, 7, 8, 9)),
    Artifact("shufflenet-v2-10", "shufflenet_v2_x1_0", 10, zoo_model="ShuffleNet-v2", root="model/test_shufflenetv2",
             extra_ports=True),
    Artifact("shufflenet-v2-12", opset=12, zoo_model="ShuffleNet-v2-fp32", extra_ports=True, **_V2_12),
    Artifact("shufflenet-v2-12-int8", opset=12, quant="qoperator", source="shufflenet-v2-12",
             zoo_model="ShuffleNet-v2-int8", extra_ports=True, **_V2_12),
    Artifact("shufflenet-v2-12-qdq", opset=12, quant="qdq", source="shufflenet-v2-12", per_channel=False,
             zoo_model="ShuffleNet-v2-qdq", **_V2_12),
    # ours: per-channel QDQ (DequantizeLinear's axis needs opset 13), under the zoo's model name
    Artifact("shufflenet-v2-13-qdq", opset=13, quant="qdq", source="shufflenet-v2-12", per_channel=True,
             zoo_model="ShuffleNet-v2-qdq", in_zoo=False, **_V2_12),
)


def onnx_release(opset: int, ir_version: int | None = None) -> str:
    """The oldest ONNX release that reads a model of this default-domain opset (and IR version),
    from onnx's own versioning table (``onnx.helper.VERSION_TABLE``); ``x.y.0`` is written ``x.y``
    as the zoo's manifest does (opset 3 -> 1.1, 9 -> 1.4.1, 12 -> 1.7, 13 -> 1.8)."""
    for release, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset and (ir_version is None or ir >= ir_version):
            return release.removesuffix(".0") if release.count(".") == 2 else release
    raise ZooError(f"opset {opset} (IR {ir_version}) is newer than this onnx {onnx.__version__} knows")


def plan(variants: str | list[str] = "zoo") -> list[Artifact]:
    """The artifacts to build: "zoo" (the seed table), "all" (+ every variant), or zoo artifact
    names (``shufflenet-9``, ``shufflenet-v2-12-int8`` ...) and variant names, as a list or one
    comma-separated string."""
    if variants == "zoo":
        return list(ZOO)
    zoo = {a.name: a for a in ZOO}
    if isinstance(variants, str) and variants != "all":
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    names = [v for v in list_variants() if v != "shufflenet_v1_caffe2"] if variants == "all" else list(variants)
    picked = [zoo[v] for v in names if v in zoo]
    for a in list(picked):  # a quantized row needs its fp32 source
        if a.source and zoo[a.source] not in picked:
            picked.insert(picked.index(a), zoo[a.source])
    extra = []
    for v in names:
        if v in zoo:
            continue
        try:
            get_spec(v)
        except ShuffleNetError:
            raise ZooError(f"{v!r} is neither a zoo artifact ({', '.join(zoo)}) nor a variant") from None
        fp = f"{v}-{DEFAULT_OPSET}"
        extra += [Artifact(fp, v, DEFAULT_OPSET, zoo_model=v, in_zoo=False),
                  Artifact(f"{fp}-qdq", v, DEFAULT_OPSET, quant="qdq", source=fp, zoo_model=f"{v}-qdq",
                           in_zoo=False)]
    return (list(ZOO) if variants == "all" else picked) + extra


@dataclass
class Built:
    artifact: Artifact
    ok: bool
    error: str | None = None
    onnx_path: Path | None = None
    tar_path: Path | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def _port(v: onnx.ValueInfoProto, with_type: bool = True) -> dict:
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
    return {"name": v.name, "shape": dims, **({"type": "tensor(float)"} if with_type else {})}


def _io_ports(model: onnx.ModelProto) -> dict:
    return {"inputs": [_port(i) for i in graph_inputs(model)],
            "outputs": [_port(o) for o in model.graph.output]}


def _feature_port(model: onnx.ModelProto, variant: str) -> dict | None:
    """The pooled-feature tensor as the zoo lists it (``extra_ports.features``), shape inferred;
    None when quantization renamed it away."""
    graph = get_spec(variant).graph(1000)
    name = graph.features
    if not any(name in n.output for n in model.graph.node):
        return None
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in inferred.graph.value_info:
        if v.name == name:
            return _port(v, with_type=False)
    return None


def _synthetic_calibration(folder: Path, count: int, seed: int) -> Path:
    from .synthetic import synthetic_images

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(synthetic_images(count, seed=seed)):
        img.save(folder / f"calib_{i:04d}.jpg", quality=90)
    return folder


def build(out: str | os.PathLike, *, weights: str = ZOO_WEIGHTS, variants: str | list[str] = "zoo",
          calib: str | os.PathLike | None = None, eval_data: str | os.PathLike | None = None,
          test_data: int = 3, batch: int | None = None, progress=None,
          label_file: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Build the artifacts into ``out``; returns the summary (also written as manifest + README).

    ``out`` must be new or empty, unless ``force``: then it is replaced as a whole, atomically
    (the build goes to a sibling folder that is swapped in at the end; an interrupted build
    leaves ``out`` as it was). ``batch``: a fixed batch size (``1`` gives the zoo's static
    shapes); default dynamic ``N``. Everything written is byte-for-byte reproducible for the
    same arguments and machine (latencies and timings go to the README only, never into the
    models or archives).
    """
    if label_file is not None and eval_data is None:
        raise ZooError("a label file labels --eval-data; give --eval-data too")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ZooError(f"batch must be a positive integer, got {batch!r}")
    for what, folder in (("--calib", calib), ("--eval-data", eval_data)):
        if folder is not None and not Path(folder).is_dir():  # refused before any model is built
            raise ZooError(f"{what} {folder}: not a folder")
    final = Path(out)
    _check_target(final, force)
    items = plan(variants)  # bad names are refused before any work
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        summary = _build_into(staging, items, weights=weights, calib=calib, eval_data=eval_data,
                              test_data=test_data, batch=batch, progress=progress, label_file=label_file)
        _swap_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.update(out=str(final), manifest=str(final / "manifest.json"), readme=str(final / "README.md"))
    return summary


def _check_target(final: Path, force: bool) -> None:
    if final.exists() and not final.is_dir():
        raise ZooError(f"{final} is a file; give a folder to build the zoo into")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise ZooError(f"{final} is not empty; give a new folder, or --force to replace it")


def _swap_in(staging: Path, final: Path) -> None:
    """Rename the finished build to ``final``; an existing ``final`` is moved aside, then removed."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / "zoo")
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_into(out: Path, items, *, weights: str, calib, eval_data, test_data: int, batch, progress,
                label_file) -> dict:
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shufflenet-zoo-") as tmp:
        calib_dir = Path(calib) if calib else _synthetic_calibration(Path(tmp) / "calib", 100, seed=1)
        run = _ZooBuild(out, Path(tmp), weights=weights, calib_dir=calib_dir, eval_data=eval_data,
                        label_file=label_file, test_data=test_data, batch=batch)
        for k, art in enumerate(items):
            result = run.artifact(art)
            if progress:
                progress(k + 1, len(items), result)
    _record_latencies([b for b in run.built.values() if b.ok])
    random = weights == "random" or weights.startswith("random:")
    return _write_manifest_and_readme(out, items, run.built, weights, random, time.perf_counter() - t_start, batch)


@dataclass
class _ZooBuild:
    """One build: what every artifact shares, and the artifacts built so far (a quantized row
    reads its fp32 source from here)."""

    out: Path
    tmp: Path
    weights: str
    calib_dir: Path
    eval_data: str | os.PathLike | None
    label_file: str | os.PathLike | None
    test_data: int
    batch: int | None
    built: dict[str, Built] = field(default_factory=dict)

    def artifact(self, art: Artifact) -> Built:
        """Build one artifact; a failure is recorded in the result, never raised."""
        t0 = time.perf_counter()
        result = Built(art, False)
        try:
            model = self._model(art, result)
            self._publish(art, model, result)
            if self.eval_data is not None:
                self._evaluate(result)
            result.ok = True
        except (ShuffleNetError, OSError, ValueError, RuntimeError) as e:
            result.error = one_line(e)
        except Exception as e:  # an unexpected failure of one artifact must not stop the others
            where = traceback.extract_tb(e.__traceback__)[-1]  # the innermost frame: where it failed
            result.error = " ".join(f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})".split())
        result.seconds = time.perf_counter() - t0
        self.built[art.name] = result
        return result

    def _model(self, art: Artifact, result: Built) -> onnx.ModelProto:
        """The fp32 export, or the int8 quantization of the fp32 source row."""
        if art.quant is None:
            return export_onnx(art.variant, weights=self.weights, opset=art.opset,
                               keep_batchnorm=art.keep_batchnorm, batch=self.batch)
        src = self.built.get(art.source)
        if src is None or not src.ok:
            raise ZooError(f"its fp32 source {art.source} was not built")
        qpath = self.tmp / f"{art.name}.onnx"
        report = quantize(src.onnx_path, qpath, self.calib_dir, options=QuantizeOptions(
            format=art.quant, per_channel=art.per_channel, measure_latency=False), eval_data=self.eval_data,
            label_file=self.label_file)
        model = onnx.load(str(qpath))
        if model_opset(model) != art.opset:
            raise ZooError(f"quantization wrote opset {model_opset(model)}, the row is opset {art.opset}")
        result.info["quantization"] = report.recipe
        result.info["fidelity"] = report.metrics
        return model

    def _publish(self, art: Artifact, model: onnx.ModelProto, result: Built) -> None:
        """Bundle and validate; only a validated artifact reaches ``out``, each file atomically."""
        paths = export_bundle(art.variant, self.tmp / "bundles", test_data=self.test_data, name=art.name,
                              tar=True, model=model, root=art.root.format(name=art.name),
                              model_file=art.model_file.format(name=art.name), legacy_npz=art.legacy_npz)
        report = validate(paths["tar"])
        if not report.passed:
            raise ZooError(f"validate failed: {report.checker}; "
                           + "; ".join(f"{s.name} max abs {s.max_abs_err:.2e}" for s in report.sets if not s.passed))
        result.onnx_path = save_model(model, self.out / f"{art.name}.onnx")
        result.tar_path = atomic_write(self.out / f"{art.name}.tar.gz",
                                       lambda t, src=paths["tar"]: shutil.copyfile(src, t))
        result.info["validate_engine"] = report.engine
        result.info["expected_outputs"] = paths["reference"]
        result.info["io_ports"] = _io_ports(model)
        if art.extra_ports and (feature := _feature_port(model, art.variant)) is not None:
            result.info["extra_ports"] = {"features": [feature]}
        result.info["opset"] = model_opset(model)
        result.info["ir_version"] = model.ir_version

    def _evaluate(self, result: Built) -> None:
        from .evaluate import evaluate

        ev = evaluate(str(result.onnx_path), self.eval_data, label_file=self.label_file)
        result.info["top1"], result.info["top5"] = ev.top1, ev.top5
        result.info["preprocessing"] = ev.preprocessing


def _record_latencies(ok: list[Built]) -> None:
    """Latency of every built model, interleaved in this process (batch 1, 1 thread)."""
    if not ok:
        return
    from .bench import bench

    rows = bench([str(b.onnx_path) for b in ok], runs=30, warmup=5)["rows"]
    for b, row in zip(ok, rows):
        b.info["latency_ms"] = row.p50_ms


def _differences(art: Artifact, batch: int | None) -> list[str]:
    """How this row differs from the zoo's file of the same name (besides the weights)."""
    if not art.in_zoo:
        return ["not in the zoo (an addition of ours)"]
    diffs = []
    if batch != 1:
        diffs.append("dynamic batch N (the zoo's is 1; build with --batch 1 for its static shapes)"
                     if batch is None else f"batch {batch} (the zoo's is 1)")
    return diffs


def manifest_entry(art: Artifact, b: Built, *, weights: str, trained: bool, batch: int | None) -> dict:
    """One entry of the ONNX hub's manifest format; our own facts under ``metadata["shufflenet"]``,
    a key hub readers ignore."""
    from . import __version__

    meta = {
        "model_sha": sha256_file(b.onnx_path),
        "model_bytes": b.onnx_path.stat().st_size,
        "tags": ["vision", "classification", "shufflenet"],
        "io_ports": b.info["io_ports"],
        **({"extra_ports": b.info["extra_ports"]} if "extra_ports" in b.info else {}),
        "model_with_data_path": f"{art.name}.tar.gz",
        "model_with_data_sha": sha256_file(b.tar_path),
        "model_with_data_bytes": b.tar_path.stat().st_size,
        "shufflenet": {
            "artifact": art.name,
            "variant": art.variant,
            "weights": weights,
            "weights_trained": trained,
            "batchnorm": "kept" if art.keep_batchnorm else "folded",
            "in_zoo": art.in_zoo,
            "differs_from_zoo": _differences(art, batch),
            "expected_outputs": b.info.get("expected_outputs"),
            "generator": f"shufflenet {__version__}",
            **({"quantization": b.info["quantization"]} if art.quant else {}),
        },
    }
    return {"model": art.zoo_model, "model_path": f"{art.name}.onnx",
            "onnx_version": onnx_release(b.info["opset"], b.info["ir_version"]),
            "opset_version": b.info["opset"], "metadata": meta}


def _write_manifest_and_readme(out: Path, items, built: dict[str, Built], weights: str, random: bool,
                               seconds: float, batch: int | None = None) -> dict:
    from . import __version__

    entries, rows = [], []
    for art in items:
        b = built[art.name]
        if not b.ok:
            continue
        spec = get_spec(art.variant)
        entries.append(manifest_entry(art, b, weights=weights, trained=not random, batch=batch))
        fid = b.info.get("fidelity", {})
        rows.append([art.name, art.variant, str(b.info["opset"]), f"{b.onnx_path.stat().st_size / 1e6:.2f}",
                     f"{spec.num_params / 1e6:.3f}M", f"{spec.macs / 1e6:.0f}M",
                     "-" if "top1" not in b.info else f"{b.info['top1']:.2f} / {b.info['top5']:.2f}",
                     "-" if "latency_ms" not in b.info else f"{b.info['latency_ms']:.2f}",
                     "-" if not fid else f"{fid['top1_agreement']:.1f}%",
                     "; ".join(_differences(art, batch)) or "-"])
    atomic_write(out / "manifest.json", lambda t: t.write_text(json.dumps(entries, indent=1) + "\n"))
    failed = [(n, b.error) for n, b in built.items() if not b.ok]
    lines = ["# ShuffleNet models built from source", ""]
    if random:
        lines += [f"**Weights: `{weights}` — seeded random, UNTRAINED.** Accuracy figures are meaningless "
                  "for these files; they exist to exercise export, quantization and validation end to end. "
                  "Build with `--weights torchvision` (V2; fetched and verified) or a trained run for real models.", ""]
    else:
        lines += [f"Weights: `{weights}`.", ""]
    lines += ["| artifact | variant | opset | MB | params | MACs | top-1 / top-5 | latency ms (b1, 1 thread) "
              "| int8 vs fp32 top-1 agreement | differs from the zoo's file |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    preprocessing = next((b.info["preprocessing"] for b in built.values() if "preprocessing" in b.info), None)
    lines += ["", f"Built in {seconds:.0f} s by shufflenet {__version__}; every artifact passed `shufflenet validate`. "
              "Latencies: median of interleaved runs in one process on the build machine. Caffe2 V1 rows keep "
              "BatchNormalization nodes as the originals did; V2 rows fold it into the convolutions. "
              "shufflenet-v2-12-qdq is per-tensor, as per-channel DequantizeLinear needs opset 13; "
              "shufflenet-v2-13-qdq is the per-channel form. manifest.json is in the ONNX hub's format."]
    if preprocessing:
        lines += ["", f"Accuracy preprocessing: {preprocessing}."]
    if failed:
        lines += ["", "## Failed", ""] + [f"- {n}: {e}" for n, e in failed]
    atomic_write(out / "README.md", lambda t: t.write_text("\n".join(lines) + "\n"))
    return {"out": str(out), "built": [n for n, b in built.items() if b.ok], "failed": failed,
            "seconds": seconds, "manifest": str(out / "manifest.json"), "readme": str(out / "README.md")}
