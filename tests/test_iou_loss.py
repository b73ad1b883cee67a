"""The IoU box losses (loss.box: giou | diou): hand-computed cases, torchvision's own GIoU / DIoU losses as an
independent reference, their place in MultiBoxLoss / FocalMultiBoxLoss, the config key and a training run."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops import distance_box_iou_loss, generalized_box_iou_loss

from multibox.box_coder import BoxCoder
from multibox.config import ConfigError, load_config
from multibox.engine.trainer import Trainer
from multibox.loss import FocalMultiBoxLoss, MultiBoxLoss, iou_box_loss
from test_trainer import TINY  # tests/ is on sys.path: the tiny synthetic run of the trainer tests


def test_iou_losses_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 7, enclosing box 3x3 = 9, centres (1, 1) and (2, 2): d^2 = 2, diagonal^2 = 18
    assert float(iou_box_loss(a, b, "giou")) == pytest.approx(1 - 1 / 7 + 2 / 9, rel=1e-6)
    assert float(iou_box_loss(a, b, "diou")) == pytest.approx(1 - 1 / 7 + 2 / 18, rel=1e-6)
    assert float(iou_box_loss(a, a, "giou")) == pytest.approx(0.0, abs=1e-6)
    # disjoint boxes: IoU 0, still a loss above 1 that shrinks as they approach (a gradient where IoU has none)
    far, near = torch.tensor([[5.0, 0.0, 7.0, 2.0]]), torch.tensor([[3.0, 0.0, 5.0, 2.0]])
    assert float(iou_box_loss(a, far, "giou")) == pytest.approx(1 + (14 - 8) / 14, rel=1e-6)
    assert 1.0 < float(iou_box_loss(a, near, "giou")) < float(iou_box_loss(a, far, "giou"))
    with pytest.raises(ValueError, match="kind"):
        iou_box_loss(a, b, "ciou")


def test_iou_losses_match_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g)
    pred = torch.cat((xy, xy + 0.05 + torch.rand(500, 2, generator=g) * 0.5), dim=1)
    xy = xy + (torch.rand(500, 2, generator=g) - 0.5) * 0.4
    target = torch.cat((xy, xy + 0.05 + torch.rand(500, 2, generator=g) * 0.5), dim=1)
    torch.testing.assert_close(iou_box_loss(pred, target, "giou"), generalized_box_iou_loss(pred, target),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(iou_box_loss(pred, target, "diou"), distance_box_iou_loss(pred, target),
                               rtol=1e-5, atol=1e-6)


def _batch(num_classes: int = 3):
    g = torch.Generator().manual_seed(1)
    priors = torch.tensor([[0.25, 0.25, 0.2, 0.3], [0.6, 0.5, 0.3, 0.3], [0.5, 0.7, 0.4, 0.2], [0.8, 0.8, 0.1, 0.1]])
    logits = torch.randn(2, 4, num_classes, generator=g)
    deltas = torch.randn(2, 4, 4, generator=g) * 0.5
    tdeltas = torch.randn(2, 4, 4, generator=g) * 0.5
    labels = torch.tensor([[1, 0, 2, 0], [0, -1, 0, 1]])
    return priors, logits, deltas, labels, tdeltas


@pytest.mark.parametrize("kind", ["giou", "diou"])
def test_multibox_loss_with_an_iou_box_loss(kind):
    priors, logits, deltas, labels, tdeltas = _batch()
    coder = BoxCoder()
    deltas.requires_grad_(True)
    out = MultiBoxLoss(box_loss=kind, alpha=2.0)(logits, deltas, labels, tdeltas, priors=priors)
    # by hand: the three positives (image 0 priors 0 and 2, image 1 prior 3), boxes decoded one by one
    expected = 0.0
    for i, j in ((0, 0), (0, 2), (1, 3)):
        p = coder.decode(deltas[i, j].detach(), priors[j])
        t = coder.decode(tdeltas[i, j], priors[j])
        tv = generalized_box_iou_loss if kind == "giou" else distance_box_iou_loss
        expected += float(tv(p, t))
    loc, conf, total = (float(v.detach()) for v in (out.loc, out.conf, out.total))
    assert loc == pytest.approx(expected / 3, rel=1e-5)
    plain = MultiBoxLoss()(logits, deltas, labels, tdeltas)
    assert conf == pytest.approx(float(plain.conf.detach()), rel=1e-6)  # the confidence term is untouched
    assert total == pytest.approx(conf + 2.0 * loc, rel=1e-6)
    out.total.backward()
    grad = deltas.grad
    assert grad is not None and grad[0, 0].abs().sum() > 0 and grad[1, 3].abs().sum() > 0
    assert torch.equal(grad[0, 1], torch.zeros(4)) and torch.equal(grad[1, 1], torch.zeros(4))  # background, ignored
    focal = FocalMultiBoxLoss(box_loss=kind)(logits, deltas, labels, tdeltas, priors=priors)
    assert float(focal.loc.detach()) == pytest.approx(loc, rel=1e-6)


def test_iou_box_loss_needs_the_priors_and_a_known_name():
    priors, logits, deltas, labels, tdeltas = _batch()
    with pytest.raises(ValueError, match="priors"):
        MultiBoxLoss(box_loss="giou")(logits, deltas, labels, tdeltas)
    with pytest.raises(ValueError, match="priors"):
        MultiBoxLoss(box_loss="giou")(logits, deltas, labels, tdeltas, priors=priors[:3])
    with pytest.raises(ValueError, match="box_loss"):
        MultiBoxLoss(box_loss="l2")
    # a batch without positives gives a zero localization loss, still differentiable
    out = MultiBoxLoss(box_loss="diou")(logits, deltas.requires_grad_(True), torch.zeros_like(labels), tdeltas,
                                        priors=priors)
    assert float(out.loc.detach()) == 0.0
    out.total.backward()


def test_loss_box_config_key_and_a_training_run(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path_factory.getbasetemp() / "multibox-cache"))
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + ["loss.box=iou"])
    assert "loss.box" in str(err.value)
    run = tmp_path / "giou"
    trainer = Trainer(load_config(None, TINY + ["loss.box=giou", "steps=4"]), run, progress=False, quiet=True)
    trainer.run()
    assert trainer.criterion.box_loss == "giou"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    # GIoU losses of positives lie in [0, 2): the logged localization term is bounded by 2 (per positive)
    assert all(0.0 <= r["loc"] < 2.0 for r in train)
