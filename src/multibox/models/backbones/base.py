"""What an SSD backbone is."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "load_state_dict_file", "copy_matching_state_dict", "find_pretrained_file",
           "pretrained_search_dirs"]


class Backbone(nn.Module):
    """Base of SSD backbones: ``images [B, 3, H, W] -> [feature maps]``.

    Subclasses set ``out_channels`` (channels of each returned map) and ``strides`` (nominal reduction of each
    map w.r.t. the input; with ceil-mode pooling the real size is ``ceil(H / stride)``). Consumers derive
    every channel count from ``out_channels``: nothing declares it a second time.
    """

    out_channels: list[int]
    strides: list[int]
    #: shell globs of the ImageNet weights files of this backbone (torchvision's / timm's cache names), searched by
    #: :func:`find_pretrained_file` for ``pretrained_backbone: imagenet`` or a folder; empty: none known.
    imagenet_file_patterns: tuple[str, ...] = ()

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
        """Initialize from an ImageNet classifier's state dict (e.g. torchvision's); the weights are copied in.

        Returns ``{"loaded": [names], "missing": [names], "unexpected": [source keys]}`` and optionally
        ``"skipped_shape": [(name, source shape, target shape)]``; ``loaded`` / ``missing`` are this
        backbone's own parameter and buffer names (no ``backbone.`` prefix). Raises ``ValueError`` naming the
        offending key when the state dict is not of the expected network. Backbones that support ImageNet
        initialization override this.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement load_pretrained(): it cannot be initialized from an "
            "ImageNet state dict; train it from scratch or load full detector weights instead"
        )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a PyTorch file (``torch.load(weights_only=True)``; a top-level ``{"state_dict": ...}``
    or ``{"model": ...}`` wrapper is unwrapped) or a ``.safetensors`` file, on the CPU. Errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such weights file")
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.torch import load_file  # only for this format

        try:
            return dict(load_file(os.fspath(path), device="cpu"))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
            raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for bad files
        raise ValueError(f"{path}: not a readable PyTorch weights file ({type(err).__name__}: {err})") from err
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    return dict(obj)


def copy_matching_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], what: str, hint: str = ""
                             ) -> dict[str, list[str]]:
    """Copy ``state_dict`` into ``module`` by name (a ``module.`` prefix is dropped), all or nothing.

    Keys ``module`` lacks (a classifier, later stages) are reported ``skipped``. Raises ``ValueError`` naming the
    keys when a value is not a tensor or its shape differs, or when a parameter / buffer of ``module`` is absent
    (``num_batches_tracked`` may be); ``what`` names the module and ``hint`` the expected layout in the message.
    Returns ``{"loaded": [source keys], "skipped": [source keys]}``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    own = module.state_dict()
    take: dict[str, Tensor] = {}
    loaded: list[str] = []
    skipped: list[str] = []
    problems: list[str] = []
    for key, value in state_dict.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name not in own:
            skipped.append(key)
            continue
        if not isinstance(value, Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(own[name].shape):
            problems.append(f"{key} has shape {tuple(value.shape)}, the backbone needs {tuple(own[name].shape)}")
        else:
            take[name] = value
            loaded.append(key)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"cannot load the state dict into {what}: " + "; ".join(problems[:5]) + more)
    required = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in take]
    if missing:
        raise ValueError(f"the state dict lacks {len(missing)} of the {len(required)} parameters and buffers of "
                         f"{what}, e.g. {', '.join(missing[:3])}" + (f"; {hint}" if hint else ""))
    module.load_state_dict(take, strict=False)
    return {"loaded": loaded, "skipped": skipped}


def pretrained_search_dirs() -> list[Path]:
    """Folders searched for ``pretrained_backbone: imagenet``: torchvision's download cache
    (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``) and the Hugging Face hub cache
    where timm keeps its weights (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``)."""
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    hf = os.environ.get("HF_HUB_CACHE") or (Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME")
                                           else Path.home() / ".cache" / "huggingface" / "hub")
    return [torch_home / "hub" / "checkpoints", Path(hf)]


def find_pretrained_file(value: str | os.PathLike, patterns: Sequence[str], what: str) -> Path:
    """The weights file that ``pretrained_backbone`` names for a backbone (``what``, e.g. ``"resnet50"``).

    ``value`` is a file (returned as is), a folder (searched for ``patterns``, shell globs relative to it, e.g.
    torchvision's ``resnet50-*.pth``), or ``"imagenet"`` (the folders of :func:`pretrained_search_dirs`).
    ``FileNotFoundError`` names every file pattern and folder looked in: nothing is ever downloaded, and a
    backbone is never silently left at its random initialization.
    """
    text = os.fspath(value)
    if text == "imagenet":
        dirs = pretrained_search_dirs()
    elif os.path.isdir(text):
        dirs = [Path(text)]
    elif os.path.isfile(text):
        return Path(text)
    else:
        raise FileNotFoundError(f"pretrained_backbone {text}: no such weights file or folder")
    if not patterns:
        raise FileNotFoundError(f"pretrained_backbone {text}: no ImageNet weights file is known for {what}; give "
                                "the path of a weights file")
    for folder in dirs:
        for pattern in patterns:
            found = sorted(p for p in folder.glob(pattern) if p.is_file())
            if found:
                return found[-1]
    looked = ", ".join(str(d / p) for d in dirs for p in patterns)
    raise FileNotFoundError(f"pretrained_backbone {text}: no ImageNet weights for {what} found (looked for {looked}; "
                            "offline: copy the file there or give its path)")
