"""Architectures as data: one declarative description per variant, and the registry.

Each variant is a :class:`Graph`, a flat list of :class:`Node` (conv, bn, relu, pools, shuffle,
split, concat, add, flatten, linear, softmax) whose parameters are named by the weights keys the
variant uses (torchvision's for V2, Caffe2's for the Model Zoo's V1). The PyTorch module
(``torch_models``) and the ONNX emitter (``onnx_export``) both walk this list; nothing else
describes the network. Parameter counts and MACs are computed from it, never typed in.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from numbers import Real
from types import MappingProxyType
from typing import Any

from .errors import SpecError, UnknownVariantError
from .options import RESIZE_MODES

__all__ = [
    "Node",
    "Graph",
    "ParamInfo",
    "Preprocess",
    "Published",
    "Artifact",
    "VariantSpec",
    "register",
    "get_spec",
    "list_variants",
    "artifacts",
    "default_artifact",
]

#: op name -> parameter roles it owns (in order)
OPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "conv": ("weight", "bias"),
        "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
        "relu": (),
        "maxpool": (),
        "avgpool": (),  # padded positions are excluded from the mean (Caffe2 and ONNX's default)
        "global_avgpool": (),  # keeps dims: [N, C, 1, 1]
        "shuffle": (),
        "split": (),
        "concat": (),
        "add": (),
        "flatten": (),
        "linear": ("weight", "bias"),
        "softmax": (),
    }
)

BN_EPS = 1e-5  # torchvision's BatchNorm2d default and Caffe2 SpatialBN's default
BN_MOMENTUM = 0.1  # torch convention (Caffe2's 0.9 is the same update written the other way)


@dataclass(frozen=True)
class Node:
    """One operation. ``params`` maps a role (``weight``, ``running_mean`` ...) to a weights key."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.outputs[0]


@dataclass(frozen=True)
class ParamInfo:
    key: str
    shape: tuple[int, ...]
    role: str
    op: str
    #: gradients flow into it; running statistics and counters are stored but not trained
    trainable: bool
    dtype: str = "float32"


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    input: str
    output: str
    #: the pooled feature tensor (what a new classifier head would read)
    features: str
    num_classes: int

    @property
    def head(self) -> Node:
        """The classifier: the ``linear`` node that reads the features and writes the class scores.

        Ask for it here; do not search the node list for the op (a new op vocabulary, a second
        linear layer or a folded graph changes only this accessor).
        """
        heads = [n for n in self.nodes if n.op == "linear"]
        if len(heads) != 1:
            raise SpecError(f"a graph has exactly one classifier head, found {len(heads)} linear nodes")
        return heads[0]

    def param_table(self) -> dict[str, ParamInfo]:
        """Every stored tensor, in graph order, keyed by its weights name."""
        table: dict[str, ParamInfo] = {}
        for node in self.nodes:
            for role, key in node.params.items():
                shape = _param_shape(node, role)
                trainable = role in ("weight", "bias")
                dtype = "int64" if role == "num_batches_tracked" else "float32"
                table[key] = ParamInfo(key, shape, role, node.op, trainable, dtype)
        return table

    @property
    def num_params(self) -> int:
        """Trainable parameters (what torchvision and papers publish)."""
        return sum(_prod(p.shape) for p in self.param_table().values() if p.trainable)

    @property
    def num_stored_floats(self) -> int:
        """Trainable parameters plus BN running statistics (what a deployed file holds)."""
        return sum(_prod(p.shape) for p in self.param_table().values() if p.dtype == "float32")

    def count(self, op: str) -> int:
        return sum(1 for n in self.nodes if n.op == op)

    def producers(self) -> dict[str, Node]:
        """tensor -> the node that writes it."""
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """tensor -> the nodes that read it, in graph order (a node reading it twice is listed twice)."""
        readers: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                readers.setdefault(i, []).append(n)
        return readers

    def shapes(self, size: tuple[int, int] = (224, 224)) -> dict[str, tuple[int, ...]]:
        """Per-tensor shape without the batch axis: (C, H, W), or (C,) after flatten."""
        shapes: dict[str, tuple[int, ...]] = {self.input: (3, *size)}
        for n in self.nodes:
            missing = [i for i in n.inputs if i not in shapes]
            if missing:
                raise SpecError(f"{n.outputs[0]}: {n.op} reads {missing[0]!r}, which no earlier node writes")
            ins = [shapes[i] for i in n.inputs]
            a = n.attrs
            if n.op == "conv":
                c, h, w = ins[0]
                if c != a["in_channels"]:
                    raise SpecError(f"{n.outputs[0]}: conv expects {a['in_channels']} channels, got {c}")
                outs = [(a["out_channels"], *_pooled(h, w, a["kernel"], a["stride"], a["pad"]))]
            elif n.op in ("maxpool", "avgpool"):
                c, h, w = ins[0]
                outs = [(c, *_pooled(h, w, a["kernel"], a["stride"], a["pad"]))]
            elif n.op == "global_avgpool":
                outs = [(ins[0][0], 1, 1)]
            elif n.op == "split":
                c, h, w = ins[0]
                if sum(a["sizes"]) != c:
                    raise SpecError(f"split sizes {a['sizes']} do not add up to {c} channels")
                outs = [(s, h, w) for s in a["sizes"]]
            elif n.op == "concat":
                outs = [(sum(s[0] for s in ins), *ins[0][1:])]
            elif n.op == "flatten":
                outs = [(_prod(ins[0]),)]
            elif n.op == "linear":
                outs = [(a["out_features"],)]
            else:  # bn, relu, shuffle, add, softmax keep the shape
                outs = [ins[0]]
            shapes.update(zip(n.outputs, outs))
        return shapes

    def macs(self, size: tuple[int, int] = (224, 224)) -> int:
        """Multiply-accumulates of the convolutions and the classifier (the published convention)."""
        shapes = self.shapes(size)
        total = 0
        for n in self.nodes:
            a = n.attrs
            if n.op == "conv":
                c, h, w = shapes[n.output]
                total += c * h * w * (a["in_channels"] // a["groups"]) * a["kernel"] ** 2
            elif n.op == "linear":
                total += a["in_features"] * a["out_features"]
        return total


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _pooled(h: int, w: int, k: int, s: int, p: int) -> tuple[int, int]:
    return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def _param_shape(node: Node, role: str) -> tuple[int, ...]:
    a = node.attrs
    if node.op == "conv":
        if role == "weight":
            return (a["out_channels"], a["in_channels"] // a["groups"], a["kernel"], a["kernel"])
        return (a["out_channels"],)
    if node.op == "bn":
        return () if role == "num_batches_tracked" else (a["channels"],)
    if node.op == "linear":
        return (a["out_features"], a["in_features"]) if role == "weight" else (a["out_features"],)
    raise SpecError(f"op {node.op!r} has no parameter {role!r}")


class _Builder:
    """Appends nodes and hands out unique tensor names."""

    def __init__(self, input_name: str) -> None:
        self.nodes: list[Node] = []
        self._used = {input_name}

    def _name(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._used:
            name, k = f"{hint}_{k}", k + 1
        self._used.add(name)
        return name

    def add(self, op: str, inputs: tuple[str, ...], hint: str, n_out: int = 1, params=None, **attrs) -> Any:
        outs = tuple(self._name(hint if n_out == 1 else f"{hint}_{i}") for i in range(n_out))
        if op not in OPS:
            raise SpecError(f"unknown op {op!r}")
        self.nodes.append(Node(op, inputs, outs, MappingProxyType(attrs), MappingProxyType(params or {})))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k, stride, *, groups=1, w: str, b: str | None = None, hint=None) -> str:
        if cin % groups or cout % groups:
            raise SpecError(f"conv {w}: channels {cin}->{cout} not divisible by groups {groups}")
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        return self.add("conv", (x,), hint or _stem(w), params=params, in_channels=cin,
                        out_channels=cout, kernel=k, stride=stride, pad=k // 2, groups=groups)

    def bn(self, x, c, keys: Mapping[str, str], hint: str) -> str:
        return self.add("bn", (x,), hint, params=keys, channels=c, eps=BN_EPS)

    def relu(self, x) -> str:
        return self.add("relu", (x,), f"{x}_relu")


def _stem(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key.removesuffix("_w")


def _torch_bn(prefix: str) -> dict[str, str]:
    roles = OPS["bn"]
    return {r: f"{prefix}.{r}" for r in roles}


# --------------------------------------------------------------------------- ShuffleNet V2

#: torchvision's `_stage_out_channels` per width (stem, stage2, stage3, stage4, conv5)
V2_WIDTHS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "x0_5": (24, 48, 96, 192, 1024),
        "x1_0": (24, 116, 232, 464, 1024),
        "x1_5": (24, 176, 352, 704, 1024),
        "x2_0": (24, 244, 488, 976, 2048),
    }
)
STAGE_REPEATS = (4, 8, 4)  # V1 and V2 alike


def shufflenet_v2_graph(widths: tuple[int, ...], num_classes: int = 1000) -> Graph:
    """torchvision's ShuffleNetV2, node for node, with its state_dict keys."""
    b = _Builder("input")
    c0 = widths[0]
    x = b.conv("input", 3, c0, 3, 2, w="conv1.0.weight")
    x = b.relu(b.bn(x, c0, _torch_bn("conv1.1"), "conv1.1"))
    x = b.add("maxpool", (x,), "maxpool", kernel=3, stride=2, pad=1)
    cin = c0
    for stage, (repeats, cout) in enumerate(zip(STAGE_REPEATS, widths[1:4]), start=2):
        half = cout // 2
        for i in range(repeats):
            p = f"stage{stage}.{i}"
            if i == 0:  # stride 2: both branches see the whole input
                y1 = b.conv(x, cin, cin, 3, 2, groups=cin, w=f"{p}.branch1.0.weight")
                y1 = b.bn(y1, cin, _torch_bn(f"{p}.branch1.1"), f"{p}.branch1.1")
                y1 = b.conv(y1, cin, half, 1, 1, w=f"{p}.branch1.2.weight")
                y1 = b.relu(b.bn(y1, half, _torch_bn(f"{p}.branch1.3"), f"{p}.branch1.3"))
                x2, c2, stride = x, cin, 2
            else:  # stride 1: the first half passes through untouched
                y1, x2 = b.add("split", (x,), f"{p}.split", n_out=2, sizes=(half, half))
                c2, stride = half, 1
            y2 = b.conv(x2, c2, half, 1, 1, w=f"{p}.branch2.0.weight")
            y2 = b.relu(b.bn(y2, half, _torch_bn(f"{p}.branch2.1"), f"{p}.branch2.1"))
            y2 = b.conv(y2, half, half, 3, stride, groups=half, w=f"{p}.branch2.3.weight")
            y2 = b.bn(y2, half, _torch_bn(f"{p}.branch2.4"), f"{p}.branch2.4")
            y2 = b.conv(y2, half, half, 1, 1, w=f"{p}.branch2.5.weight")
            y2 = b.relu(b.bn(y2, half, _torch_bn(f"{p}.branch2.6"), f"{p}.branch2.6"))
            x = b.add("concat", (y1, y2), f"{p}.concat")
            x = b.add("shuffle", (x,), f"{p}.shuffle", groups=2)
            cin = cout
    c5 = widths[4]
    x = b.conv(x, cin, c5, 1, 1, w="conv5.0.weight")
    x = b.relu(b.bn(x, c5, _torch_bn("conv5.1"), "conv5.1"))
    pooled = b.add("global_avgpool", (x,), "pool")
    feats = b.add("flatten", (pooled,), "features")
    b.add("linear", (feats,), "output", params={"weight": "fc.weight", "bias": "fc.bias"},
          in_features=c5, out_features=num_classes)
    return Graph(tuple(b.nodes), "input", "output", feats, num_classes)


# --------------------------------------------------------------------------- ShuffleNet V1

#: paper Table 1: output channels of stages 2, 3, 4 at width 1x, per group count
V1_STAGE2_WIDTH: Mapping[int, int] = MappingProxyType({1: 144, 2: 200, 3: 240, 4: 272, 8: 384})
V1_WIDTHS: Mapping[str, float] = MappingProxyType({"x0_5": 0.5, "x1_0": 1.0, "x1_5": 1.5, "x2_0": 2.0})


#: stem width per multiplier; the paper leaves it open, these reproduce its complexity table
#: (1.5x g3 292 MFLOPs, 2x g3 524) and Megvii's reference code (12 at 0.5x, 48 at 2x)
V1_STEM: Mapping[float, int] = MappingProxyType({0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48})


def v1_widths(groups: int, scale: float) -> tuple[int, int, int, int]:
    """(stem, stage2, stage3, stage4) widths for a group count and width multiplier.

    Stages are rounded to a multiple of 4 * groups so the bottleneck (width / 4) divides by
    groups; the stem is rounded up to a multiple of groups so stride-2 branches do too.
    """
    if not _one_of(groups, V1_STAGE2_WIDTH):
        raise SpecError(f"groups must be one of {sorted(V1_STAGE2_WIDTH)}, got {groups}")
    if not _one_of(scale, V1_STEM):
        raise SpecError(f"width multiplier must be one of {sorted(V1_STEM)}, got {scale}")
    unit = 4 * groups
    w = max(unit, int(V1_STAGE2_WIDTH[groups] * scale / unit + 0.5) * unit)
    stem = -(-V1_STEM[scale] // groups) * groups
    return (stem, w, 2 * w, 4 * w)


def _one_of(value: Any, table: Mapping) -> bool:
    try:
        return value in table
    except TypeError:  # unhashable
        return False


def shufflenet_v1_graph(
    groups: int,
    widths: tuple[int, int, int, int],
    *,
    num_classes: int = 1000,
    caffe2: bool = False,
) -> Graph:
    """ShuffleNet V1 units: 1x1 group conv, BN, ReLU, shuffle, 3x3 depthwise, BN, 1x1 group conv, BN.

    Stride-2 units concat [branch, AvgPool 3x3/2 of the input], others add; ReLU after both.
    ``caffe2=True`` gives the Model Zoo's network: Caffe2 blob names, the first 1x1 conv grouped
    too, bottleneck = the branch's output width, a biased stem conv and a Softmax head.
    Otherwise the paper's: first 1x1 of stage 2 ungrouped, bottleneck = unit output / 4.
    """
    stem_c, *stage_widths = widths
    net = _V1Net(groups, caffe2)
    x = net.stem(stem_c)
    cin = stem_c
    for stage, (repeats, cout) in enumerate(zip(STAGE_REPEATS, stage_widths), start=2):
        for i in range(repeats):
            x = net.unit(x, cin, cout, stage, i)
            cin = cout
    return net.head(x, cin, num_classes)


class _V1Net:
    """The steps of :func:`shufflenet_v1_graph`, called in graph order (tensor names and Caffe2's
    numbered blob names follow that order)."""

    def __init__(self, groups: int, caffe2: bool) -> None:
        self.groups, self.caffe2 = groups, caffe2
        self.input = "gpu_0/data_0" if caffe2 else "input"
        self.output = "gpu_0/softmax_1" if caffe2 else "output"
        self.b = _Builder(self.input)
        self.counters = {"conv3": 0, "gconv1": 0, "gconv3": 0}

    def _caffe2_keys(self, kind: str) -> tuple[str, str | None, dict[str, str], str]:
        """(conv weight, conv bias, bn keys, hint) for the next conv of this kind."""
        idx = self.counters[kind]
        self.counters[kind] += 1
        stem = f"gpu_0/{kind}_{idx}"
        bn = {"weight": f"{stem}_bn_s", "bias": f"{stem}_bn_b",
              "running_mean": f"{stem}_bn_rm", "running_var": f"{stem}_bn_riv"}
        return f"{stem}_w", None, bn, stem

    def stem(self, c: int) -> str:
        """3x3/2 conv, BN, ReLU, 3x3/2 max pooling."""
        b = self.b
        if self.caffe2:
            w, _, bn, hint = self._caffe2_keys("conv3")
            x = b.conv(self.input, 3, c, 3, 2, w=w, b="gpu_0/conv3_0_b", hint=hint)
            x = b.relu(b.bn(x, c, bn, f"{hint}_bn"))
        else:
            x = b.conv(self.input, 3, c, 3, 2, w="conv1.0.weight")
            x = b.relu(b.bn(x, c, _torch_bn("conv1.1"), "conv1.1"))
        return b.add("maxpool", (x,), "gpu_0/pool_0" if self.caffe2 else "maxpool", kernel=3, stride=2, pad=1)

    def _conv_bn(self, x: str, ci: int, co: int, k: int, s: int, g: int, unit: str, n: int) -> str:
        """The unit's n-th conv and its BN (Caffe2: the next gconv1/gconv3 blob)."""
        b = self.b
        if self.caffe2:
            w, bias, bn, hint = self._caffe2_keys("gconv3" if k == 3 else "gconv1")
            y = b.conv(x, ci, co, k, s, groups=g, w=w, b=bias, hint=hint)
            return b.bn(y, co, bn, f"{hint}_bn")
        y = b.conv(x, ci, co, k, s, groups=g, w=f"{unit}.conv{n}.weight")
        return b.bn(y, co, _torch_bn(f"{unit}.bn{n}"), f"{unit}.bn{n}")

    def unit(self, x: str, cin: int, cout: int, stage: int, i: int) -> str:
        """The i-th unit of a stage: stride 2 (concat with the pooled input) first, then stride 1 (add)."""
        b, groups = self.b, self.groups
        stride = 2 if i == 0 else 1
        branch_out = cout - cin if stride == 2 else cout
        mid = branch_out if self.caffe2 else cout // 4
        g1 = groups if (self.caffe2 or stage > 2 or i > 0) else 1
        p = f"stage{stage}.{i}"
        y = b.relu(self._conv_bn(x, cin, mid, 1, 1, g1, p, 1))
        if groups > 1:
            y = b.add("shuffle", (y,), f"{p}.shuffle", groups=groups)
        y = self._conv_bn(y, mid, mid, 3, stride, mid, p, 2)
        y = self._conv_bn(y, mid, branch_out, 1, 1, groups, p, 3)
        unit = f"gpu_0/block{self.counters['gconv3'] - 1}" if self.caffe2 else p
        if stride == 2:
            pooled = b.add("avgpool", (x,), f"{unit}_pool", kernel=3, stride=2, pad=1)
            x = b.add("concat", (y, pooled), unit)
        else:
            x = b.add("add", (y, x), unit)
        return b.relu(x)

    def head(self, x: str, cin: int, num_classes: int) -> Graph:
        """Global pooling, flatten, the classifier (and Caffe2's Softmax); the finished graph."""
        b, caffe2, out = self.b, self.caffe2, self.output
        pooled = b.add("global_avgpool", (x,), "gpu_0/final_avg_1" if caffe2 else "pool")
        feats = b.add("flatten", (pooled,), "gpu_0/final_avg_flat" if caffe2 else "features")
        fc = ("gpu_0/pred_w", "gpu_0/pred_b") if caffe2 else ("fc.weight", "fc.bias")
        logits = b.add("linear", (feats,), "gpu_0/pred" if caffe2 else out,
                       params={"weight": fc[0], "bias": fc[1]}, in_features=cin, out_features=num_classes)
        if caffe2:
            b.add("softmax", (logits,), out)
        return Graph(tuple(b.nodes), self.input, out, pooled if caffe2 else feats, num_classes)


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network's input. One definition, used everywhere."""

    resize: int = 256
    crop: int = 224
    #: "shorter": shorter side to `resize`, aspect kept (torchvision's eval recipe);
    #: "square": whole image to resize x resize (the zoo's quantization recipe and notebook)
    resize_mode: str = "shorter"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    #: pixel values are divided by this before normalising (255 -> [0, 1])
    scale: float = 255.0

    def __post_init__(self) -> None:  # recipes also come from model files: check every field
        if not (self._sizes_ok() and self._numbers_ok() and self.resize_mode in RESIZE_MODES
                and self.interpolation in ("bilinear", "bicubic") and self.channel_order in ("RGB", "BGR")):
            raise SpecError(f"invalid preprocessing recipe: {self}")

    def _sizes_ok(self) -> bool:
        return (isinstance(self.resize, int) and isinstance(self.crop, int)
                and 1 <= self.crop <= self.resize * 4 and 1 <= self.resize <= 8192)

    def _numbers_ok(self) -> bool:
        """Three finite means, three positive stds and a positive scale (a wrong type is refused
        here as a SpecError, not a TypeError later)."""
        try:
            values = (*self.mean, *self.std, self.scale)
        except TypeError:  # mean or std not a sequence
            return False
        if not all(isinstance(v, Real) and math.isfinite(v) for v in values):
            return False
        return len(self.mean) == 3 and len(self.std) == 3 and all(s > 0 for s in self.std) and self.scale > 0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Published:
    """An accuracy someone published for pretrained weights of this architecture."""

    top1: float  # accuracy, percent
    top5: float | None
    source: str
    note: str = ""


@dataclass(frozen=True)
class Artifact:
    """A pretrained file that exists publicly. The sha256 (or the publisher's prefix) identifies it."""

    name: str
    variant: str
    kind: str  # "torchvision-pth" | "zoo-onnx" | "zoo-bundle"
    urls: tuple[str, ...]
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    opset: int | None = None
    quantization: str | None = None
    #: the variant's default pretrained weights (one per variant; ask :func:`default_artifact`)
    default: bool = False
    #: how the publisher evaluates these weights, when it differs from the architecture's recipe
    #: (torchvision resizes to 232 for its x1.5 / x2.0 weights); ``VariantSpec.preprocess`` uses it
    preprocess: Preprocess | None = None


@cache
def artifacts() -> tuple[Artifact, ...]:
    """Every public pretrained artifact, from the package's data file."""
    raw = json.loads(resources.files("shufflenet").joinpath("data/artifacts.json").read_text("utf-8"))
    try:
        return tuple(Artifact(**{**a, "urls": tuple(a["urls"]),
                                 "preprocess": Preprocess(**a["preprocess"]) if a.get("preprocess") else None})
                     for a in raw["artifacts"])
    except (KeyError, TypeError) as e:  # a missing or unknown field in the data file
        raise SpecError(f"data/artifacts.json: malformed artifact entry ({type(e).__name__}: {e})") from None


def default_artifact(variant: str, kind: str | None = None) -> Artifact | None:
    """The variant's default pretrained artifact (flagged ``default`` in ``data/artifacts.json``).

    None when the variant has no published weights, or when ``kind`` is given and the default is
    of another kind. This is the one place that chooses; callers never pick by opset or order.
    """
    get_spec(variant)  # an unknown name is an error, not "no weights"
    found = [a for a in artifacts() if a.variant == variant and a.default]
    if len(found) > 1:
        raise SpecError(f"{variant}: {len(found)} artifacts are flagged default ({', '.join(a.name for a in found)})")
    return found[0] if found and (kind is None or found[0].kind == kind) else None


@dataclass(frozen=True)
class VariantSpec:
    name: str
    family: str  # "shufflenet_v2" | "shufflenet_v1" | "shufflenet_v1_caffe2"
    summary: str
    builder: Callable[[int], Graph] = field(repr=False, compare=False)
    #: the architecture's input recipe; the default weights may refine it (see ``preprocess``)
    base_preprocess: Preprocess = Preprocess()
    output_kind: str = "logits"  # or "probabilities" (a Softmax ends the graph)
    #: the naming convention of the weights keys: "torchvision" | "caffe2" | "shufflenet"
    weights_naming: str = "torchvision"
    published: tuple[Published, ...] = ()

    def graph(self, num_classes: int = 1000) -> Graph:
        # checked before the cache, which would refuse an unhashable value with a TypeError
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise SpecError(f"num_classes must be a positive integer, got {num_classes!r}")
        return _graph(self, num_classes)

    @property
    def preprocess(self) -> Preprocess:
        """How an image becomes the input: the default weights' recipe, else the architecture's."""
        art = default_artifact(self.name) if self.name in _REGISTRY else None
        return art.preprocess if art is not None and art.preprocess is not None else self.base_preprocess

    @property
    def num_params(self) -> int:
        return self.graph().num_params

    @property
    def macs(self) -> int:
        return self.graph().macs()

    @property
    def input_name(self) -> str:
        return self.graph().input

    @property
    def output_name(self) -> str:
        return self.graph().output

    @property
    def pretrained(self) -> tuple[Artifact, ...]:
        return tuple(a for a in artifacts() if a.variant == self.name)


@cache
def _graph(spec: VariantSpec, num_classes: int) -> Graph:
    return spec.builder(num_classes)


_REGISTRY: dict[str, VariantSpec] = {}


def register(spec: VariantSpec) -> VariantSpec:
    """Add a variant; a second variant with the same name is refused."""
    if spec.name in _REGISTRY:
        raise SpecError(f"variant {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> VariantSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `shufflenet list`"
        raise UnknownVariantError(f"unknown variant {name!r}{hint}") from None


def list_variants() -> list[str]:
    return list(_REGISTRY)


_TV = "torchvision (ImageNet-1k val, IMAGENET1K_V1 weights)"
_MEGVII = "Megvii ShuffleNet-Series (BGR 0-255 input, no mean/std)"
_V2_PUBLISHED = {
    "x0_5": (Published(60.552, 81.746, _TV), Published(61.1, None, _MEGVII)),
    "x1_0": (Published(69.362, 88.316, _TV), Published(69.4, None, _MEGVII),
             Published(69.36, 88.32, "ONNX Model Zoo shufflenet-v2-10 (top-1/top-5 error 30.64/11.68)"),
             Published(66.35, 86.57, "ONNX Model Zoo shufflenet-v2-12 (error 33.65/13.43)",
                       "likely the whole-image 256x256 resize of the zoo's notebook"),
             Published(66.15, 86.34, "ONNX Model Zoo shufflenet-v2-12-int8 (error 33.85/13.66)", "int8")),
    "x1_5": (Published(72.996, 91.086, _TV), Published(72.6, None, _MEGVII)),
    "x2_0": (Published(76.230, 93.006, _TV), Published(75.0, None, _MEGVII)),
}

for _w, _widths in V2_WIDTHS.items():
    register(VariantSpec(
        name=f"shufflenet_v2_{_w}",
        family="shufflenet_v2",
        summary=f"ShuffleNet V2 {_w[1:].replace('_', '.')}x (torchvision definition)",
        builder=lambda n, _widths=_widths: shufflenet_v2_graph(_widths, n),
        published=_V2_PUBLISHED[_w],
    ))

for _g in V1_STAGE2_WIDTH:
    for _w, _scale in V1_WIDTHS.items():
        register(VariantSpec(
            name=f"shufflenet_v1_g{_g}_{_w}",
            family="shufflenet_v1",
            summary=f"ShuffleNet V1 {_scale:g}x, {_g} groups (paper)",
            builder=lambda n, _g=_g, _scale=_scale: shufflenet_v1_graph(
                _g, v1_widths(_g, _scale), num_classes=n),
            weights_naming="shufflenet",
            published=(Published(68.0, None, _MEGVII, "Megvii's own V1 code, stem scaled with width"),)
            if (_g, _w) == (8, "x1_0") else (),
        ))

register(VariantSpec(
    name="shufflenet_v1_caffe2",
    family="shufflenet_v1_caffe2",
    summary="ShuffleNet V1 as in Caffe2's model repository (ONNX Model Zoo shufflenet-3..9)",
    builder=lambda n: shufflenet_v1_graph(4, (24, 136, 272, 544), num_classes=n, caffe2=True),
    output_kind="probabilities",
    weights_naming="caffe2",
))


def catalog(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One plain-data row per variant: what ``shufflenet list`` shows (and ``--json`` prints)."""
    rows = []
    for name in names or list_variants():
        spec = get_spec(name)
        graph = spec.graph()
        rows.append({
            "name": spec.name,
            "family": spec.family,
            "summary": spec.summary,
            "params": graph.num_params,
            "macs": graph.macs(),
            "output": spec.output_kind,
            "input": graph.input,
            "output_name": graph.output,
            "preprocess": spec.preprocess.to_dict(),
            "published": [p.__dict__ for p in spec.published],
            "pretrained": [{k: (v.to_dict() if isinstance(v, Preprocess) else v) for k, v in a.__dict__.items()
                            if k != "variant"} for a in spec.pretrained],
        })
    return rows
