"""int8 quantization with ONNX Runtime, tuned until it keeps accuracy.

ONNX Runtime's own tools do the work: ``quant_pre_process`` (shape inference, graph
optimisation), ``quantize_static`` (QDQ or QOperator, per-channel weights, MinMax / Entropy /
Percentile calibration) (per-tensor SQNR is computed here; see ``_sensitivity`` for why not with ``qdq_loss_debug``).
Around them:

* calibration images come from a folder through the model's own preprocessing (seeded sample);
* the activation/weight types follow ORT's guidance for the CPU at hand (U8 activations, S8
  weights; reduce_range on x86 without VNNI, where U8S8 can saturate);
* the opset trap: per-channel needs DequantizeLinear's ``axis`` (opset >= 13), so older models
  are upgraded first; every written model passes ``onnx.checker`` and loads in ORT, or nothing
  is written;
* with ``max_loss`` the recipe is tuned (INC-style, relative top-1): calibration methods are
  tried, then the tensors with the lowest SQNR are kept in fp32 (their producers and consumers
  excluded), doubling the count until the criterion holds. The chosen recipe is written into
  the model's ``metadata_props`` and the report;
* the stem stays fp32 (``fp32_stem``), written Conv -> MaxPool -> ReLU (max pooling and ReLU
  commute exactly) so that ONNX Runtime's QDQ propagation cannot pull the first QuantizeLinear
  above the pooling, where a uint8 MaxPool in NCHW costs 60x the fp32 one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ._safeio import dumps as strict_dumps
from .errors import CheckFailedError, ShuffleNetError
from ._io import IMAGE_SUFFIXES, atomic_write
from ._onnx import model_opset
from .options import CALIB_METHODS, QUANTIZE_DEFAULTS, QUANTIZE_FORMATS as FORMATS
from .runtime import Classifier, Runner, agreement, model_info, is_untrained, resolve_model

__all__ = ["QuantizeError", "QuantizeOptions", "QuantReport", "quantize", "cpu_has_vnni"]

MAX_FP32_FRACTION = 0.1  # the tuning loop keeps at most this share of activations in fp32


class QuantizeError(ShuffleNetError, ValueError):
    """A quantization request that cannot be honoured."""


@dataclass
class QuantizeOptions:
    format: str = QUANTIZE_DEFAULTS["format"]  # "qdq" (like shufflenet-v2-12-qdq) or "qoperator" (like -int8)
    per_channel: bool = True  # per-output-channel weight scales: depthwise convs need them
    calib_method: str = QUANTIZE_DEFAULTS["calib_method"]
    calib_count: int = QUANTIZE_DEFAULTS["calib_count"]  # images sampled (seeded) from the calibration folder
    max_loss: float | None = None  # percent, relative top-1 (INC's default criterion is 1%)
    min_agreement: float | None = None  # percent top-1 agreement with fp32 also required
    seed: int = QUANTIZE_DEFAULTS["seed"]
    eval_count: int = 500  # at most this many images judge the criterion
    measure_latency: bool = True
    #: keep the stem (first convolution, its ReLU and max pooling) in fp32: ONNX Runtime's int8
    #: convolution is slowest on 3-channel input (2.4x the fp32 time here) and the stem is a
    #: small share of the weights; the whole model runs 1.17x faster and closer to fp32
    fp32_stem: bool = True


def parse_percent(text: str) -> float:
    """'1', '1%' or '0.5 %' -> the number; anything else is a QuantizeError."""
    try:
        value = float(str(text).strip().rstrip("%").strip())
    except ValueError:
        raise QuantizeError(f"expected a percentage like 1 or 1%, got {text!r}") from None
    if not 0 <= value <= 100:
        raise QuantizeError(f"a percentage must be from 0 to 100, got {text!r}")
    return value


def cpu_has_vnni() -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI): U8S8 int8 GEMMs run without saturation."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags




def drop_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove opset imports no node uses (ONNX Runtime's quantizer imports ai.onnx.ml,
    ai.onnx.training, com.microsoft.nchwc ... whether used or not); the default domain stays."""
    used = {"", "ai.onnx"}

    def walk(graph: onnx.GraphProto) -> None:
        for n in graph.node:
            used.add(n.domain)
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(g)

    walk(model.graph)
    for f in model.functions:
        used.add(f.domain)
        for n in f.node:
            used.add(n.domain)
    # sorted: ORT collects them in a set, whose order changes with the process's hash seed
    keep = sorted((o for o in model.opset_import if o.domain in used), key=lambda o: (o.domain not in ("", "ai.onnx"), o.domain))
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


# --------------------------------------------------------------------------- data


def _list_images(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise QuantizeError(f"{root}: calibration data must be a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QuantizeError(f"{root}: no images found")
    return files


def _batch(clf: Classifier, paths: list[Path]) -> tuple[np.ndarray, list[int]]:
    """Preprocessed images and the indices of ``paths`` that could be read (bad ones skipped)."""
    from .preprocess import ImageError

    arrays, kept = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(clf.preprocess(p))
            kept.append(i)
        except ImageError:
            continue  # a bad image is skipped, not fatal
    if not arrays:
        raise QuantizeError("none of the images could be read")
    return np.concatenate(arrays), kept


class _Reader:
    """ORT CalibrationDataReader over preprocessed arrays (fixed-batch models get that batch)."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int | None) -> None:
        step = batch or 1  # a fixed-batch model gets whole batches only (a partial last one is dropped)
        self.items = [{input_name: data[i:i + step]} for i in range(0, len(data) - step + 1, step)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def rewind(self):
        self.pos = 0



def _check_output(output: Path, model) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if output.is_dir():
        raise QuantizeError(f"{output} is a folder; give the file to write, e.g. {output / 'model-int8.onnx'}")
    if output.suffix.lower() != ".onnx":
        raise QuantizeError(f"{output}: the output must be a .onnx file")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise QuantizeError(f"{output}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise QuantizeError(f"{output}: folder {parent} is not writable")
    if isinstance(model, (str, os.PathLike)) and Path(model).exists() and output.exists() \
            and output.resolve() == Path(model).resolve():
        raise QuantizeError(f"{output} is the input model; write the int8 model to another file")


def _upgrade_legacy(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Models below opset 7 (V1 at opsets 3..6) as their exact opset-7 copy, which ORT's
    quantizer and shape inference can read; newer models as they are."""
    from .onnx_legacy import LegacyUpgradeError, upgrade_to_opset7

    try:
        upgraded = upgrade_to_opset7(model)
    except LegacyUpgradeError as e:
        raise QuantizeError(f"{source}: opset {model_opset(model)} cannot be upgraded for quantization ({e}); "
                            "export it at opset 13 instead (shufflenet export VARIANT --opset 13)") from None
    if upgraded.ir_version >= 4:
        return upgraded
    # IR 3 lists every initializer as a graph input too; ORT's quantizer then treats the weights
    # and the upgrade's Reshape shapes as inputs to feed. IR 4 (opset <= 9) lets them be constants.
    out = onnx.ModelProto()
    out.CopyFrom(upgraded)
    inits = {t.name for t in out.graph.initializer}
    keep = [i for i in out.graph.input if i.name not in inits]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    out.ir_version = 4
    return onnx.shape_inference.infer_shapes(out)


# --------------------------------------------------------------------------- one quantization


def _prepare(model: onnx.ModelProto, per_channel: bool, work: Path, name: str = "prepared") -> Path:
    """Upgrade to opset 13 when per-channel QDQ needs it (``per_channel`` True), then ORT's
    quant_pre_process."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx_legacy import upgrade_to_opset7

    if per_channel and model_opset(model) < 13:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(upgrade_to_opset7(model), 13)
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:
            raise QuantizeError(f"per-channel int8 needs opset >= 13 (DequantizeLinear axis) and this "
                                f"opset-{model_opset(model)} model could not be upgraded ({e}); re-export it "
                                "with --opset 13 or use --per-tensor") from None
    src, dst = work / f"{name}-fp32.onnx", work / f"{name}.onnx"
    onnx.save(_pool_before_relu(model), str(src))
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference can fail on exotic graphs; ORT optimisation alone
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def _stem(model: onnx.ModelProto) -> tuple[onnx.NodeProto, ...]:
    """The graph input's Conv, then ReLU and MaxPool in either order (each the only reader of
    the one before), as far as that chain goes: () when the input does not feed one Conv."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    first = readers.get(model.graph.input[0].name, [])
    if len(first) != 1 or first[0].op_type != "Conv":
        return ()
    chain = [first[0]]
    while len(chain) < 3:
        nxt = readers.get(chain[-1].output[0], [])
        if len(nxt) != 1 or nxt[0].op_type not in ("Relu", "MaxPool") or nxt[0].op_type in {c.op_type for c in chain}:
            break
        chain.append(nxt[0])
    return tuple(chain)


def _pool_before_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the stem's Conv -> Relu -> MaxPool written Conv -> MaxPool -> Relu (the same
    numbers: max and ReLU commute); other graphs are returned as they are."""
    stem = _stem(model)
    if [n.op_type for n in stem] != ["Conv", "Relu", "MaxPool"]:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    conv, relu, pool = (next(n for n in nodes if n.name == s.name and list(n.output) == list(s.output))
                        for s in stem)
    pooled, relu_out = relu.output[0], pool.output[0]
    pool.input[0], pool.output[0] = conv.output[0], pooled
    relu.input[0], relu.output[0] = pooled, relu_out
    nodes.remove(relu)
    nodes.insert(nodes.index(pool) + 1, relu)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    # `pooled` now names the pooled tensor: its recorded shape (the convolution's) is stale, and
    # ONNX Runtime warns "Error merging shape info" on it; it takes the pooling output's shape
    infos = {v.name: v for v in out.graph.value_info}
    kept = [v for v in out.graph.value_info if v.name != pooled]
    if relu_out in infos:
        fresh = onnx.ValueInfoProto()
        fresh.CopyFrom(infos[relu_out])
        fresh.name = pooled
        kept.append(fresh)
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out


def _quantize_once(prepared: Path, out: Path, reader: _Reader, *, fmt: str, per_channel: bool,
                   method: str, exclude: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    import contextlib
    import io

    vnni = cpu_has_vnni()
    reader.rewind()
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
        quantize_static(
            str(prepared), str(out), reader,
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            reduce_range=not vnni,  # ORT's advice for U8S8 on x86 without VNNI
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            nodes_to_exclude=exclude or None, extra_options=extra,
        )
    model = onnx.load(str(out))
    try:
        onnx.checker.check_model(model, full_check=True)
        Runner(model)
    except Exception as e:
        raise CheckFailedError(f"ONNX Runtime wrote an unusable int8 model ({str(e).splitlines()[0]}); "
                               "not saved") from None
    return model


# --------------------------------------------------------------------------- judging


def _outputs(model: onnx.ModelProto, data: np.ndarray) -> np.ndarray:
    return Runner(model).outputs(data).astype(np.float64)


def _compare(ref: np.ndarray, got: np.ndarray, kind: str, labels: np.ndarray | None) -> dict:
    out = agreement(ref, got, kind, kind)
    if labels is not None:
        out["fp32_accuracy"] = float(np.mean(ref.argmax(1) == labels) * 100)
        out["int8_accuracy"] = float(np.mean(got.argmax(1) == labels) * 100)
    return out


def _loss(metrics: dict) -> float:
    """Relative top-1 loss in percent: accuracy when labelled, else disagreement with fp32."""
    if "fp32_accuracy" in metrics:
        fp32 = metrics["fp32_accuracy"]
        return 0.0 if fp32 == 0 else max(0.0, (fp32 - metrics["int8_accuracy"]) / fp32 * 100)
    return 100.0 - metrics["top1_agreement"]


def _sensitivity(prepared: onnx.ModelProto, qdq_model: onnx.ModelProto, data: np.ndarray,
                 batch: int | None = None) -> list[tuple[str, float]]:
    """(tensor, SQNR in dB, mean over channels) of each quantized activation, worst first.

    The fp32 activation is quantized and dequantized with the scale/zero point the QDQ model
    uses for it, and compared with itself (with the Relu applied when ORT folded a Relu into the
    quantization, as it does for uint8 with zero point 0). This is the tensor's own error, not
    the error accumulated from earlier layers (ORT's qdq_loss_debug reports the latter, and
    its per-tensor figure misreads folded Relus).
    """
    import onnxruntime as ort
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    params = {}
    for n in qdq_model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and n.input[0] not in inits:
            zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] in inits else np.zeros((), np.uint8)
            params[n.input[0]] = (float(inits[n.input[1]]), int(zp), np.iinfo(zp.dtype))
    float_tensors = {o for node in prepared.graph.node for o in node.output}
    names = [t for t in params if t in float_tensors]
    if not names:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    if batch:  # a fixed-batch model: whole batches only
        data = data[: max(batch, len(data) - len(data) % batch)]
        if len(data) < batch:
            data = np.concatenate([data, np.zeros((batch - len(data), *data.shape[1:]), np.float32)])
    step = batch or len(data)
    runs = [sess.run(names, {sess.get_inputs()[0].name: data[i:i + step]}) for i in range(0, len(data), step)]
    acts = {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}
    consumers: dict[str, list[str]] = {}
    for node in prepared.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.op_type)
    ranked = []
    for t in names:
        x = acts[t].astype(np.float64)
        scale, zp, info = params[t]
        dq = (np.clip(np.rint(x / scale) + zp, info.min, info.max) - zp) * scale
        ref = np.maximum(x, 0) if consumers.get(t) == ["Relu"] else x
        # per channel, then the mean: one huge channel must not hide the others being zeroed
        axes = tuple(i for i in range(ref.ndim) if i != 1) if ref.ndim > 1 else (0,)
        signal = np.sqrt(np.sum(ref**2, axis=axes))
        noise = np.sqrt(np.sum((ref - dq) ** 2, axis=axes))
        live = signal > 1e-12
        if not live.any():
            continue
        per_channel = 20 * np.log10(signal[live] / np.maximum(noise[live], 1e-30 * signal[live]))
        ranked.append((t, float(np.mean(np.minimum(per_channel, 120.0)))))
    return sorted(ranked, key=lambda r: r[1])


def _nodes_touching(model: onnx.ModelProto, tensor: str) -> list[str]:
    """Nodes producing or consuming ``tensor``, through a Relu/Clip to its conv."""
    names = []
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(tensor)
    while node is not None:
        names.append(node.name)
        if node.op_type in ("Relu", "Clip") and node.input[0] in producers:
            node = producers[node.input[0]]
        else:
            break
    names += [n.name for n in model.graph.node if tensor in n.input]
    return [n for n in names if n]


# --------------------------------------------------------------------------- the command


@dataclass
class QuantReport:
    model: str
    output: str
    recipe: dict
    fp32_bytes: int
    int8_bytes: int
    metrics: dict
    criterion: dict | None
    attempts: list[dict] = field(default_factory=list)
    worst_nodes: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: dict | None = None
    plot: str | None = None
    #: why int8 is not (or will not be) faster than fp32 for this model, when it is not
    speed_note: str | None = None
    #: the fp32 model's weights are random: its accuracy and agreement figures mean nothing
    untrained: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _latency(fp32: onnx.ModelProto, int8: onnx.ModelProto, runs: int = 160) -> dict:
    """Batch-1, one-thread p50 of fp32 and int8 in this process, in blocks of consecutive runs,
    each with the runtime's load-time rewrites (as classify runs them)."""
    from .bench import BLOCK, bench

    fp, q = (r.p50_ms for r in bench([fp32, int8], runs=runs, warmup=10)["rows"])
    return {"fp32_ms": fp, "int8_ms": q, "speedup": fp / q, "runs": runs, "threads": 1,
            "mode": f"blocked ({BLOCK} consecutive runs per model and round)"}


def _grouped_convs(model: onnx.ModelProto) -> int:
    """Grouped convolutions that are not depthwise (ShuffleNetV1's grouped 1x1 convolutions)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    count = 0
    for n in model.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1 and shapes.get(n.input[1], (0, 1))[1] > 1:
            count += 1
    return count


def speed_note(fp32: onnx.ModelProto, latency: dict | None) -> str | None:
    """Why int8 is not faster than fp32 for this model (None when it is, or nothing says otherwise)."""
    grouped = _grouped_convs(fp32)
    why = (f"its {grouped} grouped (not depthwise) convolutions run in ONNX Runtime's int8 kernels as one small "
           "GEMM per group, each with layout conversions around the channel shuffle between them, which "
           "costs more than int8 arithmetic saves (ShuffleNetV1; for V1 the fp32 model is the fast one)")
    if latency is not None:
        if latency["speedup"] >= 1.0:
            return None
        return (f"int8 is slower than fp32 here ({latency['int8_ms']:.2f} vs {latency['fp32_ms']:.2f} ms): "
                + (why if grouped else "ONNX Runtime's int8 kernels do not pay on this CPU for this model"))
    if grouped:
        return "int8 will likely be slower than fp32 with ONNX Runtime on CPU: " + why
    return None


def quantize(model_path: str | os.PathLike, output: str | os.PathLike, calib: str | os.PathLike, *,
             options: QuantizeOptions | None = None, eval_data: str | os.PathLike | None = None,
             plot: str | os.PathLike | None = None, progress=None,
             label_file: str | os.PathLike | None = None) -> QuantReport:
    """Quantize ``model_path`` to ``output`` (see module doc). Raises before writing anything bad.

    ``eval_data`` is a labelled folder in any of :func:`shufflenet.evaluate.discover`'s layouts;
    ``label_file`` ('filename index' per line) labels a flat one."""
    from .evaluate import discover
    from .preprocess import describe

    opts = options or QuantizeOptions()
    if opts.format not in FORMATS:
        raise QuantizeError(f"format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    if opts.calib_method not in CALIB_METHODS:
        raise QuantizeError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {opts.calib_method!r}")
    if opts.calib_count < 1:
        raise QuantizeError("calib_count must be positive")
    output = Path(output)
    _check_output(output, model_path)
    # local arguments are checked before the model is resolved (which may download it)
    files = _list_images(calib)
    if eval_data is not None and not Path(eval_data).is_dir():
        raise QuantizeError(f"{eval_data}: --eval-data must be a folder of labelled images")
    if label_file is not None and not Path(label_file).is_file():
        raise QuantizeError(f"{label_file}: no such label file")
    fp32, source = resolve_model(model_path)
    fp32 = _upgrade_legacy(fp32, source)
    if any(n.op_type in ("QuantizeLinear", "QLinearConv", "DequantizeLinear") for n in fp32.graph.node):
        raise QuantizeError(f"{source} is already quantized")
    clf = Classifier(fp32, exact=True)  # calibration and --eval-data: torchvision's decoding
    _, kind, _ = model_info(fp32)
    dims = fp32.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None

    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(len(files))
    calib_files = [files[i] for i in order[:opts.calib_count]]
    held_out = [files[i] for i in order[opts.calib_count:]]
    calib_data, _ = _batch(clf, calib_files)
    reader = _Reader(clf.input_name, calib_data, batch)
    if not reader.items:
        raise QuantizeError(f"{len(calib_data)} calibration images are fewer than the model's batch of {batch}")

    labels = None
    if eval_data is not None:
        samples, _, _ = discover(eval_data, labels=clf.labels, label_file=label_file)
        samples = samples[:opts.eval_count]
        if not samples:
            raise QuantizeError(f"{eval_data}: no labelled images")
        eval_x, kept = _batch(clf, [s.path for s in samples])
        labels = np.array([samples[i].label for i in kept])
    elif label_file is not None:
        raise QuantizeError("a label file labels --eval-data; give --eval-data too")
    else:  # no labels: top-1 agreement with fp32 on images not used for calibration, if any
        eval_x = _batch(clf, held_out[:opts.eval_count])[0] if held_out else calib_data
    ref = _outputs(fp32, eval_x)

    attempts: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shufflenet-quant-") as tmp:
        work = Path(tmp)
        # per-channel QDQ needs DequantizeLinear's axis (opset 13); QOperator's QLinearConv takes
        # per-channel scales from opset 10, so it keeps the model's opset when ORT writes a valid model
        prepared = _prepare(fp32, opts.per_channel and opts.format == "qdq", work)
        if opts.per_channel and opts.format == "qoperator" and model_opset(fp32) < 13:
            try:
                _quantize_once(prepared, work / "probe-opset.onnx", reader, fmt="qoperator", per_channel=True,
                               method=opts.calib_method, exclude=[])
            except CheckFailedError:  # not valid at this opset: upgrade like QDQ
                prepared = _prepare(fp32, True, work)
        prepared_model = onnx.load(str(prepared))
        fp32_nodes = [n.name for n in _stem(prepared_model)] if opts.fp32_stem else []

        def attempt(method: str, exclude: list[str], fmt: str = opts.format) -> tuple[onnx.ModelProto, dict]:
            q = _quantize_once(prepared, work / "q.onnx", reader, fmt=fmt, per_channel=opts.per_channel,
                               method=method, exclude=sorted(set(fp32_nodes) | set(exclude)))
            metrics = _compare(ref, _outputs(q, eval_x), kind, labels)
            attempts.append({"format": fmt, "calib_method": method, "excluded": len(exclude),
                             "loss_pct": _loss(metrics), **metrics})
            if progress:
                progress(attempts[-1])
            return q, metrics

        def shortfall(m: dict) -> tuple[float, float, float]:
            """How far from the criteria (0 = met), then loss, then disagreement: lower is better."""
            gap = 0.0
            if opts.max_loss is not None:
                gap += max(0.0, _loss(m) - opts.max_loss)
            if opts.min_agreement is not None:
                gap += max(0.0, opts.min_agreement - m["top1_agreement"])
            return gap, _loss(m), -m["top1_agreement"]

        def met(m: dict) -> bool:
            return shortfall(m)[0] == 0.0

        q, m = attempt(opts.calib_method, [])
        best = (q, m, opts.calib_method, [])  # (model, metrics, calibration method, excluded nodes)
        if not met(best[1]):
            for other in (x for x in CALIB_METHODS if x != opts.calib_method):
                q, m = attempt(other, [])
                if shortfall(m) < shortfall(best[1]):
                    best = (q, m, other, [])
                if met(best[1]):
                    break
        method = best[2]
        # per-tensor sensitivity, measured on the QDQ form of the chosen calibration
        if opts.format == "qdq":
            probe = best[0]
        else:
            probe_src = prepared if model_opset(prepared_model) >= 13 or not opts.per_channel else \
                _prepare(fp32, True, work, name="probe-prepared")
            probe = _quantize_once(probe_src, work / "probe.onnx", reader, fmt="qdq",
                                   per_channel=opts.per_channel, method=method, exclude=fp32_nodes)
        worst = _sensitivity(prepared_model, probe, calib_data[:32], batch)
        # keeping more than MAX_FP32_FRACTION of the tensors in fp32 would not be an int8 model
        # any more: past that, report the criterion as not met instead
        k, cap = 1, max(1, int(len(worst) * MAX_FP32_FRACTION))
        while not met(best[1]) and k <= cap:
            exclude = sorted({n for t, _ in worst[:k] for n in _nodes_touching(prepared_model, t)})
            q, m = attempt(method, exclude)
            if shortfall(m) < shortfall(best[1]):
                best = (q, m, method, exclude)
            k *= 2
        best_q, best_m, method, final_exclude = best

        recipe = {
            "format": opts.format, "per_channel": opts.per_channel, "activation_type": "uint8",
            "weight_type": "int8", "reduce_range": not cpu_has_vnni(), "calib_method": method,
            "calib_images": len(calib_data), "calib_seed": opts.seed, "excluded_nodes": final_exclude,
            "fp32_stem": fp32_nodes,
            "preprocessing": describe(clf.recipe, resize=clf.resize, exact=clf.exact),
            "opset": model_opset(best_q), "tool": f"onnxruntime {__import__('onnxruntime').__version__} quantize_static",
        }
        criterion = None
        if opts.max_loss is not None or opts.min_agreement is not None:
            criterion = {"max_loss_pct": opts.max_loss, "min_agreement_pct": opts.min_agreement,
                         "measure": "accuracy" if labels is not None else "top-1 agreement with fp32",
                         "loss_pct": _loss(best_m), "agreement_pct": best_m["top1_agreement"],
                         "met": met(best_m), "images": len(eval_x),
                         # on random weights "met" proves nothing (0% accuracy loses 0%)
                         "meaningful": not is_untrained(fp32),
                         "images_also_used_for_calibration": eval_data is None and not held_out}
        meta = {p.key: p.value for p in best_q.metadata_props}
        meta.update({p.key: p.value for p in fp32.metadata_props})
        meta["quantization"] = strict_dumps(recipe)
        if criterion:
            meta["quantization_criterion"] = strict_dumps(criterion)
        del best_q.metadata_props[:]
        onnx.helper.set_model_props(best_q, meta)
        drop_unused_opsets(best_q)
        onnx.checker.check_model(best_q, full_check=True)
        Runner(best_q)
        atomic_write(output, lambda t: t.write_bytes(best_q.SerializeToString()))

    latency = _latency(fp32, best_q) if opts.measure_latency and batch in (None, 1) else None
    note = speed_note(fp32, latency)
    plot_path = None
    if plot is not None and worst:
        from .plotting import bar_panel, save_panels

        plot_path = str(save_panels([bar_panel(worst[:200], title="per-tensor SQNR (dB), worst first",
                                               ylabel="tensors")], plot))
    return QuantReport(source, str(output), recipe, fp32.ByteSize(), output.stat().st_size,
                       best_m, criterion, attempts, worst[:10], latency, plot_path, note, is_untrained(fp32))
