"""The metrics registry: every evaluation metric by name, with what callers need to run and show it.

A metric registers itself in its own module (``voc07`` and ``voc12`` in :mod:`multibox.metrics.voc`, ``coco`` in
:mod:`multibox.metrics.coco`) with :func:`register_metric`; everything that names metrics (``multibox eval
--metric`` and ``--list-metrics``, the evaluator, config validation) reads :func:`list_metrics` /
:func:`get_metric`. Every module of the :mod:`multibox.metrics` package is imported on the first look-up, so a new
metric is one new module (plus its test); a metric registered from anywhere else (a plugin, a test) is usable
the moment its ``register_metric`` call has run.

An evaluation function is ``evaluate(gt, table, *, difficult_as_crowd) -> MetricScore`` where ``gt`` is a
:class:`~multibox.metrics.results.GroundTruth`, ``table`` a :class:`~multibox.metrics.results.DetectionTable`
(rows index ``gt.targets``; boxes xyxy absolute pixels of the original image; labels index ``gt.class_names``)
and ``difficult_as_crowd`` says whether difficult boxes become crowd regions where the metric knows crowds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._lazy import import_package_modules

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ClassAP", "Metric", "MetricScore", "register_metric", "list_metrics", "get_metric", "metric_table"]


def _empty_curve() -> np.ndarray:
    # numpy here, not at the top: `multibox --help` imports this registry (eval's --metric) and stays without numpy
    import numpy as np

    return np.zeros(0)


@dataclass
class ClassAP:
    """The result of one class.

    ``ap`` is NaN when the class has no (non-difficult, non-crowd) ground truth. ``recall`` and ``precision`` are
    the curve points (one per counted detection, in score order; for COCO, precision at the 101 recall thresholds).
    """

    name: str
    ap: float
    num_gt: int
    num_det: int
    recall: np.ndarray = field(default_factory=_empty_curve)
    precision: np.ndarray = field(default_factory=_empty_curve)


@dataclass
class MetricScore:
    """What a metric's evaluation returns.

    Attributes:
        per_class: one :class:`ClassAP` per foreground class, in label order (AP as a
            fraction in [0, 1], NaN for a class without ground truth; curves for plots).
        mean: the headline number (a fraction; NaN when undefined).
        stats: further named numbers (e.g. pycocotools' 12), or ``None``.
        summary: a printed summary of the metric's own tool, or ``None``.
    """

    per_class: list[ClassAP]
    mean: float
    stats: dict[str, float] | None = None
    summary: str | None = None


EvaluateFn = Callable[..., MetricScore]


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: what ``--metric`` takes (``voc07``).
        description: one line for ``--list-metrics``.
        evaluate: ``evaluate(gt, table, *, difficult_as_crowd) -> MetricScore`` (module docstring).
        headline: the headline number's label in tables (``mAP (VOC07 11-point)``).
        column: the per-class column header (``AP``).
        curve: what the precision-recall plot shows (``VOC07 11-point``).
        step_curve: draw the monotone envelope of the PR curves (all-point AP).
        module: where it was registered.
    """

    name: str
    description: str
    evaluate: EvaluateFn = field(repr=False)
    headline: str = "mAP"
    column: str = "AP"
    curve: str = ""
    step_curve: bool = False
    module: str = ""

    def to_json(self) -> dict[str, Any]:
        """``{"name", "description", "headline", "column", "module"}``."""
        return {"name": self.name, "description": self.description, "headline": self.headline,
                "column": self.column, "module": self.module}


_METRICS: dict[str, Metric] = {}
_DISCOVERED: set[str] = set()


def register_metric(name: str, evaluate: EvaluateFn, *, description: str, headline: str = "mAP",
                    column: str = "AP", curve: str = "", step_curve: bool = False) -> Metric:
    """Register ``evaluate`` as metric ``name`` (see :class:`Metric`); returns the :class:`Metric`.

    Registering the same name again from the same module replaces it (a module reloaded); from another module it
    is a ``ValueError``."""
    if not name or not isinstance(name, str) or any(c.isspace() for c in name):
        raise ValueError(f"a metric name is a non-empty word, got {name!r}")
    module = getattr(evaluate, "__module__", "") or ""
    old = _METRICS.get(name)
    if old is not None and old.module != module:
        raise ValueError(f"a metric named {name!r} is already registered (by {old.module})")
    metric = Metric(name=name, description=description, evaluate=evaluate, headline=headline, column=column,
                    curve=curve or name, step_curve=step_curve, module=module)
    _METRICS[name] = metric
    return metric


def _discover() -> None:
    """Import every module of this package once, so that built-in metrics have registered themselves."""
    import_package_modules(__name__.rpartition(".")[0], exclude={"registry"}, done=_DISCOVERED)


def list_metrics() -> list[str]:
    """The registered metric names, sorted."""
    _discover()
    return sorted(_METRICS)


def get_metric(name: str) -> Metric:
    """The :class:`Metric` named ``name``; ``ValueError`` naming the known ones otherwise."""
    _discover()
    metric = _METRICS.get(name) if isinstance(name, str) else None
    if metric is None:
        raise ValueError(f"unknown metric {name!r} (one of {', '.join(sorted(_METRICS))})")
    return metric


def metric_table() -> str:
    """The registered metrics as a text table (name, headline, description)."""
    metrics = [get_metric(n) for n in list_metrics()]
    w = max([len("name"), *(len(m.name) for m in metrics)])
    h = max([len("headline"), *(len(m.headline) for m in metrics)])
    lines = [f"{'name':<{w}}  {'headline':<{h}}  description"]
    lines += [f"{m.name:<{w}}  {m.headline:<{h}}  {m.description}" for m in metrics]
    return "\n".join(lines)
