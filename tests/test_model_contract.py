"""The contract of every registered model (parametrized over ``list_models()``, so a new model is covered by
registering it): forward shapes, one prediction row per prior, post-processing, ONNX export equal to PyTorch,
and one training step lowering the loss on a fixed batch.

Models run at a small input where their layout allows it (the smallest side among 128 .. 384 at which the
model builds with its default priors moved to that size, ``PriorConfig.with_image_size``; else their own size) to
keep the file fast. The training step of the largest models is marked ``slow``; forward, prior count,
post-processing and ONNX run for every model by default, except for the heaviest models when a model on the same
backbone at a smaller input runs them (SSD512 next to SSD300: the same layers plus one more extra block).
timm models need the ``timm`` extra (part of ``dev``).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from multibox.anchors import PriorBoxGenerator
from multibox.export.onnx import OnnxRuntimeNetwork, export_onnx_bytes, onnxruntime_available
from multibox.loss import MultiBoxLoss
from multibox.matching import build_targets
from multibox.models import SSD, SSDOutput, build_model, list_models
from multibox.models.backbones.registry import backbone_name
from multibox.postprocess import PostProcess

NUM_CLASSES = 3
HAVE_TIMM = importlib.util.find_spec("timm") is not None
MODELS = list_models()
# training steps above this many parameters are marked slow
SLOW_TRAIN_PARAMS = 20_000_000
# forward / post-processing / ONNX checks above this many parameters are marked slow when a model on the same
# backbone at a smaller input size runs them by default
SLOW_CHECK_PARAMS = 45_000_000


@functools.cache
def _meta_facts(name: str) -> tuple[int, str | None, int]:
    """``(parameters, registered backbone name, smaller side of the default input)``, built on the meta device."""
    with torch.device("meta"):
        model = build_model(name, num_classes=NUM_CLASSES)
    return (sum(p.numel() for p in model.parameters()), backbone_name(model.backbone),
            min(model.prior_config.image_size))


def _covered_by_smaller_input(name: str) -> bool:
    if "timm" in name:
        return False  # small, and not buildable without timm
    params, backbone, side = _meta_facts(name)
    if params <= SLOW_CHECK_PARAMS or backbone is None:
        return False
    return any(_meta_facts(other)[1] == backbone and _meta_facts(other)[2] < side
               for other in MODELS if other != name and "timm" not in other)


def _param(name: str) -> object:
    marks = [pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed (pip install 'multibox[timm]')")] \
        if "timm" in name else []
    if _covered_by_smaller_input(name):
        marks.append(pytest.mark.slow)
    return pytest.param(name, marks=marks, id=name)


@functools.cache
def _small_size(name: str) -> tuple[int, int] | None:
    """The smallest side of (128, 192, 256, 288, 384), below the model's own, at which ``name`` builds with its
    default priors moved there."""
    with torch.device("meta"):
        default = build_model(name, num_classes=NUM_CLASSES).prior_config
    for side in (128, 192, 256, 288, 384):
        if side >= min(default.image_size):
            break
        try:
            with torch.device("meta"):
                build_model(name, num_classes=NUM_CLASSES, priors=default.with_image_size((side, side)))
        except (ValueError, RuntimeError, TypeError):
            continue
        return (side, side)
    return None


@functools.cache
def _model(name: str) -> SSD:
    torch.manual_seed(0)
    size = _small_size(name)
    if size is None:
        return build_model(name, num_classes=NUM_CLASSES)
    with torch.device("meta"):
        default = build_model(name, num_classes=NUM_CLASSES).prior_config
    return build_model(name, num_classes=NUM_CLASSES, priors=default.with_image_size(size))


def _images(model: SSD, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.prior_config.image_size, generator=g)


@functools.cache
def _forward(name: str) -> tuple[torch.Tensor, SSDOutput, list[torch.Tensor]]:
    """``(images [2, 3, H, W], SSDOutput, feature maps)`` of the eval-mode model, computed once per model."""
    model = _model(name).eval()
    x = _images(model, 2)
    with torch.no_grad():
        maps = model.extract_features(x)
        out = model.head(maps)
    return x, SSDOutput(*out), maps


@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_forward_shapes_and_prior_count(name):
    model = _model(name)
    cfg = model.prior_config
    _, out, maps = _forward(name)
    sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in maps]
    assert len(sizes) == len(cfg.levels) == model.num_feature_maps
    assert [int(f.shape[1]) for f in maps] == list(model.feature_channels)
    assert sizes == model.feature_sizes()  # the meta-device probe agrees with a real forward
    # the head's rows: sum over maps of H * W * boxes per location, counted here from the real maps
    expected = sum(h * w * k for (h, w), k in zip(sizes, cfg.num_priors_per_location, strict=True))
    assert expected == PriorBoxGenerator(cfg).num_priors(sizes) == model.priors.shape[0]
    assert out.cls_logits.shape == (2, expected, NUM_CLASSES)
    assert out.box_deltas.shape == (2, expected, 4)
    assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.box_deltas).all()
    # the backbone declares what it returns
    bb = model.backbone
    n = len(bb.out_channels)
    assert [int(f.shape[1]) for f in maps[:n]] == list(bb.out_channels)
    assert len(bb.strides) == n
    assert "priors" not in model.state_dict()  # non-persistent buffer
    assert model.class_names == ["background"] + [f"class_{i}" for i in range(1, NUM_CLASSES)]
    assert model.input_spec.image_size == cfg.image_size
    assert model.box_coder.variances == cfg.variances


@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_postprocess_runs(name):
    model = _model(name)
    _, out, _ = _forward(name)
    post = PostProcess.from_model(model, conf_threshold=0.0, keep_top_k=20)
    h, w = model.prior_config.image_size
    dets = post(out.cls_logits, out.box_deltas, image_sizes=[(h, w), (2 * h, w)])
    assert len(dets) == 2
    for d, (ih, iw) in zip(dets, [(h, w), (2 * h, w)], strict=True):
        assert 0 < len(d) <= 20
        assert (d.labels >= 1).all() and (d.labels < NUM_CLASSES).all()
        assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= iw).all() and (d.boxes[:, 3] <= ih).all()


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_onnx_export_matches_pytorch(name):
    model = _model(name).eval()
    data = export_onnx_bytes(model, _images(model, 1, seed=1))
    # run on another input than the traced one: image 1 of the cached batch, whose PyTorch rows are known (this
    # also checks that an image's predictions do not depend on the rest of its batch)
    x, out, _ = _forward(name)
    got = OnnxRuntimeNetwork(data)(x[1:])
    for a, b in zip(got, (out.cls_logits[1:], out.box_deltas[1:]), strict=True):
        assert a.shape == b.shape
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= 1e-3 * scale, name


def _train_param(name: str) -> object:
    big = _meta_facts(name)[0] > SLOW_TRAIN_PARAMS
    marks = [pytest.mark.slow] if big else []
    if "timm" in name:
        marks.append(pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed"))
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_train_param(n) for n in MODELS if "timm" not in n or HAVE_TIMM]
                         + [_param(n) for n in MODELS if "timm" in n and not HAVE_TIMM])
def test_one_training_step_lowers_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, priors=_model(name).prior_config).train()
    x = _images(model, 2, seed=3)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.7], [0.55, 0.5, 0.95, 0.9]],
                          [[0.3, 0.3, 0.8, 0.6], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 2], [2, 0]])
    valid = torch.tensor([[True, True], [True, False]])
    targets = build_targets(model.priors, boxes, labels, valid, model.box_coder)
    criterion = MultiBoxLoss()

    def loss() -> torch.Tensor:
        out = model(x)
        return criterion(out.cls_logits, out.box_deltas, targets.labels, targets.deltas).total

    # BatchNorm in train mode normalizes with this batch's statistics: the same batch twice is deterministic, and
    # the running statistics (updated by each call) do not enter the loss
    before = loss()
    before.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
    with torch.no_grad():
        after = loss()
    b = float(before.detach())
    assert b == b and float(after) < b, (b, float(after))
