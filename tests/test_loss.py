from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multibox.loss import LossOutput, MultiBoxLoss, hard_negative_mask


def _ce(logits: list[float], label: int) -> float:
    """Softmax cross-entropy by hand: log(sum exp) - logit[label]."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def _smooth_l1(x: float, beta: float = 1.0) -> float:
    ax = abs(x)
    return 0.5 * ax * ax / beta if ax < beta else ax - 0.5 * beta


LOGITS = [
    [0.0, 1.0, 2.0],  # p0: positive, class 2
    [2.0, 0.0, 0.0],  # p1: background, bg loss log(1 + 2 e^-2) = .24
    [0.0, 1.0, 0.5],  # p2: background, bg loss log(1 + e + e^.5) = 1.68  <- hardest
    [1.0, 1.0, 1.0],  # p3: background, bg loss log 3 = 1.10
]
LABELS = [2, 0, 0, 0]
DELTAS = [[0.5, -2.0, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0], [-7.0, 3.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]]
TARGETS = [[0.0, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4, [0.0] * 4]


def _tiny(requires_grad: bool = False):
    logits = torch.tensor([LOGITS], requires_grad=requires_grad)
    deltas = torch.tensor([DELTAS], requires_grad=requires_grad)
    return logits, deltas, torch.tensor([LABELS]), torch.tensor([TARGETS])


def test_hand_computed_tiny_case():
    logits, deltas, labels, targets = _tiny()
    out = MultiBoxLoss(neg_pos_ratio=1.0)(logits, deltas, labels, targets)
    assert isinstance(out, LossOutput)
    loc = sum(_smooth_l1(v) for v in DELTAS[0])  # .125 + 1.5 + 0 + .5 = 2.125
    assert loc == pytest.approx(2.125)
    conf = _ce(LOGITS[0], 2) + _ce(LOGITS[2], 0)  # one positive, one negative: the hardest, p2
    assert out.num_pos.item() == 1
    assert out.loc.item() == pytest.approx(loc, rel=1e-6)
    assert out.conf.item() == pytest.approx(conf, rel=1e-6)
    assert out.total.item() == pytest.approx(conf + loc, rel=1e-6)

    # ratio 2 adds the next hardest negative (p3); ratio 3 takes all three; alpha weights loc only
    out = MultiBoxLoss(neg_pos_ratio=2.0, alpha=2.0)(logits, deltas, labels, targets)
    conf2 = conf + _ce(LOGITS[3], 0)
    assert out.conf.item() == pytest.approx(conf2, rel=1e-6)
    assert out.total.item() == pytest.approx(conf2 + 2 * loc, rel=1e-6)
    out = MultiBoxLoss()(logits, deltas, labels, targets)
    assert out.conf.item() == pytest.approx(conf2 + _ce(LOGITS[1], 0), rel=1e-6)
    expected = F.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS), reduction="sum")
    assert out.conf.item() == pytest.approx(expected.item(), rel=1e-6)


def test_smooth_l1_beta():
    logits, deltas, labels, targets = _tiny()
    out = MultiBoxLoss(neg_pos_ratio=1.0, beta=0.0)(logits, deltas, labels, targets)
    assert out.loc.item() == pytest.approx(0.5 + 2.0 + 0.0 + 1.0)  # plain L1
    out = MultiBoxLoss(neg_pos_ratio=1.0, beta=2.0)(logits, deltas, labels, targets)
    assert out.loc.item() == pytest.approx(sum(_smooth_l1(v, 2.0) for v in DELTAS[0]))


def test_ratio_three_picks_highest_background_loss():
    # One positive, nine negatives with known background losses; ratio 3 keeps exactly the top 3.
    bg_logit = torch.tensor([0.3, -2.0, 1.5, -1.0, 0.0, -3.0, 2.0, -0.5, 1.0])  # lower -> harder
    logits = torch.zeros(1, 10, 4)
    logits[0, 1:, 0] = bg_logit
    logits[0, 0] = torch.tensor([0.0, 3.0, 0.0, 0.0])
    labels = torch.tensor([[1] + [0] * 9])
    bg_loss = -torch.log_softmax(logits, dim=-1)[..., 0]
    mask = hard_negative_mask(bg_loss, labels, 3.0)
    hardest = (1 + torch.argsort(bg_logit)[:3]).tolist()  # lowest background logits: priors 6, 2, 4
    assert sorted(mask[0].nonzero().squeeze(1).tolist()) == sorted(hardest) == [2, 4, 6]

    logits.requires_grad_(True)
    out = MultiBoxLoss()(logits, torch.zeros(1, 10, 4), labels, torch.zeros(1, 10, 4))
    expected = F.cross_entropy(logits[0, [0, 2, 4, 6]].detach(), torch.tensor([1, 0, 0, 0]), reduction="sum")
    assert out.conf.item() == pytest.approx(expected.item(), rel=1e-6)
    out.total.backward()
    touched = logits.grad[0].abs().sum(-1) > 0
    assert touched.nonzero().squeeze(1).tolist() == [0, 2, 4, 6]


def test_mining_is_per_image_and_capped():
    # image 0: 2 positives, 3 negatives -> min(6, 3) = 3 negatives; image 1: 1 positive -> 3 of 4;
    # image 2: no positives -> none; image 3: ignored priors are never negatives.
    labels = torch.tensor(
        [
            [1, 0, 2, 0, 0, -1],
            [0, 0, 3, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [1, -1, -1, 0, 0, 0],
        ]
    )
    score = torch.tensor(
        [
            [9.0, 1.0, 9.0, 2.0, 3.0, 99.0],
            [5.0, 1.0, 9.0, 4.0, 2.0, 3.0],
            [5.0, 6.0, 7.0, 8.0, 9.0, 1.0],
            [0.0, 99.0, 98.0, 1.0, 3.0, 2.0],
        ]
    )
    mask = hard_negative_mask(score, labels, 3.0)
    assert mask.tolist() == [
        [False, True, False, True, True, False],
        [True, False, False, True, False, True],
        [False] * 6,
        [False, False, False, True, True, True],
    ]
    # fractional ratio: floor(1.5 * 1) = 1 negative for image 1
    assert hard_negative_mask(score, labels, 1.5)[1].tolist() == [True, False, False, False, False, False]
    assert not hard_negative_mask(score, labels, 0.0).any()


def test_mining_matches_loop_reference_random():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 4, (5, 60), generator=g) * (torch.rand(5, 60, generator=g) < 0.3)
    labels[2] = 0
    score = torch.rand(5, 60, generator=g)
    mask = hard_negative_mask(score, labels, 3.0)
    for i in range(5):
        num_pos = int((labels[i] > 0).sum())
        negs = [j for j in range(60) if labels[i, j] == 0]
        negs.sort(key=lambda j: -score[i, j].item())
        keep = set(negs[: min(3 * num_pos, len(negs))])
        assert mask[i].tolist() == [j in keep for j in range(60)]


def _random_batch(seed: int, b: int, p: int = 30, c: int = 5, pos_frac: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, p, c, generator=g)
    deltas = torch.randn(b, p, 4, generator=g)
    labels = torch.randint(1, c, (b, p), generator=g) * (torch.rand(b, p, generator=g) < pos_frac)
    targets = torch.randn(b, p, 4, generator=g) * (labels > 0).unsqueeze(-1)
    return logits, deltas, labels, targets


def test_empty_image_is_like_absent_image():
    logits, deltas, labels, targets = _random_batch(1, 3)
    labels[1] = 0
    targets[1] = 0
    assert (labels[0] > 0).any() and (labels[2] > 0).any()
    loss = MultiBoxLoss()
    full = loss(logits, deltas, labels, targets)
    keep = [0, 2]
    without = loss(logits[keep], deltas[keep], labels[keep], targets[keep])
    # The empty image adds no positives (same normalizer) and no negatives, so the losses are equal.
    torch.testing.assert_close(full.total, without.total)
    torch.testing.assert_close(full.loc, without.loc)
    assert full.num_pos.item() == without.num_pos.item()


def test_valid_normalization_over_the_batch():
    loss = MultiBoxLoss()
    a = _random_batch(2, 1)
    c = _random_batch(3, 1, pos_frac=0.5)
    n_a, n_c = int((a[2] > 0).sum()), int((c[2] > 0).sum())
    out_a, out_c = loss(*a), loss(*c)
    both = loss(*(torch.cat((x, y)) for x, y in zip(a, c, strict=True)))
    expected = (out_a.total * n_a + out_c.total * n_c) / (n_a + n_c)
    torch.testing.assert_close(both.total, expected)
    assert both.num_pos.item() == n_a + n_c


@pytest.mark.parametrize("b", [1, 3])
def test_all_empty_batch_is_zero_with_finite_grads(b):
    logits = torch.randn(b, 20, 4, requires_grad=True)
    deltas = torch.randn(b, 20, 4, requires_grad=True)
    labels = torch.zeros(b, 20, dtype=torch.int64)
    labels[0, :3] = -1
    out = MultiBoxLoss()(logits, deltas, labels, torch.zeros(b, 20, 4))
    assert out.total.item() == 0.0 and out.loc.item() == 0.0 and out.conf.item() == 0.0
    assert out.num_pos.item() == 0
    out.total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()
    assert (logits.grad == 0).all() and (deltas.grad == 0).all()


def test_gradient_flows_only_to_picked_priors():
    logits, deltas, labels, targets = _random_batch(4, 2, p=40)
    labels[0, 5] = -1  # ignored
    labels[1] = 0
    labels[1, :2] = torch.tensor([1, 3])
    logits.requires_grad_(True)
    deltas.requires_grad_(True)
    out = MultiBoxLoss()(logits, deltas, labels, targets)
    assert torch.isfinite(out.total)
    out.total.backward()
    bg_loss = -torch.log_softmax(logits.detach(), -1)[..., 0]
    picked = (labels > 0) | hard_negative_mask(bg_loss, labels, 3.0)
    assert picked[1].sum().item() == 2 + 6
    assert not picked[0, 5]
    assert torch.equal(logits.grad.abs().sum(-1) > 0, picked)
    assert torch.equal(deltas.grad.abs().sum(-1) > 0, labels > 0)


def test_mining_carries_no_gradient_and_ignores_label_minus_one():
    logits, deltas, labels, targets = _tiny(requires_grad=True)
    labels = torch.tensor([[2, 0, -1, 0]])  # the hardest negative p2 is now ignored
    out = MultiBoxLoss(neg_pos_ratio=1.0)(logits, deltas, labels, targets)
    assert out.conf.item() == pytest.approx(_ce(LOGITS[0], 2) + _ce(LOGITS[3], 0), rel=1e-6)
    out.total.backward()
    assert (logits.grad[0, 2] == 0).all() and (logits.grad[0, 1] == 0).all()
    # gradient of the picked negative is the plain CE gradient: softmax - onehot(0)
    expected = torch.softmax(torch.tensor(LOGITS[3]), 0) - torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(logits.grad[0, 3], expected)


def test_shape_validation():
    logits, deltas, labels, targets = _tiny()
    with pytest.raises(ValueError):
        MultiBoxLoss()(logits, deltas[:, :3], labels, targets)
    with pytest.raises(ValueError):
        MultiBoxLoss()(logits, deltas, labels[:, :3], targets)
    with pytest.raises(ValueError):
        MultiBoxLoss(neg_pos_ratio=-1.0)
