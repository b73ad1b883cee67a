"""``multibox detect SOURCE...``: run a detector on images, folders, globs and videos; write what it found.

Sources: image files, folders (their images, sorted, not recursive), glob patterns (``'photos/**/*.jpg'``,
recursive ``**`` allowed) and video files (read with OpenCV, imported only for videos; frames are named
``<video>_f000123``). The model is a zoo name (``multibox zoo list``; default ``face-res10-300``) or a file (a
detector bundle or a multibox training checkpoint).

Output folder (``--out``, default ``multibox-detect``):

* ``annotated/<name>.jpg|.png``: the image with boxes, class names and scores drawn (JPEG for JPEG inputs, PNG
  otherwise; ``--no-draw`` skips them);
* ``detections.json``: COCO style, ``{"model", "conf", "tile", "tta", "categories": [{id, name}], "images":
  [{id, file_name, source, width, height}], "annotations": [{id, image_id, bbox: [x, y, w, h] pixels, score,
  category_id, category_name}]}`` (``multibox eval --detections`` reads it); ``category_id`` is the class index (1 = the
  first class after background);
* ``--voc-xml``: ``voc/<name>.xml`` Pascal VOC (1-based pixel corners), for labelling tools to start from;
* ``--yolo``: ``yolo/<name>.txt`` (``class cx cy w h`` normalized, class 0 = the first object class) and
  ``yolo/classes.txt``;
* ``--json FILE``: a summary ``{"images", "detections", "json", "seconds", "model", "runtime", "conf", "out",
  "tile", "tta"}``.

``--tile PIXELS [--overlap FRACTION]`` detects in overlapping windows of a large photo (e.g. an orthophoto for a
model trained on 400 px tiles) and merges them (:meth:`multibox.detector.Detector.detect_tiled`); ``tile`` in
the summary and in ``detections.json`` is then ``{"tile", "overlap"}`` (else ``null``).
``--tta flips|dihedral|dihedral+shift`` detects in mirrored, turned (and shifted) copies and fuses the boxes
(:meth:`multibox.detector.Detector.detect_tta`); ``tta`` is then the mode (else ``null``).

Every box lies inside its image (the Detector clips them), so the VOC / YOLO pre-annotations pass
``multibox data check``. ``--out`` is checked before any work (a file or an unwritable place is an error), and a
folder that already holds ``detections.json`` is only written into with ``--overwrite``. ``--runtime`` picks how
the network runs (``auto``, or a name of ``multibox.runtime.list_runtimes()``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import atomic_write_bytes
from ..interop.zoo import ZOO, ZooUnavailable
from .options import (
    UsageError,
    add_int8_runtime_options,
    add_json_option,
    add_overwrite_option,
    add_progress_options,
    add_tile_options,
    add_tta_option,
    check_output_dir,
    check_output_file,
    int8_runtime_options,
    is_quiet,
    positive_int,
    probability,
    show_progress,
    tile_settings,
    write_json_output,
)

if TYPE_CHECKING:
    import numpy as np

    from ..sources import Source, SourceItem

__all__ = ["register", "run", "detect_sources", "load_detector", "DetectionRecords", "DEFAULT_MODEL", "RESULTS_FILE"]

DEFAULT_MODEL = "face-res10-300"
RESULTS_FILE = "detections.json"
_RUNTIME_HELP = ("how the network runs: auto (default: ONNX Runtime on the CPU when installed, else traced "
                 "PyTorch, checked against eager mode) or one of eager, jit, jit+channels_last, channels_last, "
                 "onnxruntime, onnxruntime-int8 (with --int8-model FILE or --calibrate DIR)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``detect`` parser."""
    p = subparsers.add_parser(
        "detect", help="run a detector on images, folders, globs or videos",
        description="Detect objects with a zoo model or a saved detector and write annotated images, "
                    "detections.json (COCO style) and optionally VOC XML or YOLO txt pre-annotations. "
                    "See docs/detect.md.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image files, folders, glob patterns (quote them) or video files")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"zoo name or detector file (bundle or checkpoint); default {DEFAULT_MODEL}")
    p.add_argument("--conf", type=probability, default=0.5,
                   help="keep detections with score >= CONF, in [0, 1] (default 0.5)")
    p.add_argument("--out", default="multibox-detect", help="output folder (default multibox-detect)")
    p.add_argument("--runtime", default="auto", help=_RUNTIME_HELP)
    p.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--voc-xml", action="store_true", help="also write voc/<name>.xml per image")
    p.add_argument("--yolo", action="store_true", help="also write yolo/<name>.txt per image and yolo/classes.txt")
    p.add_argument("--no-draw", action="store_true", help="do not write annotated images")
    p.add_argument("--video-stride", type=positive_int, default=1, help="use every N-th video frame (default 1)")
    add_int8_runtime_options(p)
    add_tile_options(p)
    add_tta_option(p)
    add_json_option(p, "a summary (images, detections, files, seconds)")
    add_overwrite_option(p, f"outputs of an earlier run in --out (a folder holding {RESULTS_FILE})")
    add_progress_options(p)
    p.set_defaults(func=run)


def load_detector(spec: str, device: str = "cpu", batch_size: int = 8, runtime: str = "auto",  # noqa: ANN401
                  runtime_options: dict[str, Any] | None = None) -> Any:
    """A :class:`~multibox.detector.Detector` from a detector file or a zoo name (``KeyError`` /
    ``FileNotFoundError`` naming ``spec`` otherwise); ``runtime_options``: see the Detector."""
    from ..detector import Detector  # torch and the model code: imported when a command runs, not for --help

    p = Path(spec)
    kw = {"batch_size": batch_size, "runtime": runtime, "runtime_options": runtime_options}
    if p.is_file():
        return Detector.from_file(p, device, **kw)
    if spec in ZOO:
        return Detector.from_pretrained(spec, device, **kw)
    if p.suffix in (".safetensors", ".pt") or "/" in spec or "\\" in spec:
        raise FileNotFoundError(f"{p}: no such detector file")
    raise KeyError(f"{spec!r} is neither a detector file nor a zoo model; zoo models: {', '.join(sorted(ZOO))}")


def _yolo_lines(dets: Any, h: int, w: int) -> str:  # noqa: ANN401
    lines = []
    for (x1, y1, x2, y2), label in zip(dets.boxes.tolist(), dets.labels.tolist(), strict=True):
        vals = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        lines.append(f"{label - 1} " + " ".join(f"{v:.6f}" for v in vals) + "\n")
    return "".join(lines)


class DetectionRecords:
    """The records of ``detections.json`` (COCO style), added image by image: ``multibox detect`` writes them,
    ``multibox serve`` answers ``POST /v1/detect`` with them (docs/detect.md, docs/serve.md)."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, dets: Any, file_name: str, source: str, width: int, height: int) -> int:  # noqa: ANN401
        """Add one image (``width`` x ``height`` pixels) and its :class:`~multibox.detections.Detections` (``xyxy``
        pixels, written as COCO ``xywh``); returns the image's id (1, 2, ...)."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "source": source, "width": int(width),
                            "height": int(height)})
        for rec in dets.to_json_records(image_id):
            self.annotations.append({"id": len(self.annotations) + 1, **rec})
        return image_id

    def document(self, model: str, conf: float, tile: dict[str, Any] | None = None,
                 tta: str | None = None) -> dict[str, Any]:
        """``{"model", "conf", "tile", "tta", "categories": [{id, name}], "images", "annotations"}``."""
        return {"model": model, "conf": conf, "tile": tile, "tta": tta,
                "categories": [{"id": k, "name": n} for k, n in enumerate(self.class_names) if k > 0],
                "images": self.images, "annotations": self.annotations}


class _Writer:
    """Writes the per-image outputs as results arrive and collects the JSON records."""

    def __init__(self, out: Path, class_names: list[str], draw: bool, voc: bool, yolo: bool) -> None:
        self.out, self.class_names, self.draw, self.voc, self.yolo = out, class_names, draw, voc, yolo
        self.records = DetectionRecords(class_names)
        self.images = self.records.images
        self.annotations = self.records.annotations

    def write(self, item: SourceItem, image: np.ndarray, dets: Any) -> None:  # noqa: ANN401
        # numpy, PIL and the VOC writer load with the first result: every command module is imported for --help
        import numpy as np

        from ..data.datasets.voc import voc_xml
        from ..viz import annotated_suffix, draw_detections

        h, w = int(image.shape[0]), int(image.shape[1])
        self.records.add(dets, item.file_name, item.source, w, h)
        boxes = dets.boxes.numpy()
        if self.draw:
            draw_detections(image, boxes, dets.scores.numpy(), dets.names(),
                            self.out / "annotated" / f"{item.name}{annotated_suffix(item.file_name)}")
        if self.voc:
            n = len(dets)
            xml = voc_xml(item.file_name, (h, w), boxes, dets.names(), np.zeros(n, bool), np.zeros(n, bool),
                          folder=item.folder)
            atomic_write_bytes(self.out / "voc" / f"{item.name}.xml", xml)
        if self.yolo:
            atomic_write_bytes(self.out / "yolo" / f"{item.name}.txt", _yolo_lines(dets, h, w).encode())

    def finish(self, model: str, conf: float, tile: dict[str, Any] | None = None, tta: str | None = None) -> Path:
        if self.yolo:
            atomic_write_bytes(self.out / "yolo" / "classes.txt",
                               "".join(f"{n}\n" for n in self.class_names[1:]).encode())
        doc = self.records.document(model, conf, tile, tta)
        return atomic_write_bytes(self.out / RESULTS_FILE, json.dumps(doc, indent=1).encode())


def detect_sources(sources: list[Source], detector: Any, out: Path, *, conf: float = 0.5,  # noqa: ANN401
                   draw: bool = True, voc: bool = False, yolo: bool = False, video_stride: int = 1,
                   progress: bool = True, model_name: str = "", tile: int | None = None,
                   overlap: float = 0.25, tta: str | None = None) -> dict[str, Any]:
    """Run ``detector`` (a :class:`~multibox.detector.Detector`) over ``sources`` in batches of its
    ``batch_size`` (:meth:`~multibox.detector.Detector.detect_sources`; tiled with ``tile`` / ``overlap``) and
    write the outputs into ``out``; returns ``{"images", "detections", "json", "seconds", "runtime", "tile",
    "tta"}`` (``tile``: ``{"tile", "overlap"}`` or ``None``, ``tta``: the test-time augmentation mode or ``None``;
    both also written into ``detections.json``)."""
    from tqdm.auto import tqdm  # command modules load for --help: heavy imports wait for a run

    from ..sources import frame_count, open_video

    if video_stride < 1:
        raise ValueError(f"--video-stride must be >= 1, got {video_stride}")
    total: int | None = 0
    for s in sources:
        n = 1 if s.kind == "image" else frame_count(s.path, video_stride)
        total = None if total is None or n is None else total + n
    for s in sources:  # fail early on videos without OpenCV
        if s.kind == "video":
            open_video(s.path).release()
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, detector.class_names, draw, voc, yolo)
    t0 = time.perf_counter()
    with tqdm(total=total, unit="img", desc="detect", disable=not progress, file=sys.stderr) as bar:
        for item, image, dets in detector.detect_sources(sources, conf, video_stride=video_stride, tile=tile,
                                                         overlap=overlap, tta=tta):
            writer.write(item, image, dets)
            bar.update(1)
    tiling = None if tile is None else {"tile": int(tile), "overlap": float(overlap)}
    path = writer.finish(model_name, conf, tiling, tta)
    return {"images": len(writer.images), "detections": len(writer.annotations), "json": str(path),
            "seconds": time.perf_counter() - t0, "runtime": detector.runtime_name, "tile": tiling, "tta": tta}


def run(args: argparse.Namespace) -> int:
    """``multibox detect`` (see the module docstring)."""
    from ..sources import expand_sources  # numpy: command modules load for --help, heavy imports wait for a run

    tile, overlap = tile_settings(args)
    out = check_output_dir(args.out, create=False)
    if (out / RESULTS_FILE).exists() and not args.overwrite:
        raise UsageError(f"--out {out}: already holds {RESULTS_FILE} from an earlier run; give --overwrite to "
                         "replace its outputs, or another --out")
    if args.json:
        check_output_file(args.json, "--json")
    runtime_options = int8_runtime_options(args)
    sources = expand_sources(list(args.sources))
    try:
        detector = load_detector(args.model, args.device, args.batch_size, args.runtime, runtime_options)
    except ZooUnavailable as e:
        print(f"multibox detect: error: {e}", file=sys.stderr)
        return 2
    summary = detect_sources(sources, detector, out, conf=args.conf, draw=not args.no_draw, voc=args.voc_xml,
                             yolo=args.yolo, video_stride=args.video_stride, progress=show_progress(args),
                             model_name=args.model, tile=tile, overlap=overlap, tta=args.tta)
    summary = {**summary, "model": args.model, "conf": args.conf, "out": str(out)}
    if args.json:
        write_json_output(args.json, summary)
    if not is_quiet(args) and args.json != "-":
        tiled = "" if tile is None else f", tiles of {tile} px, overlap {overlap:g}"
        tiled += "" if args.tta is None else f", test-time augmentation {args.tta}"
        print(f"{summary['images']} images, {summary['detections']} detections (conf >= {args.conf}, "
              f"{summary['runtime']}{tiled}) in {summary['seconds']:.1f} s; wrote {out}")
    return 0
