"""Any timm model as an SSD backbone (``timm`` is an optional dependency: ``pip install multibox[timm]``).

:class:`TimmBackbone` wraps ``timm.create_model(name, features_only=True)``: channels and strides come from timm's
``feature_info`` (never declared here), and by default the maps returned are the last three of stride 8 or more
(e.g. strides 8, 16, 32: 38, 19, 10 at 300x300). ``build_backbone("timm:NAME")`` is short for
``build_backbone("timm", model_name="NAME")``. ImageNet weights load from timm's own ``model.safetensors`` /
``pytorch_model.bin`` layout (the classifier's keys; ``features_only`` keeps the module names), from a file, a
folder, or timm's Hugging Face cache (:meth:`~multibox.models.backbones.resnet.ResNetBackbone.load_pretrained`
rules).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from .base import Backbone, copy_matching_state_dict, load_state_dict_file
from .registry import register_backbone

__all__ = ["TimmBackbone", "require_timm", "TIMM_MISSING"]

TIMM_MISSING = "pip install 'multibox[timm]' (or pip install timm)"


def require_timm(what: str) -> Any:  # noqa: ANN401 - the timm module
    """``import timm``, or an ``ImportError`` saying that ``what`` needs it and how to install it."""
    try:
        import timm  # optional dependency (docs/design.md, "Import rules")
    except ImportError as err:
        raise ImportError(f"{what} needs the optional dependency timm, which is not installed: {TIMM_MISSING}"
                          ) from err
    return timm


@register_backbone("timm", "any timm model by name (features_only; channels and strides from feature_info)")
class TimmBackbone(Backbone):
    """A timm model's feature maps: ``images [B, 3, H, W] -> [B, out_channels[i], ~H / strides[i], ...]``.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. ``"resnet50"``, ``"mobilenetv3_large_100"``,
            ``"convnext_tiny"``; a pretrained tag (``"resnet50.a1_in1k"``) is kept for the cache lookup.
        out_indices: timm feature indices to return (ascending); default: the last three whose reduction is at
            least 8 (fewer if the model has fewer).
        timm_kwargs: more ``timm.create_model`` keyword arguments (never ``pretrained``: nothing is downloaded).

    Attributes ``out_channels`` and ``strides`` are timm's ``feature_info.channels()`` / ``reduction()`` of the
    returned maps; ``input_mean`` / ``input_std`` the 0-1 normalization of the model's pretrained config.
    """

    def __init__(self, model_name: str = "resnet18", out_indices: Sequence[int] | None = None,
                 **timm_kwargs: Any) -> None:  # noqa: ANN401
        super().__init__()
        timm = require_timm(f"the timm backbone {model_name!r}")
        if "pretrained" in timm_kwargs:
            raise ValueError("TimmBackbone never downloads: give pretrained_backbone (a file, folder or 'imagenet')")
        self.timm_name = str(model_name)
        try:
            body = timm.create_model(self.timm_name, pretrained=False, features_only=True, **timm_kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(f"timm cannot build {self.timm_name!r} with features_only=True: {err}") from err
        reductions = [int(r) for r in body.feature_info.reduction()]
        channels = [int(c) for c in body.feature_info.channels()]
        if out_indices is None:
            picks = [i for i, r in enumerate(reductions) if r >= 8][-3:]
            if not picks:
                raise ValueError(f"timm model {self.timm_name!r} has no feature map of stride 8 or more")
        else:
            picks = [int(i) for i in out_indices]
            if not picks or picks != sorted(set(picks)) or picks[0] < 0 or picks[-1] >= len(reductions):
                raise ValueError(f"out_indices must be ascending indices of the {len(reductions)} timm feature maps "
                                 f"(reductions {reductions}), got {list(out_indices)}")
        self.body = body
        self.picks = picks
        self.out_channels = [channels[i] for i in picks]
        self.strides = [reductions[i] for i in picks]
        cfg = getattr(body, "pretrained_cfg", None) or {}
        self.input_mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.input_std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        base = self.timm_name.split(".")[0]
        self.imagenet_file_patterns = (f"{base}*.safetensors", f"{base}*.pth", f"{base}*.bin",
                                       f"models--timm--{self.timm_name}/snapshots/*/model.safetensors",
                                       f"models--timm--{base}.*/snapshots/*/model.safetensors")

    def extra_repr(self) -> str:
        return f"name={self.timm_name!r}, picks={self.picks}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized with ``input_mean`` / ``input_std``) -> the picked timm maps."""
        maps = self.body(images)
        return [maps[i] for i in self.picks]

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, list[str]]:
        """Copy a timm classifier's state dict (``timm.create_model(name).state_dict()`` layout) into ``body``;
        the head and any key the feature model lacks are ``skipped``. Rules of
        :func:`~multibox.models.backbones.base.copy_matching_state_dict`; ``loaded`` names are this backbone's
        (``body.``-prefixed)."""
        report = copy_matching_state_dict(self.body, state_dict, f"timm {self.timm_name}",
                                          f"expected a state dict of timm's {self.timm_name}")
        strip = len("module.")
        own = set(self.body.state_dict())
        loaded = [f"body.{k[strip:] if k.startswith('module.') and k[strip:] in own else k}"
                  for k in report["loaded"]]
        return {"loaded": loaded, "skipped": report["skipped"]}

    def load_pretrained_file(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """:meth:`load_pretrained` from a ``.pth`` / ``.bin`` / ``.safetensors`` file; errors name the file."""
        state_dict = load_state_dict_file(path)
        try:
            return self.load_pretrained(state_dict)
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)}: {err}") from err

