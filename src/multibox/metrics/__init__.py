"""Detection metrics: Pascal VOC AP (2007 11-point, 2010+ all-point) and COCO (pycocotools), plus the results
formats (devkit comp4 text files, COCO results JSON) and precision-recall plots.

Names are imported on first use (NumPy only; pycocotools and matplotlib load when a function needs them):

* :func:`voc_evaluate`, :func:`voc07_ap`, :func:`voc12_ap`, :class:`ClassAP` (``metrics.voc``);
* :func:`coco_evaluate`, ``COCO_STAT_NAMES`` (``metrics.coco``);
* :class:`GroundTruth`, :class:`DetectionTable`, :func:`load_ground_truth`, :func:`read_detections`,
  :func:`write_comp4`, :func:`write_coco_results` (``metrics.results``);
* :func:`plot_pr_curves` (``metrics.plots``);
* the registry of metrics by name: :func:`register_metric`, :func:`list_metrics`, :func:`get_metric`,
  :class:`Metric`, :class:`MetricScore` (``metrics.registry``; ``voc07`` and ``voc12`` register in ``metrics.voc``,
  ``coco`` in ``metrics.coco``).

Model evaluation (:func:`multibox.engine.evaluator.evaluate_model`) builds on these.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "ClassAP": "registry",
    "VOC_METRICS": "voc",
    "voc07_ap": "voc",
    "voc12_ap": "voc",
    "voc_evaluate": "voc",
    "match_detections": "voc",
    "mean_ap": "voc",
    "COCO_STAT_NAMES": "coco",
    "COCOEvaluation": "coco",
    "coco_evaluate": "coco",
    "coco_ground_truth": "results",
    "GroundTruth": "results",
    "DetectionTable": "results",
    "DetectionsFileError": "results",
    "load_ground_truth": "results",
    "read_coco_ground_truth": "results",
    "read_detections": "results",
    "read_comp4": "results",
    "read_coco_results": "results",
    "write_comp4": "results",
    "write_coco_results": "results",
    "coco_results": "results",
    "plot_pr_curves": "plots",
    "Metric": "registry",
    "MetricScore": "registry",
    "register_metric": "registry",
    "list_metrics": "registry",
    "get_metric": "registry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
