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
from typing import NamedTuple

import numpy as np
import onnx

from ._safeio import dumps as strict_dumps
from .errors import CheckFailedError, ShuffleNetError
from ._io import atomic_write, image_files, one_line
from ._onnx import consumers, fixed_batch, graph_inputs, model_opset, ort_session
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
    """The calibration folder's images, sub-folders included; a sub-folder that cannot be listed
    is an error (a silently smaller sample would change the calibration)."""
    root = Path(folder)
    if not root.is_dir():
        raise QuantizeError(f"{root}: calibration data must be a folder of images")
    problems: list[tuple[str, str]] = []
    files = image_files(root, problems)
    if problems:
        where, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise QuantizeError(f"{where}: {why}{more}")
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
    keep = graph_inputs(out)
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


def _prepare_for(fp32: onnx.ModelProto, opts: QuantizeOptions, reader: _Reader, work: Path) -> Path:
    """The prepared model every attempt starts from, at the opset the format needs."""
    # per-channel QDQ needs DequantizeLinear's axis (opset 13); QOperator's QLinearConv takes
    # per-channel scales from opset 10, so it keeps the model's opset when ORT writes a valid model
    prepared = _prepare(fp32, opts.per_channel and opts.format == "qdq", work)
    if opts.per_channel and opts.format == "qoperator" and model_opset(fp32) < 13:
        try:
            _quantize_once(prepared, work / "probe-opset.onnx", reader, fmt="qoperator", per_channel=True,
                           method=opts.calib_method, exclude=[])
        except CheckFailedError:  # not valid at this opset: upgrade like QDQ
            prepared = _prepare(fp32, True, work)
    return prepared


def _stem(model: onnx.ModelProto) -> tuple[onnx.NodeProto, ...]:
    """The graph input's Conv, then ReLU and MaxPool in either order (each the only reader of
    the one before), as far as that chain goes: () when the input does not feed one Conv."""
    readers = consumers(model.graph.node)
    first = [n for n, _ in readers.get(model.graph.input[0].name, [])]
    if len(first) != 1 or first[0].op_type != "Conv":
        return ()
    chain = [first[0]]
    while len(chain) < 3:
        nxt = [n for n, _ in readers.get(chain[-1].output[0], [])]
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
        raise CheckFailedError(f"ONNX Runtime wrote an unusable int8 model ({one_line(e, line='first')}); "
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


def _shortfall(metrics: dict, opts: QuantizeOptions) -> tuple[float, float, float]:
    """How far from the criteria (0 = met), then loss, then disagreement: lower is better."""
    gap = 0.0
    if opts.max_loss is not None:
        gap += max(0.0, _loss(metrics) - opts.max_loss)
    if opts.min_agreement is not None:
        gap += max(0.0, opts.min_agreement - metrics["top1_agreement"])
    return gap, _loss(metrics), -metrics["top1_agreement"]


def _met(metrics: dict, opts: QuantizeOptions) -> bool:
    return _shortfall(metrics, opts)[0] == 0.0


def _sensitivity(prepared: onnx.ModelProto, qdq_model: onnx.ModelProto, data: np.ndarray,
                 batch: int | None = None) -> list[tuple[str, float]]:
    """(tensor, SQNR in dB, mean over channels) of each quantized activation, worst first.

    The fp32 activation is quantized and dequantized with the scale/zero point the QDQ model
    uses for it, and compared with itself (with the Relu applied when ORT folded a Relu into the
    quantization, as it does for uint8 with zero point 0). This is the tensor's own error, not
    the error accumulated from earlier layers (ORT's qdq_loss_debug reports the latter, and
    its per-tensor figure misreads folded Relus).
    """
    params = _qdq_params(qdq_model)
    float_tensors = {o for node in prepared.graph.node for o in node.output}
    names = [t for t in params if t in float_tensors]
    if not names:
        return []
    acts = _activations(prepared, names, data, batch)
    readers = consumers(prepared.graph.node)
    ranked = []
    for t in names:
        relu = [n.op_type for n, _ in readers.get(t, [])] == ["Relu"]
        db = _sqnr(acts[t].astype(np.float64), *params[t], relu=relu)
        if db is not None:
            ranked.append((t, db))
    return sorted(ranked, key=lambda r: r[1])


def _qdq_params(qdq_model: onnx.ModelProto) -> dict[str, tuple[float, int, np.iinfo]]:
    """tensor -> (scale, zero point, integer range) of each activation a QuantizeLinear reads."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    params = {}
    for n in qdq_model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and n.input[0] not in inits:
            zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] in inits else np.zeros((), np.uint8)
            params[n.input[0]] = (float(inits[n.input[1]]), int(zp), np.iinfo(zp.dtype))
    return params


def _activations(prepared: onnx.ModelProto, names: list[str], data: np.ndarray,
                 batch: int | None) -> dict[str, np.ndarray]:
    """The fp32 values of the tensors ``names`` on ``data``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    sess = ort_session(probe)
    if batch:  # a fixed-batch model: whole batches only
        data = data[: max(batch, len(data) - len(data) % batch)]
        if len(data) < batch:
            data = np.concatenate([data, np.zeros((batch - len(data), *data.shape[1:]), np.float32)])
    step = batch or len(data)
    runs = [sess.run(names, {sess.get_inputs()[0].name: data[i:i + step]}) for i in range(0, len(data), step)]
    return {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}


def _sqnr(x: np.ndarray, scale: float, zp: int, info: np.iinfo, *, relu: bool) -> float | None:
    """SQNR in dB of ``x`` quantized with (scale, zp), per channel (capped at 120) then the mean;
    against ReLU(x) when ``relu``. None when every channel is zero."""
    dq = (np.clip(np.rint(x / scale) + zp, info.min, info.max) - zp) * scale
    ref = np.maximum(x, 0) if relu else x
    # per channel, then the mean: one huge channel must not hide the others being zeroed
    axes = tuple(i for i in range(ref.ndim) if i != 1) if ref.ndim > 1 else (0,)
    signal = np.sqrt(np.sum(ref**2, axis=axes))
    noise = np.sqrt(np.sum((ref - dq) ** 2, axis=axes))
    live = signal > 1e-12
    if not live.any():
        return None
    per_channel = 20 * np.log10(signal[live] / np.maximum(noise[live], 1e-30 * signal[live]))
    return float(np.mean(np.minimum(per_channel, 120.0)))


def _nodes_touching(model: onnx.ModelProto, tensors: list[str]) -> list[str]:
    """The named nodes producing (through a Relu/Clip to its conv) or consuming any of
    ``tensors``, sorted."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = consumers(model.graph.node)
    names = set()
    for tensor in tensors:
        node = producers.get(tensor)
        while node is not None:
            names.add(node.name)
            if node.op_type in ("Relu", "Clip") and node.input[0] in producers:
                node = producers[node.input[0]]
            else:
                break
        names.update(n.name for n, _ in readers.get(tensor, []))
    return sorted(n for n in names if n)


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

    @property
    def passed(self) -> bool:
        """The accuracy criterion was met, or there was none to judge (no criterion, or random
        weights, whose figures mean nothing): ``quantize`` exits 1 otherwise."""
        c = self.criterion
        return not c or c["met"] or not c.get("meaningful", True)

    @property
    def compression(self) -> float:
        """How many times smaller the int8 file is than the fp32 one."""
        return self.fp32_bytes / self.int8_bytes


def _latency(fp32: onnx.ModelProto, int8: onnx.ModelProto, runs: int = 160) -> dict:
    """Batch-1, one-thread p50 of fp32 and int8 in this process, in blocks of consecutive runs,
    each with the runtime's load-time rewrites (as classify runs them)."""
    from .bench import bench

    result = bench([fp32, int8], runs=runs, warmup=10)
    fp, q = (r.p50_ms for r in result["rows"])
    return {"fp32_ms": fp, "int8_ms": q, "speedup": fp / q, "runs": runs, "threads": 1,
            "mode": result["env"]["mode"]}


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
    ``label_file`` ('filename index' per line) labels a flat one. ``progress`` is called with
    each attempt's row of the report."""
    opts = options or QuantizeOptions()
    output = Path(output)
    files = _check_request(opts, output, model_path, calib, eval_data, label_file, plot)
    fp32, source = _load_fp32(model_path)
    data = _gather(fp32, files, opts, eval_data, label_file)
    with tempfile.TemporaryDirectory(prefix="shufflenet-quant-") as tmp:
        tuner = _Tuner(fp32, data, opts, Path(tmp), progress)
        best, worst = tuner.tune()
        recipe = _recipe(opts, data, best, tuner.fp32_nodes)
        criterion = _criterion(opts, data, best.metrics, meaningful=not is_untrained(fp32))
        _write(output, best.model, fp32, recipe, criterion)
    latency = _latency(fp32, best.model) if opts.measure_latency and data.batch in (None, 1) else None
    return QuantReport(source, str(output), recipe, fp32.ByteSize(), output.stat().st_size,
                       best.metrics, criterion, tuner.attempts, worst[:10], latency,
                       _plot_sensitivity(worst, plot), speed_note(fp32, latency), is_untrained(fp32))


def _check_request(opts: QuantizeOptions, output: Path, model_path, calib, eval_data, label_file,
                   plot) -> list[Path]:
    """Refuse a request that cannot be honoured before any work, and before the model is resolved
    (which may download it); the calibration folder's images."""
    if opts.format not in FORMATS:
        raise QuantizeError(f"format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    if opts.calib_method not in CALIB_METHODS:
        raise QuantizeError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {opts.calib_method!r}")
    if opts.calib_count < 1 or opts.eval_count < 1:
        raise QuantizeError("calib_count and eval_count must be positive")
    if opts.seed < 0:  # numpy's generators take no negative seed
        raise QuantizeError(f"seed must be >= 0, got {opts.seed}")
    for name in ("max_loss", "min_agreement"):  # NaN, or 150%, would make the criterion meaningless
        value = getattr(opts, name)
        if value is not None and not 0 <= value <= 100:
            raise QuantizeError(f"{name} is a percentage from 0 to 100, got {value!r}")
    _check_output(output, model_path)
    if plot is not None and Path(plot).is_dir():
        raise QuantizeError(f"{plot} is a folder; give the PNG file to write, e.g. {Path(plot) / 'sqnr.png'}")
    files = _list_images(calib)
    if eval_data is not None and not Path(eval_data).is_dir():
        raise QuantizeError(f"{eval_data}: --eval-data must be a folder of labelled images")
    if label_file is not None and not Path(label_file).is_file():
        raise QuantizeError(f"{label_file}: no such label file")
    if label_file is not None and eval_data is None:
        raise QuantizeError("a label file labels --eval-data; give --eval-data too")
    return files


def _load_fp32(model_path) -> tuple[onnx.ModelProto, str]:
    """The fp32 model (a legacy opset upgraded) and where it came from; an int8 model is refused."""
    fp32, source = resolve_model(model_path)
    fp32 = _upgrade_legacy(fp32, source)
    if any(n.op_type in ("QuantizeLinear", "QLinearConv", "DequantizeLinear") for n in fp32.graph.node):
        raise QuantizeError(f"{source} is already quantized")
    return fp32, source


@dataclass
class _Data:
    """The images of one quantize call, preprocessed: the calibration sample (fed through
    ``reader``) and the judging images (``eval_x``, labelled or not) with fp32's outputs on them."""

    clf: Classifier
    kind: str  # what the model outputs (logits, probabilities): agreement compares like with like
    batch: int | None  # the model's fixed batch, None when dynamic
    calib: np.ndarray
    reader: _Reader
    eval_x: np.ndarray
    labels: np.ndarray | None  # None: judged by top-1 agreement with fp32
    ref: np.ndarray
    #: no labelled data and no image left over from calibration: judged on the calibration images
    eval_is_calib: bool


def _gather(fp32: onnx.ModelProto, files: list[Path], opts: QuantizeOptions, eval_data, label_file) -> _Data:
    """Preprocess the calibration sample and the judging images, and run fp32 on the latter."""
    clf = Classifier(fp32, exact=True)  # calibration and --eval-data: torchvision's decoding
    _, kind, _ = model_info(fp32)
    batch = fixed_batch(fp32)
    order = np.random.default_rng(opts.seed).permutation(len(files))
    calib, _ = _batch(clf, [files[i] for i in order[:opts.calib_count]])
    held_out = [files[i] for i in order[opts.calib_count:]]
    reader = _Reader(clf.input_name, calib, batch)
    if not reader.items:
        raise QuantizeError(f"{len(calib)} calibration images are fewer than the model's batch of {batch}")
    labels = None
    if eval_data is not None:
        eval_x, labels = _labelled(clf, eval_data, label_file, opts.eval_count)
    else:  # no labels: top-1 agreement with fp32 on images not used for calibration, if any
        eval_x = _batch(clf, held_out[:opts.eval_count])[0] if held_out else calib
    return _Data(clf, kind, batch, calib, reader, eval_x, labels, _outputs(fp32, eval_x),
                 eval_is_calib=eval_data is None and not held_out)


def _labelled(clf: Classifier, eval_data, label_file, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` labelled images of ``eval_data`` that can be read, and their labels."""
    from .evaluate import discover

    samples, _, _ = discover(eval_data, labels=clf.labels, label_file=label_file)
    samples = samples[:count]
    if not samples:
        raise QuantizeError(f"{eval_data}: no labelled images")
    x, kept = _batch(clf, [s.path for s in samples])
    return x, np.array([samples[i].label for i in kept])


class _Result(NamedTuple):
    """One quantization attempt: the int8 model, how it compares with fp32, and its recipe."""

    model: onnx.ModelProto
    metrics: dict
    calib_method: str
    excluded: list[str]  # nodes kept in fp32 by the tuning (the fp32 stem not counted)


class _Tuner:
    """The attempts of one quantize call, all on the same prepared model, calibration reader and
    judging images; each is recorded in ``attempts`` and passed to ``progress``."""

    def __init__(self, fp32: onnx.ModelProto, data: _Data, opts: QuantizeOptions, work: Path, progress) -> None:
        self.fp32, self.data, self.opts, self.work, self.progress = fp32, data, opts, work, progress
        self.prepared = _prepare_for(fp32, opts, data.reader, work)
        self.prepared_model = onnx.load(str(self.prepared))
        self.fp32_nodes = [n.name for n in _stem(self.prepared_model)] if opts.fp32_stem else []
        self.attempts: list[dict] = []

    def tune(self) -> tuple[_Result, list[tuple[str, float]]]:
        """The best attempt (the first that meets the criterion, else the closest) and the
        per-tensor SQNR, worst first."""
        best = self.calibrations()
        worst = self.sensitivity(best)
        return self.exclusions(best, worst), worst

    def attempt(self, method: str, exclude: list[str]) -> _Result:
        q = _quantize_once(self.prepared, self.work / "q.onnx", self.data.reader, fmt=self.opts.format,
                           per_channel=self.opts.per_channel, method=method,
                           exclude=sorted(set(self.fp32_nodes) | set(exclude)))
        metrics = _compare(self.data.ref, _outputs(q, self.data.eval_x), self.data.kind, self.data.labels)
        self.attempts.append({"format": self.opts.format, "calib_method": method, "excluded": len(exclude),
                              "loss_pct": _loss(metrics), **metrics})
        if self.progress:
            self.progress(self.attempts[-1])
        return _Result(q, metrics, method, exclude)

    def calibrations(self) -> _Result:
        """The requested calibration method, then the others until one meets the criterion."""
        best = self.attempt(self.opts.calib_method, [])
        for other in (x for x in CALIB_METHODS if x != self.opts.calib_method):
            if _met(best.metrics, self.opts):
                break
            best = self._better(self.attempt(other, []), best)
        return best

    def sensitivity(self, best: _Result) -> list[tuple[str, float]]:
        """Per-tensor SQNR, measured on the QDQ form of ``best``'s calibration, worst first."""
        if self.opts.format == "qdq":
            probe = best.model
        else:
            probe_src = self.prepared if model_opset(self.prepared_model) >= 13 or not self.opts.per_channel \
                else _prepare(self.fp32, True, self.work, name="probe-prepared")
            probe = _quantize_once(probe_src, self.work / "probe.onnx", self.data.reader, fmt="qdq",
                                   per_channel=self.opts.per_channel, method=best.calib_method,
                                   exclude=self.fp32_nodes)
        return _sensitivity(self.prepared_model, probe, self.data.calib[:32], self.data.batch)

    def exclusions(self, best: _Result, worst: list[tuple[str, float]]) -> _Result:
        """Keep the 1, 2, 4 ... lowest-SQNR tensors in fp32 (their producers and consumers)
        until the criterion holds."""
        # keeping more than MAX_FP32_FRACTION of the tensors in fp32 would not be an int8 model
        # any more: past that, report the criterion as not met instead
        k, cap = 1, max(1, int(len(worst) * MAX_FP32_FRACTION))
        while not _met(best.metrics, self.opts) and k <= cap:
            exclude = _nodes_touching(self.prepared_model, [t for t, _ in worst[:k]])
            best = self._better(self.attempt(best.calib_method, exclude), best)
            k *= 2
        return best

    def _better(self, new: _Result, best: _Result) -> _Result:
        """``new`` when it is strictly closer to the criterion than ``best``."""
        return new if _shortfall(new.metrics, self.opts) < _shortfall(best.metrics, self.opts) else best


def _recipe(opts: QuantizeOptions, data: _Data, best: _Result, fp32_nodes: list[str]) -> dict:
    """How the written model was made, as its metadata and the report record it."""
    import onnxruntime

    from .preprocess import describe

    clf = data.clf
    return {
        "format": opts.format, "per_channel": opts.per_channel, "activation_type": "uint8",
        "weight_type": "int8", "reduce_range": not cpu_has_vnni(), "calib_method": best.calib_method,
        "calib_images": len(data.calib), "calib_seed": opts.seed, "excluded_nodes": best.excluded,
        "fp32_stem": fp32_nodes,
        "preprocessing": describe(clf.recipe, resize=clf.resize, exact=clf.exact),
        "opset": model_opset(best.model), "tool": f"onnxruntime {onnxruntime.__version__} quantize_static",
    }


def _criterion(opts: QuantizeOptions, data: _Data, metrics: dict, *, meaningful: bool) -> dict | None:
    """The requested criterion and how the written model measures against it (None when none)."""
    if opts.max_loss is None and opts.min_agreement is None:
        return None
    return {"max_loss_pct": opts.max_loss, "min_agreement_pct": opts.min_agreement,
            "measure": "accuracy" if data.labels is not None else "top-1 agreement with fp32",
            "loss_pct": _loss(metrics), "agreement_pct": metrics["top1_agreement"],
            "met": _met(metrics, opts), "images": len(data.eval_x),
            # on random weights "met" proves nothing (0% accuracy loses 0%)
            "meaningful": meaningful,
            "images_also_used_for_calibration": data.eval_is_calib}


def _write(output: Path, q: onnx.ModelProto, fp32: onnx.ModelProto, recipe: dict, criterion: dict | None) -> None:
    """Write ``q`` (in place: fp32's metadata and the recipe added, unused opsets dropped) once it
    passes the full checker and loads in ONNX Runtime."""
    meta = {p.key: p.value for p in q.metadata_props}
    meta.update({p.key: p.value for p in fp32.metadata_props})
    meta["quantization"] = strict_dumps(recipe)
    if criterion:
        meta["quantization_criterion"] = strict_dumps(criterion)
    del q.metadata_props[:]
    onnx.helper.set_model_props(q, meta)
    drop_unused_opsets(q)
    onnx.checker.check_model(q, full_check=True)
    Runner(q)
    atomic_write(output, lambda t: t.write_bytes(q.SerializeToString()))


def _plot_sensitivity(worst: list[tuple[str, float]], plot: str | os.PathLike | None) -> str | None:
    if plot is None or not worst:
        return None
    from .plotting import bar_panel, save_panels

    return str(save_panels([bar_panel(worst[:200], title="per-tensor SQNR (dB), worst first",
                                      ylabel="tensors")], plot))
