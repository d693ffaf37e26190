"""The choices and defaults of the library's entry points, written once.

Plain Python that imports nothing (no numpy, onnx or Pillow): the library modules take their
constants and dataclass defaults from here, and the CLI builds its choices and help text from the
same values without loading those modules, so ``shufflenet --help`` stays fast and a default
shown in help cannot drift from the one the library applies.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "MIN_OPSET", "DEFAULT_OPSET", "INPUT_SIZES", "EXPORT_VIAS", "PAD_MULTIPLE",
    "RESIZE_MODES", "ENGINES", "DEFAULT_MODEL", "CLASSIFY_TOP", "CLASSIFY_BATCH_SIZE",
    "QUANTIZE_FORMATS", "CALIB_METHODS", "QUANTIZE_DEFAULTS",
    "OPTIMIZERS", "AMP_MODES", "TRAIN_DEFAULTS",
    "BENCH_BACKENDS", "BENCH_PRECISIONS", "BENCH_MODES", "BENCH_BLOCK", "BENCH_THREADS", "BENCH_BATCHES",
    "BENCH_IMAGE_BATCHES", "BENCH_RUNS", "BENCH_WARMUP", "BENCH_IMAGE_WORKERS",
    "DEMO_CLASSES", "DEMO_DIFFICULTIES", "DEMO_DEFAULTS",
    "ZOO_WEIGHTS", "SERVE_HOST", "SERVE_PORT", "SERVE_DEFAULTS",
]

# --------------------------------------------------------------------------- export

MIN_OPSET = 3  # the oldest the Model Zoo ships (shufflenet-3)
DEFAULT_OPSET = 17  # widely supported by runtimes, and >= 13 so per-channel int8 QDQ is valid
#: emitter: written from the description (any opset, no torch); torch: torch.onnx.export, cleaned
EXPORT_VIAS = ("emitter", "torch")
#: ONNX Runtime's blocked (NCHWc) CPU kernels take a convolution only when its channel counts
#: are multiples of 4, and lay channels out in blocks of 8 (AVX2) or 16 (AVX-512): padding to 16
#: satisfies all three (docs/bench.md has the measurements).
PAD_MULTIPLE = 16

#: square input sizes every variant is built, exported and trained at (five stride-2 stages: 32
#: is the smallest that leaves a 1x1 map; 1024 bounds activation memory)
INPUT_SIZES = (32, 1024)

# --------------------------------------------------------------------------- classify / evaluate

RESIZE_MODES = ("shorter", "square")
ENGINES = ("local", "ray")  # local: this machine's cores; ray: a Ray Data actor pool
DEFAULT_MODEL = "shufflenet_v2_x1_0"
CLASSIFY_TOP = 5
CLASSIFY_BATCH_SIZE = 16



# --------------------------------------------------------------------------- quantize

QUANTIZE_FORMATS = ("qdq", "qoperator")  # like shufflenet-v2-12-qdq / shufflenet-v2-12-int8
CALIB_METHODS = ("minmax", "entropy", "percentile")  # the first is tried first by default
#: QuantizeOptions' defaults that the CLI shows
QUANTIZE_DEFAULTS = MappingProxyType({
    "format": "qdq",
    "calib_method": "minmax",
    "calib_count": 100,  # images sampled (seeded) from the calibration folder
    "seed": 0,
})

# --------------------------------------------------------------------------- train

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("off", "bf16", "auto")  # auto: bf16 where the CPU has it
#: TrainConfig's defaults (the fields whose default is a value, not None; what each means is noted
#: on TrainConfig)
TRAIN_DEFAULTS = MappingProxyType({
    "variant": "shufflenet_v2_x0_5",
    "epochs": 20,  # the default demo set reaches ~90% by epoch 15 and settles by 20
    "batch_size": 64,
    "optimizer": "sgd",  # SGD (momentum 0.9, nesterov) as the ShuffleNet papers
    "warmup_epochs": 2.0,
    "label_smoothing": 0.1,
    "grad_clip": 5.0,
    "ema": 0.99,
    "freeze_backbone_epochs": 0,
    "amp": "off",
    "workers": 0,
    "seed": 0,
    "val_fraction": 0.2,
    "min_scale": 0.25,
})

# --------------------------------------------------------------------------- bench

BENCH_BACKENDS = ("onnxruntime", "openvino")
BENCH_PRECISIONS = ("f32", "bf16")  # OpenVINO's INFERENCE_PRECISION_HINT
BENCH_MODES = ("blocked", "interleaved")
BENCH_BLOCK = 40  # consecutive runs of one model per round in blocked mode
#: one intra-op thread unless asked: comparable across machines and unaffected by a noisy neighbour
BENCH_THREADS = (1,)
BENCH_BATCHES = (1,)  # latency: one image per run
BENCH_IMAGE_BATCHES = (8,)  # end to end (--images): batched as classify runs folders
BENCH_RUNS = 200  # timed runs per model and configuration
BENCH_WARMUP = 20  # untimed runs per model first
BENCH_IMAGE_WORKERS = 2  # decode threads for the end-to-end (--images) measurement

# --------------------------------------------------------------------------- demo data

#: ordered so that the first few (what `--classes 3` takes) differ most; ring/circle, star/cross
#: and arrow/triangle are the hard pairs further down
DEMO_CLASSES = ("circle", "stripes", "triangle", "checker", "square", "cross", "ring", "star", "arrow",
                "crescent", "letter_e", "heart")
DEMO_DIFFICULTIES = ("easy", "normal", "hard")
DEMO_DEFAULTS = MappingProxyType({"classes": 10, "per_class": 500, "size": 64, "seed": 0,
                                  "difficulty": "normal"})

# --------------------------------------------------------------------------- zoo build

#: seeded random weights: offline, and every build byte for byte the same
ZOO_WEIGHTS = "random:0"

# --------------------------------------------------------------------------- serve

SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
#: ServeOptions' defaults that the CLI shows (what each means is noted on ServeOptions)
SERVE_DEFAULTS = MappingProxyType({
    "max_batch": 32,  # V2 x1.0 at 32 rows is ~80 ms on one core
    "max_delay_ms": 5.0,
    "max_body_mb": 20.0,  # a 1080p PNG is ~6 MB, a 32-row FP32 tensor ~19 MB
    "max_queue": 256,  # 8 full batches
    "timeout_ms": 30_000.0,
})
