"""Typed training configuration: dataclasses, YAML load/dump, ``a.b=c`` overrides, named recipes.

A run is described by one :class:`TrainConfig`. It comes from a recipe name (``configs/<name>.yaml``, also
packaged as :data:`RECIPES`) or a YAML file, then command-line overrides ``key=value`` with dotted keys
(``optim.lr=0.01``, ``data.batch_size=16``, ``schedule.milestones=[800,1000]``; values are parsed as YAML and
checked against the field's type). The resolved config is saved with every run and inside every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .limits import LimitError, check_input_size
from .metrics.registry import list_metrics

__all__ = [
    "ModelConfig", "SynthDataConfig", "TreesDataConfig", "AugmentOptions", "DataConfig", "OptimConfig",
    "ScheduleConfig", "LossConfig", "EmaConfig", "EvalConfig", "QuantConfig",
    "CheckpointConfig", "TrainConfig", "load_config", "config_with_overrides", "apply_overrides", "config_to_dict",
    "config_from_dict",
    "dump_config", "list_recipes", "recipe_path", "ConfigError",
]


class ConfigError(ValueError):
    """A config file or override is invalid (the message names the file, override or key).

    ``key`` is the dotted config key at fault when known (``"optim.lr"``), so that :func:`load_config` can say
    which override or file set it."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class ModelConfig:
    """The network. ``name`` is a registered model (``multibox models``); ``kwargs`` go to its builder.

    * ``pretrained_backbone``: ImageNet weights file for the backbone (``backbone.load_pretrained``), ``imagenet``,
      a trained detector's checkpoint or ``zoo:NAME`` (its backbone tensors only);
    * ``init_from``: an SSD checkpoint (``.safetensors`` / ``.pt``) to fine-tune from; classifier rows of classes
      kept by name are carried over, new classes start fresh; ``init_exclude``: name patterns not loaded from it;
    * ``freeze``: parameter-name patterns (fnmatch) kept fixed; ``train_only``: if set, everything else is frozen;
    * ``norm_eval``: ``true``: every BatchNorm layer keeps its running statistics during training (eval mode; its
      scale and shift still learn), as for fine-tuning with small batches (and the control for
      ``quant.freeze_bn``); ``backbone``: only the backbone's (the pretrained statistics stay, the new neck and
      extra layers normalize with their batches as usual).
    """

    name: str = "ssd7"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: str | None = None
    init_from: str | None = None
    init_exclude: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)
    train_only: list[str] = field(default_factory=list)
    norm_eval: bool | str = False


@dataclass
class SynthDataConfig:
    """A synthetic dataset generated on first use (``data.train: synthetic``) into the cache folder."""

    profile: str = "easy"
    num_train: int = 2000
    num_test: int = 300
    size: int = 160
    seed: int = 0


@dataclass
class TreesDataConfig:
    """The real tree photos (``data.train: deepforest_trees``), made on first use into the cache folder by
    :func:`multibox.data.real.prepare_trees`: ``tile`` px tiles with ``overlap`` of the training photos (split
    ``train``), the bottom ``holdout`` fraction of their rows as split ``holdout`` (for choosing recipes), the
    evaluation photos OSBS_029 and SOAP_061 as split ``test``."""

    tile: int = 400
    overlap: float = 0.25
    holdout: float = 0.2


@dataclass
class AugmentOptions:
    """Options on top of the ``data.augment`` recipe, for new sites and overhead imagery (``data.aug.*``; see
    :func:`multibox.data.augment.train_transform`). All off by default, which keeps the recipe bit-identical.

    * ``vflip``: probability of a top-bottom mirror; ``rot90``: probability of 1-3 quarter turns (0.75 makes the
      four orientations equally likely). Overhead photos have no up.
    * ``scale_jitter``: ``[lo, hi]`` zoom factors (log-uniform, ``0.1 <= lo <= hi <= 10``; ``> 1`` zooms in),
      after the recipe's crop; ``[]`` = off.
    * ``color``: colour distortion strength in ``[0, 2]`` replacing the recipe's (1 = the SSD recipe's ranges,
      0 = none); ``null`` keeps the recipe's.
    """

    vflip: float = 0.0
    rot90: float = 0.0
    scale_jitter: list[float] = field(default_factory=list)
    color: float | None = None


@dataclass
class DataConfig:
    """Where the images come from and how they are batched.

    ``train`` / ``val``: dataset paths as :func:`multibox.data.datasets.open_dataset` takes them (several VOC roots
    joined with ``:``), ``synthetic``, or ``deepforest_trees`` (the real tree photos, see
    :class:`TreesDataConfig`; splits ``train``, ``holdout``, ``test``). ``batch_size`` is the **global** batch
    (split over distributed ranks).
    ``augment``: ``ssd`` (photometric, expand, min-IoU crop, flip), ``ssdlite`` (crop, flip) or ``none``;
    ``aug``: options on top of it (:class:`AugmentOptions`: vertical flips, quarter turns, scale and colour jitter).
    """

    train: str | None = "synthetic"
    train_split: str | None = "train"
    val: str | None = "synthetic"
    val_split: str | None = "test"
    format: str | None = None
    classes: str | None = None
    synthetic: SynthDataConfig = field(default_factory=SynthDataConfig)
    trees: TreesDataConfig = field(default_factory=TreesDataConfig)
    augment: str = "ssd"
    aug: AugmentOptions = field(default_factory=AugmentOptions)
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class OptimConfig:
    """Optimizer: ``sgd`` (momentum, nesterov), ``adam`` or ``adamw``; ``no_decay_norm_bias`` exempts norm
    layers and biases from weight decay; ``grad_clip``: max global gradient norm (0 = off)."""

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    no_decay_norm_bias: bool = False
    grad_clip: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning rate per step: linear warm-up from ``warmup_factor * lr`` over ``warmup_steps``, then
    ``multistep`` (times ``gamma`` at each milestone step), ``cosine`` (to ``min_lr_ratio * lr`` at the last
    step) or ``constant``."""

    name: str = "multistep"
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0


@dataclass
class LossConfig:
    """MultiBox loss and matching (Caffe bipartite + per-prediction, or torchvision's argmax-forced).

    ``name``: ``multibox`` (softmax cross-entropy with hard negative mining, ``neg_pos_ratio``) or ``focal``
    (softmax focal loss over every prior, no mining: ``focal_gamma``, ``focal_alpha`` the weight of the object
    classes and ``1 - focal_alpha`` of the background; :class:`multibox.loss.FocalMultiBoxLoss`).
    ``box``: the localization term, ``smooth_l1`` (SSD's, on the encoded offsets), ``giou`` or ``diou`` (an IoU
    loss on the decoded boxes, :func:`multibox.loss.iou_box_loss`), weighted by ``loc_weight``."""

    name: str = "multibox"
    box: str = "smooth_l1"
    neg_pos_ratio: float = 3.0
    loc_weight: float = 1.0
    match: str = "caffe"
    iou_threshold: float = 0.5
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (:mod:`multibox.engine.ema`); ``decay`` 0 is off. With it on,
    evaluations and ``.safetensors`` files use the averaged weights."""

    decay: float = 0.0


@dataclass
class EvalConfig:
    """Evaluation during and after training (``every_steps`` 0 = only at the end; ``tta``: test-time
    augmentation of every evaluation, ``null``, ``hflip``, ``flips``, ``dihedral`` or one of those ``+shift``, see
    :mod:`multibox.tta`)."""

    metric: str = "voc07"
    every_steps: int = 0
    batch_size: int = 16
    at_end: bool = True
    tta: str | None = None


@dataclass
class QuantConfig:
    """Quantization-aware training (``quant.qat=true``; docs/quantization.md): every convolution is trained
    through the fake quantization that the int8 export (ONNX Runtime QDQ: per-channel symmetric int8 weights,
    per-tensor asymmetric uint8 activations) will apply (:mod:`multibox.models.qat`). Meant for a few hundred
    steps from a trained model (``model.init_from=...``). ``ema``: momentum of the activation ranges' moving
    average, in ``(0, 1]``; ``freeze_bn``: BatchNorm layers keep their running statistics (eval mode) during QAT."""

    qat: bool = False
    ema: float = 0.01
    freeze_bn: bool = True


@dataclass
class CheckpointConfig:
    """``last`` is written every ``every_steps`` (and at the end), ``best`` when the eval metric improves;
    ``keep_last`` numbered ``step-N`` checkpoints are kept besides (0 = none)."""

    every_steps: int = 500
    keep_last: int = 0


@dataclass
class TrainConfig:
    """One training run. ``steps`` counts optimizer steps (Caffe's ``max_iter``).

    ``time_budget_min`` (0 = off): fit the run to this many minutes of training wall time. ``steps`` is then the
    most steps: after the first steps the trainer measures the time of a step and sets the total so that the
    run ends within the budget (the learning-rate schedule follows the fitted total), refits after each
    evaluation during training (its time counts), and stops at the budget if the machine slows down; the last
    checkpoint is evaluated. See ``docs/training.md`` ("Time budget")."""

    name: str = "run"
    seed: int = 0
    steps: int = 1000
    time_budget_min: float = 0.0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    threads: int = 0
    log_every: int = 10
    on_nonfinite: str = "stop"
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> TrainConfig:
        """Check choices and ranges; returns ``self``. Raises :class:`ConfigError` naming the key."""
        choices = {
            "precision": (self.precision, ("fp32", "bf16", "fp16", "auto")),
            "on_nonfinite": (self.on_nonfinite, ("stop", "skip")),
            "data.augment": (self.data.augment, ("ssd", "ssdlite", "none")),
            "optim.name": (self.optim.name, ("sgd", "adam", "adamw")),
            "schedule.name": (self.schedule.name, ("multistep", "cosine", "constant")),
            "loss.match": (self.loss.match, ("caffe", "argmax")),
            "loss.name": (self.loss.name, ("multibox", "focal")),
            "loss.box": (self.loss.box, ("smooth_l1", "giou", "diou")),
            "eval.metric": (self.eval.metric, tuple(list_metrics())),
            "eval.tta": (self.eval.tta, (None, *TTA_MODE_NAMES)),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                shown = ", ".join("null" if a is None else str(a) for a in allowed)
                raise ConfigError(f"{key}={value!r}: expected one of {shown}", key)
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"device={self.device!r}: expected auto, cpu, cuda, cuda:N or mps", "device")
        for key, value in _float_fields(self):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value}: must be a finite number", key)
        positive = {"steps": self.steps, "data.batch_size": self.data.batch_size, "log_every": self.log_every}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}={value}: must be positive", key)
        if self.time_budget_min < 0:
            raise ConfigError(f"time_budget_min={self.time_budget_min}: must be 0 (off) or a number of minutes",
                              "time_budget_min")
        trees = self.data.trees
        if trees.tile <= 0 or not 0.0 <= trees.overlap < 1.0 or not 0.0 <= trees.holdout < 1.0:
            key = "data.trees.tile" if trees.tile <= 0 else (
                "data.trees.overlap" if not 0.0 <= trees.overlap < 1.0 else "data.trees.holdout")
            raise ConfigError(f"{key}={getattr(trees, key.rsplit('.', 1)[1])}: need tile > 0, 0 <= overlap < 1 and "
                              "0 <= holdout < 1", key)
        _check_augment_options(self.data.aug)
        if self.model.norm_eval not in (True, False, "backbone"):
            raise ConfigError(f"model.norm_eval={self.model.norm_eval!r}: expected true, false or backbone",
                              "model.norm_eval")
        if not 0.0 <= self.ema.decay < 1.0:
            raise ConfigError(f"ema.decay={self.ema.decay}: must be in [0, 1) (0 = off)", "ema.decay")
        if self.loss.focal_gamma < 0 or not 0.0 <= self.loss.focal_alpha <= 1.0:
            key = "loss.focal_gamma" if self.loss.focal_gamma < 0 else "loss.focal_alpha"
            raise ConfigError(f"{key}={getattr(self.loss, key.split('.')[1])}: need focal_gamma >= 0 and "
                              "0 <= focal_alpha <= 1", key)
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr={self.optim.lr}: must be positive", "optim.lr")
        if sorted(self.schedule.milestones) != list(self.schedule.milestones):
            raise ConfigError(f"schedule.milestones={self.schedule.milestones}: must be increasing",
                              "schedule.milestones")
        if not 0.0 < self.quant.ema <= 1.0:
            raise ConfigError(f"quant.ema={self.quant.ema}: the moving-average momentum must be in (0, 1]",
                              "quant.ema")
        if self.quant.qat and self.model.kwargs.get("binarize"):
            raise ConfigError("quant.qat=true with model.kwargs.binarize=true: a binarized model has binary, not "
                              "int8, convolutions; drop one of them", "quant.qat")
        if "image_size" in self.model.kwargs:
            try:
                check_input_size(self.model.kwargs["image_size"])
            except LimitError as e:
                raise ConfigError(f"model.kwargs.image_size: {e}", "model.kwargs.image_size") from None
        return self


def _check_augment_options(aug: AugmentOptions) -> None:
    """Ranges of ``data.aug.*``; raises :class:`ConfigError` naming the key."""
    for key, value in (("vflip", aug.vflip), ("rot90", aug.rot90)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.aug.{key}={value}: a probability must be in [0, 1]", f"data.aug.{key}")
    sj = aug.scale_jitter
    if sj and not (len(sj) == 2 and 0.1 <= sj[0] <= sj[1] <= 10.0):
        raise ConfigError(f"data.aug.scale_jitter={sj}: expected [lo, hi] zoom factors with 0.1 <= lo <= hi <= 10 "
                          "(or [] for off)", "data.aug.scale_jitter")
    if aug.color is not None and not 0.0 <= aug.color <= 2.0:
        raise ConfigError(f"data.aug.color={aug.color}: colour jitter strength must be in [0, 2] (1 = the SSD "
                          "recipe's; null keeps the recipe's)", "data.aug.color")


#: The test-time augmentation modes of ``eval.tta`` and ``--tta`` (:data:`multibox.tta.TTA_MODES` has their views;
#: named here too so that reading a config does not import torch).
TTA_MODE_NAMES: tuple[str, ...] = ("hflip", "flips", "dihedral", "hflip+shift", "flips+shift", "dihedral+shift")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _float_fields(cfg: Any, prefix: str = "") -> list[tuple[str, float]]:
    """``(dotted key, value)`` of every float (and list-of-float) field of a config dataclass, recursively."""
    out: list[tuple[str, float]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += _float_fields(value, key + ".")
        elif isinstance(value, float):
            out.append((key, value))
        elif isinstance(value, list):
            out += [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float)]
    return out


# ------------------------------------------------------------------------------------------- dict <-> dataclass
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (JSON/YAML-safe) of a config dataclass."""
    return dataclasses.asdict(cfg)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# a number in exponent notation without a dot (``1e-3``, ``5E-4``), which PyYAML leaves a string
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked (and lightly converted: int -> float, tuple -> list) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}", key)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", key)
        return _from_dict(tp, value, key)
    if tp is Any:
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key)
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", key)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key)
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            return float(value)  # 1e-3: YAML 1.1 (PyYAML) needs a dot to read it as a number, users do not
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key}: expected a string, got {value!r}", key)
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; known: {', '.join(sorted(names))}", full)
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated :class:`TrainConfig` from a (possibly partial) nested dict; missing keys take defaults."""
    return _from_dict(TrainConfig, data).validate()


# ----------------------------------------------------------------------------------------------- overrides
def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys, YAML values) to a nested config dict, in order.

    Keys must exist in :class:`TrainConfig` (except inside free-form mappings such as ``model.kwargs``).
    Returns a new dict; raises :class:`ConfigError` naming the override.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example optim.lr=0.01)")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key part")
        cls: Any = TrainConfig
        node = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if cls is not None:
                hints = _hints(cls)
                if part not in hints:
                    where = ".".join(parts[:depth]) or "the top level"
                    raise ConfigError(f"override {item!r}: no key {part!r} in {where}; "
                                      f"known: {', '.join(sorted(hints))}")
                tp = hints[part]
                cls = tp if _is_dataclass_type(tp) else None
            if last:
                node[part] = _parse_value(text)
            else:
                nxt = node.get(part)
                if nxt is None:
                    nxt = {}
                if not isinstance(nxt, dict):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a mapping")
                node[part] = nxt
                node = nxt
    return out


# ---------------------------------------------------------------------------------------------- YAML files
def recipes_dir() -> Path:
    """The folder of the packaged recipes."""
    return Path(__file__).resolve().parent / "configs"


def list_recipes() -> list[str]:
    """Names of the packaged recipes (``src/multibox/configs/*.yaml``, linked as ``configs/``)."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of recipe ``name``."""
    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(list_recipes())} (or give a YAML file)")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(source: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a recipe name or YAML file (``None``: all defaults) plus overrides.

    A YAML file may say ``base: RECIPE_OR_FILE`` to start from another config (resolved relative to it).
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if source is not None:
        data, origin = _load_with_base(source, depth=0)
    return config_with_overrides(data, overrides, origin)


def config_with_overrides(data: dict[str, Any], overrides: list[str] | None, origin: str) -> TrainConfig:
    """A validated :class:`TrainConfig` from the nested dict ``data`` (read from ``origin``: a file, a
    checkpoint, ``"defaults"``) with ``key=value`` overrides on top. A :class:`ConfigError` names the override
    that set the bad value, else ``origin``."""
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        item = _override_setting(overrides, e.key)
        where = f"override {item}" if item is not None else origin
        raise ConfigError(f"{where}: {e}", e.key) from None


def _override_setting(overrides: list[str], key: str | None) -> str | None:
    """The last override that set ``key`` (a dotted key, maybe with ``[i]``) or a mapping holding it."""
    if key is None:
        return None
    key = re.sub(r"\[\d+\]", "", key)
    for item in reversed(overrides):
        k = item.split("=", 1)[0].strip()
        if key == k or key.startswith(k + ".") or k.startswith(key + "."):
            return item
    return None


def _load_with_base(source: str | os.PathLike, depth: int, relative_to: Path | None = None
                    ) -> tuple[dict[str, Any], str]:
    if depth > 8:
        raise ConfigError(f"{source}: 'base' chain is too deep (a cycle?)")
    text = os.fspath(source)
    path = Path(text)
    if relative_to is not None and not path.is_absolute() and (relative_to / path).is_file():
        path = relative_to / path
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = recipe_path(text)
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        parent, _ = _load_with_base(str(base), depth + 1, path.parent)
        data = _merge(parent, data)
    return data, str(path)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else v
    return out


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML text (what a run saves as ``config.yaml``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def resolve_precision(precision: str, device: Any) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` on ``device`` (a ``torch.device``): ``auto`` is ``bf16``
    where the device computes bf16 natively (CPU: oneDNN reports bf16 support, i.e. AVX-512 BF16 or AMX; CUDA:
    ``torch.cuda.is_bf16_supported()``), else ``fp32``; other values are returned as they are."""
    if precision != "auto":
        return precision
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cpu":
        native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    elif kind == "cuda":
        native = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    else:
        native = False
    return "bf16" if native else "fp32"
