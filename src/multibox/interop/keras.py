"""ssd_keras importer: a Keras ``.h5`` weight file of the ssd_keras family -> a multibox detector bundle.

``import_keras("ssd300_pascal.h5", out_dir, arch="ssd300")`` reads the file with h5py (TensorFlow and Keras are
not needed) and rebuilds the network as a multibox model loaded with its weights:

* ``ssd300`` / ``ssd512`` (``ssd300_vgg16`` / ``ssd512_vgg16``): layers ``conv1_1`` .. ``conv5_3``, ``fc6``
  (3x3, dilation 6), ``fc7``, the extras ``conv6_1``/``conv6_2`` .. ``conv9_*`` (SSD512: .. ``conv10_*``, the last a
  4x4 conv), ``conv4_3_norm`` (``L2Normalization``, its ``gamma`` of shape ``[512]``), and per source map
  ``<source>_mbox_conf`` / ``<source>_mbox_loc`` (3x3 convs, sources ``conv4_3_norm``, ``fc7``, ``conv6_2`` ..);
* ``ssd7`` (``ssd7``): ``conv1`` .. ``conv7`` (5x5 then 3x3 convs with bias), ``bn1`` .. ``bn7``
  (``BatchNormalization``, epsilon 0.001), predictors ``classes4`` .. ``classes7`` / ``boxes4`` .. ``boxes7``;
* ``ssd300_mobilenetv1_3x3`` / ``ssd300_mobilenetv1_1x1`` (``ssd300_mobilenetv1_keras_3x3`` / ``_1x1``, the ssd_keras
  fork's MobileNetV1 SSDs): Keras applications' MobileNetV1 ``conv1``, ``conv1_bn``, ``conv_dw_k`` (a
  ``DepthwiseConv2D``, kernel ``[3, 3, C, 1]`` -> ``[C, 1, 3, 3]``), ``conv_dw_k_bn``, ``conv_pw_k``,
  ``conv_pw_k_bn`` (k = 1..13, no conv bias), the extras ``conv14_1`` / ``bn14_1`` / ``conv14_2`` / ``bn14_2`` ..
  ``bn17_2`` (convs with bias), predictors ``<s>_mbox_conf`` / ``<s>_mbox_loc`` for ``s`` in ``conv11``,
  ``conv13``, ``conv14_2`` .. ``conv17_2`` (3x3 or 1x1); Keras' width multiplier ``alpha`` is read off
  ``conv_pw_13`` (``1024 * alpha`` channels).

Files written by ``model.save_weights("x.h5")`` (layer groups at the root) and by ``model.save("x.h5")`` (under
``model_weights``) are read the same way: a layer group lists its weights in its ``weight_names`` attribute
(``conv1_1/kernel:0``, ``conv1_1/bias:0``; ``bn1/gamma:0``, ``beta``, ``moving_mean``, ``moving_variance``;
``conv4_3_norm/conv4_3_norm_gamma:0``). Keras kernels ``[kh, kw, in, out]`` become ``[out, in, kh, kw]``; the
bias of an SSD7 conv is folded into the running mean of the batch norm after it, and Keras' epsilon (0.001) into
its running variance.

**What the file does not hold** is given by ``--arch`` (the defaults of ssd_keras' training scripts), replaced by
what a full ``model.save`` file's ``model_config`` says of its ``AnchorBoxes`` and ``DecodeDetections`` layers
(:func:`config_from_file`; steps and offsets are not in their config), and may be overridden on the command line,
exactly with ssd_keras' argument names (:class:`KerasSSDConfig`): the image size, ``scales``,
``aspect_ratios`` per predictor layer, ``two_boxes_for_ar1``, ``steps``, ``offsets``, ``clip_boxes``,
``variances`` (``coords`` must be ``centroids``), ``subtract_mean`` / ``divide_by_stddev`` / ``swap_channels``
and the decoding settings ``confidence_thresh``, ``iou_threshold``, ``top_k``.

**Anchors** are ssd_keras' ``AnchorBoxes`` exactly (:func:`keras_anchors`): box sizes ``scale * min(H, W)``
scaled by ``sqrt(ar)``, the extra ``sqrt(s_k s_k+1)`` square for ratio 1, centres ``(offset + i) * step`` (the
step is ``image_size / feature_size`` where none is given), ``clip_boxes`` clipping the corners to ``[0, W - 1]``
pixels, then normalized. A location's boxes come in the order of the aspect-ratio list (SSD7's
``[0.5, 1, 2]``: the 1/2 box, the two squares, the 2 box); multibox lists the squares first, so the output
channels of the predictor convolutions are permuted (``prior_order`` in the report: our prior ``i`` is Keras
anchor ``prior_order[i]``) and the bundle's priors are Keras' anchors in our order.

**Decoding** is ssd_keras' ``DecodeDetections`` layer: softmax scores, ``CENTER_SIZE`` decoding with the
variances, per foreground class the scores ``> confidence_thresh``, greedy NMS at ``iou_threshold`` (no
candidate cap before NMS; its ``nms_max_output_size`` per class never matters once it is at least ``top_k``),
then the ``top_k`` best boxes over all classes; boxes are not clipped. The bundle's post-processing is exactly
that (``top_k=0``, ``keep_top_k=top_k``, ``clip=False``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..anchors import PriorConfig, PriorLevel, prior_config_to_dict
from ..fileio import atomic_write_bytes, check_output_dir
from ..limits import check_input_size, check_num_classes
from ..models import build_model
from ..models.spec import InputSpec
from .bundle import DetectorBundle, save_bundle
from .registry import parse_classes, parse_floats, register_importer

__all__ = ["KerasImportError", "KerasSSDConfig", "KERAS_ARCHS", "read_keras_weights", "keras_anchors",
           "keras_layer_map", "convert_keras", "import_keras",
           "config_from_args", "config_from_file"]


class KerasImportError(ValueError):
    """A Keras file that cannot be read or converted (the message names the file and the problem)."""


@dataclass(frozen=True)
class KerasSSDConfig:
    """What an ssd_keras model was built with (the arguments of its ``ssd_300`` / ``ssd_512`` / ``build_model``).

    Attributes:
        model: the multibox model it becomes; sources: the predictor layers' base names (``<s>_mbox_conf``, or
            ``classes<s>`` for SSD7).
        image_size: ``(height, width)``.
        scales: ``len(sources) + 1`` fractions of ``min(height, width)``.
        aspect_ratios: one list per predictor layer, in ssd_keras' order.
        steps / offsets: per layer, ``None`` (ssd_keras' default: ``image_size / feature_size`` and 0.5).
        subtract_mean / divide_by_stddev: per RGB channel (``None``: none); swap_channels: ``(2, 1, 0)`` (RGB ->
            BGR after the mean) or ``None``.
    """

    model: str
    sources: tuple[str, ...]
    image_size: tuple[int, int]
    scales: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    two_boxes_for_ar1: bool = True
    steps: tuple[float | None, ...] | None = None
    offsets: tuple[float | None, ...] | None = None
    clip_boxes: bool = False
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    subtract_mean: tuple[float, float, float] | None = None
    divide_by_stddev: tuple[float, float, float] | None = None
    swap_channels: tuple[int, int, int] | None = None
    confidence_thresh: float = 0.01
    iou_threshold: float = 0.45
    top_k: int = 200
    extras: tuple[tuple[str, str], ...] = field(default=())

    def check(self, source: object) -> None:
        """Raise :class:`KerasImportError` naming ``source`` when the settings are inconsistent."""
        n = len(self.sources)
        if len(self.scales) != n + 1:
            raise KerasImportError(f"{source}: scales needs {n + 1} values for {n} predictor layers, got "
                                   f"{len(self.scales)}")
        if any(not (s > 0) for s in self.scales):
            raise KerasImportError(f"{source}: scales must be positive, got {list(self.scales)}")
        if len(self.aspect_ratios) != n:
            raise KerasImportError(f"{source}: aspect_ratios needs {n} lists, got {len(self.aspect_ratios)}")
        for ars in self.aspect_ratios:
            if sum(1 for a in ars if a == 1) != 1:
                raise KerasImportError(f"{source}: every aspect-ratio list must hold 1 exactly once (got "
                                       f"{list(ars)}); lists without a square box are not supported")
            if any(not (a > 0) for a in ars) or len(set(ars)) != len(ars):
                raise KerasImportError(f"{source}: aspect ratios must be positive and distinct, got {list(ars)}")
        for what, vals in (("steps", self.steps), ("offsets", self.offsets)):
            if vals is not None and len(vals) != n:
                raise KerasImportError(f"{source}: {what} needs {n} values, got {len(vals)}")
        if any(not (v > 0) for v in self.variances):
            raise KerasImportError(f"{source}: variances must be positive, got {list(self.variances)}")
        if self.swap_channels not in (None, (2, 1, 0), (0, 1, 2)):
            raise KerasImportError(f"{source}: swap_channels must be 2,1,0 or none, got {self.swap_channels}")
        if self.divide_by_stddev is not None and any(not (v > 0) for v in self.divide_by_stddev):
            raise KerasImportError(f"{source}: divide_by_stddev must be positive")
        check_input_size(self.image_size, source)

    def boxes_per_location(self) -> list[int]:
        """ssd_keras' ``n_boxes``: ``len(ar) + 1`` with ``two_boxes_for_ar1`` (every list holds 1)."""
        return [len(a) + (1 if self.two_boxes_for_ar1 else 0) for a in self.aspect_ratios]


_VOC300_RATIOS = ((1.0, 2.0, 0.5), (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0), (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
                  (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0), (1.0, 2.0, 0.5), (1.0, 2.0, 0.5))

#: the predictor sources of the MobileNetV1 variants: ``conv_pw_11`` and ``conv_pw_13`` (19x19, 10x10 at
#: 300x300), then the extra blocks' ``conv14_2`` .. ``conv17_2``
_MOBILENET_SOURCES = ("conv11", "conv13", "conv14_2", "conv15_2", "conv16_2", "conv17_2")

#: ``--arch`` presets: ssd_keras' training defaults (SSD300/SSD512: Pascal VOC scales, the weights ported from
#: the original Caffe SSD; SSD7: ``ssd7_training``'s settings; the MobileNetV1 variants: SSD300's VOC scales and
#: ratios, steps from the map sizes, Keras' MobileNet input ``x / 127.5 - 1`` in RGB).
KERAS_ARCHS: dict[str, KerasSSDConfig] = {
    "ssd300": KerasSSDConfig(
        model="ssd300_vgg16", sources=("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"),
        image_size=(300, 300), scales=(0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05), aspect_ratios=_VOC300_RATIOS,
        steps=(8, 16, 32, 64, 100, 300), offsets=(0.5,) * 6, subtract_mean=(123.0, 117.0, 104.0),
        swap_channels=(2, 1, 0),
        extras=(("conv6_1", "extras.conv8.reduce"), ("conv6_2", "extras.conv8.expand"),
                ("conv7_1", "extras.conv9.reduce"), ("conv7_2", "extras.conv9.expand"),
                ("conv8_1", "extras.conv10.reduce"), ("conv8_2", "extras.conv10.expand"),
                ("conv9_1", "extras.conv11.reduce"), ("conv9_2", "extras.conv11.expand"))),
    "ssd512": KerasSSDConfig(
        model="ssd512_vgg16",
        sources=("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"),
        image_size=(512, 512), scales=(0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05),
        aspect_ratios=(*_VOC300_RATIOS[:4], (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0), (1.0, 2.0, 0.5), (1.0, 2.0, 0.5)),
        steps=(8, 16, 32, 64, 128, 256, 512), offsets=(0.5,) * 7, subtract_mean=(123.0, 117.0, 104.0),
        swap_channels=(2, 1, 0),
        extras=tuple((f"conv{6 + i}_{j}", f"extras.conv{8 + i}.{part}")
                     for i in range(5) for j, part in ((1, "reduce"), (2, "expand")))),
    "ssd300_mobilenetv1_3x3": KerasSSDConfig(
        model="ssd300_mobilenetv1_keras_3x3", sources=_MOBILENET_SOURCES, image_size=(300, 300),
        scales=(0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05), aspect_ratios=_VOC300_RATIOS, steps=None, offsets=None,
        subtract_mean=(127.5,) * 3, divide_by_stddev=(127.5,) * 3),
    "ssd300_mobilenetv1_1x1": KerasSSDConfig(
        model="ssd300_mobilenetv1_keras_1x1", sources=_MOBILENET_SOURCES, image_size=(300, 300),
        scales=(0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05), aspect_ratios=_VOC300_RATIOS, steps=None, offsets=None,
        subtract_mean=(127.5,) * 3, divide_by_stddev=(127.5,) * 3),
    "ssd7": KerasSSDConfig(
        model="ssd7", sources=("4", "5", "6", "7"), image_size=(300, 480), scales=(0.08, 0.16, 0.32, 0.64, 0.96),
        aspect_ratios=((0.5, 1.0, 2.0),) * 4, steps=None, offsets=None, variances=(1.0, 1.0, 1.0, 1.0),
        subtract_mean=(127.5,) * 3, divide_by_stddev=(127.5,) * 3),
}

#: the most values one weight array may hold (VGG's fc6 has 4.7 million); a larger one is refused unread
_MAX_WEIGHT_ELEMENTS = 1 << 27

_VGG_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
               "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7")


# ------------------------------------------------------------------------------------------------ h5 reading
def _short(name: str) -> str:
    """``conv1_1/kernel:0`` -> ``kernel``; ``conv4_3_norm/conv4_3_norm_gamma:0`` -> ``conv4_3_norm_gamma``."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _decode(v: Any) -> str:  # noqa: ANN401 (h5py attribute values: bytes or str)
    return v.decode("utf8") if isinstance(v, bytes | np.bytes_) else str(v)


def read_keras_weights(path: str | os.PathLike) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every layer's weights in a Keras ``.h5`` file: ``{layer: [(weight short name, array), ...]}`` in the
    layer's own order (``weight_names``). Reads ``model.save_weights`` files (groups at the root), full
    ``model.save`` files (under ``model_weights``). Keras 3's ``.weights.h5`` (layers named by class, ``conv2d_1``)
    and anything else raise :class:`KerasImportError` naming the file."""
    import h5py  # a dependency, but only this importer reads HDF5: `multibox import --list` must not load it

    p = Path(path)
    if not p.is_file():
        raise KerasImportError(f"{p}: Keras weight file not found")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise KerasImportError(f"{p}: not an HDF5 file ({e})") from None
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            for lname in (_decode(n) for n in root.attrs["layer_names"]):
                if lname not in root:
                    raise KerasImportError(f"{p}: layer {lname!r} is listed but has no group")
                g = root[lname]
                names = [_decode(n) for n in g.attrs.get("weight_names", [])]
                for n in names:  # a compressed dataset may claim any size: bound it before reading
                    size = getattr(g.get(n), "size", None)
                    if size is None or size > _MAX_WEIGHT_ELEMENTS:
                        raise KerasImportError(f"{p}: layer {lname!r}: weight {n!r} is missing or larger than "
                                               f"{_MAX_WEIGHT_ELEMENTS} values")
                try:
                    out[lname] = [(_short(n), np.asarray(g[n], dtype=np.float32)) for n in names]
                except (KeyError, TypeError, ValueError) as e:
                    raise KerasImportError(f"{p}: layer {lname!r}: unreadable weight ({e})") from None
        elif "layers" in f and isinstance(f["layers"], h5py.Group) and "vars" in f:
            raise KerasImportError(f"{p}: a Keras 3 .weights.h5 file, which names layers by class (conv2d, "
                                   "conv2d_1, ...) instead of ssd_keras' layer names; save the model with "
                                   "model.save('x.h5') (or Keras 2's save_weights) and import that")
        else:
            raise KerasImportError(f"{p}: not a Keras weight file (no layer_names attribute, no model_weights "
                                   "or layers group)")
    return out


# ------------------------------------------------------------------------------------------------- anchors
def keras_anchors(cfg: KerasSSDConfig, feature_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """ssd_keras' ``AnchorBoxes`` of every predictor layer, ``[P, 4]`` normalized ``(cx, cy, w, h)`` float32, in
    Keras' order (layer, row, column, box of the location in the aspect-ratio list's order).

    Computed in float64 as the layer does (NumPy), including ``clip_boxes`` (corners clipped to ``[0, W - 1]`` /
    ``[0, H - 1]`` pixels before normalization)."""
    img_h, img_w = (int(v) for v in cfg.image_size)
    size = min(img_h, img_w)
    parts = []
    for k, (fh, fw) in enumerate(feature_sizes):
        s, s_next = float(cfg.scales[k]), float(cfg.scales[k + 1])
        wh = []
        for ar in cfg.aspect_ratios[k]:
            if ar == 1:
                wh.append((s * size, s * size))
                if cfg.two_boxes_for_ar1:
                    side = math.sqrt(s * s_next) * size
                    wh.append((side, side))
            else:
                wh.append((s * size * math.sqrt(ar), s * size / math.sqrt(ar)))
        wh_arr = np.array(wh, dtype=np.float64)
        step = None if cfg.steps is None else cfg.steps[k]
        if step is None:
            step_h, step_w = img_h / fh, img_w / fw
        elif isinstance(step, list | tuple):
            step_h, step_w = float(step[0]), float(step[1])
        else:
            step_h = step_w = float(step)
        off = None if cfg.offsets is None else cfg.offsets[k]
        if off is None:
            off_h = off_w = 0.5
        elif isinstance(off, list | tuple):
            off_h, off_w = float(off[0]), float(off[1])
        else:
            off_h = off_w = float(off)
        cy = np.linspace(off_h * step_h, (off_h + fh - 1) * step_h, fh)
        cx = np.linspace(off_w * step_w, (off_w + fw - 1) * step_w, fw)
        cxg, cyg = np.meshgrid(cx, cy)
        n = len(wh_arr)
        boxes = np.zeros((fh, fw, n, 4), dtype=np.float64)
        boxes[..., 0] = cxg[..., None] - 0.5 * wh_arr[:, 0]
        boxes[..., 1] = cyg[..., None] - 0.5 * wh_arr[:, 1]
        boxes[..., 2] = cxg[..., None] + 0.5 * wh_arr[:, 0]
        boxes[..., 3] = cyg[..., None] + 0.5 * wh_arr[:, 1]
        if cfg.clip_boxes:
            x = boxes[..., [0, 2]]
            x[x >= img_w] = img_w - 1
            x[x < 0] = 0
            boxes[..., [0, 2]] = x
            y = boxes[..., [1, 3]]
            y[y >= img_h] = img_h - 1
            y[y < 0] = 0
            boxes[..., [1, 3]] = y
        boxes[..., [0, 2]] /= img_w
        boxes[..., [1, 3]] /= img_h
        cxcywh = np.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2,
                           boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], axis=-1)
        parts.append(cxcywh.reshape(-1, 4))
    return np.concatenate(parts, 0).astype(np.float32)


def _location_order(ars: Sequence[float], two_boxes: bool) -> list[int]:
    """For one location: our box ``j`` (squares first, then the other ratios in list order) is Keras box
    ``order[j]``."""
    keras_kinds: list[tuple[str, float]] = []
    for ar in ars:
        if ar == 1:
            keras_kinds.append(("min", 1.0))
            if two_boxes:
                keras_kinds.append(("max", 1.0))
        else:
            keras_kinds.append(("ar", float(ar)))
    ours = [("min", 1.0)] + ([("max", 1.0)] if two_boxes else []) + [("ar", float(a)) for a in ars if a != 1]
    return [keras_kinds.index(kind) for kind in ours]


def _prior_config(cfg: KerasSSDConfig) -> PriorConfig:
    """A multibox :class:`PriorConfig` with the same boxes per location, in our (squares first) order; its own
    generator reproduces :func:`keras_anchors` without ``clip_boxes`` (the bundle carries the exact anchors)."""
    dim = min(cfg.image_size)
    levels = []
    for k, ars in enumerate(cfg.aspect_ratios):
        step = None if cfg.steps is None else cfg.steps[k]
        off = None if cfg.offsets is None else cfg.offsets[k]
        levels.append(PriorLevel(
            min_sizes=(float(cfg.scales[k]) * dim,),
            max_sizes=(float(cfg.scales[k + 1]) * dim,) if cfg.two_boxes_for_ar1 else (),
            aspect_ratios=tuple(float(a) for a in ars if a != 1), flip=False,
            step=(tuple(float(v) for v in step) if isinstance(step, list | tuple)  # type: ignore[arg-type]
                  else None if step is None else float(step)),
            offset=0.5 if off is None or isinstance(off, list | tuple) else float(off)))
    return PriorConfig(image_size=(int(cfg.image_size[0]), int(cfg.image_size[1])), levels=tuple(levels),
                       variances=tuple(float(v) for v in cfg.variances))  # type: ignore[arg-type]


def _input_spec(cfg: KerasSSDConfig) -> InputSpec:
    mean = cfg.subtract_mean or (0.0, 0.0, 0.0)
    std = cfg.divide_by_stddev or (1.0, 1.0, 1.0)
    if cfg.swap_channels == (2, 1, 0):  # ssd_keras subtracts the RGB mean, then swaps to BGR
        return InputSpec(image_size=cfg.image_size, channel_order="BGR", mean=tuple(mean[::-1]),  # type: ignore
                         std=tuple(std[::-1]))  # type: ignore[arg-type]
    return InputSpec(image_size=cfg.image_size, channel_order="RGB", mean=tuple(mean),  # type: ignore[arg-type]
                     std=tuple(std))  # type: ignore[arg-type]


def config_from_file(path: str | os.PathLike, cfg: KerasSSDConfig) -> tuple[KerasSSDConfig, list[str]]:
    """``cfg`` updated from the ``model_config`` a full ``model.save`` file carries: its ``AnchorBoxes`` layers
    (``<source>_mbox_priorbox`` / ``anchors<source>``: image size, ``this_scale`` / ``next_scale``,
    ``aspect_ratios``, ``two_boxes_for_ar1``, ``clip_boxes`` (``limit_boxes`` in early versions), ``variances``,
    ``coords``) and its ``DecodeDetections`` layer (``confidence_thresh``, ``iou_threshold``, ``top_k``). Steps and
    offsets are not in ssd_keras' layer config and stay as given. Returns ``(config, the fields read)``; a file
    without ``model_config`` (``save_weights``) leaves ``cfg`` as it is."""
    import h5py  # see read_keras_weights

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        return cfg, []  # read_keras_weights reports unreadable files
    if raw is None:
        return cfg, []
    try:
        model = json.loads(_decode(raw))
        layers = {layer.get("config", {}).get("name", layer.get("name")): layer for layer in
                  model["config"]["layers"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KerasImportError(f"{p}: unreadable model_config attribute") from None
    names = [f"anchors{s}" if cfg.model == "ssd7" else f"{s}_mbox_priorbox" for s in cfg.sources]
    found = [layers.get(n) for n in names]
    o: dict[str, Any] = {}
    if all(layer is not None and layer.get("class_name") == "AnchorBoxes" for layer in found):
        confs = [layer["config"] for layer in found]  # type: ignore[index]
        try:
            c0 = confs[0]
            if str(c0.get("coords", "centroids")) != "centroids":
                raise KerasImportError(f"{p}: AnchorBoxes coords {c0.get('coords')!r}: only 'centroids' is "
                                       "supported (as ssd_keras' DecodeDetections)")
            o["image_size"] = (int(c0["img_height"]), int(c0["img_width"]))
            o["scales"] = tuple(float(c["this_scale"]) for c in confs) + (float(confs[-1]["next_scale"]),)
            o["aspect_ratios"] = tuple(tuple(float(a) for a in c["aspect_ratios"]) for c in confs)
            o["two_boxes_for_ar1"] = bool(c0["two_boxes_for_ar1"])
            o["clip_boxes"] = bool(c0.get("clip_boxes", c0.get("limit_boxes", False)))
            o["variances"] = tuple(float(v) for v in c0["variances"])
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, KerasImportError):
                raise
            raise KerasImportError(f"{p}: model_config: AnchorBoxes layer {names[0]!r} lacks {e}") from None
    decode = next((layer for layer in layers.values() if layer.get("class_name") in
                   ("DecodeDetections", "DecodeDetectionsFast")), None)
    if decode is not None:
        c = decode.get("config", {})
        for key, typ in (("confidence_thresh", float), ("iou_threshold", float), ("top_k", int)):
            if key in c:
                o[key] = typ(c[key])
    return (replace(cfg, **o) if o else cfg), sorted(o)


# ---------------------------------------------------------------------------------------------- conversion
def keras_layer_map(cfg: KerasSSDConfig) -> dict[str, str]:
    """Keras layer name -> the multibox module it fills (``backbone.conv1_1``, ``head.classification.0``, ...)."""
    out: dict[str, str] = {}
    if cfg.model == "ssd7":
        for i in range(1, 8):
            out[f"conv{i}"] = f"backbone.conv{i}.conv"
            out[f"bn{i}"] = f"backbone.conv{i}.bn"
        for k, s in enumerate(cfg.sources):
            out[f"classes{s}"] = f"head.classification.{k}"
            out[f"boxes{s}"] = f"head.regression.{k}"
        return out
    if _is_mobilenet(cfg):
        out["conv1"] = "backbone.conv1"
        out["conv1_bn"] = "backbone.conv1_bn"
        for k in range(1, 14):
            for part in (f"conv_dw_{k}", f"conv_dw_{k}_bn", f"conv_pw_{k}", f"conv_pw_{k}_bn"):
                out[part] = f"backbone.{part}"
        for i in range(14, 18):
            for j in (1, 2):
                out[f"conv{i}_{j}"] = f"extras.conv{i}_{j}"
                out[f"bn{i}_{j}"] = f"extras.bn{i}_{j}"
    else:
        for name in _VGG_LAYERS:
            out[name] = f"backbone.{name}"
        out["conv4_3_norm"] = "backbone.l2norm"
    out.update(dict(cfg.extras))
    for k, s in enumerate(cfg.sources):
        out[f"{s}_mbox_conf"] = f"head.classification.{k}"
        out[f"{s}_mbox_loc"] = f"head.regression.{k}"
    return out


def _is_mobilenet(cfg: KerasSSDConfig) -> bool:
    return cfg.model.startswith("ssd300_mobilenetv1_keras")


def _mobilenet_alpha(weights: Mapping[str, Sequence[tuple[str, np.ndarray]]], source: object) -> float:
    """Keras' width multiplier of a MobileNetV1 file: ``conv_pw_13``'s output channels over 1024 (``int(c *
    alpha)`` channels per layer; a wrong guess shows as a shape error naming the layer)."""
    try:
        channels = int(_find(weights["conv_pw_13"], ["kernel"], 0).shape[-1])
    except (KeyError, IndexError):
        raise KerasImportError(f"{source}: layer 'conv_pw_13' has no kernel") from None
    return channels / 1024.0


def _find(weights: Sequence[tuple[str, np.ndarray]], names: Sequence[str], index: int) -> np.ndarray:
    """The weight whose short name ends with one of ``names``; by position ``index`` when the file gives only
    positional names."""
    for short, arr in weights:
        if any(short == n or short.endswith("_" + n) for n in names):
            return arr
    if all(short.isdigit() for short, _ in weights) and index < len(weights):
        return weights[index][1]
    raise KeyError("/".join(names))


def _permute_out(t: Tensor, order: Sequence[int], per_box: int, n_loc_boxes: int) -> Tensor:
    """Output channels ``box * per_box + j`` of a predictor weight/bias reordered so that our box ``b`` is Keras
    box ``order[b]``."""
    idx = torch.tensor([order[b] * per_box + j for b in range(n_loc_boxes) for j in range(per_box)])
    return t.index_select(0, idx)


def convert_keras(weights: Mapping[str, Sequence[tuple[str, np.ndarray]]], cfg: KerasSSDConfig,
                  class_names: Sequence[str] | None = None, source: object = "keras file"
                  ) -> tuple[nn.Module, Tensor, dict[str, Any], dict[str, Any]]:
    """``(model, priors [P, 4] (ours order, normalized cxcywh), bundle spec, info)`` from the weights of
    :func:`read_keras_weights`. ``info`` holds ``input_spec``, ``variances``, ``postprocess``,
    ``feature_sizes``, ``prior_order`` (our prior ``i`` is Keras anchor ``prior_order[i]``), ``layers``."""
    cfg.check(source)
    layer_map = keras_layer_map(cfg)
    missing = [name for name in layer_map if name not in weights or not weights[name]]
    if missing:
        raise KerasImportError(f"{source}: not an ssd_keras {cfg.model} weight file: missing layer(s) "
                               f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    n_boxes = cfg.boxes_per_location()
    first_conf = weights[f"classes{cfg.sources[0]}" if cfg.model == "ssd7" else f"{cfg.sources[0]}_mbox_conf"]
    try:
        width = int(_find(first_conf, ["kernel"], 0).shape[-1])
    except KeyError:
        raise KerasImportError(f"{source}: the first class predictor has no kernel") from None
    if width % n_boxes[0]:
        raise KerasImportError(f"{source}: the first class predictor has {width} outputs, not a multiple of its "
                               f"{n_boxes[0]} boxes per location (check --aspect-ratios / --two-boxes-for-ar1)")
    num_classes = width // n_boxes[0]
    check_num_classes(num_classes, source)
    if class_names is not None and len(class_names) != num_classes:
        raise KerasImportError(f"{source}: --classes gives {len(class_names)} names but the file predicts "
                               f"{num_classes} classes (background included)")
    priors_cfg = _prior_config(cfg)
    input_spec = _input_spec(cfg)
    spec: dict[str, Any] = {"name": cfg.model, "num_classes": num_classes,
                            "class_names": list(class_names) if class_names else None,
                            "kwargs": {"priors": prior_config_to_dict(priors_cfg)},
                            "input_spec": {"image_size": list(input_spec.image_size),
                                           "channel_order": input_spec.channel_order,
                                           "mean": list(input_spec.mean), "std": list(input_spec.std)}}
    model_kwargs: dict[str, Any] = {}
    if _is_mobilenet(cfg):
        alpha = _mobilenet_alpha(weights, source)
        if alpha != 1.0:
            model_kwargs["alpha"] = alpha
            spec["kwargs"]["alpha"] = alpha
    model = build_model(cfg.model, num_classes=num_classes, class_names=class_names, priors=priors_cfg,
                        input_spec=input_spec, **model_kwargs).eval()
    spec["class_names"] = list(model.class_names)
    modules = dict(model.named_modules())
    orders = [_location_order(a, cfg.two_boxes_for_ar1) for a in cfg.aspect_ratios]
    head_index = {f"head.classification.{k}": (k, num_classes) for k in range(len(cfg.sources))}
    head_index.update({f"head.regression.{k}": (k, 4) for k in range(len(cfg.sources))})
    with torch.no_grad():
        for lname, target in layer_map.items():
            mod = modules[target]
            w = weights[lname]
            try:
                if target.endswith("l2norm"):
                    gamma = torch.from_numpy(_find(w, ["gamma"], 0))
                    _copy(mod.weight, gamma, lname, source)
                elif isinstance(mod, nn.BatchNorm2d):
                    gamma, beta, mean, var = (torch.from_numpy(_find(w, [n], i)) for i, n in
                                              enumerate(("gamma", "beta", "moving_mean", "moving_variance")))
                    shift: Tensor | float = 0.0
                    if cfg.model == "ssd7":  # SSD7's convs have a bias and our conv before the BN has none
                        conv_w = weights[lname.replace("bn", "conv")]
                        if len(conv_w) > 1:
                            shift = torch.from_numpy(_find(conv_w, ["bias"], 1))
                    _copy(mod.weight, gamma, lname, source)
                    _copy(mod.bias, beta, lname, source)
                    _copy(mod.running_mean, mean - shift, lname, source)  # BN(conv + b): b shifts the mean
                    _copy(mod.running_var, var + (1e-3 - mod.eps), lname, source)  # Keras' epsilon is 0.001
                else:
                    kernel = torch.from_numpy(_find(w, ["kernel"], 0))
                    if mod.groups > 1:  # DepthwiseConv2D: [kh, kw, C, 1] -> [C, 1, kh, kw]
                        kernel = kernel.permute(2, 3, 0, 1)
                    else:  # Conv2D: [kh, kw, in, out] -> [out, in, kh, kw]
                        kernel = kernel.permute(3, 2, 0, 1)
                    bias = torch.from_numpy(_find(w, ["bias"], 1)) if len(w) > 1 else None
                    if target in head_index:
                        k, per_box = head_index[target]
                        kernel = _permute_out(kernel, orders[k], per_box, n_boxes[k])
                        bias = None if bias is None else _permute_out(bias, orders[k], per_box, n_boxes[k])
                    _copy(mod.weight, kernel, lname, source)
                    if mod.bias is not None:
                        if bias is None:
                            raise KerasImportError(f"{source}: layer {lname!r} has no bias")
                        _copy(mod.bias, bias, lname, source)
                    elif bias is not None and cfg.model != "ssd7":  # (SSD7's bias went into its batch norm)
                        raise KerasImportError(f"{source}: layer {lname!r} has a bias where {cfg.model} has none")
            except KeyError as e:
                raise KerasImportError(f"{source}: layer {lname!r} has no {e.args[0]} weight "
                                       f"(it holds {[s for s, _ in w]})") from None
    feature_sizes = model.feature_sizes()
    anchors = keras_anchors(cfg, feature_sizes)
    prior_order: list[int] = []
    start = 0
    for (fh, fw), order in zip(feature_sizes, orders, strict=True):
        n = len(order)
        for cell in range(fh * fw):
            prior_order.extend(start + cell * n + o for o in order)
        start += fh * fw * n
    if len(prior_order) != model.num_priors or start != anchors.shape[0]:
        raise KerasImportError(f"{source}: {anchors.shape[0]} anchors but the network predicts {model.num_priors}")
    priors = torch.from_numpy(anchors[prior_order])
    post = {"mode": "per_class", "conf_threshold": float(cfg.confidence_thresh), "top_k": 0,
            "nms_threshold": float(cfg.iou_threshold), "keep_top_k": int(cfg.top_k), "clip": False,
            "background_index": 0}
    info = {"input_spec": input_spec, "variances": tuple(float(v) for v in cfg.variances), "postprocess": post,
            "feature_sizes": [list(s) for s in feature_sizes], "prior_order": prior_order,
            "layers": sorted(layer_map)}
    return model, priors, spec, info


def _copy(dst: Tensor, src: Tensor | float, lname: str, source: object) -> None:
    src_t = torch.as_tensor(src, dtype=torch.float32)
    if tuple(src_t.shape) != tuple(dst.shape):
        raise KerasImportError(f"{source}: layer {lname!r}: weight of shape {list(src_t.shape)} where "
                               f"{list(dst.shape)} was expected (check --arch and the anchor settings)")
    dst.copy_(src_t)


def import_keras(path: str | os.PathLike, out_dir: str | os.PathLike, *, arch: str = "ssd300",
                 config: KerasSSDConfig | None = None, name: str | None = None,
                 class_names: Sequence[str] | None = None, model_config_fields: Sequence[str] = ()) -> Path:
    """Convert an ssd_keras ``.h5`` file into ``out_dir/<name>.safetensors`` plus a JSON report
    ``out_dir/<name>.json``. ``arch`` is a key of :data:`KERAS_ARCHS`; ``config`` replaces its settings whole
    (e.g. ``dataclasses.replace(KERAS_ARCHS["ssd7"], image_size=(240, 320))``). ``name`` defaults to the file's
    stem. Without ``config``, what a full ``model.save`` file says of its anchors and decoding
    (:func:`config_from_file`) replaces the preset's values. Returns the bundle's path; raises
    :class:`KerasImportError` naming the file."""
    if arch not in KERAS_ARCHS:
        raise KerasImportError(f"--arch: unknown ssd_keras architecture {arch!r} (one of {', '.join(KERAS_ARCHS)})")
    p = Path(path)
    from_file = list(model_config_fields)  # what the caller took from the file (for the report)
    if config is None:
        cfg, from_file = config_from_file(p, KERAS_ARCHS[arch])
    else:
        cfg = config
    weights = read_keras_weights(p)
    model, priors, spec, info = convert_keras(weights, cfg, class_names=class_names, source=p)
    stem = name or p.stem
    if not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
        raise KerasImportError(f"invalid bundle name {stem!r}")
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    source = {"format": "ssd_keras .h5", "file": p.name, "sha256": sha, "importer": "multibox.interop.keras",
              "arch": arch, "feature_sizes": info["feature_sizes"], "settings_from_model_config": from_file,
              "anchor_order": "Keras anchors reordered to Caffe order (squares first) per location"}
    bundle = DetectorBundle(model=model, priors=priors, input_spec=info["input_spec"],
                            class_names=list(spec["class_names"]), builder="multibox", spec=spec,
                            variances=info["variances"], postprocess=info["postprocess"], source=source)
    out_path = save_bundle(bundle, Path(out_dir) / f"{stem}.safetensors")
    ispec = info["input_spec"]
    identity = info["prior_order"] == list(range(len(info["prior_order"])))
    report = {"bundle": out_path.name, "importer": "keras", "source": source, "model": cfg.model,
              "num_priors": int(priors.shape[0]), "num_classes": int(spec["num_classes"]),
              "class_names": list(spec["class_names"]), "image_size": list(ispec.image_size),
              "input_spec": {"channel_order": ispec.channel_order, "mean": list(ispec.mean), "std": list(ispec.std)},
              "anchors": {"scales": list(cfg.scales), "aspect_ratios": [list(a) for a in cfg.aspect_ratios],
                          "two_boxes_for_ar1": cfg.two_boxes_for_ar1,
                          "steps": None if cfg.steps is None else list(cfg.steps),
                          "offsets": None if cfg.offsets is None else list(cfg.offsets),
                          "clip_boxes": cfg.clip_boxes},
              "variances": list(info["variances"]), "postprocess": info["postprocess"],
              "prior_order": "identity" if identity else info["prior_order"],
              "num_parameters": int(sum(t.numel() for t in model.parameters()))}
    atomic_write_bytes(out_path.with_suffix(".json"), (json.dumps(report, indent=2) + "\n").encode())
    return out_path


# ------------------------------------------------------------------------------------ `multibox import keras`
def _float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what}: expected comma-separated finite numbers, got {text!r}")
    return vals


def _optional_list(text: str | None, what: str) -> tuple[float | None, ...] | None:
    if text is None or text.lower() == "none":
        return None
    return tuple(None if v.lower() == "none" else _float_list(v, what)[0] for v in text.split(","))


def _add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="an ssd_keras .h5 file (model.save_weights or model.save)")
    p.add_argument("--arch", required=True, choices=sorted(KERAS_ARCHS),
                   help="the ssd_keras architecture (its training defaults fill in what the file does not hold)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="output file stem (default: the weights file's stem)")
    p.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated")
    p.add_argument("--image-size", help="H,W the model was built for (ssd300 and the MobileNetV1 variants: 300,300; "
                                        "ssd512: 512,512; ssd7: 300,480)")
    p.add_argument("--scales", help="comma-separated scales, one more than the predictor layers")
    p.add_argument("--aspect-ratios", help="per predictor layer, ';'-separated lists (e.g. '1,2,0.5;1,2,0.5,3,"
                                           "0.3333333333333333;...'); one list for all layers (aspect_ratios_global)")
    p.add_argument("--two-boxes-for-ar1", choices=("yes", "no"), help="two square boxes (default yes)")
    p.add_argument("--steps", help="comma-separated steps per layer, or 'none' (image size / map size)")
    p.add_argument("--offsets", help="comma-separated offsets per layer (fractions of the step), or 'none' (0.5)")
    p.add_argument("--clip-boxes", choices=("yes", "no"), help="clip_boxes of the anchors (default no)")
    p.add_argument("--variances", help="4 comma-separated variances")
    p.add_argument("--subtract-mean", help="per RGB channel, e.g. 123,117,104, or 'none'")
    p.add_argument("--divide-by-stddev", help="per RGB channel, or 'none'")
    p.add_argument("--swap-channels", help="2,1,0 (RGB -> BGR after the mean) or 'none'")
    p.add_argument("--confidence-thresh", type=float, help="decoding: score threshold (default 0.01)")
    p.add_argument("--iou-threshold", type=float, help="decoding: NMS IoU threshold (default 0.45)")
    p.add_argument("--top-k", type=int, help="decoding: boxes kept per image (default 200)")


def _three(text: str, what: str) -> tuple[float, float, float] | None:
    if text.lower() == "none":
        return None
    vals = _float_list(text, what)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"{what}: expected 1 or 3 numbers, got {text!r}")
    return vals  # type: ignore[return-value]


def config_from_args(args: argparse.Namespace, base: KerasSSDConfig | None = None) -> KerasSSDConfig:
    """``base`` (default ``--arch``'s :class:`KerasSSDConfig`) with the command line's overrides (``'none'``
    sets ``None``)."""
    base = base or KERAS_ARCHS[args.arch]
    o: dict[str, Any] = {}
    if args.image_size:
        hw = parse_floats(args.image_size, 2, "--image-size")
        o["image_size"] = (int(hw[0]), int(hw[1]))
    if args.scales:
        o["scales"] = _float_list(args.scales, "--scales")
    if args.aspect_ratios:
        lists = [_float_list(t, "--aspect-ratios") for t in args.aspect_ratios.split(";") if t.strip()]
        o["aspect_ratios"] = tuple(lists) * len(base.sources) if len(lists) == 1 else tuple(lists)
    if args.two_boxes_for_ar1:
        o["two_boxes_for_ar1"] = args.two_boxes_for_ar1 == "yes"
    if args.steps:
        o["steps"] = _optional_list(args.steps, "--steps")
    if args.offsets:
        o["offsets"] = _optional_list(args.offsets, "--offsets")
    if args.clip_boxes:
        o["clip_boxes"] = args.clip_boxes == "yes"
    if args.variances:
        o["variances"] = parse_floats(args.variances, 4, "--variances")
    if args.subtract_mean:
        o["subtract_mean"] = _three(args.subtract_mean, "--subtract-mean")
    if args.divide_by_stddev:
        o["divide_by_stddev"] = _three(args.divide_by_stddev, "--divide-by-stddev")
    if args.swap_channels:
        o["swap_channels"] = (None if args.swap_channels.lower() == "none" else
                              tuple(int(v) for v in parse_floats(args.swap_channels, 3, "--swap-channels")))
    for key in ("confidence_thresh", "iou_threshold", "top_k"):
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    return replace(base, **o)


def _run_cli(args: argparse.Namespace) -> Path:
    classes = parse_classes(args.classes)
    base, fields = config_from_file(args.weights, KERAS_ARCHS[args.arch])  # preset < file's model_config < options
    cfg = config_from_args(args, base)
    check_output_dir(args.out, "--out")
    return import_keras(args.weights, args.out, arch=args.arch, config=cfg, name=args.name, class_names=classes,
                        model_config_fields=fields)


register_importer(
    "keras", help="ssd_keras .h5 weights (SSD300, SSD512, SSD7, MobileNetV1 SSD300 3x3 / 1x1)", builders=("multibox",),
    source_arg="weights",
    description="Convert an ssd_keras-family Keras .h5 weight file (SSD300, SSD512, SSD7, the MobileNetV1 SSD300 "
                "variants with 3x3 or 1x1 heads) into a detector bundle: "
                "the same network, ssd_keras' AnchorBoxes and DecodeDetections semantics. --arch gives what the "
                "file does not hold (ssd_keras' training defaults); override with the anchor options. h5py reads "
                "the file; neither TensorFlow nor Keras is needed. See docs/importers.md.",
    add_arguments=_add_cli_arguments, run=_run_cli)
