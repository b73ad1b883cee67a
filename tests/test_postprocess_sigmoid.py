"""``score="sigmoid"`` post-processing (TF Object Detection API SSDs) against a plain per-class reference."""

from __future__ import annotations

import pytest
import torch
import torchvision

from multibox.anchors import xyxy_to_cxcywh
from multibox.box_coder import BoxCoder
from multibox.postprocess import PostProcess, detection_output


def _reference(logits: torch.Tensor, deltas: torch.Tensor, priors: torch.Tensor, coder: BoxCoder, thr: float,
               iou: float, keep: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image, per foreground class: sigmoid, ``> thr``, torchvision NMS; then the ``keep`` best overall."""
    out = []
    for b in range(logits.shape[0]):
        boxes = coder.decode(deltas[b], priors)
        scores = logits[b].sigmoid()
        all_b, all_s, all_l = [], [], []
        for c in range(1, logits.shape[2]):
            m = scores[:, c] > thr
            bx, sc = boxes[m], scores[m, c]
            k = torchvision.ops.nms(bx, sc, iou)
            all_b.append(bx[k])
            all_s.append(sc[k])
            all_l.append(torch.full((len(k),), c))
        bx, sc, lb = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
        order = sc.argsort(descending=True, stable=True)[:keep]
        out.append((bx[order], sc[order], lb[order]))
    return out


def _problem(seed: int, b: int = 2, p: int = 300, c: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(p, 2, generator=g) * 0.8
    wh = torch.rand(p, 2, generator=g) * 0.3 + 0.05
    priors = xyxy_to_cxcywh(torch.cat([xy, xy + wh], 1))
    logits = torch.randn(b, p, c, generator=g) * 3
    deltas = torch.randn(b, p, 4, generator=g) * 0.5
    return logits, deltas, priors


@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_scores_match_per_class_reference(seed: int) -> None:
    logits, deltas, priors = _problem(seed)
    coder = BoxCoder()
    pad = detection_output(logits, deltas, priors, coder, score="sigmoid", conf_threshold=0.3, top_k=0,
                           nms_threshold=0.5, keep_top_k=50, clip=False)
    ref = _reference(logits, deltas, priors, coder, 0.3, 0.5, 50)
    for b, (rb, rs, rl) in enumerate(ref):
        v = pad.valid[b]
        assert int(v.sum()) == len(rs)
        torch.testing.assert_close(pad.scores[b][v], rs)
        torch.testing.assert_close(pad.boxes[b][v], rb)
        assert torch.equal(pad.labels[b][v], rl)


def test_sigmoid_differs_from_softmax_and_default_is_softmax() -> None:
    logits, deltas, priors = _problem(3)
    kw = {"conf_threshold": 0.2, "top_k": 100, "nms_threshold": 0.45, "keep_top_k": 20}
    default = PostProcess(priors, **kw).forward_padded(logits, deltas)
    soft = PostProcess(priors, score="softmax", **kw).forward_padded(logits, deltas)
    sig = PostProcess(priors, score="sigmoid", **kw).forward_padded(logits, deltas)
    for a, b in zip(default, soft, strict=True):
        assert torch.equal(a, b)
    # sigmoid of each logit, not a distribution over classes: the top score is the top logit's sigmoid
    best = logits[0, :, 1:].max()
    assert float(sig.scores[0, 0]) == pytest.approx(float(best.sigmoid()))
    assert not torch.equal(sig.scores, soft.scores)
    assert "score='sigmoid'" in repr(PostProcess(priors, score="sigmoid"))


def test_sigmoid_single_class_with_background_column() -> None:
    # a TF person detector: background column 0 (ignored) and one class
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    logits = torch.tensor([[[9.0, 2.0], [9.0, 1.0], [-9.0, -1.0]]])
    deltas = torch.zeros(1, 3, 4)
    pad = detection_output(logits, deltas, priors, BoxCoder(), score="sigmoid", conf_threshold=1e-8, top_k=0,
                           nms_threshold=0.6, keep_top_k=100, clip=False)
    v = pad.valid[0]
    # box 1 overlaps box 0 (IoU 0.905 > 0.6) and is suppressed; the background logits never matter
    torch.testing.assert_close(pad.scores[0][v], torch.tensor([2.0, -1.0]).sigmoid())
    torch.testing.assert_close(pad.boxes[0][v], torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.6, 0.6, 0.8, 0.8]]))
    assert pad.labels[0][v].tolist() == [1, 1]


def test_bad_score_name() -> None:
    logits, deltas, priors = _problem(0)
    with pytest.raises(ValueError, match="score must be 'softmax' or 'sigmoid'"):
        detection_output(logits, deltas, priors, BoxCoder(), score="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score must be"):
        PostProcess(priors, score="probit")  # type: ignore[arg-type]


def test_clip_after_nms_clamps_only_the_kept_boxes():
    # Two boxes running past the right border of a 100x100 image, IoU 0.5 unclipped (kept both at nms 0.6) but
    # identical once clipped: clip=True (before NMS) keeps one, clip="after" keeps both and clamps them.
    import torch

    from multibox.box_coder import BoxCoder
    from multibox.postprocess import PostProcess

    coder = BoxCoder()
    boxes = torch.tensor([[0.5, 0.0, 1.5, 1.0], [0.5, 0.0, 2.5, 1.0]])  # IoU 1 / 2
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    priors = torch.stack([cx, cy, boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    deltas = torch.zeros(1, 2, 4)
    logits = torch.tensor([[[0.0, 5.0], [0.0, 4.0]]])
    assert torch.allclose(coder.decode(deltas[0], priors), boxes)
    before = PostProcess(priors, coder, nms_threshold=0.6, clip=True)(logits, deltas, [(100, 100)])[0]
    after = PostProcess(priors, coder, nms_threshold=0.6, clip="after")(logits, deltas, [(100, 100)])[0]
    assert len(before) == 1
    assert len(after) == 2
    assert torch.allclose(after.boxes, torch.tensor([[50.0, 0.0, 100.0, 100.0], [50.0, 0.0, 100.0, 100.0]]))
