"""Graph rewrites that keep the function and change the speed: shuffle absorption, channel padding.

**Absorbing shuffles** (``absorb_shuffles``): no Reshape/Transpose left in the graph.

A V2 unit computes ``T' = shuffle2(concat(A, f(B)))`` where ``A, B = split(T)``. Nothing forces a
tensor's channels to be stored in their logical order: if every tensor carries a permutation
(physical position -> logical channel), a 1x1 convolution absorbs its input's permutation into
its weight columns, a depthwise convolution and BatchNorm permute their per-channel parameters,
and the last 1x1 convolution of a branch may emit its channels in any order we like. The shuffle
then becomes a choice of physical order, realised by a Concat of contiguous pieces.

The order chosen for a unit's output sorts channels by how many following units keep them in the
pass-through half (most first), so each split stays one contiguous Split and each concat needs at
most two pieces per level. The graph computes exactly the same function (float rounding aside);
``export_onnx(..., absorb_shuffle=True)`` uses it. Graphs without the V2 pattern (V1: a shuffle
between grouped convolutions cannot be absorbed) are returned unchanged.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from .options import PAD_MULTIPLE
from .specs import Graph, Node

__all__ = ["absorb_shuffles", "pad_channels", "PAD_MULTIPLE"]


def _is_depthwise(n: Node) -> bool:
    a = n.attrs
    return n.op == "conv" and a["groups"] > 1 and a["groups"] == a["in_channels"] == a["out_channels"]


def _levels(c: int, m: int) -> np.ndarray:
    """r[p]: for how many of the next ``m`` units logical channel p stays in the pass-through half."""
    r = np.zeros(c, dtype=np.int64)
    for p in range(c):
        pos = p
        for _ in range(m):
            if pos < c // 2:
                r[p] += 1
                pos *= 2
            else:
                break
    return r


def absorb_shuffles(graph: Graph, weights: dict[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """(graph without shuffles, permuted weights), or the inputs unchanged for other graphs."""
    shuffles = _v2_shuffles(graph)
    if shuffles is None:
        return graph, weights
    try:
        return _ShuffleAbsorber(graph, weights, shuffles).rewrite()
    except _NotAbsorbable:
        return graph, weights


def _v2_shuffles(graph: Graph) -> list[Node] | None:
    """The graph's shuffles when every one is V2's (two groups over a concat of two branches)."""
    producers = graph.producers()
    shuffles = [n for n in graph.nodes if n.op == "shuffle"]
    if not shuffles or any(s.attrs["groups"] != 2 or producers[s.inputs[0]].op != "concat"
                           or len(producers[s.inputs[0]].inputs) != 2 for s in shuffles):
        return None
    return shuffles


class _NotAbsorbable(Exception):
    """The permutations cannot be carried through this graph (a node that cannot take one, or
    an order a shuffle cannot realise): the graph is left as it is."""


class _ShuffleAbsorber:
    """One pass over the nodes in graph order, carrying each tensor's permutation (physical
    position -> logical channel) and permuting the parameters of the nodes it reaches."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], shuffles: list[Node]) -> None:
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.shapes = graph.shapes()
        self.levels = {s.output: _levels(self.shapes[s.output][0], self._chain_len(s.output)) for s in shuffles}
        self.desired = self._desired_orders(shuffles)  # conv output -> physical order of its channels
        self.skip = {s.inputs[0] for s in shuffles}  # concat outputs replaced along with their shuffle
        self.w = dict(weights)
        self.perm: dict[str, np.ndarray] = {}  # tensor -> physical position -> logical channel
        self.nodes: list[Node] = []

    # ----------------------------------------------------------------- the orders to aim for

    def _chain_len(self, t: str) -> int:
        """How many stride-1 units follow tensor t."""
        m = 0
        while True:
            split = next((n for n in self.consumers.get(t, []) if n.op == "split"), None)
            if split is None:
                return m
            concat = next(n for n in self.consumers[split.outputs[0]] if n.op == "concat")
            t = next(n for n in self.consumers[concat.output] if n.op == "shuffle").output
            m += 1

    def _head_conv(self, t: str) -> Node | None:
        """The dense 1x1 conv whose output reaches t through BN/ReLU (its output order is free)."""
        n = self.producers[t]
        while n.op in ("relu", "bn"):
            n = self.producers[n.inputs[0]]
        return n if n.op == "conv" and n.attrs["groups"] == 1 else None

    def _desired_orders(self, shuffles: list[Node]) -> dict[str, np.ndarray]:
        """Each branch's last dense conv emits its channels sorted by level (most first)."""
        desired: dict[str, np.ndarray] = {}
        for s in shuffles:
            concat = self.producers[s.inputs[0]]
            r = self.levels[s.output]
            for k, src in enumerate(concat.inputs):
                conv = self._head_conv(src)
                if conv is not None:
                    n = self.shapes[src][0]
                    desired[conv.output] = np.array(sorted(range(n), key=lambda q: (-r[2 * q + k], q)))
        return desired

    # ----------------------------------------------------------------- the pass

    def rewrite(self) -> tuple[Graph, dict[str, np.ndarray]]:
        for n in self.graph.nodes:
            self._step(n)
        g = self.graph
        out = Graph(tuple(self.nodes), g.input, g.output, g.features, g.num_classes)
        out.shapes()  # the new graph must be consistent
        return out, self.w

    def _step(self, n: Node) -> None:
        """Carry the permutation through one node (every op of ``specs.OPS`` is decided here)."""
        p_in = self.perm.get(n.inputs[0]) if n.inputs else None
        if n.op == "conv":
            self._conv(n, p_in)
        elif n.op == "bn":
            if p_in is not None:
                for role, key in n.params.items():
                    if role != "num_batches_tracked":
                        self._permute(key, p_in)
                self.perm[n.output] = p_in
        elif n.op in ("relu", "maxpool", "global_avgpool", "flatten"):
            if p_in is not None:
                self.perm[n.output] = p_in
        elif n.op == "split":
            self._split(n, p_in)
        elif n.op == "linear":
            if p_in is not None:
                self._permute(n.params["weight"], p_in, axis=1)
        elif n.op == "concat" and n.output in self.skip:
            return
        elif n.op == "shuffle":
            self._shuffle(n)
            return
        elif p_in is not None:
            raise _NotAbsorbable  # an op we do not know how to permute through
        self.nodes.append(n)

    def _permute(self, key: str, order: np.ndarray, axis: int = 0) -> None:
        self.w[key] = np.take(self.w[key], order, axis=axis)

    def _conv(self, n: Node, p_in: np.ndarray | None) -> None:
        wk = n.params["weight"]
        if n.attrs["groups"] == 1:  # dense: absorbs the input order, emits the desired one
            if p_in is not None:
                self._permute(wk, p_in, axis=1)
            out = self.desired.get(n.output)
            if out is not None:
                self._permute(wk, out)
                if "bias" in n.params:
                    self._permute(n.params["bias"], out)
                self.perm[n.output] = out
        elif _is_depthwise(n):  # per channel: the order passes through
            if p_in is not None:
                self._permute(wk, p_in)
                if "bias" in n.params:
                    self._permute(n.params["bias"], p_in)
                self.perm[n.output] = p_in
        elif p_in is not None:
            raise _NotAbsorbable  # a grouped conv cannot absorb a permutation

    def _split(self, n: Node, p_in: np.ndarray | None) -> None:
        if p_in is None:
            return
        half = n.attrs["sizes"][0]
        if set(p_in[:half].tolist()) != set(range(half)):
            raise _NotAbsorbable  # the order does not keep the halves apart
        self.perm[n.outputs[0]], self.perm[n.outputs[1]] = p_in[:half], p_in[half:] - half

    def _shuffle(self, n: Node) -> None:
        concat = self.producers[n.inputs[0]]
        built = _realise(n.output, concat.inputs, self.perm, self.levels[n.output], self.shapes)
        if built is None:
            raise _NotAbsorbable
        new_nodes, order = built
        self.nodes.extend(new_nodes)
        self.perm[n.output] = order


def _realise(out: str, sources: tuple[str, ...], perm, r: np.ndarray, shapes):
    """Nodes writing ``out`` as pieces of the sources, ordered by level; and out's permutation."""
    order, pieces = [], []  # pieces: (source, start, length)
    for level in sorted(set(r.tolist()), reverse=True):
        for k, src in enumerate(sources):
            n = shapes[src][0]
            phys = perm.get(src, np.arange(n))
            start = None
            for j in range(n):
                p = 2 * int(phys[j]) + k
                if r[p] != level:
                    continue
                order.append(p)
                if start is None:
                    start, length = j, 0
                elif j != start + length:
                    return None  # not contiguous: the source's order disagrees with the levels
                length += 1
            if start is not None:
                pieces.append((src, start, length))
    nodes: list[Node] = []
    names: dict[tuple[str, int], str] = {}
    for k, src in enumerate(sources):
        mine = sorted((s, ln) for source, s, ln in pieces if source == src)
        if [s for s, _ in mine] != list(np.cumsum([0] + [ln for _, ln in mine[:-1]])):
            return None
        if len(mine) == 1:
            names[(src, mine[0][0])] = src
            continue
        outs = tuple(f"{out}/{k}.{i}" for i in range(len(mine)))
        nodes.append(Node("split", (src,), outs, MappingProxyType({"sizes": tuple(ln for _, ln in mine)}), {}))
        names.update({(src, s): o for (s, _), o in zip(mine, outs)})
    nodes.append(Node("concat", tuple(names[(src, s)] for src, s, _ in pieces), (out,), MappingProxyType({}), {}))
    return nodes, np.array(order)


# --------------------------------------------------------------------------- channel padding

_PER_CHANNEL = ("bn", "relu", "maxpool")  # ops that keep channels apart (so do depthwise convs)


def pad_channels(graph: Graph, weights: dict[str, np.ndarray],
                 multiple: int = PAD_MULTIPLE) -> tuple[Graph, dict[str, np.ndarray]]:
    """(graph, weights) with dead zero channels added where a channel count is not a multiple.

    A *region* starts at a dense convolution's output and follows the ops that keep channels
    apart (BatchNorm, ReLU, max pooling, depthwise convolutions) up to the dense convolutions or
    the classifier that read it. Inside a region the channel count is free: the producer gets
    zero filters, BatchNorm maps the new channels to 0 (scale 0, shift 0), depthwise filters are
    zero, and the readers get zero weight columns. ReLU(0) = 0 and max pooling over zeros is 0,
    so every added channel is exactly zero and the outputs are unchanged. A region that reaches
    a split, concat, shuffle, add, grouped convolution or the graph output is left alone: there
    the channel order means something (ShuffleNetV2's branch interiors and stem qualify; V1's
    grouped convolutions and shortcut concats do not).
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    padder = _ChannelPadder(graph, weights)
    for n in graph.nodes:
        if n.op != "conv" or n.attrs["groups"] != 1 or n.attrs["out_channels"] % multiple == 0:
            continue
        found = padder.region(n.output)
        if found is not None:
            padder.pad(n, *found, extra=-n.attrs["out_channels"] % multiple)
    if not padder.changed:
        return graph, weights
    return padder.result()


class _ChannelPadder:
    """The regions of a graph and the padded nodes and weights (see :func:`pad_channels`)."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray]) -> None:
        self.graph = graph
        self.consumers = graph.consumers()
        self.ends = {graph.output, graph.features}
        self.w = dict(weights)
        self.changed: dict[int, Node] = {}  # id(original node) -> replacement

    def region(self, start: str) -> tuple[list[Node], list[Node]] | None:
        """(per-channel nodes, dense readers) reached from ``start``, or None when the region
        reaches a node where the channel count or order matters."""
        inner, readers, todo = [], [], [start]
        while todo:
            t = todo.pop()
            if t in self.ends:
                return None
            for c in self.consumers.get(t, []):
                if c.op in _PER_CHANNEL or _is_depthwise(c):
                    inner.append(c)
                    todo.append(c.outputs[0])
                elif (c.op == "conv" and c.attrs["groups"] == 1) or c.op == "linear":
                    readers.append(c)
                else:
                    return None
        return inner, readers

    def pad(self, producer: Node, inner: list[Node], readers: list[Node], *, extra: int) -> None:
        """Add ``extra`` zero channels to the producer's output, through ``inner`` to ``readers``."""
        c = producer.attrs["out_channels"]
        wide = c + extra
        for key in producer.params.values():
            self._grow(key, extra, 0)
        self.changed[id(producer)] = _with(self.changed.get(id(producer), producer), out_channels=wide)
        for m in inner:
            if m.op == "bn":
                for role, key in m.params.items():
                    if role != "num_batches_tracked":
                        self._grow(key, extra, 0, 1.0 if role == "running_var" else 0.0)
                self.changed[id(m)] = _with(m, channels=wide)
            elif m.op == "conv":  # depthwise
                for key in m.params.values():
                    self._grow(key, extra, 0)
                self.changed[id(m)] = _with(m, in_channels=wide, out_channels=wide, groups=wide)
        for r in readers:
            self._grow(r.params["weight"], extra, 1)
            base = self.changed.get(id(r), r)
            self.changed[id(r)] = _with(base, **({"in_channels": wide} if r.op == "conv" else
                                                 {"in_features": wide}))

    def _grow(self, key: str, extra: int, axis: int, fill: float = 0.0) -> None:
        a = self.w[key]
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, extra)
        self.w[key] = np.pad(a, pad, constant_values=fill)

    def result(self) -> tuple[Graph, dict[str, np.ndarray]]:
        g = self.graph
        nodes = tuple(self.changed.get(id(n), n) for n in g.nodes)
        out = Graph(nodes, g.input, g.output, g.features, g.num_classes)
        out.shapes()  # the padded graph must be consistent
        return out, self.w


def _with(n: Node, **attrs) -> Node:
    return Node(n.op, n.inputs, n.outputs, MappingProxyType({**n.attrs, **attrs}), n.params)
