"""torchvision ssd300_vgg16 -> our SSD300: same outputs, priors, box decoding and input normalization."""

import os

import pytest
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from multibox.anchors import xyxy_to_cxcywh
from multibox.interop.torchvision import (
    TORCHVISION_SSD300_INPUT_SPEC,
    load_torchvision_weights,
    ssd300_from_torchvision_state_dict,
    to_torchvision_state_dict,
    torchvision_key_map,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tv = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()
    ours = ssd300_from_torchvision_state_dict(tv.state_dict()).eval()
    torch.manual_seed(1)
    image = torch.randint(0, 256, (1, 3, 300, 300), dtype=torch.uint8)
    x = TORCHVISION_SSD300_INPUT_SPEC.normalize(image)
    with torch.no_grad():
        feats = list(tv.backbone(x).values())
        tv_out = tv.head(feats)
        our_out = ours(x)
    return tv, ours, image, x, feats, tv_out, our_out


def test_key_map_covers_torchvision_state_dict(pair):
    tv, ours, *_ = pair
    key_map = torchvision_key_map()
    assert set(key_map) == set(tv.state_dict())
    assert set(key_map.values()) == set(ours.state_dict())
    assert ours.num_classes == 21 and ours.input_spec == TORCHVISION_SSD300_INPUT_SPEC


def test_same_outputs(pair):
    _, _, _, _, _, tv_out, our_out = pair
    assert our_out.cls_logits.shape == tv_out["cls_logits"].shape == (1, 8732, 21)
    assert (our_out.cls_logits - tv_out["cls_logits"]).abs().max() <= 1e-4
    assert (our_out.box_deltas - tv_out["bbox_regression"]).abs().max() <= 1e-4


def test_same_priors(pair):
    tv, ours, _, x, feats, _, _ = pair
    anchors_xyxy = tv.anchor_generator(ImageList(x, [(300, 300)]), feats)[0]  # [P, 4] xyxy pixels
    tv_priors = xyxy_to_cxcywh(anchors_xyxy / 300.0)
    assert ours.priors.shape == tv_priors.shape
    assert (ours.priors - tv_priors).abs().max() <= 1e-5


def test_same_decoding(pair):
    tv, ours, _, x, feats, _, our_out = pair
    anchors_xyxy = tv.anchor_generator(ImageList(x, [(300, 300)]), feats)[0]
    torch.manual_seed(2)
    deltas = torch.randn(anchors_xyxy.shape[0], 4) * 2.0
    deltas[:5, 2:] = 50.0  # beyond the log-scale clamp on both sides
    tv_boxes = tv.box_coder.decode_single(deltas, anchors_xyxy)  # xyxy pixels
    our_boxes = ours.box_coder.decode(deltas, ours.priors) * 300.0  # normalized xyxy -> pixels
    torch.testing.assert_close(our_boxes, tv_boxes, atol=1e-3, rtol=1e-5)


def test_input_spec_matches_torchvision_transform(pair):
    tv, _, image, x, *_ = pair
    tv_x = tv.transform.normalize(image[0].float() / 255.0)
    torch.testing.assert_close(x[0], tv_x, atol=1e-4, rtol=0)


def test_round_trip_and_file_loading(pair, tmp_path):
    tv, ours, _, x, _, _, our_out = pair
    sd = to_torchvision_state_dict(ours)
    ref = tv.state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    tv.load_state_dict(sd, strict=True)  # same values: checks names and shapes only
    path = tmp_path / "tv_ssd300.pth"
    torch.save({"model": tv.state_dict()}, path)
    loaded = load_torchvision_weights(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).cls_logits, our_out.cls_logits)


def test_key_errors_and_class_count(pair):
    tv, *_ = pair
    sd = dict(tv.state_dict())
    sd.pop("backbone.scale_weight")
    sd["head.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['backbone.scale_weight'\].*head.extra.weight"):
        ssd300_from_torchvision_state_dict(sd)
    with pytest.raises(ValueError, match="num_classes"):
        ssd300_from_torchvision_state_dict(tv.state_dict(), num_classes=5)
    # torchvision's COCO head (91 classes) gets torchvision's COCO names
    coco = dict(tv.state_dict())
    for k, a in enumerate((4, 6, 6, 6, 4, 4)):
        w = coco[f"head.classification_head.module_list.{k}.weight"]
        coco[f"head.classification_head.module_list.{k}.weight"] = torch.zeros(a * 91, *w.shape[1:])
        coco[f"head.classification_head.module_list.{k}.bias"] = torch.zeros(a * 91)
    model = ssd300_from_torchvision_state_dict(coco)
    assert model.num_classes == 91 and model.class_names[:2] == ["background", "person"]
