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


def _consumers(graph: Graph) -> dict[str, list[Node]]:
    """tensor -> the nodes that read it, in graph order."""
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    return readers


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
    by_out = {o: n for n in graph.nodes for o in n.outputs}
    consumers = _consumers(graph)
    shuffles = [n for n in graph.nodes if n.op == "shuffle"]
    if not shuffles or any(s.attrs["groups"] != 2 or by_out[s.inputs[0]].op != "concat"
                           or len(by_out[s.inputs[0]].inputs) != 2 for s in shuffles):
        return graph, weights
    shapes = graph.shapes()

    def chain_len(t: str) -> int:  # stride-1 units that follow tensor t
        m = 0
        while True:
            split = next((n for n in consumers.get(t, []) if n.op == "split"), None)
            if split is None:
                return m
            concat = next(n for n in consumers[split.outputs[0]] if n.op == "concat")
            t = next(n for n in consumers[concat.output] if n.op == "shuffle").output
            m += 1

    levels = {s.output: _levels(shapes[s.output][0], chain_len(s.output)) for s in shuffles}

    def head_conv(t: str) -> Node | None:
        """The dense 1x1 conv whose output reaches t through BN/ReLU (its output order is free)."""
        n = by_out[t]
        while n.op in ("relu", "bn"):
            n = by_out[n.inputs[0]]
        return n if n.op == "conv" and n.attrs["groups"] == 1 else None

    desired: dict[str, np.ndarray] = {}  # conv output -> physical order of its local channels
    for s in shuffles:
        concat = by_out[s.inputs[0]]
        r = levels[s.output]
        for k, src in enumerate(concat.inputs):
            conv = head_conv(src)
            if conv is not None:
                n = shapes[src][0]
                desired[conv.output] = np.array(sorted(range(n), key=lambda q: (-r[2 * q + k], q)))

    w = dict(weights)
    perm: dict[str, np.ndarray] = {}  # tensor -> physical position -> logical channel
    nodes: list[Node] = []
    skip = {s.inputs[0] for s in shuffles}  # concat outputs replaced along with their shuffle

    def permute_param(key: str, order: np.ndarray, axis: int = 0) -> None:
        w[key] = np.take(w[key], order, axis=axis)

    for n in graph.nodes:
        p_in = perm.get(n.inputs[0]) if n.inputs else None
        if n.op == "conv":
            wk = n.params["weight"]
            if n.attrs["groups"] == 1:
                if p_in is not None:
                    permute_param(wk, p_in, axis=1)
                out = desired.get(n.output)
                if out is not None:
                    permute_param(wk, out)
                    if "bias" in n.params:
                        permute_param(n.params["bias"], out)
                    perm[n.output] = out
            elif _is_depthwise(n):
                if p_in is not None:
                    permute_param(wk, p_in)
                    if "bias" in n.params:
                        permute_param(n.params["bias"], p_in)
                    perm[n.output] = p_in
            elif p_in is not None:
                return graph, weights  # a grouped conv cannot absorb a permutation
            nodes.append(n)
        elif n.op == "bn":
            if p_in is not None:
                for role, key in n.params.items():
                    if role != "num_batches_tracked":
                        permute_param(key, p_in)
                perm[n.output] = p_in
            nodes.append(n)
        elif n.op in ("relu", "maxpool", "global_avgpool", "flatten"):
            if p_in is not None:
                perm[n.output] = p_in
            nodes.append(n)
        elif n.op == "split":
            half = n.attrs["sizes"][0]
            if p_in is not None:
                if set(p_in[:half].tolist()) != set(range(half)):
                    return graph, weights  # the order does not keep the halves apart
                perm[n.outputs[0]], perm[n.outputs[1]] = p_in[:half], p_in[half:] - half
            nodes.append(n)
        elif n.op == "linear":
            if p_in is not None:
                permute_param(n.params["weight"], p_in, axis=1)
            nodes.append(n)
        elif n.op == "concat" and n.output in skip:
            continue
        elif n.op == "shuffle":
            concat = by_out[n.inputs[0]]
            built = _realise(n.output, concat.inputs, perm, levels[n.output], shapes)
            if built is None:
                return graph, weights
            new_nodes, order = built
            nodes.extend(new_nodes)
            perm[n.output] = order
        else:
            if p_in is not None:
                return graph, weights  # an op we do not know how to permute through
            nodes.append(n)
    g = Graph(tuple(nodes), graph.input, graph.output, graph.features, graph.num_classes)
    g.shapes()  # the new graph must be consistent
    return g, w


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
    consumers = _consumers(graph)
    ends = {graph.output, graph.features}
    w = dict(weights)
    changed: dict[int, Node] = {}  # id(original node) -> replacement

    def region(start: str) -> tuple[list[Node], list[Node]] | None:
        inner, readers, todo = [], [], [start]
        while todo:
            t = todo.pop()
            if t in ends:
                return None
            for c in consumers.get(t, []):
                if c.op in _PER_CHANNEL or _is_depthwise(c):
                    inner.append(c)
                    todo.append(c.outputs[0])
                elif (c.op == "conv" and c.attrs["groups"] == 1) or c.op == "linear":
                    readers.append(c)
                else:
                    return None
        return inner, readers

    def grow(key: str, extra: int, axis: int, fill: float = 0.0) -> None:
        a = w[key]
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, extra)
        w[key] = np.pad(a, pad, constant_values=fill)

    for n in graph.nodes:
        if n.op != "conv" or n.attrs["groups"] != 1 or n.attrs["out_channels"] % multiple == 0:
            continue
        found = region(n.output)
        if found is None:
            continue
        inner, readers = found
        c = n.attrs["out_channels"]
        extra = -c % multiple
        for key in n.params.values():
            grow(key, extra, 0)
        changed[id(n)] = _with(changed.get(id(n), n), out_channels=c + extra)
        for m in inner:
            if m.op == "bn":
                for role, key in m.params.items():
                    if role != "num_batches_tracked":
                        grow(key, extra, 0, 1.0 if role == "running_var" else 0.0)
                changed[id(m)] = _with(m, channels=c + extra)
            elif m.op == "conv":  # depthwise
                for key in m.params.values():
                    grow(key, extra, 0)
                changed[id(m)] = _with(m, in_channels=c + extra, out_channels=c + extra, groups=c + extra)
        for r in readers:
            grow(r.params["weight"], extra, 1)
            base = changed.get(id(r), r)
            changed[id(r)] = _with(base, **({"in_channels": c + extra} if r.op == "conv" else
                                            {"in_features": c + extra}))
    if not changed:
        return graph, weights
    nodes = tuple(changed.get(id(n), n) for n in graph.nodes)
    g = Graph(nodes, graph.input, graph.output, graph.features, graph.num_classes)
    g.shapes()  # the padded graph must be consistent
    return g, w


def _with(n: Node, **attrs) -> Node:
    return Node(n.op, n.inputs, n.outputs, MappingProxyType({**n.attrs, **attrs}), n.params)
