"""ONNX Runtime sessions for any model this package reads or writes (opset 3 and up).

Models below opset 7 (ONNX Runtime's oldest) run as an exact upgraded copy
(:func:`shufflenet.onnx_legacy.upgrade_to_opset7`); ``engine`` says which ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from .errors import ShuffleNetError
from .onnx_legacy import LegacyUpgradeError, model_opset, upgrade_to_opset7

__all__ = ["RuntimeError_", "Runner", "open_runner"]


class RuntimeError_(ShuffleNetError, RuntimeError):
    """A model that ONNX Runtime refuses to load or run."""


class Runner:
    """Runs a model: ONNX Runtime, on an upgraded copy below opset 7, else onnx's reference evaluator."""

    def __init__(self, model: onnx.ModelProto, *, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        self.opset = model_opset(model)
        self.input_names = [i.name for i in model.graph.input
                            if i.name not in {t.name for t in model.graph.initializer}]
        self.output_names = [o.name for o in model.graph.output]
        self._ref = None
        try:
            runnable = upgrade_to_opset7(model)
            self.engine = "onnxruntime" if runnable is model else "onnxruntime (exact upgraded copy at opset 7)"
            self._session = _session(runnable, threads, providers)
        except LegacyUpgradeError:
            from onnx.reference import ReferenceEvaluator

            self.engine = "onnx.reference (no upgrade rule for this legacy model)"
            self._ref = ReferenceEvaluator(model)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            if self._ref is not None:
                return list(self._ref.run(None, dict(feeds)))
            return self._session.run(None, dict(feeds))
        except Exception as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise RuntimeError_(f"running the model failed: {msg}") from None


def _session(model: onnx.ModelProto, threads: int | None, providers: Sequence[str] | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RuntimeError_(f"ONNX Runtime cannot load the model: {msg}") from None


def open_runner(model: onnx.ModelProto | str | os.PathLike, **kwargs) -> Runner:
    if not isinstance(model, onnx.ModelProto):
        from .bundle import load_model_checked

        model = load_model_checked(Path(model))
    return Runner(model, **kwargs)
