"""Make seeded random weights numerically sane: BN statistics measured, classifier centred.

Random He-init weights with arbitrary BN running statistics blow up through residual adds (logits
in the thousands, every input the same class). This walks the graph once in numpy on a small
seeded batch, sets each BN's running mean/var to the statistics it actually sees, and centres and
scales the classifier on the pooled features, so random models give input-dependent logits of
order one. Only used by :func:`shufflenet.weights.random_weights`; needs no torch.
"""

from __future__ import annotations

import numpy as np

from .reference import apply_op
from .specs import Graph

CALIB_SIZE = 224  # the deployed crop: pooled-feature statistics depend on it
CALIB_BATCH = 6  # enough to centre the classifier; ~0.3 s for V2 x1.0


MAX_GAIN = 4.0
#: logits sit around this value instead of 0 (softmax and every prediction are shift-invariant,
#: so nothing else changes): a relative tolerance cannot hold at 0, where float32 rounding in
#: two engines (~3e-5 here) exceeds atol 1e-5. Trained networks' logits are not centred on 0
#: either. Measured on 30,000 random-weight V2 logits, PyTorch vs ONNX Runtime: 9 outside the
#: zoo's rtol 1e-3 / atol 1e-5 at 0, none at -5; a larger gain scales the rounding with the
#: logits and misses more (50 at 2x), so the gain stays.
LOGIT_OFFSET = -5.0


def calibration_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Normalised-image-like inputs: smooth colour fields with edges plus a little noise.

    White noise pools to nearly the same features for every sample; photographs do not. These
    blocky fields vary between samples at every scale, like images do.
    """
    coarse = rng.standard_normal((n, 3, 8, 8))
    cells = -(-size // 8)
    x = np.repeat(np.repeat(coarse, cells, axis=2), cells, axis=3)[:, :, :size, :size]
    x += 0.5 * rng.standard_normal((n, 3, 1, 1)) + 0.3 * rng.standard_normal(x.shape)
    return x.astype(np.float32)


def calibrate(graph: Graph, weights: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Set BN running stats and the classifier in ``weights`` in place (see module doc)."""
    x = calibration_images(rng, CALIB_BATCH, CALIB_SIZE)
    env = {graph.input: x}
    for node in graph.nodes:
        a, ins = node.attrs, [env[i] for i in node.inputs]
        p = {role: weights[key] for role, key in node.params.items()}
        x = ins[0]
        if node.op == "bn":  # statistics measured on this batch, then applied
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
            weights[node.params["running_mean"]] = mean.astype(np.float32)
            weights[node.params["running_var"]] = np.maximum(var, 1e-3).astype(np.float32)
            scale = p["weight"] / np.sqrt(np.maximum(var, 1e-3) + a["eps"])
            ys = [(x - mean[None, :, None, None]) * scale[None, :, None, None] + p["bias"][None, :, None, None]]
        elif node.op == "linear":
            # centre on the batch's mean feature and raise the gain (at most MAX_GAIN, so logits
            # stay well conditioned) until the logits vary across inputs with std ~1
            mu = x.mean(0)
            spread = float(np.std(x @ p["weight"].T, axis=0).mean())
            w = p["weight"] * min(MAX_GAIN, 1.0 / max(spread, 1e-6))
            b = p["bias"] - w @ mu + LOGIT_OFFSET
            weights[node.params["weight"]], weights[node.params["bias"]] = w.astype(np.float32), b.astype(np.float32)
            ys = [x @ w.T + b]
        elif node.op == "softmax":
            break
        else:  # every other op as the numpy reference renders it, in float32
            ys = apply_op(node, ins, p)
        env.update(zip(node.outputs, ys))
