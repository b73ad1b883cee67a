"""Weight averaging (ema.decay) and the focal loss option: hand-computed values, the trainer's use of the average
(evaluation, .safetensors, exact resume) and the config keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from multibox.config import ConfigError, load_config
from multibox.engine.ema import ModelEma, ema_decay_at
from multibox.engine.trainer import Trainer
from multibox.loss import FocalMultiBoxLoss, MultiBoxLoss
from multibox.weights_io import load_weights_file
from test_trainer import TINY  # tests/ is on sys.path: the tiny synthetic run of the trainer tests


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "multibox-cache"
    monkeypatch.setenv("MULTIBOX_CACHE", str(root))
    return root


def test_decay_schedule_by_hand():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.9, 1000) == 0.9


def test_ema_update_by_hand():
    lin = nn.Linear(1, 1, bias=False)
    bn = nn.BatchNorm1d(1)
    model = nn.Sequential(lin, bn)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    values = [3.0, 5.0, 9.0]
    expected = 1.0
    for n, v in enumerate(values):
        with torch.no_grad():
            lin.weight.fill_(v)
            bn.num_batches_tracked.fill_(10 + n)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * v
        assert ema.update(model) == pytest.approx(d)
    # d: 0.1, 2/11, 0.25 -> 0.1*1 + 0.9*3 = 2.8; 2/11*2.8 + 9/11*5 = 4.5999..; 0.25*4.6 + 0.75*9 = 7.9
    assert expected == pytest.approx(7.9)
    assert float(ema.module[0].weight) == pytest.approx(7.9)
    assert int(ema.module[1].num_batches_tracked) == 12  # integers are copied, not averaged
    state = ema.state_dict()
    other = ModelEma(model, decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 3 and float(other.module[0].weight) == pytest.approx(7.9)
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, decay=1.0)


def _targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 3)
    deltas = torch.randn(2, 6, 4)
    labels = torch.tensor([[1, 0, 0, -1, 2, 0], [0, 0, 0, 0, 0, -1]])
    tdeltas = torch.randn(2, 6, 4)
    return logits, deltas, labels, tdeltas


def test_focal_loss_by_hand():
    logits, deltas, labels, tdeltas = _targets()
    out = FocalMultiBoxLoss(gamma=2.0, focal_alpha=0.25)(logits, deltas, labels, tdeltas)
    total = 0.0
    for b in range(2):
        for p in range(6):
            t = int(labels[b, p])
            if t < 0:
                continue
            prob = torch.softmax(logits[b, p], 0)[t].item()
            w = 0.25 if t > 0 else 0.75
            total += w * (1 - prob) ** 2 * -math.log(prob)
    assert float(out.conf) == pytest.approx(total / 2, rel=1e-5)  # 2 positives
    assert int(out.num_pos) == 2
    # the localization term is MultiBoxLoss's
    ref = MultiBoxLoss()(logits, deltas, labels, tdeltas)
    assert float(out.loc) == pytest.approx(float(ref.loc), rel=1e-6)


def test_focal_gamma0_is_half_the_cross_entropy():
    logits, deltas, labels, tdeltas = _targets()
    out = FocalMultiBoxLoss(gamma=0.0, focal_alpha=0.5)(logits, deltas, labels, tdeltas)
    keep = labels >= 0
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    assert float(out.conf) == pytest.approx(0.5 * float(ce) / 2, rel=1e-5)


def test_config_keys_validate():
    cfg = load_config(None, TINY + ["ema.decay=0.99", "loss.name=focal", "loss.focal_gamma=1.5"])
    assert cfg.ema.decay == 0.99 and cfg.loss.name == "focal" and cfg.loss.focal_gamma == 1.5
    for bad, key in (("ema.decay=1.0", "ema.decay"), ("loss.name=hinge", "loss.name"),
                     ("loss.focal_alpha=2", "loss.focal_alpha")):
        with pytest.raises(ConfigError) as err:
            load_config(None, TINY + [bad])
        assert key in str(err.value)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_trainer_with_ema_and_focal_resumes_exactly(cache, tmp_path):
    extra = ["ema.decay=0.9", "loss.name=focal"]
    straight = tmp_path / "straight"
    Trainer(load_config(None, TINY + extra), straight, progress=False, quiet=True).run()
    broken = tmp_path / "broken"
    Trainer(load_config(None, TINY + extra), broken, progress=False, quiet=True, stop_after=7).run()
    resume = str(broken / "checkpoints" / "last.pt")
    Trainer(load_config(None, TINY + extra + [f"resume={resume}"]), None, progress=False, quiet=True).run()
    assert _losses(broken) == _losses(straight)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 9
    for k in a["ema"]["weights"]:
        assert torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]), k
    # the average differs from the trained weights, and it is what the weights file and the loaders give
    raw, avg = a["model"], a["ema"]["weights"]
    assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].dtype.is_floating_point)
    st = load_file(str(straight / "checkpoints" / "last.safetensors"))
    for k in avg:
        assert torch.equal(st[k], avg[k]), k
    from_pt, _ = load_weights_file(straight / "checkpoints" / "last.pt")
    for k in avg:
        assert torch.equal(from_pt[k], avg[k]), k


def test_resume_without_a_saved_average_is_refused(cache, tmp_path):
    run = tmp_path / "plain"
    Trainer(load_config(None, TINY + ["steps=2"]), run, progress=False, quiet=True).run()
    resume = str(run / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="no weight average"):
        Trainer(load_config(None, TINY + ["ema.decay=0.9", f"resume={resume}"]), None, progress=False,
                quiet=True).run()


@pytest.mark.parametrize("norm_eval", [False, True])
def test_norm_eval_keeps_batchnorm_statistics_and_trains_the_rest(cache, tmp_path, monkeypatch, norm_eval):
    """``model.norm_eval=true``: every BatchNorm keeps its running statistics through training while its scale and
    shift, and the other weights, still learn; without it the statistics move."""
    built: list[nn.Module] = []
    build = Trainer._build_model

    def keep(self: Trainer) -> nn.Module:
        built.append(build(self))
        bns.extend(m for m in built[0].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        before.extend((m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone()) for m in bns)
        return built[0]

    bns: list[nn.Module] = []
    before: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    monkeypatch.setattr(Trainer, "_build_model", keep)
    Trainer(load_config(None, TINY + ["steps=3", f"model.norm_eval={str(norm_eval).lower()}"]), tmp_path / "run",
            progress=False, quiet=True).run()
    assert len(built) == 1 and bns
    stats_same = all(torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b, _) in
                     zip(bns, before, strict=True))
    assert stats_same == norm_eval
    assert any(not torch.equal(m.weight.detach(), w) for m, (_, _, w) in zip(bns, before, strict=True))


def test_norm_eval_backbone_keeps_only_the_backbone_statistics(cache, tmp_path, monkeypatch):
    """``model.norm_eval=backbone``: the backbone's BatchNorm layers keep their running statistics, those of the
    layers added after it (SSDLite's extra blocks and heads) update from their batches; all scales still learn."""
    built: list[nn.Module] = []
    build = Trainer._build_model

    def keep(self: Trainer) -> nn.Module:
        built.append(build(self))
        return built[0]

    monkeypatch.setattr(Trainer, "_build_model", keep)
    extra = ["steps=3", "model.name=ssdlite320_mobilenetv2", "model.kwargs={image_size: [64, 64]}",
             "model.norm_eval=backbone"]
    trainer = Trainer(load_config(None, TINY + extra), tmp_path / "run", progress=False, quiet=True)
    original_step = trainer.train_step
    before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def first_step(batch):  # the statistics as built, taken just before the first step
        if not before:
            for name, m in built[0].named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    before[name] = (m.running_mean.clone(), m.running_var.clone())
        return original_step(batch)

    trainer.train_step = first_step  # type: ignore[method-assign]
    trainer.run()
    bns = {n: m for n, m in built[0].named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    inside = {n for n in bns if n.startswith("backbone.")}
    assert inside and set(bns) - inside and set(before) == set(bns)
    for name, m in bns.items():
        same = torch.equal(m.running_mean, before[name][0]) and torch.equal(m.running_var, before[name][1])
        assert same == (name in inside), name
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + ["model.norm_eval=heads"])
    assert "model.norm_eval" in str(err.value)
