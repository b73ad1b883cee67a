"""``multibox detect SOURCE...``: run a detector on images, folders, globs and videos; write what it found.

Sources: image files, folders (their images, sorted, not recursive), glob patterns (``'photos/**/*.jpg'``,
recursive ``**`` allowed) and video files (read with OpenCV, imported only for videos; frames are named
``<video>_f000123``). The model is a zoo name (``multibox zoo list``; default ``face-res10-300``) or a file (a
detector bundle or a multibox training checkpoint).

Output folder (``--out``, default ``multibox-detect``):

* ``annotated/<name>.png``: the image with boxes, class names and scores drawn (``--no-draw`` skips them);
* ``detections.json``: COCO style, ``{"model", "conf", "categories": [{id, name}], "images": [{id, file_name,
  source, width, height}], "annotations": [{id, image_id, bbox: [x, y, w, h] pixels, score, category_id,
  category_name}]}`` (``multibox eval --detections`` reads it); ``category_id`` is the class index (1 = the
  first class after background);
* ``--voc-xml``: ``voc/<name>.xml`` Pascal VOC (1-based pixel corners), for labelling tools to start from;
* ``--yolo``: ``yolo/<name>.txt`` (``class cx cy w h`` normalized, class 0 = the first object class) and
  ``yolo/classes.txt``.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "expand_sources", "VIDEO_EXTENSIONS", "DEFAULT_MODEL"]

DEFAULT_MODEL = "face-res10-300"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_GLOB_CHARS = set("*?[")


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
    p.add_argument("--conf", type=float, default=0.5, help="keep detections with score >= CONF (default 0.5)")
    p.add_argument("--out", default="multibox-detect", help="output folder (default multibox-detect)")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="network runtime: auto (ONNX Runtime on CPU when installed, else PyTorch; the default), "
                        "torch or onnxruntime (CPU only)")
    p.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--voc-xml", action="store_true", help="also write voc/<name>.xml per image")
    p.add_argument("--yolo", action="store_true", help="also write yolo/<name>.txt per image and yolo/classes.txt")
    p.add_argument("--no-draw", action="store_true", help="do not write annotated images")
    p.add_argument("--video-stride", type=int, default=1, help="use every N-th video frame (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


@dataclass
class Source:
    """One input: an image file or a video file (``kind``), as given and resolved."""

    path: Path
    kind: str  # "image" or "video"


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS


def expand_sources(specs: list[str]) -> list[Source]:
    """Files, folders and glob patterns -> the image and video files they name, in order (duplicates dropped).

    Raises ``FileNotFoundError`` naming a missing path, a pattern matching nothing, or a folder without images.
    """
    from ..data.datasets.common import IMAGE_EXTENSIONS

    media = (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)
    out: list[Source] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(Source(p, "video" if _is_video(p) else "image"))

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in media)
            if not files:
                raise FileNotFoundError(f"{p}: folder holds no images or videos ({', '.join(media)})")
            for q in files:
                add(q)
        elif p.is_file():
            add(p)
        elif _GLOB_CHARS & set(spec):
            files = sorted(Path(q) for q in glob.glob(spec, recursive=True))
            files = [q for q in files if q.is_file() and q.suffix.lower() in media]
            if not files:
                raise FileNotFoundError(f"{spec}: pattern matches no image or video files")
            for q in files:
                add(q)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def _unique_stems(sources: list[Source]) -> list[str]:
    used: set[str] = set()
    stems = []
    for s in sources:
        stem, k = s.path.stem, 1
        name = stem
        while name.lower() in used:
            name = f"{stem}_{k}"
            k += 1
        used.add(name.lower())
        stems.append(name)
    return stems


def _open_video(path: Path) -> Any:  # noqa: ANN401
    try:
        import cv2
    except ImportError:
        raise ValueError(f"{path}: reading video needs OpenCV, which is not installed (pip install "
                         "'opencv-python-headless<5'); images need no OpenCV") from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open video (unreadable file or unsupported codec)")
    return cap


def _video_frames(path: Path, stem: str, stride: int) -> Iterator[tuple[str, Any]]:
    """``(name, [H, W, 3] uint8 RGB)`` of every ``stride``-th frame."""
    cap = _open_video(path)
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % stride == 0:
                yield f"{stem}_f{index:06d}", frame[..., ::-1].copy()  # BGR -> RGB
            index += 1
        if index == 0:
            raise ValueError(f"{path}: video has no readable frames")
    finally:
        cap.release()


def _frame_count(path: Path, stride: int) -> int | None:
    try:
        import cv2
    except ImportError:
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return (n + stride - 1) // stride if n > 0 else None


@dataclass
class _Item:
    name: str  # output stem
    file_name: str  # the image's file name (frames: <name>.png)
    source: str  # the path as found
    folder: str


def _items(sources: list[Source], stride: int) -> Iterator[tuple[_Item, Any]]:
    """``(item, RGB array)`` per image and video frame; decoding errors name the file."""
    from ..data.image_io import load_image

    for src, stem in zip(sources, _unique_stems(sources), strict=True):
        folder = src.path.parent.name
        if src.kind == "video":
            for name, frame in _video_frames(src.path, stem, stride):
                yield _Item(name, f"{name}.png", str(src.path), folder), frame
        else:
            yield _Item(stem, src.path.name, str(src.path), folder), load_image(src.path)


def _load_detector(spec: str, device: str, batch_size: int, backend: str = "auto") -> Any:  # noqa: ANN401
    """A :class:`~multibox.detector.Detector` from a detector file or a zoo name (``KeyError`` /
    ``FileNotFoundError`` naming ``spec`` otherwise)."""
    from ..detector import Detector
    from ..interop.zoo import ZOO

    p = Path(spec)
    if p.is_file():
        return Detector.from_file(p, device, batch_size=batch_size, backend=backend)
    if spec in ZOO:
        return Detector.from_pretrained(spec, device, batch_size=batch_size, backend=backend)
    if p.suffix in (".safetensors", ".pt") or "/" in spec or "\\" in spec:
        raise FileNotFoundError(f"{p}: no such detector file")
    raise KeyError(f"{spec!r} is neither a detector file nor a zoo model; zoo models: {', '.join(sorted(ZOO))}")


def _yolo_lines(dets: Any, h: int, w: int) -> str:  # noqa: ANN401
    lines = []
    for (x1, y1, x2, y2), label in zip(dets.boxes.tolist(), dets.labels.tolist(), strict=True):
        vals = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        lines.append(f"{label - 1} " + " ".join(f"{v:.6f}" for v in vals) + "\n")
    return "".join(lines)


class _Writer:
    """Writes the per-image outputs as results arrive and collects the JSON records."""

    def __init__(self, out: Path, class_names: list[str], draw: bool, voc: bool, yolo: bool) -> None:
        self.out, self.class_names, self.draw, self.voc, self.yolo = out, class_names, draw, voc, yolo
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def write(self, item: _Item, image: Any, dets: Any) -> None:  # noqa: ANN401
        import numpy as np

        from ..fileio import atomic_write_bytes

        h, w = int(image.shape[0]), int(image.shape[1])
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": item.file_name, "source": item.source,
                            "width": w, "height": h})
        for rec in dets.to_json_records(image_id):
            self.annotations.append({"id": len(self.annotations) + 1, **rec})
        boxes = dets.boxes.numpy()
        if self.draw:
            from ..viz import draw_detections

            draw_detections(image, boxes, dets.scores.numpy(), dets.names(),
                            self.out / "annotated" / f"{item.name}.png")
        if self.voc:
            from ..data.datasets.voc import voc_xml

            n = len(dets)
            xml = voc_xml(item.file_name, (h, w), boxes, dets.names(), np.zeros(n, bool), np.zeros(n, bool),
                          folder=item.folder)
            atomic_write_bytes(self.out / "voc" / f"{item.name}.xml", xml)
        if self.yolo:
            atomic_write_bytes(self.out / "yolo" / f"{item.name}.txt", _yolo_lines(dets, h, w).encode())

    def finish(self, model: str, conf: float) -> Path:
        from ..fileio import atomic_write_bytes

        if self.yolo:
            atomic_write_bytes(self.out / "yolo" / "classes.txt",
                               "".join(f"{n}\n" for n in self.class_names[1:]).encode())
        doc = {"model": model, "conf": conf,
               "categories": [{"id": k, "name": n} for k, n in enumerate(self.class_names) if k > 0],
               "images": self.images, "annotations": self.annotations}
        return atomic_write_bytes(self.out / "detections.json", json.dumps(doc, indent=1).encode())


def detect_sources(sources: list[Source], detector: Any, out: Path, *, conf: float = 0.5,  # noqa: ANN401
                   draw: bool = True, voc: bool = False, yolo: bool = False, video_stride: int = 1,
                   progress: bool = True, model_name: str = "") -> dict[str, Any]:
    """Run ``detector`` (a :class:`~multibox.detector.Detector`) over ``sources`` in batches of its
    ``batch_size`` and write the outputs into ``out``; returns ``{"images", "detections", "json", "seconds"}``."""
    import time

    from tqdm.auto import tqdm

    if video_stride < 1:
        raise ValueError(f"--video-stride must be >= 1, got {video_stride}")
    total: int | None = 0
    for s in sources:
        n = 1 if s.kind == "image" else _frame_count(s.path, video_stride)
        total = None if total is None or n is None else total + n
    for s in sources:  # fail early on videos without OpenCV
        if s.kind == "video":
            _open_video(s.path).release()
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, detector.class_names, draw, voc, yolo)
    t0 = time.perf_counter()
    batch: list[tuple[_Item, Any]] = []

    def flush() -> None:
        results = detector.detect_arrays([img for _, img in batch], conf)
        for (item, img), dets in zip(batch, results, strict=True):
            writer.write(item, img, dets)
        bar.update(len(batch))
        batch.clear()

    with tqdm(total=total, unit="img", desc="detect", disable=not progress, file=sys.stderr) as bar:
        for item, img in _items(sources, video_stride):
            batch.append((item, img))
            if len(batch) >= detector.batch_size:
                flush()
        if batch:
            flush()
    path = writer.finish(model_name, conf)
    return {"images": len(writer.images), "detections": len(writer.annotations), "json": str(path),
            "seconds": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> int:
    """``multibox detect`` (see the module docstring)."""
    from ..interop.zoo import ZooUnavailable

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    sources = expand_sources(list(args.sources))
    try:
        detector = _load_detector(args.model, args.device, args.batch_size, args.backend)
    except ZooUnavailable as e:
        print(f"multibox detect: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    summary = detect_sources(sources, detector, out, conf=args.conf, draw=not args.no_draw, voc=args.voc_xml,
                             yolo=args.yolo, video_stride=args.video_stride, progress=not args.no_progress,
                             model_name=args.model)
    print(f"{summary['images']} images, {summary['detections']} detections (conf >= {args.conf}) in "
          f"{summary['seconds']:.1f} s; wrote {out}")
    return 0
