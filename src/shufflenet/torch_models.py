"""The PyTorch rendering of a registry description (optional extra: ``shufflenet[torch]``).

:class:`ShuffleNet` walks the same node list as the ONNX emitter. Its parameters are registered
under the variant's weights keys, so ``state_dict()`` keys equal torchvision's for V2 (a torchvision
checkpoint loads with ``strict=True``) and Caffe2's blob names for the zoo's V1. This module is
never imported by ``import shufflenet``; it is loaded by the functions that need torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ._io import import_torch
from .errors import SpecError, WeightsError
from .options import DEFAULT_OPSET
from .specs import BN_MOMENTUM, Graph, get_spec
from .weights import WeightSource, conform, resolve_weights

torch = import_torch("shufflenet.torch_models (the PyTorch rendering)")
import torch.nn.functional as F  # noqa: E402  (after the check that says how to install torch)
from torch import nn  # noqa: E402

__all__ = ["ShuffleNet", "build_model", "to_numpy"]


class _Holder(nn.Module):
    """A container at one level of a dotted weights key (``stage2.0.branch2.1``)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Like torch's BatchNorm: checkpoints saved before torch 0.4.1 have no counter.
        key = prefix + "num_batches_tracked"
        has_counter = any(name == "num_batches_tracked" for name, _ in self.named_buffers(recurse=False))
        if has_counter and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ShuffleNet(_Holder):
    """Any registry graph as an ``nn.Module``; ``forward`` returns the graph's output."""

    def __init__(self, graph: Graph, *, variant: str | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.variant = variant
        self.weights_source: WeightSource | None = None
        self._plan = []
        slots: dict[str, tuple[nn.Module, str]] = {}
        for key, p in graph.param_table().items():
            dtype = torch.long if p.dtype == "int64" else torch.float32
            slots[key] = self._register(key, torch.zeros(p.shape, dtype=dtype), p.trainable)
        for node in graph.nodes:
            self._plan.append((node, {role: slots[key] for role, key in node.params.items()}))

    def _register(self, key: str, tensor, trainable: bool) -> tuple[nn.Module, str]:
        *path, leaf = key.split(".")
        module: nn.Module = self
        for part in path:
            child = dict(module.named_children()).get(part)
            if child is None:
                child = _Holder()
                module.add_module(part, child)
            module = child
        if trainable:
            module.register_parameter(leaf, nn.Parameter(tensor))
        else:
            module.register_buffer(leaf, tensor)
        return module, leaf

    def forward(self, x):
        return self.run(x, (self.graph.output,))[0]

    def features(self, x):
        """The pooled features the classifier reads (``[N, C]`` or ``[N, C, 1, 1]``)."""
        return self.run(x, (self.graph.features,))[0]

    def run(self, x, outputs: Iterable[str]):
        """Evaluate the graph and return the named tensors."""
        outputs = tuple(outputs)
        env = {self.graph.input: x}
        for node, refs in self._plan:
            p = {role: getattr(m, name) for role, (m, name) in refs.items()}
            ins = [env[i] for i in node.inputs]
            env.update(zip(node.outputs, self._op(node, ins, p)))
            if all(o in env for o in outputs):
                break
        return [env[o] for o in outputs]

    def _op(self, node, ins, p):
        a, x = node.attrs, ins[0]
        op = node.op
        if op == "conv":
            return (F.conv2d(x, p["weight"], p.get("bias"), a["stride"], a["pad"], 1, a["groups"]),)
        if op == "bn":
            if self.training and "num_batches_tracked" in p:
                p["num_batches_tracked"].add_(1)
            return (F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                 self.training, BN_MOMENTUM, a["eps"]),)
        if op == "relu":
            return (F.relu(x),)
        if op == "maxpool":
            return (F.max_pool2d(x, a["kernel"], a["stride"], a["pad"]),)
        if op == "avgpool":
            return (F.avg_pool2d(x, a["kernel"], a["stride"], a["pad"], count_include_pad=False),)
        if op == "global_avgpool":
            return (x.mean((2, 3), keepdim=True),)
        if op == "shuffle":
            n, c, h, w = x.shape
            g = a["groups"]
            return (x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w),)
        if op == "split":
            return torch.split(x, list(a["sizes"]), dim=1)
        if op == "concat":
            return (torch.cat(ins, 1),)
        if op == "add":
            return (ins[0] + ins[1],)
        if op == "flatten":
            return (torch.flatten(x, 1),)
        if op == "linear":
            return (F.linear(x, p["weight"], p["bias"]),)
        if op == "softmax":
            return (torch.softmax(x, 1),)
        raise SpecError(f"no torch rendering for op {op!r}")

    @torch.no_grad()
    def load_numpy(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy a numpy dict in (checked against the graph first)."""
        weights = conform(weights, self.graph)
        for key, value in self.state_dict(keep_vars=True).items():
            value.copy_(torch.from_numpy(np.array(weights[key])))


def to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """A module's state dict as the numpy dict every other layer speaks."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def build_model(name: str, *, weights=None, num_classes: int | None = None,
                seed: int | None = None) -> ShuffleNet:
    """An eval-mode module for a registry variant; see :func:`shufflenet.build_model`."""
    spec = get_spec(name)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise WeightsError(f"num_classes must be a positive integer, got {num_classes!r}")
    w, source, n = resolve_weights(weights, spec, num_classes=num_classes, seed=seed)
    model = ShuffleNet(spec.graph(n), variant=spec.name)
    model.load_numpy(w)
    model.weights_source = source
    return model.eval()


def export_via_torch(model: nn.Module, *, opset: int = DEFAULT_OPSET, batch: int | None = None,
                     input_name: str = "input", output_name: str = "output", size: int = 224):
    """``torch.onnx.export`` (TorchScript exporter) of any module, dynamic batch unless ``batch``.

    For arbitrary or fine-tuned modules; registry variants are better served by the direct
    emitter. The raw graph is full of shape arithmetic: clean it with ``onnx_clean.clean_graph``.
    """
    import io
    import warnings

    import onnx

    if opset < 11:
        raise WeightsError(f"--via torch needs opset >= 11 (torch's exporter fails on dynamic "
                           f"reshapes below it), got {opset}")
    model = model.eval()
    x = torch.zeros(batch or 1, 3, size, size)
    buf = io.BytesIO()
    dynamic = None if batch else {input_name: {0: "N"}, output_name: {0: "N"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, opset_version=opset, input_names=[input_name],
                          output_names=[output_name], dynamic_axes=dynamic, do_constant_folding=True,
                          dynamo=False)
    return onnx.load_from_string(buf.getvalue())
