"""``time_budget_min``: the trainer fits the step count to a wall-time budget. The clock is replaced by one that
only moves when a training step runs (a fixed number of seconds per step), so the runs are deterministic and
nobody waits; a tiny ssd7 on a few synthetic 64 px images does the real steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from multibox.config import ConfigError, load_config
from multibox.engine import trainer as trainer_module
from multibox.engine.trainer import BUDGET_PROBE_STEPS, Trainer, fit_steps_to_budget, lr_factor

TINY = [
    "name=tiny", "seed=0", "steps=1000", "threads=2", "log_every=1",
    "model.name=ssd7", "model.kwargs={image_size: [64, 64]}",
    "data.train=synthetic", "data.val=synthetic",
    "data.synthetic={profile: easy, num_train: 8, num_test: 2, size: 64, seed: 0}",
    "data.batch_size=2", "data.augment=none",
    "optim.name=sgd", "optim.lr=0.01", "schedule.name=cosine", "schedule.warmup_steps=0",
    "eval.at_end=true", "eval.batch_size=2", "checkpoint.every_steps=0",
]


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "multibox-cache"
    monkeypatch.setenv("MULTIBOX_CACHE", str(root))
    return root


class FakeClock:
    """Seconds that advance only inside ``Trainer.train_step``: ``seconds(k)`` for the k-th step (1-based)."""

    def __init__(self, seconds):
        self.now = 0.0
        self.steps = 0
        self.seconds = seconds

    def __call__(self) -> float:
        return self.now


def _run(monkeypatch, tmp_path: Path, seconds, *extra: str) -> tuple[dict, list[dict], Trainer]:
    fake = FakeClock(seconds)
    original = Trainer.train_step

    def timed_step(self, batch):
        out = original(self, batch)
        fake.steps += 1
        fake.now += fake.seconds(fake.steps)
        return out

    monkeypatch.setattr(trainer_module, "clock", fake)
    monkeypatch.setattr(Trainer, "train_step", timed_step)
    trainer = Trainer(load_config(None, TINY + list(extra)), tmp_path / "run", progress=False, quiet=True)
    summary = trainer.run()
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, rows, trainer


def test_fit_steps_to_budget_hand_cases():
    # 60 s budget, 10 s spent on 5 steps, 2 s per step: 25 more steps
    assert fit_steps_to_budget(60.0, 10.0, 5, 2.0, 1000) == 30
    assert fit_steps_to_budget(60.0, 10.0, 5, 2.0, 20) == 20  # capped by steps
    assert fit_steps_to_budget(60.0, 10.0, 5, 3.0, 1000) == 5 + 16  # floor(50 / 3)
    assert fit_steps_to_budget(60.0, 70.0, 5, 2.0, 1000) == 5  # over budget: stop now
    assert fit_steps_to_budget(60.0, 70.0, 5, 2.0, 1000, min_steps=6) == 6


def test_budget_fits_the_steps_and_the_schedule(cache, tmp_path, monkeypatch):
    # 2 s per step, 1 minute: after the 5 probe steps (10 s), 50 s hold 25 more steps -> 30 steps in all.
    assert BUDGET_PROBE_STEPS == 5
    summary, rows, trainer = _run(monkeypatch, tmp_path, lambda k: 2.0, "time_budget_min=1")
    assert summary["steps"] == 30
    assert summary["time_budget"] == {"minutes": 1.0, "max_steps": 1000, "fitted_steps": 30,
                                      "seconds_per_step": 2.0, "stopped_at_budget": False}
    assert summary["train_seconds"] == 60.0
    budget_rows = [r for r in rows if r["kind"] == "budget"]
    assert budget_rows == [{"kind": "budget", "step": 5, "steps": 30, "seconds_per_step": 2.0, "elapsed_s": 10.0}]
    lrs = {r["step"]: r["lr"] for r in rows if r["kind"] == "train"}
    assert sorted(lrs) == list(range(1, 31))
    # the cosine schedule runs over the fitted 30 steps: half of lr at step 15, 0 at the end
    assert lrs[15] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert lrs[15] == pytest.approx(0.005)
    assert lrs[30] == pytest.approx(0.0, abs=1e-12)
    # before the fit the schedule was the one of 1000 steps
    assert lrs[4] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 4 / 1000)))
    # the last checkpoint is evaluated and records the fitted schedule (for an exact resume)
    assert (tmp_path / "run" / "eval.json").is_file() and summary["mAP"] is not None
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [30]
    assert trainer.cfg.steps == 30 and lr_factor(30, trainer.cfg) == pytest.approx(0.0, abs=1e-12)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["time_budget"]["fitted_steps"] == 30


def test_budget_stops_when_the_machine_slows_down(cache, tmp_path, monkeypatch):
    # fitted to 30 steps at 2 s; from step 21 on a step takes 4 s: 40 s at step 20, 60 s at step 25 -> stop there
    summary, rows, _ = _run(monkeypatch, tmp_path, lambda k: 2.0 if k <= 20 else 4.0, "time_budget_min=1")
    assert summary["steps"] == 25
    assert summary["time_budget"]["stopped_at_budget"] is True
    assert summary["time_budget"]["fitted_steps"] == 25
    assert max(r["step"] for r in rows if r["kind"] == "train") == 25
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [25]  # the last checkpoint is evaluated


def test_budget_stops_before_a_step_would_end_past_it(cache, tmp_path, monkeypatch):
    # 2 s per step, then 3.5 s from step 21: 40 s at step 20, 57.5 s at step 25; a 26th step would end at 61 s
    summary, rows, _ = _run(monkeypatch, tmp_path, lambda k: 2.0 if k <= 20 else 3.5, "time_budget_min=1")
    assert summary["steps"] == 25 and summary["train_seconds"] == 57.5
    assert summary["time_budget"]["stopped_at_budget"] is True


def test_budget_refits_after_each_evaluation(cache, tmp_path, monkeypatch):
    # evaluation every 10 steps (instant on this clock); from step 6 on a step takes 3 s, so the refit at step 10
    # sees 10 + 5 * 3 = 25 s for 10 steps (2.5 s per step): 35 s left hold 14 more steps -> 24
    summary, rows, _ = _run(monkeypatch, tmp_path, lambda k: 2.0 if k <= 5 else 3.0, "time_budget_min=1",
                            "eval.every_steps=10")
    fits = [(r["step"], r["steps"]) for r in rows if r["kind"] == "budget"]
    assert fits[:2] == [(5, 30), (10, 24)]
    # step 20: 25 + 30 = 55 s, 2.75 s per step, 5 s left: 1 more step (at least one) -> 21; ends at 58 s
    assert fits[2] == (20, 21)
    assert summary["steps"] == 21 and summary["train_seconds"] == 58.0


def test_no_budget_keeps_the_steps(cache, tmp_path, monkeypatch):
    summary, rows, _ = _run(monkeypatch, tmp_path, lambda k: 2.0, "steps=6")
    assert summary["steps"] == 6 and "time_budget" not in summary
    assert not [r for r in rows if r["kind"] == "budget"]


def test_negative_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="time_budget_min=-1"):
        load_config(None, ["time_budget_min=-1"])
