"""The SSD detector: backbone + extra layers + heads, with its priors and declared input spec.

``SSD.forward`` maps already-normalized ``images [B, 3, H, W]`` to raw predictions only; matching, loss and
post-processing are separate callables (docs/design.md, "Tensors").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..anchors import PriorBoxGenerator, PriorConfig
from ..box_coder import BoxCoder
from .heads import SSDHead
from .spec import InputSpec

__all__ = ["SSD", "SSDOutput", "default_class_names"]


class SSDOutput(NamedTuple):
    """Raw SSD predictions.

    * ``cls_logits [B, P, C]``: unnormalized class scores, index 0 = background;
    * ``box_deltas [B, P, 4]``: ``CENTER_SIZE`` offsets (with variances) w.r.t. ``model.priors`` ``[P, 4]``.
    """

    cls_logits: Tensor
    box_deltas: Tensor


def default_class_names(num_classes: int) -> list[str]:
    """``["background", "class_1", ..., "class_{C-1}"]``."""
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


class _FeatureProbe(nn.Module):
    """Backbone + extras as one module (not registered anywhere), to run them with meta parameters."""

    def __init__(self, backbone: nn.Module, extras: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.extras = extras

    def forward(self, x: Tensor) -> list[Tensor]:
        return _run_features(self.backbone, self.extras, x)


def _run_features(backbone: nn.Module, extras: nn.Module | None, x: Tensor) -> list[Tensor]:
    feats = list(backbone(x))
    if extras is not None:
        feats.extend(extras(feats[-1]))
    return feats


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    Args:
        backbone: module ``images [B, 3, H, W] -> list of maps`` with ``out_channels`` (and ``strides``).
        extras: module ``last backbone map -> list of further maps`` with ``out_channels``, or ``None``.
        prior_config: the priors; needs exactly one level per feature map (backbone maps + extra maps).
        num_classes: number of classes **including background** (index 0).
        class_names: ``num_classes`` names, index 0 background; default ``["background", "class_1", ...]``.
        input_spec: declared pre-processing; default VGG's (RGB, mean (123, 117, 104), std 1) at
            ``prior_config.image_size``. Its ``image_size`` must equal ``prior_config.image_size``.
        neck: optional module ``list of maps -> list of maps`` (same number and sizes) with ``out_channels``,
            run between backbone + extras and the head (e.g. :class:`~multibox.models.necks.LiteFPN`); the head
            is then built on the neck's channels.
        head: optional replacement for the default :class:`SSDHead` (3x3 convs); called on the list of maps,
            it must return ``(cls_logits [B, P, C], box_deltas [B, P, 4])`` in prior order.

    Attributes: ``num_classes``, ``class_names``, ``prior_config``, ``input_spec``, ``box_coder``
    (``BoxCoder(prior_config.variances)``) and the non-persistent buffer ``priors [P, 4]`` (normalized cxcywh
    for ``prior_config.image_size``, in the order of the predictions).
    """

    def __init__(
        self,
        backbone: nn.Module,
        extras: nn.Module | None,
        prior_config: PriorConfig,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        input_spec: InputSpec | None = None,
        head: nn.Module | None = None,
        neck: nn.Module | None = None,
    ) -> None:
        super().__init__()
        num_classes = int(num_classes)
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        if class_names is None:
            names = default_class_names(num_classes)
        else:
            names = [str(n) for n in class_names]
            if len(names) != num_classes:
                raise ValueError(
                    f"class_names has {len(names)} entries but num_classes is {num_classes} "
                    "(class_names must include the background name at index 0)"
                )
        if input_spec is None:
            input_spec = InputSpec(image_size=prior_config.image_size)
        elif tuple(input_spec.image_size) != tuple(prior_config.image_size):
            raise ValueError(
                f"input_spec.image_size {input_spec.image_size} differs from prior_config.image_size "
                f"{prior_config.image_size}"
            )
        for what, mod in (("backbone", backbone), ("extras", extras), ("neck", neck)):
            if mod is not None and not hasattr(mod, "out_channels"):
                raise TypeError(f"{what} {type(mod).__name__} must expose out_channels: list[int]")

        in_channels = [int(c) for c in backbone.out_channels]
        if extras is not None:
            in_channels += [int(c) for c in extras.out_channels]
        if len(in_channels) != len(prior_config.levels):
            raise ValueError(
                f"the network yields {len(in_channels)} feature maps ({len(backbone.out_channels)} from the "
                f"backbone, {len(in_channels) - len(backbone.out_channels)} from extras) but the prior config "
                f"has {len(prior_config.levels)} levels; they must be equal"
            )

        if neck is not None:
            neck_in = [int(c) for c in getattr(neck, "in_channels", in_channels)]
            if neck_in != in_channels:
                raise ValueError(f"the neck takes maps of {neck_in} channels but the network yields {in_channels}")
            in_channels = [int(c) for c in neck.out_channels]
            if len(in_channels) != len(prior_config.levels):
                raise ValueError(f"the neck yields {len(in_channels)} maps but the prior config has "
                                 f"{len(prior_config.levels)} levels")

        self.backbone = backbone
        self.extras = extras
        self.neck = neck
        self.head = head if head is not None else SSDHead(
            in_channels, prior_config.num_priors_per_location, num_classes
        )
        self.num_classes = num_classes
        self.class_names = names
        self.prior_config = prior_config
        self.input_spec = input_spec
        self.box_coder = BoxCoder(prior_config.variances)
        self.feature_channels = in_channels
        self._feature_size_cache: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._priors_cache: dict[tuple[int, int], Tensor] = {}
        self.register_buffer("priors", self._make_priors(prior_config.image_size), persistent=False)

    # ----------------------------------------------------------------------------------------------- forward
    def extract_features(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` -> all feature maps fed to the head (backbone maps, then extra maps, through
        the neck when there is one)."""
        feats = _run_features(self.backbone, self.extras, images)
        return feats if self.neck is None else list(self.neck(feats))

    def forward(self, images: Tensor) -> SSDOutput:
        """``images [B, 3, H, W]`` float, already normalized per ``input_spec``.

        Returns ``SSDOutput(cls_logits [B, P, C], box_deltas [B, P, 4])`` in the order of ``priors``
        (``P = priors.shape[0]`` at ``prior_config.image_size``; at another size see :meth:`priors_for`).
        """
        cls_logits, box_deltas = self.head(self.extract_features(images))
        return SSDOutput(cls_logits, box_deltas)

    # ------------------------------------------------------------------------------------- shapes and priors
    @property
    def num_priors(self) -> int:
        """``P`` at ``prior_config.image_size``."""
        return int(self.priors.shape[0])

    @property
    def num_feature_maps(self) -> int:
        return len(self.feature_channels)

    def feature_sizes(self, image_size: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """``(H_k, W_k)`` of every feature map for an input of ``image_size`` (default the config's).

        Derived by running backbone + extras on meta tensors (no real compute), cached per size.
        """
        size = self._size(image_size)
        if size not in self._feature_size_cache:
            self._feature_size_cache[size] = self._probe_feature_sizes(size)
        return list(self._feature_size_cache[size])

    def priors_for(self, image_size: Sequence[int]) -> Tensor:
        """Priors ``[P, 4]`` normalized cxcywh (float32, on the device of ``priors``) for another input size.

        The config's pixel sizes and steps are kept (``PriorConfig.with_image_size``), as Caffe does when a
        net is reshaped.
        """
        size = self._size(image_size)
        if size == tuple(self.prior_config.image_size):
            return self.priors
        if size not in self._priors_cache:
            self._priors_cache[size] = self._make_priors(size)
        return self._priors_cache[size].to(self.priors.device)

    def _size(self, image_size: Sequence[int] | None) -> tuple[int, int]:
        if image_size is None:
            return (int(self.prior_config.image_size[0]), int(self.prior_config.image_size[1]))
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size}")
        return (int(image_size[0]), int(image_size[1]))

    def _make_priors(self, size: tuple[int, int]) -> Tensor:
        cfg = self.prior_config if size == tuple(self.prior_config.image_size) else \
            self.prior_config.with_image_size(size)
        return PriorBoxGenerator(cfg)(self.feature_sizes(size))

    def _probe_feature_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Run backbone + extras without real compute: first on an empty batch (``[0, 3, H, W]``, eval mode,
        no grad), and if some op refuses an empty batch, with meta-device parameters and input."""
        probe = _FeatureProbe(self.backbone, self.extras)
        ref = next(iter(probe.parameters()), None)
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        device = ref.device if ref is not None else torch.device("cpu")
        modes = [(m, m.training) for m in probe.modules()]
        probe.eval()  # BatchNorm must not update its statistics (training mode would also refuse tiny maps)
        try:
            with torch.no_grad():
                try:
                    feats = probe(torch.empty(0, 3, *size, dtype=dtype, device=device))
                except (RuntimeError, ValueError, NotImplementedError):
                    meta = {
                        name: torch.empty_like(t, device="meta")
                        for name, t in [*probe.named_parameters(), *probe.named_buffers()]
                    }
                    x = torch.empty(1, 3, *size, dtype=dtype, device="meta")
                    try:
                        feats = functional_call(probe, meta, (x,))
                    except (RuntimeError, ValueError, NotImplementedError) as err:
                        raise ValueError(
                            f"backbone + extras cannot run on a {size[0]}x{size[1]} input "
                            f"(too small for the network?): {err}"
                        ) from err
        finally:
            for m, mode in modes:
                m.training = mode
        return [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
