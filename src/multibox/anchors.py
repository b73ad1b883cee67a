"""Prior (default) boxes with the semantics of Caffe SSD's ``PriorBox`` layer.

Conventions (see docs/design.md):

* priors are **normalized cxcywh** in [0, 1] (unclipped unless ``clip=True``), float32, shape ``[P, 4]``;
* order: feature map by feature map, then row-major over ``(y, x)``, then the boxes of one location in
  Caffe's order: for each ``min_size`` the square ``min_size`` box, then (if given) the square box of side
  ``sqrt(min_size * max_size)``, then one box per aspect ratio other than 1 in the order
  ``[ar_1, 1/ar_1, ar_2, 1/ar_2, ...]`` (``1/ar`` only with ``flip``), width ``min_size * sqrt(ar)`` and
  height ``min_size / sqrt(ar)``;
* box centres are ``(x + offset) * step`` pixels, divided by the image size.

Caffe casts ``min_size`` and ``max_size`` to ``int`` inside the layer (``int min_size_ = min_sizes_[s]``), so
a prototxt that says ``min_size: 35.84`` really builds 35-pixel boxes. ``PriorConfig.caffe_int_sizes``
reproduces that (on in the Caffe presets below); switch it off for the float sizes of the paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .limits import check_input_size

__all__ = [
    "PriorLevel",
    "PriorConfig",
    "PriorBoxGenerator",
    "caffe_min_max_sizes",
    "paper_scales",
    "config_from_scales",
    "PRIOR_PRESETS",
    "get_prior_preset",
    "scale_prior_config",
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
    "prior_config_to_dict",
    "prior_config_from_dict",
]


# The box conversions of the rest of multibox are torchvision.ops.box_convert (bit-identical to these two). This
# module keeps its own so that prior generation (`multibox anchors`, PriorBoxGenerator) does not import torchvision
# (1.2 s): tests/test_anchors.py::test_anchors_module_does_not_import_torchvision.
def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x1, y1, x2, y2), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> ``[..., 4]`` (cx, cy, w, h), same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), dim=-1)


@dataclass(frozen=True)
class PriorLevel:
    """Prior boxes of one feature map, as the fields of a Caffe ``PriorBoxParameter``.

    Sizes and steps are in pixels of the network input. ``step=None`` means ``image_size / feature_size``
    (Caffe's behaviour when no step is given); a float or an ``(step_h, step_w)`` pair fixes it.
    """

    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...] = ()
    aspect_ratios: tuple[float, ...] = ()
    flip: bool = True
    step: float | tuple[float, float] | None = None
    offset: float = 0.5

    def __post_init__(self) -> None:
        if not self.min_sizes:
            raise ValueError("PriorLevel needs at least one min_size")
        if any(s <= 0 for s in self.min_sizes):
            raise ValueError(f"min_sizes must be positive, got {self.min_sizes}")
        if self.max_sizes and len(self.max_sizes) != len(self.min_sizes):
            raise ValueError(
                f"max_sizes {self.max_sizes} must have one entry per min_size {self.min_sizes} (or be empty)"
            )
        for lo, hi in zip(self.min_sizes, self.max_sizes, strict=False):
            if hi <= lo:
                raise ValueError(f"max_size {hi} must be greater than min_size {lo}")
        if any(a <= 0 for a in self.aspect_ratios):
            raise ValueError(f"aspect ratios must be positive, got {self.aspect_ratios}")

    def ratios(self) -> list[float]:
        """Caffe's expanded aspect-ratio list: ``[1, ar_1, 1/ar_1, ar_2, ...]`` without duplicates."""
        out = [1.0]
        for ar in self.aspect_ratios:
            if any(abs(ar - r) < 1e-6 for r in out):
                continue
            out.append(float(ar))
            if self.flip:
                out.append(1.0 / ar)
        return out

    @property
    def num_priors(self) -> int:
        """Boxes per feature-map location."""
        per_size = len(self.ratios()) + (1 if self.max_sizes else 0)
        return per_size * len(self.min_sizes)

    def box_sizes(self, int_sizes: bool = False) -> list[tuple[float, float]]:
        """``(width, height)`` in pixels of the boxes of one location, in Caffe's order."""
        sizes: list[tuple[float, float]] = []
        for s, min_size in enumerate(self.min_sizes):
            lo = float(int(min_size)) if int_sizes else float(min_size)
            sizes.append((lo, lo))
            if self.max_sizes:
                hi = float(int(self.max_sizes[s])) if int_sizes else float(self.max_sizes[s])
                side = math.sqrt(lo * hi)
                sizes.append((side, side))
            for ar in self.ratios():
                if abs(ar - 1.0) < 1e-6:
                    continue
                sizes.append((lo * math.sqrt(ar), lo / math.sqrt(ar)))
        return sizes


@dataclass(frozen=True)
class PriorConfig:
    """Priors of a whole detector: input size ``(height, width)`` in pixels and one level per feature map.

    ``clip`` clips the box corners to [0, 1] as Caffe's PriorBox ``clip: true`` does. ``clamp_wh`` instead
    clamps only the normalized width and height to at most 1, which is what torchvision's
    ``DefaultBoxGenerator(clip=True)`` does (its ssd300_vgg16 default): use it to reproduce torchvision priors.
    """

    image_size: tuple[int, int]
    levels: tuple[PriorLevel, ...]
    clip: bool = False
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    caffe_int_sizes: bool = False
    clamp_wh: bool = False

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be a positive (height, width), got {self.image_size}")
        if not self.levels:
            raise ValueError("PriorConfig needs at least one level")

    @property
    def num_priors_per_location(self) -> list[int]:
        return [lvl.num_priors for lvl in self.levels]

    def default_feature_sizes(self) -> list[tuple[int, int]]:
        """Feature-map sizes ``ceil(image / step)`` implied by the steps (what a stride-``step`` net yields).

        Models derive their real sizes from the network; this is for tools that have no network at hand.
        """
        out = []
        for lvl in self.levels:
            if lvl.step is None:
                raise ValueError("default_feature_sizes needs explicit steps on every level")
            sh, sw = _pair(lvl.step)
            out.append((math.ceil(self.image_size[0] / sh - 1e-9), math.ceil(self.image_size[1] / sw - 1e-9)))
        return out

    def with_image_size(self, image_size: tuple[int, int]) -> PriorConfig:
        return replace(self, image_size=(int(image_size[0]), int(image_size[1])))


def _pair(v: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(v, tuple | list):
        return float(v[0]), float(v[1])
    return float(v), float(v)


@dataclass
class PriorBoxGenerator:
    """Builds the ``[P, 4]`` normalized cxcywh priors of a :class:`PriorConfig` for given feature-map sizes.

    >>> gen = PriorBoxGenerator(get_prior_preset("ssd300-voc"))
    >>> gen(gen.config.default_feature_sizes()).shape
    torch.Size([8732, 4])
    """

    config: PriorConfig
    _cache: dict = field(default_factory=dict, repr=False)

    def level_priors(self, index: int, feature_size: tuple[int, int]) -> Tensor:
        """Priors of one level, ``[H * W * A, 4]`` normalized cxcywh float64, in Caffe order."""
        cfg = self.config
        lvl = cfg.levels[index]
        img_h, img_w = cfg.image_size
        fh, fw = int(feature_size[0]), int(feature_size[1])
        if lvl.step is None:
            step_h, step_w = img_h / fh, img_w / fw
        else:
            step_h, step_w = _pair(lvl.step)
        cy = (torch.arange(fh, dtype=torch.float64) + lvl.offset) * step_h
        cx = (torch.arange(fw, dtype=torch.float64) + lvl.offset) * step_w
        sizes = torch.tensor(lvl.box_sizes(cfg.caffe_int_sizes), dtype=torch.float64)  # [A, 2] (w, h)
        a = sizes.shape[0]
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")  # [fh, fw]
        centers = torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 1, 2).expand(-1, a, 2)
        wh = sizes.reshape(1, a, 2).expand(fh * fw, a, 2)
        boxes = torch.cat((centers, wh), dim=-1).reshape(-1, 4)
        boxes = boxes / torch.tensor([img_w, img_h, img_w, img_h], dtype=torch.float64)
        if cfg.clamp_wh:
            boxes = torch.cat((boxes[:, :2], boxes[:, 2:].clamp(0.0, 1.0)), dim=1)
        if cfg.clip:
            boxes = xyxy_to_cxcywh(cxcywh_to_xyxy(boxes).clamp(0.0, 1.0))
        return boxes

    def __call__(self, feature_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """All priors, ``[P, 4]`` float32 normalized cxcywh, ``P = sum(H_k * W_k * A_k)``."""
        key = tuple((int(h), int(w)) for h, w in feature_sizes)
        if len(key) != len(self.config.levels):
            raise ValueError(
                f"got {len(key)} feature maps but the prior config has {len(self.config.levels)} levels"
            )
        if key not in self._cache:
            parts = [self.level_priors(i, fs) for i, fs in enumerate(key)]
            self._cache[key] = torch.cat(parts, dim=0).to(torch.float32)
        return self._cache[key].clone()

    def num_priors(self, feature_sizes: Sequence[tuple[int, int]]) -> int:
        return sum(
            int(h) * int(w) * lvl.num_priors for (h, w), lvl in zip(feature_sizes, self.config.levels, strict=True)
        )


def caffe_min_max_sizes(
    min_dim: int,
    num_layers: int,
    min_ratio: int,
    max_ratio: int,
    first_min_ratio: float,
    first_max_ratio: float,
) -> tuple[list[float], list[float]]:
    """Min/max sizes as the Caffe SSD scripts compute them (``ssd_pascal.py``).

    The first layer gets ``first_min_ratio`` / ``first_max_ratio`` percent of ``min_dim``; the other
    ``num_layers - 1`` layers step ``floor((max_ratio - min_ratio) / (num_layers - 2))`` percent from
    ``min_ratio``. E.g. ``(300, 6, 20, 90, 10, 20)`` gives min 30, 60, 111, 162, 213, 264 and
    max 60, 111, 162, 213, 264, 315.
    """
    if num_layers < 3:
        raise ValueError("the Caffe formula needs at least 3 layers")
    step = int(math.floor((max_ratio - min_ratio) / (num_layers - 2)))
    mins = [min_dim * first_min_ratio / 100.0]
    maxs = [min_dim * first_max_ratio / 100.0]
    for ratio in range(min_ratio, max_ratio + 1, step):
        mins.append(min_dim * ratio / 100.0)
        maxs.append(min_dim * (ratio + step) / 100.0)
    return mins[:num_layers], maxs[:num_layers]


def paper_scales(num_layers: int, s_min: float = 0.2, s_max: float = 0.9) -> list[float]:
    """The paper's linear scales ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)``, ``k = 1..m``."""
    if num_layers == 1:
        return [s_min]
    return [s_min + (s_max - s_min) * k / (num_layers - 1) for k in range(num_layers)]


def config_from_scales(
    image_size: tuple[int, int],
    steps: Sequence[float | None],
    aspect_ratios: Sequence[Sequence[float]],
    s_min: float = 0.2,
    s_max: float = 0.9,
    scales: Sequence[float] | None = None,
    extra_box: bool = True,
    clip: bool = False,
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2),
) -> PriorConfig:
    """A :class:`PriorConfig` from the paper's scale parameterization.

    Level ``k`` gets ``min_size = s_k * min(image_size)`` and, with ``extra_box``, the paper's extra square box
    of scale ``sqrt(s_k s_{k+1})`` (``s_{m+1}`` extrapolated linearly, or the last of ``scales`` when
    ``len(scales) == m + 1``, torchvision style).
    """
    m = len(steps)
    if len(aspect_ratios) != m:
        raise ValueError("steps and aspect_ratios need one entry per feature map")
    if scales is None:
        s = paper_scales(m, s_min, s_max)
        nxt = s[-1] + (s[-1] - s[-2]) if m > 1 else 1.0
        s = s + [nxt]
    else:
        s = list(scales)
        if len(s) == m:
            s.append(s[-1] + (s[-1] - s[-2]) if m > 1 else 1.0)
        if len(s) != m + 1:
            raise ValueError(f"scales needs {m} or {m + 1} entries, got {len(s)}")
    dim = min(image_size)
    levels = tuple(
        PriorLevel(
            min_sizes=(s[k] * dim,),
            max_sizes=(s[k + 1] * dim,) if extra_box else (),
            aspect_ratios=tuple(aspect_ratios[k]),
            step=steps[k],
        )
        for k in range(m)
    )
    return PriorConfig(image_size=(int(image_size[0]), int(image_size[1])), levels=levels, clip=clip,
                       variances=variances)


def _caffe_preset(min_dim: int, steps: Sequence[int], ratios: Sequence[Sequence[float]],
                  sizes: tuple[list[float], list[float]]) -> PriorConfig:
    mins, maxs = sizes
    levels = tuple(
        PriorLevel(min_sizes=(mn,), max_sizes=(mx,), aspect_ratios=tuple(r), step=float(st))
        for mn, mx, r, st in zip(mins, maxs, ratios, steps, strict=True)
    )
    return PriorConfig(image_size=(min_dim, min_dim), levels=levels, clip=False, caffe_int_sizes=True)


_R300 = ([2], [2, 3], [2, 3], [2, 3], [2], [2])
_R512 = ([2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2])
_S300 = (8, 16, 32, 64, 100, 300)
_S512 = (8, 16, 32, 64, 128, 256, 512)

PRIOR_PRESETS: dict[str, PriorConfig] = {
    "ssd300-voc": _caffe_preset(300, _S300, _R300, caffe_min_max_sizes(300, 6, 20, 90, 10, 20)),
    "ssd300-coco": _caffe_preset(300, _S300, _R300, caffe_min_max_sizes(300, 6, 15, 90, 7, 15)),
    "ssd512-voc": _caffe_preset(512, _S512, _R512, caffe_min_max_sizes(512, 7, 15, 90, 7, 15)),
    "ssd512-coco": _caffe_preset(512, _S512, _R512, caffe_min_max_sizes(512, 7, 10, 90, 4, 10)),
}


def scale_prior_config(cfg: PriorConfig, image_size: Sequence[int]) -> PriorConfig:
    """``cfg`` for an input of ``image_size (h, w)``: every box size times ``min(image_size) / min(cfg.image_size)``
    (the same fractions of the image), steps left to the map sizes (``step=None``: ``image size / map size``, the
    centres of a network whose maps are ``ceil(H / stride)``), Caffe's integer truncation of sizes off. The same
    ``cfg`` when the size does not change. E.g. ``ssd300-voc`` at 128x128: sizes 12.8 .. 110.9 pixels for maps 16,
    8, 4, 2, 1, 1."""
    size = (int(image_size[0]), int(image_size[1]))
    if size == tuple(cfg.image_size):
        return cfg
    if min(size) <= 0:
        raise ValueError(f"image_size must be a positive (height, width), got {tuple(image_size)}")
    f = min(size) / min(cfg.image_size)
    levels = tuple(replace(lvl, min_sizes=tuple(s * f for s in lvl.min_sizes),
                           max_sizes=tuple(s * f for s in lvl.max_sizes), step=None) for lvl in cfg.levels)
    return replace(cfg, image_size=size, levels=levels, caffe_int_sizes=False)


def get_prior_preset(name: str) -> PriorConfig:
    """A named prior configuration (see ``PRIOR_PRESETS``)."""
    try:
        return PRIOR_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown prior preset {name!r}; known: {', '.join(sorted(PRIOR_PRESETS))}") from None


# ------------------------------------------------------------------------------------ priors as config data
_LEVEL_KEYS = ("min_sizes", "max_sizes", "aspect_ratios", "flip", "step", "offset")
_CONFIG_KEYS = ("image_size", "levels", "clip", "variances", "caffe_int_sizes", "clamp_wh")
_MAX_LEVELS = 32
_MAX_SIZES = 64


def prior_config_to_dict(cfg: PriorConfig) -> dict[str, Any]:
    """``cfg`` as plain YAML/JSON data (what ``model.kwargs.priors`` in a training config holds; read back by
    :func:`prior_config_from_dict`). Only plain :class:`PriorLevel` levels can be written: a subclass (e.g. the
    SSDLite lowest level) raises ``ValueError``."""
    levels = []
    for k, lvl in enumerate(cfg.levels):
        if type(lvl) is not PriorLevel:
            raise ValueError(f"level {k} is a {type(lvl).__name__}, which a prior config file cannot describe")
        step = list(lvl.step) if isinstance(lvl.step, tuple | list) else lvl.step
        levels.append({"min_sizes": [float(v) for v in lvl.min_sizes], "max_sizes": [float(v) for v in lvl.max_sizes],
                       "aspect_ratios": [float(v) for v in lvl.aspect_ratios], "flip": bool(lvl.flip),
                       "step": step, "offset": float(lvl.offset)})
    return {"image_size": [int(cfg.image_size[0]), int(cfg.image_size[1])], "levels": levels, "clip": bool(cfg.clip),
            "variances": [float(v) for v in cfg.variances], "caffe_int_sizes": bool(cfg.caffe_int_sizes),
            "clamp_wh": bool(cfg.clamp_wh)}


def _numbers(value: object, where: str, count: int | None = None) -> tuple[float, ...]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or len(value) > _MAX_SIZES:
        raise ValueError(f"{where}: expected a list of at most {_MAX_SIZES} numbers, got {value!r}"[:300])
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
            raise ValueError(f"{where}: {v!r} is not a finite number"[:300])
        out.append(float(v))
    if count is not None and len(out) != count:
        raise ValueError(f"{where}: expected {count} numbers, got {len(out)}")
    return tuple(out)


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected true or false, got {value!r}"[:300])
    return value


def prior_config_from_dict(data: Mapping[str, Any], source: str = "priors") -> PriorConfig:
    """A :class:`PriorConfig` from the data :func:`prior_config_to_dict` writes (``model.kwargs.priors`` of a
    training config, the fragment ``multibox anchors fit`` proposes).

    Keys: ``image_size [H, W]`` and ``levels`` (a list of ``{min_sizes, max_sizes, aspect_ratios, flip, step,
    offset}``; only ``min_sizes`` is required, ``step`` is a number, ``[step_h, step_w]`` or null) are required;
    ``clip``, ``variances``, ``caffe_int_sizes`` and ``clamp_wh`` are optional. Sizes and steps are input pixels.
    Raises ``ValueError`` naming ``source`` and the key for unknown keys, wrong types or values out of range (the
    input size is bounded by :mod:`multibox.limits`).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping with image_size and levels, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(_CONFIG_KEYS)}")
    for key in ("image_size", "levels"):
        if key not in data:
            raise ValueError(f"{source}: missing {key}")
    image_size = check_input_size(data["image_size"], f"{source}.image_size")
    if len(image_size) != 2:
        raise ValueError(f"{source}.image_size: expected [height, width], got {list(image_size)}")
    raw_levels = data["levels"]
    if not isinstance(raw_levels, list | tuple) or not 1 <= len(raw_levels) <= _MAX_LEVELS:
        raise ValueError(f"{source}.levels: expected a list of 1..{_MAX_LEVELS} levels")
    levels = []
    for k, raw in enumerate(raw_levels):
        where = f"{source}.levels[{k}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
        bad = sorted(set(raw) - set(_LEVEL_KEYS))
        if bad:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, bad))}; known: {', '.join(_LEVEL_KEYS)}")
        if "min_sizes" not in raw:
            raise ValueError(f"{where}: missing min_sizes")
        kw: dict[str, Any] = {"min_sizes": _numbers(raw["min_sizes"], f"{where}.min_sizes")}
        for key in ("max_sizes", "aspect_ratios"):
            if raw.get(key) is not None:
                kw[key] = _numbers(raw[key], f"{where}.{key}")
        if "flip" in raw:
            kw["flip"] = _flag(raw["flip"], f"{where}.flip")
        if raw.get("offset") is not None:
            kw["offset"] = _numbers(raw["offset"], f"{where}.offset", 1)[0]
        step = raw.get("step")
        if step is not None:
            steps = _numbers(step, f"{where}.step")
            if len(steps) not in (1, 2) or min(steps) <= 0:
                raise ValueError(f"{where}.step: expected a positive number or [step_h, step_w], got {step!r}")
            kw["step"] = steps[0] if len(steps) == 1 else steps
        try:
            levels.append(PriorLevel(**kw))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    kw = {}
    for key in ("clip", "caffe_int_sizes", "clamp_wh"):
        if key in data:
            kw[key] = _flag(data[key], f"{source}.{key}")
    if "variances" in data:
        variances = _numbers(data["variances"], f"{source}.variances", 4)
        if min(variances) <= 0:
            raise ValueError(f"{source}.variances: must be positive, got {list(variances)}")
        kw["variances"] = variances
    return PriorConfig(image_size=(image_size[0], image_size[1]), levels=tuple(levels), **kw)
