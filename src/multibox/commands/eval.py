"""``multibox eval``: score a results file, evaluate a checkpoint, or watch a folder of checkpoints.

* ``multibox eval --list-metrics [--json FILE]``: the registered metrics (:mod:`multibox.metrics.registry`);
* ``multibox eval --metric voc07|voc12|coco|... --gt PATH --detections PATH [--split test]``: score anyone's
  detections (comp4 text files or COCO results JSON) against a VOC root or a COCO instances JSON;
* ``multibox eval CHECKPOINT --data PATH [--split test] [--metric voc07] [--tile 400 [--overlap 0.25]]
  [--tta flips|dihedral|dihedral+shift]``: run a saved model on a dataset (with ``--tile``: tiled inference on
  large photos, recorded as ``tile`` in the JSON; with ``--tta``: test-time augmentation, recorded as ``tta``);
* ``multibox eval --watch DIR --data PATH [--pattern '*.safetensors'] [--interval 30] [--timeout S]``: evaluate
  every new checkpoint file in DIR once, appending a JSON line per checkpoint to ``DIR/watch_eval.jsonl``.

All print the per-class table (AP as fractions in [0, 1], 4 decimals, as in the JSON); ``--json FILE`` writes the
metrics (``-``: standard output); ``--out DIR`` writes ``metrics.json``,
``pr_curves.png``, the detections as ``detections.json`` (COCO results) and ``comp4/comp4_det_<split>_<class>.txt``.
The heavy imports (numpy, torch and the modules built on them) happen inside the functions so that
``multibox --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from ..metrics.registry import get_metric, list_metrics, metric_table
from .options import (
    UsageError,
    add_int8_runtime_options,
    add_json_option,
    add_progress_options,
    add_tile_options,
    add_tta_option,
    check_output_dir,
    check_output_file,
    int8_runtime_options,
    is_quiet,
    non_negative_int,
    positive_int,
    positive_seconds,
    show_progress,
    tile_settings,
    write_json_output,
)

# Imports inside functions below are heavy (numpy, torch, matplotlib and the multibox modules built on them): this
# module is imported by `multibox --help`, which must stay at ~0.1 s.

__all__ = ["register", "run", "watch_checkpoints", "write_outputs", "WATCH_LOG"]

#: The log that ``--watch`` appends to, inside the watched folder.
WATCH_LOG = "watch_eval.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` parser."""
    p = subparsers.add_parser(
        "eval", help="score detections (VOC07, VOC12, COCO), evaluate a checkpoint, or watch checkpoints",
        description="Three ways: (1) --gt PATH --detections PATH scores a results file: comp4_det_<split>_<class>"
                    ".txt files (a folder or a glob; devkit 1-based coordinates) or a COCO results JSON, against a "
                    "VOC root (with --split) or a COCO instances JSON. (2) CHECKPOINT --data PATH runs a saved model "
                    "on a dataset and scores it. (3) --watch DIR --data PATH evaluates each new checkpoint file in "
                    "DIR once, appending a line per checkpoint to DIR/watch_eval.jsonl, until --timeout seconds pass "
                    "without a new one. VOC metrics follow the official devkit exactly; COCO numbers are "
                    "pycocotools'. See docs/evaluation.md.")
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="a detector file to evaluate on --data: a multibox checkpoint (.safetensors or .pt) or a "
                        "detector bundle (multibox import ...)")
    p.add_argument("--metric", default="voc07", metavar="NAME",
                   help="a registered metric (see --list-metrics): voc07 (11-point AP), voc12 (all-point AP), coco "
                        "(pycocotools' 12 numbers), ...; default voc07")
    p.add_argument("--list-metrics", action="store_true",
                   help="list the registered metrics (with --json FILE: also as JSON) and exit")
    p.add_argument("--gt", help="ground truth: a VOC root (read with --split) or a COCO instances JSON")
    p.add_argument("--detections", help="detections: a COCO results JSON, or a folder / glob of comp4 files")
    p.add_argument("--data", help="dataset to run the model on (VOC root, COCO JSON or folder, YOLO root, CSV)")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--classes", help="class list of a VOC root: a file, comma-separated names or 'voc' (default: "
                                     "classes.txt beside the data, else the sorted names found)")
    add_json_option(p, "the metrics")
    p.add_argument("--out", help="folder for metrics.json, pr_curves.png, detections.json and comp4/ files")
    p.add_argument("--watch", metavar="DIR", help="evaluate each new checkpoint appearing in DIR (needs --data)")
    p.add_argument("--pattern", default="*.safetensors", help="checkpoint glob for --watch (default *.safetensors)")
    p.add_argument("--interval", type=positive_seconds, default=30.0, help="seconds between looks at DIR (default 30)")
    p.add_argument("--timeout", type=positive_seconds, default=None,
                   help="stop --watch after this many seconds without a new checkpoint (default: never)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="images per batch when running a model (default 8)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data loading processes (default 0)")
    add_progress_options(p)
    p.add_argument("--device", default="cpu", help="device to run a model on (default cpu)")
    p.add_argument("--runtime", default="auto",
                   help="how a CHECKPOINT's network runs, as in multibox detect: auto (default) or one of eager, "
                        "jit, jit+channels_last, channels_last, onnxruntime, onnxruntime-int8 (with --int8-model "
                        "FILE or --calibrate DIR)")
    add_int8_runtime_options(p)
    add_tile_options(p)
    add_tta_option(p)
    p.set_defaults(func=run)


def _classes(spec: str | None) -> Any:
    if spec is None or spec in ("voc", "infer") or Path(spec).is_file():
        return spec
    return [s.strip() for s in spec.split(",") if s.strip()]


def _default_loader(path: Path, device: str, runtime: str = "auto", batch_size: int = 8,  # noqa: ANN401
                    runtime_options: dict[str, Any] | None = None) -> Any:
    """The detector in ``path`` (a multibox checkpoint or any detector bundle, e.g. an imported Caffe or TF SSD),
    loaded exactly as ``multibox detect --model PATH`` loads it, with the evaluation's post-processing settings
    (:data:`multibox.engine.evaluator.EVAL_POSTPROCESS`)."""
    # heavy: the Detector imports torch and torchvision; `multibox --help` imports this module
    from ..detector import Detector
    from ..engine.evaluator import EVAL_POSTPROCESS

    return Detector.from_file(path, device, runtime=runtime, batch_size=batch_size, postprocess=EVAL_POSTPROCESS,
                              runtime_options=runtime_options)


def run(args: argparse.Namespace, load: Callable[[Path, str], Any] | None = None) -> int:
    """Dispatch to the three modes (see the module docstring). ``load(path, device) -> SSD | Detector``
    replaces the default loading of a detector file (tests)."""
    if load is None:
        load = _default_loader
    else:  # an injected load(path, device) (tests)
        inject = load
        load = lambda path, device, **_: inject(path, device)  # noqa: E731
    if getattr(args, "list_metrics", False):
        return _list_metrics(args)
    get_metric(args.metric)  # an unknown name is a usage error naming the registered ones, before any work
    tile, overlap = tile_settings(args)
    if tile is not None and not (args.checkpoint or args.watch):
        raise UsageError("--tile runs a model in tiles: it needs CHECKPOINT --data or --watch DIR (a results "
                         "file given with --detections is scored as it is)")
    if args.tta is not None and not (args.checkpoint or args.watch):
        raise UsageError("--tta runs a model on mirrored / turned copies: it needs CHECKPOINT --data or --watch DIR "
                         "(a results file given with --detections is scored as it is)")
    if args.json:
        check_output_file(args.json, "--json")
    if args.out:
        check_output_dir(args.out, "--out")
    if args.watch:
        data = args.data or args.gt
        if not data or args.checkpoint or args.detections:
            raise ValueError("--watch DIR needs --data PATH (and no CHECKPOINT or --detections)")
        rows = watch_checkpoints(args.watch, data, metric=args.metric, split=args.split, pattern=args.pattern,
                                 interval=args.interval, timeout=args.timeout, load=load,
                                 classes=_classes(args.classes), batch_size=args.batch_size,
                                 num_workers=args.workers, device=args.device, progress=show_progress(args),
                                 tile=tile, overlap=overlap, tta=args.tta)
        print(f"evaluated {len(rows)} checkpoint(s); log: {Path(args.watch) / WATCH_LOG}")
        return 0
    if args.checkpoint:
        data = args.data or args.gt
        if not data:
            raise ValueError("CHECKPOINT needs --data PATH (the dataset to evaluate on)")
        if args.detections:
            raise ValueError("give either CHECKPOINT --data or --gt --detections, not both")
        return _run_model(args, Path(args.checkpoint), data, load, tile, overlap)
    if not (args.gt and args.detections):
        raise ValueError("give --gt PATH and --detections PATH, or CHECKPOINT --data PATH, or --watch DIR --data PATH")
    return _run_results(args)


def _list_metrics(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    rows = [get_metric(n).to_json() for n in list_metrics()]
    if args.json != "-":
        print(metric_table())
    if args.json:
        write_json_output(args.json, rows)
    return 0


def _run_results(args: argparse.Namespace) -> int:
    from ..engine.evaluator import evaluate_table
    from ..metrics.results import load_ground_truth, read_detections

    gt = load_ground_truth(args.gt, split=args.split, classes=_classes(args.classes))
    table = read_detections(args.detections, gt, split=args.split)
    result = evaluate_table(gt, table, args.metric)
    _report(result, args, gt, table)
    return 0


def _dataset_gt(ds: Any) -> Any:
    """The ground truth whose ids results files use: the COCO file for COCO data, else the dataset's targets."""
    from ..metrics.results import GroundTruth, read_coco_ground_truth

    if getattr(ds, "format", None) == "coco" and getattr(ds, "annotation_file", None) is not None:
        return read_coco_ground_truth(ds.annotation_file)
    return GroundTruth(targets=[ds.target(i) for i in range(len(ds))], class_names=list(ds.class_names),
                       source=str(getattr(ds, "roots", ["dataset"])[0]))


def _table_of(result: Any, gt: Any) -> Any:
    """The detections of ``result`` as a table indexing ``gt`` (images by id, classes by name)."""
    import numpy as np

    from ..engine.evaluator import label_map
    from ..metrics.results import DetectionTable

    table = DetectionTable.from_detections(result.detections)
    index = np.array([gt.index_of(i) if gt.index_of(i) is not None else -1 for i in result.image_ids], np.int64)
    mapping = label_map(result.class_names, gt.class_names)
    label = table.label if mapping is None else mapping[table.label]
    image = index[table.image] if len(table) else table.image
    keep = (label > 0) & (image >= 0)
    return DetectionTable(image[keep], label[keep], table.score[keep], table.boxes[keep])


def _run_model(args: argparse.Namespace, checkpoint: Path, data: str, load: Callable[..., Any],
               tile: int | None = None, overlap: float = 0.25) -> int:
    from ..data.datasets import open_dataset
    from ..engine.evaluator import evaluate_model

    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    ds = open_dataset(data, split=args.split, classes=_classes(args.classes))
    options = int8_runtime_options(args)
    extra = {"runtime_options": options} if options else {}  # custom loaders (tests) need not know the option
    model = load(checkpoint, args.device, runtime=args.runtime, batch_size=args.batch_size, **extra)
    result = evaluate_model(model, ds, metric=args.metric, batch_size=args.batch_size, num_workers=args.workers,
                            device=args.device, progress=show_progress(args),
                            runtime=args.runtime, tile=tile, overlap=overlap, tta=args.tta)
    gt = _dataset_gt(ds) if args.out else None
    _report(result, args, gt, _table_of(result, gt) if gt is not None else None, title=checkpoint.name)
    return 0


def write_outputs(result: Any, out: str | os.PathLike, gt: Any, table: Any, split: str = "test",
                  title: str = "") -> list[Path]:
    """Write ``metrics.json``, ``pr_curves.png``, ``detections.json`` (COCO results) and ``comp4/`` into ``out``.

    ``result``: an :class:`~multibox.engine.evaluator.EvalResult`; ``gt`` / ``table``: the
    :class:`~multibox.metrics.results.GroundTruth` and :class:`~multibox.metrics.results.DetectionTable` the
    results files are written from. Every file is written atomically.
    """
    from ..metrics.plots import plot_pr_curves
    from ..metrics.results import write_coco_results, write_comp4

    folder = Path(out)
    files = [atomic_write_bytes(folder / "metrics.json", (json.dumps(result.to_json(), indent=2) + "\n").encode())]
    metric = get_metric(result.metric)
    name = metric.curve
    files.append(plot_pr_curves(result.classes, folder / "pr_curves.png", step=metric.step_curve,
                                title=f"{title + ': ' if title else ''}precision-recall ({name})"))
    files.append(write_coco_results(table, gt, folder / "detections.json"))
    files += write_comp4(table, gt, folder / "comp4", split=split)
    return files


def _report(result: Any, args: argparse.Namespace, gt: Any, table: Any, title: str = "") -> None:
    to_stdout = args.json == "-"
    if not to_stdout:
        print(result.format_table())
    if args.json:
        write_json_output(args.json, result.to_json())
        if not to_stdout and not is_quiet(args):
            print(f"wrote {args.json}")
    if args.out:
        files = write_outputs(result, args.out, gt, table, split=args.split, title=title)
        if not to_stdout and not is_quiet(args):
            print(f"wrote {len(files)} files to {args.out} (metrics.json, pr_curves.png, detections.json, "
                  "comp4/)")


# ----------------------------------------------------------------------------------------------- watch


def _read_log(log: Path) -> tuple[list[str], set[tuple[str, int]]]:
    if not log.is_file():
        return [], set()
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    done = set()
    for line in lines:
        try:
            row = json.loads(line)
            done.add((str(row["checkpoint"]), int(row["mtime_ns"])))
        except (ValueError, KeyError, TypeError):
            continue
    return lines, done


def watch_checkpoints(
    folder: str | os.PathLike,
    data: str | os.PathLike,
    *,
    metric: str = "voc07",
    split: str | None = "test",
    pattern: str = "*.safetensors",
    interval: float = 30.0,
    timeout: float | None = None,
    load: Callable[[Path, str], Any] | None = None,
    classes: Any = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
    tile: int | None = None,
    overlap: float = 0.25,
    tta: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """Evaluate every checkpoint that appears in ``folder`` (files matching ``pattern``) once, on ``data``.

    A checkpoint is a file version: the same name written again (``last.safetensors`` after each save) is a new
    checkpoint. Versions already in ``folder/watch_eval.jsonl`` (from an earlier run) are skipped. Each
    evaluation appends a line ``{"checkpoint", "mtime_ns", "size", "time", "seconds", "metric", "mAP",
    "per_class", "num_images"}`` (or ``"error"`` when loading or evaluating failed) to that file, rewritten
    atomically. Looks every ``interval`` seconds; returns after ``timeout`` seconds without a new checkpoint
    (never when ``None``) or on Ctrl-C. ``load(path, device)`` builds the model (default: the
    detector file loaded as ``multibox detect`` does); ``tile`` / ``overlap``: tiled inference, ``tta``: test-time
    augmentation (see :func:`~multibox.engine.evaluator.evaluate_model`; the rows then hold ``tile`` / ``tta``);
    ``sleep`` and ``clock`` are
    injectable for tests.

    Returns the rows written by this call.
    """
    from ..data.datasets import open_dataset
    from ..engine.evaluator import evaluate_model

    load = load or _default_loader
    folder = Path(folder)
    log = folder / WATCH_LOG
    ds = open_dataset(data, split=split, classes=classes)
    lines, done = _read_log(log)
    rows: list[dict[str, Any]] = []
    last_new = clock()
    waiting_note = False
    try:
        while True:
            found = []
            if folder.is_dir():
                for p in folder.glob(pattern):
                    if p.name.startswith(".") or p.name == WATCH_LOG or not p.is_file():
                        continue
                    st = p.stat()
                    if (p.name, st.st_mtime_ns) not in done:
                        found.append((st.st_mtime_ns, p.name, p, st.st_size))
            elif not waiting_note:
                print(f"waiting for {folder} to appear", file=sys.stderr)
                waiting_note = True
            for mtime_ns, name, path, size in sorted(found):
                row: dict[str, Any] = {"checkpoint": name, "mtime_ns": mtime_ns, "size": size,
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                t0 = time.perf_counter()
                try:
                    model = load(path, device)
                    result = evaluate_model(model, ds, metric=metric, batch_size=batch_size,
                                            num_workers=num_workers, device=device, progress=progress,
                                            tile=tile, overlap=overlap, tta=tta)
                    row.update(seconds=round(time.perf_counter() - t0, 3), **result.to_json())
                    shown = "n/a" if row["mAP"] is None else f"{row['mAP']:.4f}"
                    print(f"{name}: {metric} mAP {shown} ({row['seconds']:.1f} s)")
                except (OSError, ValueError, KeyError, RuntimeError) as e:
                    row.update(seconds=round(time.perf_counter() - t0, 3), error=f"{type(e).__name__}: {e}")
                    print(f"{name}: evaluation failed: {e}", file=sys.stderr)
                done.add((name, mtime_ns))
                rows.append(row)
                lines.append(json.dumps(row))
                atomic_write_bytes(log, ("\n".join(lines) + "\n").encode())
            if found:
                last_new = clock()
            elif timeout is not None and clock() - last_new >= timeout:
                break
            sleep(interval)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return rows
