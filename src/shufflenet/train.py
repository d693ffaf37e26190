"""Train or fine-tune any registry variant on an ImageFolder (optional extra: torch).

Determinism is by construction, not by saved state: the sample order of epoch e is a permutation
seeded by (seed, e), and the augmentation of sample i in epoch e is seeded by (seed, e, i). A run
interrupted at any step and resumed from its checkpoint therefore sees exactly the batches an
uninterrupted run sees, and ends with the same weights. The checkpoint holds the model, optimizer,
EMA and the position (epoch, step); the learning rate is a pure function of the global step.

With ``torchrun`` (WORLD_SIZE > 1) the run uses DistributedDataParallel on the gloo backend: each
rank takes every WORLD_SIZE-th sample of the epoch's permutation, buffers (BN statistics) are
broadcast from rank 0, and at the end the ranks compare digests of their weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ._io import atomic_write, class_folders, image_files, import_torch, one_line
from ._safeio import dumps as strict_dumps
from .errors import ShuffleNetError
from .preprocess import load_image, preprocess_pil
from .options import AMP_MODES, INPUT_SIZES, OPTIMIZERS, TRAIN_DEFAULTS
from .specs import Preprocess, get_spec
from .weights import init_weights, resolve_weights, save_weights, weights_digest

__all__ = ["TrainConfig", "TrainError", "train", "resume", "find_images"]

# the input sizes export accepts (onnx_export.export_onnx): a trained model must be exportable
_MIN_IMG_SIZE, _MAX_IMG_SIZE = INPUT_SIZES  # what export accepts


class TrainError(ShuffleNetError, ValueError):
    """A training request that cannot run (bad data folder, bad option, bad run folder)."""


@dataclass
class TrainConfig:
    data: str
    variant: str = TRAIN_DEFAULTS["variant"]
    out: str = "run"
    pretrained: str | None = None  # "torchvision", a weights path, or None for random init
    epochs: int = TRAIN_DEFAULTS["epochs"]
    batch_size: int = TRAIN_DEFAULTS["batch_size"]
    # train crop; eval resizes to img_size / 0.875 then centre-crops. None: 224, or the images'
    # shorter side when smaller (rounded down to a multiple of 8): small images are not upscaled
    img_size: int | None = None
    optimizer: str = TRAIN_DEFAULTS["optimizer"]  # "sgd" (momentum 0.9, nesterov) or "adamw"
    # default lr: SGD 0.1 from scratch / 0.01 fine-tuning; AdamW 3e-3 / 3e-4. Measured on the
    # demo data (batch 64): SGD 0.1 reached 89% in 15 epochs where AdamW 3e-3 reached 76% and
    # SGD 0.2 diverged in its second epoch
    lr: float | None = None
    weight_decay: float | None = None  # default: 4e-5 for SGD (the papers'), 0.05 for AdamW
    warmup_epochs: float = TRAIN_DEFAULTS["warmup_epochs"]  # linear warm-up, then cosine to zero
    label_smoothing: float = TRAIN_DEFAULTS["label_smoothing"]
    grad_clip: float | None = TRAIN_DEFAULTS["grad_clip"]  # max global grad norm; None disables
    # evaluation and best.safetensors use an EMA of the weights (and BN statistics): without it
    # BN statistics lag the fast-moving weights of warm-up and validation loss spikes (to ~55 on
    # the demo set in epochs 1-2); with 0.99 the curve is smooth and the final accuracy the same
    ema: float | None = TRAIN_DEFAULTS["ema"]
    freeze_backbone_epochs: int = TRAIN_DEFAULTS["freeze_backbone_epochs"]  # train only the new head first (transfer learning)
    amp: str = TRAIN_DEFAULTS["amp"]  # "bf16" autocast on CPU, or "auto" (bf16 where the CPU has it)
    workers: int = TRAIN_DEFAULTS["workers"]  # DataLoader worker processes
    seed: int = TRAIN_DEFAULTS["seed"]
    val_fraction: float = TRAIN_DEFAULTS["val_fraction"]  # used only when DATA has no train/ and val/ folders
    min_scale: float = TRAIN_DEFAULTS["min_scale"]  # RandomResizedCrop scale range lower bound
    threads: int | None = None  # torch intra-op threads

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


# --------------------------------------------------------------------------- data


def _images(folder: Path, *, required: bool = True) -> list[Path]:
    """The images of one class folder; an unreadable subfolder, or an empty class when
    ``required`` (training), is an error: a class without images would silently widen the head."""
    problems: list[tuple[str, str]] = []
    found = image_files(folder, problems)
    if problems:
        raise TrainError(f"{problems[0][0]}: {problems[0][1]}")
    if not found and required:
        raise TrainError(f"{folder}: class folder holds no images; remove it or add images")
    return found


def find_images(data: str | os.PathLike, *, val_fraction: float = 0.2, seed: int = 0):
    """(classes, train [(path, label)], val [(path, label)]) from ``data/{train,val}/<class>/`` or
    ``data/<class>/`` split per class with a seeded shuffle."""
    root = Path(data)
    if not root.is_dir():
        raise TrainError(f"{root}: not a folder")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train, val = _presplit(root)
    else:
        classes, train, val = _split_per_class(root, val_fraction, seed)
    if len(classes) < 2:
        raise TrainError(f"{root}: need at least two class folders, found {len(classes)}")
    if not train:
        raise TrainError(f"{root}: no training images")
    return classes, train, val


def _presplit(root: Path):
    """``root/train/<class>/`` and ``root/val/<class>/``; val may lack a class, not add one."""
    classes = class_folders(root / "train")
    val_classes = class_folders(root / "val")
    if val_classes and val_classes != classes:
        raise TrainError(f"{root}: train/ and val/ have different class folders")
    train = [(p, i) for i, c in enumerate(classes) for p in _images(root / "train" / c)]
    val = [(p, i) for i, c in enumerate(classes) if (root / "val" / c).is_dir()
           for p in _images(root / "val" / c, required=False)]
    return classes, train, val


def _split_per_class(root: Path, val_fraction: float, seed: int):
    """``root/<class>/``, each class split into train and val by a shuffle seeded per class."""
    classes = class_folders(root)
    train, val = [], []
    for i, c in enumerate(classes):
        files = _images(root / c)
        order = np.random.default_rng([seed, i, 0x5E]).permutation(len(files))
        n_val = int(round(len(files) * val_fraction)) if len(files) > 1 else 0
        val += [(files[k], i) for k in order[:n_val]]
        train += [(files[k], i) for k in order[n_val:]]
    return classes, train, val


def default_img_size(samples, *, probe: int = 16) -> int:
    """224, or the shorter side of the smallest of the first ``probe`` images when smaller
    (rounded down to a multiple of 8, at least the smallest size export accepts)."""
    from PIL import Image

    sides = []
    for path, _ in samples[:probe]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except OSError:
            continue  # an unreadable image is reported when the loader reaches it
    side = min(sides, default=224)
    return max(_MIN_IMG_SIZE, min(224, side // 8 * 8))


def _random_resized_crop(img, rng: np.random.Generator, size: int, min_scale: float):
    """torchvision's RandomResizedCrop (scale (min_scale, 1), ratio 3/4..4/3, 10 tries, centre fallback)."""
    from PIL import Image

    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + s, y + s))


def _dataset(samples, recipe: Preprocess, cfg: TrainConfig, train: bool):
    """(epoch, index) -> (image, label, why unreadable): a training image is a seeded random
    crop and flip at ``img_size``, an evaluation image ``recipe``'s centre crop."""
    import torch

    # built once, not per image: a random crop is already img_size square, so only the
    # normalisation of the recipe remains for it
    final = Preprocess(resize=cfg.img_size, crop=cfg.img_size, mean=recipe.mean, std=recipe.std) if train else recipe

    class _Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, key):
            try:
                return self._item(key)
            except ShuffleNetError as e:  # a corrupt image: zeros, dropped from the batch by the step
                return torch.zeros(3, final.crop, final.crop), samples[key[1]][1], one_line(e)

        def _item(self, key):
            epoch, index = key
            path, label = samples[index]
            img = load_image(path)
            if train:
                rng = np.random.default_rng([cfg.seed, epoch, index])
                img = _random_resized_crop(img, rng, cfg.img_size, cfg.min_scale)
                if rng.uniform() < 0.5:
                    img = img.transpose(0)  # FLIP_LEFT_RIGHT
            return torch.from_numpy(preprocess_pil(img, final)[0]), label, ""

    return _Data()


def _drop_unreadable(x, y, why, keys, samples, skipped: dict[str, str]):
    """The batch without its unreadable images; each is recorded in ``skipped`` (path -> reason)."""
    bad = [i for i, reason in enumerate(why) if reason]
    if not bad:
        return x, y
    for i in bad:
        skipped.setdefault(str(samples[keys[i][1]][0]), why[i])
    keep = [i for i in range(len(why)) if not why[i]]
    return x[keep], y[keep]


class _StopAtBoundary(Exception):
    """Raised between steps: an interrupt, or ``stop_after_steps``."""


class _Interrupts:
    """While active, the first Ctrl-C only sets ``requested``: the step in flight finishes and the
    run stops at the next step boundary with a checkpoint. A second Ctrl-C raises
    KeyboardInterrupt at once (that step is discarded; the last checkpoint stands)."""

    def __init__(self, dist=None) -> None:
        self.requested, self.dist, self._old = False, dist, None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def stop_now(self) -> bool:
        """Whether to stop; under DDP every rank agrees (any rank interrupted stops all)."""
        if self.dist is None:
            return self.requested
        import torch

        flag = torch.tensor([1 if self.requested else 0])
        self.dist.all_reduce(flag, op=self.dist.ReduceOp.MAX)
        return bool(flag.item())


class _Keys(list):
    """A sampler: the (epoch, index) pairs this rank reads, in order."""


def _epoch_keys(n: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool) -> list[tuple[int, int]]:
    order = np.random.default_rng([seed, epoch, 0xD0]).permutation(n) if shuffle else np.arange(n)
    per_rank = -(-n // world)
    order = np.resize(order, per_rank * world)  # wrap so every rank runs the same number of steps
    return [(epoch, int(i)) for i in order[rank::world]]


# --------------------------------------------------------------------------- model pieces


def _initial_weights(cfg: TrainConfig, n_classes: int):
    """Backbone from --pretrained (or seeded random), a fresh seeded head for the classes."""
    spec = get_spec(cfg.variant)
    fresh = init_weights(spec, seed=cfg.seed, num_classes=n_classes)
    if cfg.pretrained is None:
        return fresh, "random:%d" % cfg.seed
    loaded, source, n = resolve_weights(cfg.pretrained, spec)
    head = spec.graph(n).head
    head_keys = set(head.params.values())
    weights = {k: (fresh[k] if k in head_keys and n != n_classes else v) for k, v in loaded.items()}
    return weights, source.description


def _optimizer(model, cfg: TrainConfig):
    """(base learning rate, optimizer): weight decay on weights, none on BN and biases."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases
    scratch = cfg.pretrained is None
    default_lr = {"sgd": (0.1, 0.01), "adamw": (3e-3, 3e-4)}[cfg.optimizer][0 if scratch else 1]
    base_lr = cfg.lr if cfg.lr is not None else default_lr
    wd = cfg.weight_decay if cfg.weight_decay is not None else (4e-5 if cfg.optimizer == "sgd" else 0.05)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, lr=base_lr) if cfg.optimizer == "adamw"
           else torch.optim.SGD(groups, lr=base_lr, momentum=0.9, nesterov=True))
    return base_lr, opt


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _amp_dtype(mode: str):
    import torch

    if mode == "off":  # the mode is one of AMP_MODES (_check_config)
        return None
    supported = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")() in ("AVX512", "AVX512_BF16", "AMX")
    if mode == "bf16" or supported:
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run: Path
    variant: str
    best_val_acc: float | None
    final_val_acc: float | None
    epochs_done: int
    interrupted: bool
    seconds: float
    history: list[dict] = field(default_factory=list)
    ddp: dict | None = None

    def to_dict(self) -> dict:
        """The result as plain data (what `shufflenet train --json` prints)."""
        return {"run": str(self.run), "best_val_acc": self.best_val_acc, "final_val_acc": self.final_val_acc,
                "epochs": self.epochs_done, "interrupted": self.interrupted, "seconds": self.seconds,
                "history": self.history, "ddp": self.ddp}


def _dist():
    """(torch.distributed or None, rank, world size, whether we created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1, False
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")
    return dist, dist.get_rank(), world, owned


def train(cfg: TrainConfig, *, resume: bool = False, progress: Callable | None = None,
          on_epoch: Callable | None = None, stop_after_steps: int | None = None) -> TrainResult:
    """Train per ``cfg`` into ``cfg.out``; ``resume=True`` continues from its checkpoint.

    ``progress(epoch, step, steps, loss)`` is called after each step (loss NaN for a batch whose
    images were all unreadable), ``on_epoch(row, epochs)`` after each epoch's validation with
    that epoch's metrics row. Ctrl-C (or ``stop_after_steps`` for tests) lets the step in flight
    finish, saves a resumable checkpoint at that step boundary and returns interrupted=True; a
    second Ctrl-C stops at once, discarding that step (docs/limits.md). Unreadable images are
    skipped and listed in ``RUN/skipped_images.json``.
    """
    run = _Run(cfg, resume=resume)
    run.build_model()
    run.restore_or_start()
    run.prepare_steps()
    interrupted = run.run_epochs(progress, on_epoch, stop_after_steps)
    return run.finish(interrupted)


#: each numeric option's valid values: (test, how the error states them); a None that the
#: field's annotation allows (off, or the default) is never tested. NaN fails every test.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": (lambda v: v >= 1, "a positive integer"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "lr": (lambda v: 0 < v < math.inf, "a positive number"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "warmup_epochs": (lambda v: 0 <= v < math.inf, "a number of epochs >= 0"),
    "label_smoothing": (lambda v: 0 <= v <= 1, "from 0 to 1"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "a number >= 0 (0 or None: off)"),
    "ema": (lambda v: 0 <= v < 1, "from 0 to below 1 (0 or None: off)"),
    "freeze_backbone_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "workers": (lambda v: v >= 0, "an integer >= 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "val_fraction": (lambda v: 0 <= v < 1, "from 0 to below 1"),
    "min_scale": (lambda v: 0 <= v <= 1, "from 0 to 1"),
    "threads": (lambda v: v >= 1, "a positive integer (or None: torch's default)"),
}


def _check_config(cfg: TrainConfig, where: str = "") -> None:
    """Every option, before any data is read or torch is set up: its type (the field's
    annotation), then its range or choices; ``where`` names a saved config. A bad value is one
    line here, never a torch or numpy error mid-run."""
    at = f"{where}: " if where else ""
    size = cfg.img_size
    if size is not None and not (_of_type(size, "int") and _MIN_IMG_SIZE <= size <= _MAX_IMG_SIZE):
        raise TrainError(f"{at}img_size must be from {_MIN_IMG_SIZE} to {_MAX_IMG_SIZE}, got {size!r}")
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if not _of_type(value, str(f.type)):
            raise TrainError(f"{at}{f.name} is {value!r}, which is not a valid value")
        test, valid = _RANGES.get(f.name, (None, ""))
        if test is not None and value is not None and not test(value):
            raise TrainError(f"{at}{f.name} must be {valid}, got {value!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise TrainError(f"{at}optimizer must be {' or '.join(sorted(OPTIMIZERS))}, got {cfg.optimizer!r}")
    if cfg.amp not in AMP_MODES:
        raise TrainError(f"{at}amp must be {', '.join(AMP_MODES[:-1])} or {AMP_MODES[-1]}, got {cfg.amp!r}")


def _check_batch_of_one(spec, cfg: TrainConfig, n_classes: int) -> None:
    """A batch of one image trains only where every BatchNorm sees more than one value per
    channel; at a small ``img_size`` the last stage's maps are 1x1 and torch would fail in the
    first step (a longer batch's lone last image is skipped instead: :func:`_train_step`)."""
    if cfg.batch_size > 1:
        return
    graph = spec.graph(n_classes)
    shapes = graph.shapes((cfg.img_size, cfg.img_size))
    for n in graph.nodes:
        if n.op == "bn" and math.prod(shapes[n.inputs[0]][1:]) == 1:
            raise TrainError(f"batch_size 1 cannot train {spec.name} at img_size {cfg.img_size}: BatchNorm "
                             f"{n.output} would see one value per channel; use a batch of 2 or more, or a "
                             "larger img_size")


class _Run:
    """One training run. :func:`train` calls its phases in order; each sets the fields the later
    ones read: prepare (``__init__``), :meth:`build_model`, :meth:`restore_or_start`,
    :meth:`prepare_steps`, :meth:`run_epochs` (each epoch: :meth:`train_epoch`, then
    :meth:`end_epoch`), :meth:`finish`.

    Every use of a random generator, and the order of them, is that of one uninterrupted run:
    a resumed run repeats it bit for bit (module docstring).
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool) -> None:
        """Prepare: the process group, the checked options, the run folder and the data. When
        resuming, the checkpoint's saved config replaces ``cfg`` (all but ``data``, ``epochs`` and
        ``out``) before anything is derived from it: the variant, the split, the input size."""
        torch = import_torch("training")
        self.dist, self.rank, self.world, self.owned_group = _dist()
        # absolute paths in config.json: `--resume RUN` works from any working directory
        cfg = replace(cfg, data=str(Path(cfg.data).resolve()), out=str(Path(cfg.out).resolve()))
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "checkpoint.pt"
        _check_config(cfg)
        self.ckpt: dict | None = None
        saved_classes = None
        if resume:
            self.ckpt, saved_classes, cfg = self._read_checkpoint(cfg)
        else:
            self._check_new_folder()
        self.spec = get_spec(cfg.variant)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.classes, self.train_set, self.val_set = find_images(cfg.data, val_fraction=cfg.val_fraction,
                                                                 seed=cfg.seed)
        if saved_classes is not None and saved_classes != self.classes:
            raise TrainError(f"{cfg.data}: classes differ from the run's {saved_classes}")
        if cfg.img_size is None:  # resolved once and stored in config.json: a resume reads the same
            cfg = replace(cfg, img_size=default_img_size(self.train_set))
        self.recipe = Preprocess(resize=int(round(cfg.img_size / 0.875)), crop=cfg.img_size,
                                 mean=self.spec.preprocess.mean, std=self.spec.preprocess.std)
        _check_batch_of_one(self.spec, cfg, len(self.classes))
        self.cfg = cfg

    def _read_checkpoint(self, cfg: TrainConfig) -> tuple[dict, list, TrainConfig]:
        """The checkpoint to resume from, its classes and the config it was saved with (given
        ``cfg``'s data folder, epochs and run folder)."""
        torch = import_torch("training")
        if not self.ckpt_path.is_file():
            raise TrainError(f"{self.out}: no checkpoint.pt to resume from")
        try:
            ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
            saved = json.loads(ckpt["config"])
            classes = json.loads(ckpt["classes"])
        except Exception as e:  # torch raises many types for a damaged or foreign file
            raise TrainError(f"{self.ckpt_path}: not a usable checkpoint ({one_line(e, line='first')})") from None
        if not isinstance(saved, dict):
            raise TrainError(f"{self.ckpt_path}: not a usable checkpoint (its config is not a JSON object)")
        saved["data"] = cfg.data  # the data folder given, wherever it has moved
        saved["epochs"] = cfg.epochs  # the one setting a resume may change (to train longer)
        saved["out"] = cfg.out  # the folder resumed from, wherever it has moved
        # what a new run is checked for, the saved settings are too
        return ckpt, classes, _typed_config(saved, f"{self.ckpt_path} (saved config)")

    def _check_new_folder(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise TrainError(f"{out}: is a file, not a run folder; give a new folder with -o")
        if self.rank == 0 and out.exists() and any(out.iterdir()):
            raise TrainError(f"{out} exists and is not empty; use --resume {out} or a new folder")

    def build_model(self) -> None:
        """The model with its initial weights, the optimizer (and base learning rate), the EMA."""
        from .torch_models import ShuffleNet

        graph = self.spec.graph(len(self.classes))
        self.model = ShuffleNet(graph, variant=self.spec.name)
        weights, self.init_source = _initial_weights(self.cfg, len(self.classes))
        self.model.load_numpy(weights)
        self.logits_name = graph.head.output
        self.head_params = {graph.head.params[r] for r in ("weight", "bias")}
        self.base_lr, self.opt = _optimizer(self.model, self.cfg)
        self.ema = ({k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    if self.cfg.ema else None)

    def restore_or_start(self) -> None:
        """Resuming: the model, optimizer, EMA, position, history, skipped images and the
        interrupted epoch's statistics from the checkpoint (not kept afterwards: its tensors are
        copied in). A new run: the run folder with config.json and classes.json."""
        ckpt, self.ckpt = self.ckpt, None
        self.history: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.resumed_stats: dict | None = None
        self.start_epoch, self.start_step, self.global_step, self.best = 0, 0, 0, None
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.ema is not None and "ema" in ckpt:
                self.ema = dict(ckpt["ema"])
            self.start_epoch, self.start_step = int(ckpt["epoch"]), int(ckpt["step"])
            self.global_step = int(ckpt["global_step"])
            self.history = json.loads(ckpt["history"])
            best = ckpt.get("best")
            self.best = None if best is None else float(best)
            self.skipped = json.loads(ckpt.get("skipped", "{}"))
            self.resumed_stats = json.loads(ckpt.get("epoch_stats", "null"))
        elif self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            config, classes = asdict(self.cfg), self.classes
            atomic_write(self.out / "config.json", lambda t: t.write_text(json.dumps(config, indent=2) + "\n"))
            atomic_write(self.out / "classes.json", lambda t: t.write_text(json.dumps(classes) + "\n"))

    def prepare_steps(self) -> None:
        """The network the steps run (DDP-wrapped under torchrun), autocast, the training data
        and the learning-rate schedule's lengths; the run's clock starts."""
        cfg = self.cfg
        self.net = _LogitsOnly(self.model, self.logits_name)  # logits, even where a Softmax ends the graph
        if self.dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.net, broadcast_buffers=True)
        self.amp = _amp_dtype(cfg.amp)
        self.train_data = _dataset(self.train_set, self.recipe, cfg, train=True)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_set) / self.world) / cfg.batch_size)  # per rank
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.t0 = time.perf_counter()

    def run_epochs(self, progress: Callable | None, on_epoch: Callable | None,
                   stop_after_steps: int | None) -> bool:
        """The epochs from the start position; whether the run was interrupted (its checkpoint
        then stands at a step boundary)."""
        self.stats: dict = {}
        interrupts = _Interrupts(self.dist)
        epoch = self.start_epoch
        try:
            with interrupts:
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    self.train_epoch(epoch, interrupts, progress, stop_after_steps)
                    row = self.end_epoch(epoch)
                    if on_epoch is not None and self.rank == 0:
                        on_epoch(row, self.cfg.epochs)
                    if interrupts.stop_now() and epoch + 1 < self.cfg.epochs:
                        raise _StopAtBoundary(None)  # the checkpoint is written already
        except _StopAtBoundary as stop:
            if stop.args[0] is not None:
                self.checkpoint(epoch, stop.args[0], self.stats)
            return True
        except KeyboardInterrupt:  # a second Ctrl-C mid-step: that step is discarded, the last checkpoint stands
            return True
        return False

    def train_epoch(self, epoch: int, interrupts: _Interrupts, progress: Callable | None,
                    stop_after_steps: int | None) -> None:
        """One epoch's steps (in the first epoch of a resumed run, those after the checkpoint's);
        raises :class:`_StopAtBoundary` between two steps to stop."""
        cfg = self.cfg
        frozen = epoch < cfg.freeze_backbone_epochs
        for name, p in self.model.named_parameters():
            p.requires_grad_(not frozen or name in self.head_params)
        self.net.train()
        keys = _epoch_keys(len(self.train_set), epoch, cfg.seed, self.rank, self.world, shuffle=True)
        skip = self.start_step if epoch == self.start_epoch else 0
        keys = keys[skip * cfg.batch_size:]
        self.stats = {"loss_sum": 0.0, "correct": 0.0, "seen": 0, "seconds": 0.0,
                      "lr": _lr_at(max(self.global_step - 1, 0), self.total_steps, self.warmup, self.base_lr)}
        if epoch == self.start_epoch and skip and self.resumed_stats:
            self.stats = self.resumed_stats  # the epoch's statistics so far, as the checkpoint left them
        self.epoch_t0 = time.perf_counter() - self.stats["seconds"]
        for step, (x, y, why) in enumerate(self._loader(keys, self.train_data), start=skip):
            at = (step - skip) * cfg.batch_size
            x, y = _drop_unreadable(x, y, why, keys[at:at + cfg.batch_size], self.train_set, self.skipped)
            loss = self._step(x, y)
            if progress:
                progress(epoch, step + 1, self.steps_per_epoch, float("nan") if loss is None else loss)
            if interrupts.stop_now() or (stop_after_steps is not None and self.global_step >= stop_after_steps):
                self.stats["seconds"] = time.perf_counter() - self.epoch_t0
                raise _StopAtBoundary(step + 1)
        if self.dist is not None:  # one set of BN statistics: rank 0's
            for b in self.model.buffers():
                self.dist.broadcast(b, 0)
        self.stats["seconds"] = time.perf_counter() - self.epoch_t0

    def _loader(self, keys, data):
        torch = import_torch("training")
        return torch.utils.data.DataLoader(data, batch_size=self.cfg.batch_size, sampler=_Keys(keys),
                                           num_workers=self.cfg.workers, drop_last=False)

    def _step(self, x, y) -> float | None:
        """One optimizer step at the schedule's learning rate, then the EMA; the loss."""
        lr = _lr_at(self.global_step, self.total_steps, self.warmup, self.base_lr)
        loss = _train_step(self.net, self.model, self.opt, x, y, lr, self.amp, self.cfg, self.stats)
        self.global_step += 1  # also for a batch of only unreadable images: the schedule stays put
        if self.ema is not None:
            _update_ema(self.ema, self.model, self.cfg.ema)
        self.stats["lr"] = lr
        return loss

    def end_epoch(self, epoch: int) -> dict:
        """Checkpoint, validate, save the last and best weights and the metrics; the epoch's row."""
        stats = self.stats
        self.checkpoint(epoch, self.steps_per_epoch, stats)  # before validation, which may fail or be interrupted
        val_loss, val_acc = (_evaluate(self.model, self.ema, self.val_set, self.recipe, self.cfg, self.logits_name,
                                       self.skipped) if self.val_set else (None, None))
        row = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / max(stats["seen"], 1),
               "train_acc": 100 * stats["correct"] / max(stats["seen"], 1),
               "val_loss": val_loss, "val_acc": val_acc, "lr": stats["lr"],
               "seconds": time.perf_counter() - self.epoch_t0, "skipped_images": len(self.skipped)}
        self.history.append(row)
        if self.rank == 0:
            self._save_weights(val_acc)
            _write_metrics(self.out, self.history)
            _write_skipped(self.out, self.skipped)
        self.checkpoint(epoch + 1, 0)
        return row

    def _save_weights(self, val_acc: float | None) -> None:
        """``last.safetensors``, and ``best.safetensors`` when ``val_acc`` is the best so far (or
        there is no validation): the EMA weights when there is an EMA."""
        eval_state = self.ema if self.ema is not None else self.model.state_dict()
        numpy_state = {k: v.detach().cpu().numpy() for k, v in eval_state.items()}
        meta = _st_meta(self.cfg, self.classes, self.init_source)
        save_weights(numpy_state, self.out / "last.safetensors", metadata=meta)
        if val_acc is None or self.best is None or val_acc > self.best:
            self.best = val_acc
            save_weights(numpy_state, self.out / "best.safetensors", metadata=meta)

    def checkpoint(self, epoch: int, step: int, stats: dict | None = None) -> None:
        """Only ever called between steps: the model, optimizer and BN counters agree with
        ``global_step``. ``stats``: the epoch's running train statistics when mid-epoch."""
        if self.rank != 0:
            return
        torch = import_torch("training")
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch,
                 "step": step, "global_step": self.global_step, "config": json.dumps(asdict(self.cfg)),
                 "classes": json.dumps(self.classes), "history": json.dumps(self.history), "best": self.best,
                 "skipped": json.dumps(self.skipped), "epoch_stats": json.dumps(stats)}
        if self.ema is not None:
            state["ema"] = self.ema
        atomic_write(self.ckpt_path, lambda t: torch.save(state, t))

    def finish(self, interrupted: bool) -> TrainResult:
        """Under DDP, check that the ranks agree and close the process group; the result, and
        ``summary.json`` for a run that finished."""
        ddp_info = self._compare_ranks() if self.dist is not None and not interrupted else None
        if self.dist is not None and self.owned_group:
            self.dist.barrier()
            self.dist.destroy_process_group()  # exiting with gloo's threads alive can abort (SIGABRT) the ranks
        history = self.history
        result = TrainResult(self.out, self.cfg.variant, self.best, history[-1]["val_acc"] if history else None,
                             len(history), interrupted, time.perf_counter() - self.t0, history, ddp_info)
        if self.rank == 0 and not interrupted:
            summary = {"best_val_acc": self.best, "final_val_acc": result.final_val_acc, "epochs": len(history),
                       "seconds_this_session": result.seconds, "classes": self.classes, "init": self.init_source,
                       "ddp": ddp_info, "train_images": len(self.train_set), "val_images": len(self.val_set),
                       "skipped_images": _skipped_list(self.skipped)}
            atomic_write(self.out / "summary.json", lambda t: t.write_text(strict_dumps(summary, indent=2) + "\n"))
        return result

    def _compare_ranks(self) -> dict:
        """The digests of every rank's weights; a :class:`TrainError` when they differ."""
        digest = weights_digest({k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()})
        digests = [None] * self.world
        self.dist.all_gather_object(digests, digest)
        ddp_info = {"world_size": self.world, "identical_weights": len(set(digests)) == 1, "digests": digests}
        if not ddp_info["identical_weights"]:
            raise TrainError(f"ranks ended with different weights: {digests}")
        return ddp_info


def resume(run: str | os.PathLike, *, epochs: int | None = None, progress: Callable | None = None,
           on_epoch: Callable | None = None) -> TrainResult:
    """Continue the run in folder ``run`` exactly where it stopped (optionally to more epochs)."""
    cfg_path = Path(run) / "config.json"
    if not cfg_path.is_file():
        raise TrainError(f"{run}: not a training run (no config.json)")
    cfg = replace(_config_from_file(cfg_path), out=str(run))
    if epochs:
        cfg = replace(cfg, epochs=epochs)
    return train(cfg, resume=True, progress=progress, on_epoch=on_epoch)


def _config_from_file(path: Path) -> TrainConfig:
    """A run's config.json, checked as a new run's options are (never a TypeError or
    AttributeError later, on a malformed file)."""
    from ._safeio import json_loads, read_text

    raw = json_loads(read_text(path, TrainError, "run config"), TrainError, str(path))
    if not isinstance(raw, dict):
        raise TrainError(f"{path}: expected a JSON object")
    return _typed_config(raw, str(path))


def _of_type(value, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated ``annotation`` (e.g. ``"float | None"``; a
    bool is not a number, an int is a float)."""
    kinds = {k.strip() for k in annotation.split("|")}
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    return (("str" in kinds and isinstance(value, str)) or ("int" in kinds and isinstance(value, int))
            or ("float" in kinds and isinstance(value, (int, float))))


def _typed_config(raw: dict, where: str) -> TrainConfig:
    """A TrainConfig from a saved mapping (config.json, a checkpoint's copy), checked as a new
    run's options are (:func:`_check_config`): never a TypeError or AttributeError later."""
    if "data" not in raw:
        raise TrainError(f"{where}: no data folder recorded")
    cfg = TrainConfig.from_dict(raw)
    _check_config(cfg, where)
    return cfg


def _LogitsOnly(model, logits_name):
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.run(x, (logits_name,))[0]

    return LogitsOnly()


def _train_step(net, model, opt, x, y, lr: float, amp, cfg: TrainConfig, stats: dict) -> float | None:
    """One optimizer step on a batch's readable images (``y``); none when no image was
    readable, or only one while the configured batch is larger
    (an epoch's last, short batch, or a batch of unreadable images): a lone image can leave
    BatchNorm one value per channel. ``stats`` (the epoch's running statistics) is updated.
    Returns the loss, or None without a step."""
    import torch
    import torch.nn.functional as F

    for g in opt.param_groups:
        g["lr"] = lr
    if len(y) == 0 or (len(y) == 1 and cfg.batch_size > 1):
        return None
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    value = float(loss.detach())
    stats["loss_sum"] += value * len(y)
    stats["correct"] += float((logits.argmax(1) == y).sum())
    stats["seen"] += len(y)
    return value


def _update_ema(ema: dict, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                ema[k].copy_(v)


def _skipped_list(skipped: dict[str, str]) -> list[dict]:
    return [{"path": p, "reason": r} for p, r in sorted(skipped.items())]


def _write_skipped(out: Path, skipped: dict[str, str]) -> None:
    """``skipped_images.json``: every unreadable image of the run so far, with the reason."""
    atomic_write(out / "skipped_images.json", lambda t: t.write_text(
        json.dumps({"count": len(skipped), "images": _skipped_list(skipped)}, indent=2) + "\n"))


def _st_meta(cfg: TrainConfig, classes: list[str], init: str) -> dict[str, str]:
    return {"variant": cfg.variant, "classes": json.dumps(classes), "init": init, "img_size": str(cfg.img_size)}


def _evaluate(model, ema, samples, recipe, cfg, logits_name, skipped: dict[str, str] | None = None):
    import torch
    import torch.nn.functional as F

    from .torch_models import ShuffleNet

    net = model
    if ema is not None:
        net = ShuffleNet(model.graph, variant=model.variant)
        net.load_state_dict(ema)
    net.eval()
    data = _dataset(samples, recipe, cfg, train=False)
    keys = [(0, i) for i in range(len(samples))]
    loss_sum = correct = 0.0
    seen = 0
    skipped = {} if skipped is None else skipped
    with torch.no_grad():
        for n, (x, y, why) in enumerate(torch.utils.data.DataLoader(
                data, batch_size=cfg.batch_size, sampler=_Keys(keys), num_workers=cfg.workers)):
            x, y = _drop_unreadable(x, y, why, keys[n * cfg.batch_size:(n + 1) * cfg.batch_size], samples, skipped)
            if len(y) == 0:
                continue
            logits = net.run(x, (logits_name,))[0]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
    if seen == 0:
        return None, None
    return loss_sum / seen, 100.0 * correct / seen


def _write_metrics(out: Path, history: list[dict]) -> None:
    from .plotting import line_panel, save_panels

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)

    atomic_write(out / "metrics.csv", write_csv)
    atomic_write(out / "metrics.json", lambda t: t.write_text(strict_dumps(history, indent=2) + "\n"))
    panels = [
        line_panel({"train loss": [h["train_loss"] for h in history],
                    "val loss": [h["val_loss"] for h in history]}, title="loss", robust=True),
        line_panel({"train acc %": [h["train_acc"] for h in history],
                    "val acc %": [h["val_acc"] for h in history]}, title="accuracy (%)"),
    ]
    save_panels(panels, out / "curves.png")

