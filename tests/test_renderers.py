"""Every op of the vocabulary (``specs.OPS``) is handled by every renderer of a graph.

The description is rendered four times: the PyTorch module (``torch_models``), the ONNX emitter
(``onnx_export``), the numpy reference (``reference.apply_op``, which the calibration of ``random_weights`` reuses) and the graph
rewrites of ``optimize``. Adding an op to ``specs.OPS`` without teaching each of them fails here,
before any network uses the op. The branch sets are read from the source (the renderers dispatch
by ``op == "name"``, ``op in (...)`` or a ``_name`` method), so the test needs no torch.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import textwrap
from pathlib import Path

from shufflenet import _calibrate, onnx_export, optimize, reference, specs

OPS = set(specs.OPS)


def _compared_ops(func) -> set[str]:
    """The op names a function (or a parsed function) branches on: ``op == "x"``, ``n.op in ("x", "y")``."""
    tree = func if isinstance(func, ast.AST) else ast.parse(textwrap.dedent(inspect.getsource(func)))
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        if not ((isinstance(left, ast.Name) and left.id == "op") or (isinstance(left, ast.Attribute) and left.attr == "op")):
            continue
        for comp in node.comparators:
            for c in ast.walk(comp):
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    found.add(c.value)
    return found


def test_the_source_reader_sees_branches():
    def sample(n, op):
        if op == "conv":
            return 1
        if n.op in ("relu", "add"):
            return 2
        return op == "x" or n.kind == "not-an-op"

    assert _compared_ops(sample) == {"conv", "relu", "add", "x"}


def test_torch_module_renders_every_op():
    # read the file rather than import it: torch is an extra, this test runs on the base install
    origin = importlib.util.find_spec("shufflenet.torch_models").origin
    tree = ast.parse(Path(origin).read_text("utf-8"))
    op_method = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "_op")
    seen = _compared_ops(op_method)
    assert OPS <= seen, f"torch_models.ShuffleNet._op does not render {sorted(OPS - seen)}"


def test_onnx_emitter_renders_every_op():
    # the emitter dispatches with getattr(self, f"_{n.op}")
    missing = sorted(op for op in OPS if not callable(getattr(onnx_export._Emitter, f"_{op}", None)))
    assert not missing, f"onnx_export._Emitter has no _<op> method for {missing}"
    # and every ONNX operator with opset-dependent forms has rules from opset 1 (the table covers all)
    for rule_op in {r.op for r in onnx_export.RULES}:
        assert onnx_export.form(rule_op, onnx_export.MIN_OPSET)


def test_numpy_reference_renders_every_op():
    # one numpy rendering: the reference's apply_op; _calibrate overrides bn and linear and
    # stops at softmax, and hands every other op to it
    seen = _compared_ops(reference.apply_op)
    assert OPS <= seen, f"reference.apply_op has no numpy rendering for {sorted(OPS - seen)}"
    assert {"bn", "linear", "softmax"} <= _compared_ops(_calibrate.calibrate)


#: ops that a channel permutation does not pass through in ``absorb_shuffles``: its fallback
#: branch keeps them and gives up the rewrite if a permuted tensor reaches them (always correct).
#: A new op must be added here or get its own branch there.
PERMUTATION_BARRIERS = {"avgpool", "add", "softmax"}


def test_optimize_decides_every_op():
    # absorb_shuffles walks the nodes in _ShuffleAbsorber._step, one branch per op
    seen = _compared_ops(optimize._ShuffleAbsorber._step)
    assert OPS <= seen | PERMUTATION_BARRIERS, (
        f"optimize.absorb_shuffles neither handles nor lists as a barrier {sorted(OPS - seen - PERMUTATION_BARRIERS)}")
    assert not (PERMUTATION_BARRIERS & seen), "an op listed as a barrier now has a branch: drop it from the list"
    # pad_channels widens convolutions and must know every op that reads or carries channels
    padded = _compared_ops(optimize.pad_channels) | _compared_ops(optimize._ChannelPadder)
    assert {"conv", "bn", "linear"} <= padded


def test_every_op_is_used_by_a_registered_variant():
    """So the renderers' cross-checks on real networks (torch vs ONNX vs numpy) exercise each op."""
    used = {n.op for name in specs.list_variants() for n in specs.get_spec(name).graph().nodes}
    assert used == OPS
