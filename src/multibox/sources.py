"""Image sources: files, folders, glob patterns and videos -> named RGB images.

Used by :meth:`multibox.detector.Detector.predict` and ``multibox detect``. Folders give their images and videos
(sorted, not recursive); glob patterns may use a recursive ``**``; videos are read with OpenCV (imported only for
videos), their frames named ``<video>_f000123``. Names are the file stems, made unique (``a``, ``a_1``, ...).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.datasets.common import IMAGE_EXTENSIONS
from .data.image_io import load_image

__all__ = ["Source", "SourceItem", "VIDEO_EXTENSIONS", "expand_sources", "unique_stems", "open_video",
           "video_frames", "frame_count", "iter_source_images", "is_video"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_GLOB_CHARS = set("*?[")


@dataclass
class Source:
    """One input: an image file or a video file (``kind``: ``"image"`` or ``"video"``), as given."""

    path: Path
    kind: str


@dataclass
class SourceItem:
    """One image to detect in: ``name`` (unique output stem), ``file_name`` (the image's file name; frames
    ``<name>.png``), ``source`` (the path as found), ``folder`` (its folder's name) and ``frame`` (a video
    frame, not a file of its own)."""

    name: str
    file_name: str
    source: str
    folder: str
    frame: bool = False


def is_video(p: Path) -> bool:
    """Whether ``p`` has a video file extension (:data:`VIDEO_EXTENSIONS`)."""
    return p.suffix.lower() in VIDEO_EXTENSIONS


def expand_sources(specs: Sequence[str]) -> list[Source]:
    """Files, folders and glob patterns -> the image and video files they name, in order (duplicates dropped).

    Raises ``FileNotFoundError`` naming a missing path, a pattern matching nothing, or a folder without images.
    """
    media = (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)
    out: list[Source] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(Source(p, "video" if is_video(p) else "image"))

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


def unique_stems(sources: Sequence[Source]) -> list[str]:
    """One output stem per source: the file stem, with ``_1``, ``_2``, ... where it repeats (case-insensitive)."""
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


def open_video(path: Path) -> Any:  # noqa: ANN401
    """An opened ``cv2.VideoCapture``; ``ValueError`` naming the file without OpenCV or for unreadable files."""
    try:
        import cv2  # optional dependency, only for videos
    except ImportError:
        raise ValueError(f"{path}: reading video needs OpenCV, which is not installed (pip install "
                         "'opencv-python-headless<5'); images need no OpenCV") from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open video (unreadable file or unsupported codec)")
    return cap


def video_frames(path: Path, stem: str, stride: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, [H, W, 3] uint8 RGB)`` of every ``stride``-th frame."""
    cap = open_video(path)
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


def frame_count(path: Path, stride: int) -> int | None:
    """Frames :func:`video_frames` will give (from the container's count; ``None`` when unknown)."""
    try:
        import cv2  # optional dependency, only for videos
    except ImportError:
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return (n + stride - 1) // stride if n > 0 else None


def iter_source_images(sources: Sequence[Source], stride: int = 1) -> Iterator[tuple[SourceItem, np.ndarray]]:
    """``(item, [H, W, 3] uint8 RGB)`` per image and every ``stride``-th video frame; decoding errors name the
    file."""
    if stride < 1:
        raise ValueError(f"video stride must be >= 1, got {stride}")
    for src, stem in zip(sources, unique_stems(sources), strict=True):
        folder = src.path.parent.name
        if src.kind == "video":
            for name, frame in video_frames(src.path, stem, stride):
                yield SourceItem(name, f"{name}.png", str(src.path), folder, frame=True), frame
        else:
            yield SourceItem(stem, src.path.name, str(src.path), folder), load_image(src.path)
