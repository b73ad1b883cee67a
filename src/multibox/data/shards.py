"""Packed datasets: WebDataset-compatible tar shards with a ``dataset.json`` index.

The classic SSD projects packed their datasets into LMDB (Caffe) or TFRecords (TensorFlow) so that training
reads a few large files instead of many small ones. multibox packs into plain POSIX tar files, readable by
``tar``, by `webdataset <https://github.com/webdataset/webdataset>`_ and by the classes here.

Layout of a packed folder::

    OUT/
      shard-000000.tar     <key>.<ext>  the image: the ORIGINAL file bytes when the source dataset can name
                                        its file (``ds.image_path(i)``), else a lossless PNG of the pixels
                           <key>.json   the target (see below)
      shard-000001.tar     ...
      dataset.json         the index, written last: class names, shards, sample counts, bytes, sha256

``<key>`` is the zero-padded global sample index (no dots, as WebDataset wants); samples keep the order of the
source dataset. The per-sample JSON holds ``boxes`` (``[N, 4]`` xyxy pixels, float32 values written exactly),
``labels``, ``difficult``, ``iscrowd``, ``image_id`` and ``orig_size`` (``[height, width]``).

Reading gives back exactly the ``(image, Target)`` the source dataset gave: images decode with the rules of
:mod:`multibox.data.image_io` (EXIF orientation applied, 8-bit RGB), and boxes are float32 again.

* :class:`ShardDataset` is map-style (random access) over local shards. It builds an in-memory offset index
  from the tar headers of each shard the first time it touches that shard.
* :class:`ShardIterableDataset` streams the shards sequentially from local files or any fsspec URL
  (``s3://``, ``gs://``, ``http(s)://`` when the matching fsspec backend is installed, ``file://``,
  ``memory://``), and splits the shards between distributed ranks and DataLoader workers.

A missing, truncated or corrupt shard, or one whose sha256 differs from ``dataset.json``, raises
:class:`ShardError` naming the shard.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlparse

import numpy as np
import torch.distributed as dist
import torch.utils.data
from PIL import Image
from tqdm.auto import tqdm

from ..fileio import atomic_write_bytes
from ..limits import LimitError, check_num_classes
from .image_io import MAX_IMAGE_PIXELS, load_image_bytes
from .types import DetectionDataset, Target

__all__ = [
    "DEFAULT_MAX_BYTES",
    "INDEX_NAME",
    "PackSummary",
    "ShardDataset",
    "ShardError",
    "ShardIndex",
    "ShardInfo",
    "ShardIterableDataset",
    "decode_image_bytes",
    "load_index",
    "pack_dataset",
    "parse_size",
    "verify_shards",
]

INDEX_NAME = "dataset.json"
FORMAT_NAME = "multibox-shards"
FORMAT_VERSION = 1
# Default size limit of one shard; the WebDataset documentation recommends shards of a few hundred MB to ~1 GB.
DEFAULT_MAX_BYTES = 1 << 30

_BLOCK = tarfile.BLOCKSIZE
# Extensions taken as images when the original file is kept (anything PIL reads would do; these are the usual
# ones and what WebDataset's decoders know).
_IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm", "bmp", "webp", "tif", "tiff", "gif"})

Transform = Callable[[np.ndarray, Target], Any]
VerifyMode = Literal["sha256", "size", "none"]


class ShardError(ValueError):
    """A shard is missing, truncated, corrupt or does not match ``dataset.json``; the message names it."""


# --------------------------------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class ShardInfo:
    """One shard as ``dataset.json`` lists it: file name, sample count, size in bytes and sha256 (hex)."""

    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class ShardIndex:
    """A loaded ``dataset.json``.

    ``base`` is the folder that holds the shards: a local path or a URL (without a trailing slash).
    """

    base: str
    class_names: list[str]
    shards: list[ShardInfo]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Samples over all shards."""
        return sum(s.samples for s in self.shards)

    @property
    def is_local(self) -> bool:
        """Whether the shards are local files (a plain path, not a URL)."""
        return not _is_url(self.base)

    def shard_location(self, i: int) -> str:
        """Path (local) or URL of shard ``i``."""
        if self.is_local:
            return str(Path(self.base) / self.shards[i].name)
        return f"{self.base}/{self.shards[i].name}"

    def to_json(self) -> dict[str, Any]:
        """The ``dataset.json`` content."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "class_names": list(self.class_names),
            "num_samples": self.num_samples,
            "num_shards": len(self.shards),
            "shards": [asdict(s) for s in self.shards],
            **self.meta,
        }


def _is_url(s: str) -> bool:
    return "://" in s


def _local_from_file_url(s: str) -> str:
    """``file:///a/b`` -> ``/a/b``; other strings unchanged."""
    if s.startswith("file://"):
        return urlparse(s).path
    return s


def _open_read(location: str, storage_options: dict[str, Any] | None = None) -> BinaryIO:
    """Open a local path or an fsspec URL for binary reading."""
    if _is_url(location):
        import fsspec  # optional dependency (not in pyproject): only URLs need it

        return fsspec.open(location, "rb", **(storage_options or {})).open()
    return open(location, "rb")  # noqa: SIM115 - the caller closes it


def load_index(source: str | os.PathLike | ShardIndex, storage_options: dict[str, Any] | None = None) -> ShardIndex:
    """Load ``dataset.json`` from a packed folder, the index file itself, or a URL of either.

    A ``source`` ending in ``.json`` is the index file; anything else is the folder holding it. ``file://``
    URLs are read as local paths.
    """
    if isinstance(source, ShardIndex):
        return source
    loc = _local_from_file_url(os.fspath(source))
    if _is_url(loc):
        loc = loc.rstrip("/")
        index_loc = loc if loc.endswith(".json") else f"{loc}/{INDEX_NAME}"
        base = index_loc.rsplit("/", 1)[0]
        try:
            with _open_read(index_loc, storage_options) as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{index_loc}: no shard index ({INDEX_NAME}) there") from e
    else:
        p = Path(loc)
        index_path = p if p.suffix == ".json" else p / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: no shard index ({INDEX_NAME}); was the pack finished?")
        index_loc, base, raw = str(index_path), str(index_path.parent), index_path.read_bytes()
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != FORMAT_NAME:
            raise ValueError(f"'format' is {doc.get('format')!r}, not {FORMAT_NAME!r}")
        if int(doc.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"version {doc['version']} is newer than this multibox reads ({FORMAT_VERSION})")
        shards = [ShardInfo(str(s["name"]), int(s["samples"]), int(s["bytes"]), str(s["sha256"]))
                  for s in doc["shards"]]
        class_names = [str(c) for c in doc["class_names"]]
    except RecursionError:
        raise ShardError(f"{index_loc}: not a valid shard index (JSON nested too deeply)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{index_loc}: not a valid shard index ({e})") from e
    _validate_index(index_loc, doc, shards, class_names)
    known = {"format", "version", "class_names", "num_samples", "num_shards", "shards"}
    meta = {k: v for k, v in doc.items() if k not in known}
    return ShardIndex(base=base, class_names=class_names, shards=shards, meta=meta)


def _validate_index(where: str, doc: dict[str, Any], shards: list[ShardInfo], class_names: list[str]) -> None:
    """Counts, sizes, hashes, names and totals of a loaded index must be coherent; ShardError naming it."""
    names = set()
    for k, s in enumerate(shards):
        if not s.name or "/" in s.name or "\\" in s.name or s.name.startswith("."):
            raise ShardError(f"{where}: bad shard name {s.name!r} (must be a plain file name)")
        if s.name in names:
            raise ShardError(f"{where}: shard {s.name!r} is listed twice")
        names.add(s.name)
        if s.samples < 0 or s.bytes < 0:
            raise ShardError(f"{where}: shard {k} ({s.name}): samples {s.samples} and bytes {s.bytes} must be >= 0")
        if len(s.sha256) != 64 or any(c not in "0123456789abcdef" for c in s.sha256):
            raise ShardError(f"{where}: shard {k} ({s.name}): sha256 {s.sha256!r} is not 64 hex digits")
    total = sum(s.samples for s in shards)
    if "num_samples" in doc and doc["num_samples"] != total:
        raise ShardError(f"{where}: num_samples {doc['num_samples']!r} differs from the shards' total {total}")
    if "num_shards" in doc and doc["num_shards"] != len(shards):
        raise ShardError(f"{where}: num_shards {doc['num_shards']!r} differs from the {len(shards)} shards listed")
    try:
        check_num_classes(len(class_names), where)
    except LimitError as e:
        raise ShardError(str(e)) from None
    if class_names[0] != "background" or len(set(class_names)) != len(class_names):
        raise ShardError(f"{where}: class_names must start with 'background' and be unique")


# ------------------------------------------------------------------------------------------------- encode/decode


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to ``[H, W, 3]`` RGB uint8 with the rules of :func:`~multibox.data.load_image`
    (:func:`~multibox.data.image_io.load_image_bytes`).

    EXIF orientation is applied; any PIL mode becomes 8-bit RGB. ``name`` appears in errors
    (:class:`~multibox.data.ImageDecodeError`).
    """
    return load_image_bytes(data, name, MAX_IMAGE_PIXELS)


def _target_to_json(target: Target) -> dict[str, Any]:
    return {
        "image_id": str(target.image_id),
        "orig_size": [int(target.orig_size[0]), int(target.orig_size[1])],
        # float32 -> float64 is exact, and JSON writes float64 so that it reads back to the same value.
        "boxes": np.asarray(target.boxes, dtype=np.float32).astype(np.float64).tolist(),
        "labels": [int(v) for v in target.labels],
        "difficult": [bool(v) for v in target.difficult],
        "iscrowd": [bool(v) for v in target.iscrowd],
    }


def _target_from_json(doc: dict[str, Any]) -> Target:
    return Target(
        boxes=np.asarray(doc["boxes"], dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(doc["labels"], dtype=np.int64).reshape(-1),
        image_id=str(doc["image_id"]),
        orig_size=(int(doc["orig_size"][0]), int(doc["orig_size"][1])),
        difficult=np.asarray(doc.get("difficult", []), dtype=bool).reshape(-1),
        iscrowd=np.asarray(doc.get("iscrowd", []), dtype=bool).reshape(-1),
    )


def _encode_png(image: np.ndarray, compress_level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _upright_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of encoded image bytes after EXIF orientation, from the header only; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return h, w
    except Exception:  # noqa: BLE001 - any failure means "do not keep the original"
        return None


def _path_getter(dataset: DetectionDataset) -> Callable[[int], Any] | None:
    """How to get sample ``i``'s image file: ``dataset.image_path(i)`` or ``dataset.records[i].path``."""
    image_path = getattr(dataset, "image_path", None)
    if callable(image_path):
        return image_path
    records = getattr(dataset, "records", None)  # evaluated once: it may be a property building a list
    if isinstance(records, Sequence) and len(records) and hasattr(records[0], "path"):
        return lambda i: records[i].path
    return None


class _SampleEncoder:
    """Turns sample ``i`` of a dataset into ``(ext, image bytes, target, kept the original file)``."""

    def __init__(self, dataset: DetectionDataset, *, check_images: bool, verify_originals: bool,
                 png_level: int) -> None:
        self.ds = dataset
        self.path_of = _path_getter(dataset)
        target_of = getattr(dataset, "target", None)
        self.target_of = target_of if callable(target_of) else None
        self.check_images = check_images
        self.verify_originals = verify_originals
        self.png_level = png_level

    def _original(self, i: int) -> tuple[str, bytes] | None:
        path = self.path_of(i) if self.path_of is not None else None
        if path is None:
            return None
        ext = Path(path).suffix.lower().lstrip(".")
        return (ext, Path(path).read_bytes()) if ext in _IMAGE_EXTS else None

    def __call__(self, i: int) -> tuple[str, bytes, Target, bool]:
        if not self.check_images and self.target_of is not None:
            # Trust the file: copy its bytes, check only that its header agrees with the target's size.
            target = self.target_of(i)
            orig = self._original(i)
            if orig is not None and _upright_size(orig[1]) == tuple(target.orig_size):
                return orig[0], orig[1], target, True
        image, target = self.ds[i]
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"sample {i}: image must be [H, W, 3] uint8, got {image.dtype} {image.shape}")
        # A lenient dataset may hand out another image in place of an unreadable one: then the file is not it.
        same = self.target_of is None or self.target_of(i).image_id == target.image_id
        orig = self._original(i) if same else None
        if orig is not None and _upright_size(orig[1]) == tuple(image.shape[:2]):
            ext, data = orig
            if not self.verify_originals or np.array_equal(decode_image_bytes(data, f"sample {i}.{ext}"), image):
                return ext, data, target, True
        return "png", _encode_png(image, self.png_level), target, False


def _member_bytes(size: int) -> int:
    """Bytes a tar member of ``size`` data bytes takes: a 512-byte header plus data padded to 512."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


# ------------------------------------------------------------------------------------------------------ packing


@dataclass
class PackSummary:
    """What :func:`pack_dataset` wrote."""

    out_dir: str
    index: str
    num_samples: int
    num_shards: int
    total_bytes: int
    original_images: int
    png_images: int
    seconds: float
    shards: list[str]

    @property
    def samples_per_second(self) -> float:
        """Packing speed."""
        return self.num_samples / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``samples_per_second``)."""
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["samples_per_second"] = round(self.samples_per_second, 2)
        return d


class _HashingWriter:
    """File-like writer that hashes and counts what passes through (``tarfile`` needs ``write`` and ``tell``)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.pos = 0

    def write(self, b: bytes) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos


class _ShardWriter:
    """One shard being written to a temporary file next to its final name."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self.hw = _HashingWriter(self.file)
        self.tar = tarfile.open(fileobj=self.hw, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
        self.samples = 0
        self.data_bytes = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # deterministic shards: the same dataset packs to the same sha256
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.data_bytes += _member_bytes(len(data))

    def close(self) -> ShardInfo:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return ShardInfo(self.final.name, self.samples, self.hw.pos, self.hw.sha.hexdigest())

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def parse_size(text: str | int) -> int:
    """Parse a byte size: ``1000``, ``500K``, ``256M``, ``1G``, ``1.5GB``, ``2GiB`` (powers of 1024)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if s.endswith(suffix):
            s, mult = s[:-1], m
            break
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"not a byte size: {text!r} (examples: 1000, 500M, 1G)") from None
    if value <= 0:
        raise ValueError(f"byte size must be positive: {text!r}")
    return int(value * mult)


def pack_dataset(
    dataset: DetectionDataset,
    out_dir: str | os.PathLike,
    *,
    prefix: str = "shard",
    max_samples: int | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    overwrite: bool = False,
    progress: bool = True,
    check_images: bool = True,
    verify_originals: bool = False,
    png_compress_level: int = 1,
    meta: dict[str, Any] | None = None,
) -> PackSummary:
    """Pack ``dataset`` into tar shards ``OUT/<prefix>-000000.tar, ...`` and write ``OUT/dataset.json`` last.

    A shard is closed when it holds ``max_samples`` samples or when the next sample would take it over
    ``max_bytes`` (counted as tar blocks; the tar end-of-archive padding adds at most 10 KiB; a single sample
    larger than the limit gets a shard of its own). Either limit may be None; not both.

    Images: when the dataset names sample ``i``'s file (``dataset.image_path(i)``, or ``dataset.records[i].path``
    as the multibox datasets have) and that file's (EXIF-upright) size matches the decoded image, the original
    encoded bytes are stored as they are; otherwise a lossless PNG of the pixels. ``check_images`` (default)
    takes every sample through ``dataset[i]``, so each image is decoded once and unreadable ones fail here, not
    in training; ``check_images=False`` with a dataset that has ``target(i)`` copies the files without decoding
    them (much faster; only their headers are read). ``verify_originals`` also decodes each original again and
    compares every pixel (slower; the PNG is used on any difference, e.g. a dataset that transforms its images).

    Atomicity: every shard is written to a hidden temporary file and all are renamed to their final names only
    after the last one is complete, so an interrupted or failed pack leaves no shard under a final name (and no
    ``dataset.json``). An existing pack in ``out_dir`` raises :class:`FileExistsError` unless ``overwrite``;
    then its shards that the new pack does not replace are removed, after the new ones are in place.
    """
    if max_samples is None and max_bytes is None:
        raise ValueError("give a shard size limit: max_samples and/or max_bytes")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"bad shard prefix {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_NAME
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if (index_path.exists() or old) and not overwrite:
        raise FileExistsError(f"{out}: already holds a pack ({INDEX_NAME} or {prefix}-*.tar); pass overwrite")

    class_names = [str(c) for c in dataset.class_names]
    n = len(dataset)
    width = max(8, len(str(max(n - 1, 0))))
    encode = _SampleEncoder(dataset, check_images=check_images, verify_originals=verify_originals,
                            png_level=png_compress_level)
    t0 = time.perf_counter()
    done: list[tuple[_ShardWriter, ShardInfo]] = []
    cur: _ShardWriter | None = None
    n_orig = 0
    try:
        with tqdm(total=n, unit="sample", desc=f"pack {out.name}", disable=not progress, smoothing=0.1) as bar:
            for i in range(n):
                ext, img_bytes, target, is_orig = encode(i)
                n_orig += is_orig
                js = json.dumps(_target_to_json(target), separators=(",", ":")).encode()
                size = _member_bytes(len(img_bytes)) + _member_bytes(len(js))
                if cur is not None and (
                    (max_samples is not None and cur.samples >= max_samples)
                    or (max_bytes is not None and cur.data_bytes + size > max_bytes)
                ):
                    done.append((cur, cur.close()))
                    cur = None
                if cur is None:
                    cur = _ShardWriter(out / f"{prefix}-{len(done):06d}.tar")
                key = f"{i:0{width}d}"
                cur.add(f"{key}.{ext}", img_bytes)
                cur.add(f"{key}.json", js)
                cur.samples += 1
                bar.update(1)
        if cur is not None:
            done.append((cur, cur.close()))
            cur = None
        # Everything is complete on disk: now move into place.
        if overwrite:
            index_path.unlink(missing_ok=True)
        for w, _ in done:
            os.replace(w.tmp, w.final)
    except BaseException:
        if cur is not None:
            cur.abort()
        for w, _ in done:
            w.tmp.unlink(missing_ok=True)
        raise
    infos = [info for _, info in done]
    names = {s.name for s in infos}
    for p in old:
        if p.name not in names:
            p.unlink(missing_ok=True)
    idx = ShardIndex(base=str(out), class_names=class_names, shards=infos,
                     meta={"image_encoding": {"original": n_orig, "png": n - n_orig}, **(meta or {})})
    atomic_write_bytes(index_path, (json.dumps(idx.to_json(), indent=1) + "\n").encode())
    return PackSummary(out_dir=str(out), index=str(index_path), num_samples=n, num_shards=len(infos),
                       total_bytes=sum(s.bytes for s in infos), original_images=n_orig, png_images=n - n_orig,
                       seconds=time.perf_counter() - t0, shards=[s.name for s in infos])


# ------------------------------------------------------------------------------------------------------ reading


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the base name; the rest is the extension."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _decode_sample(files: dict[str, bytes], where: str) -> tuple[np.ndarray, Target]:
    """``{ext: bytes}`` of one sample -> ``(image, Target)``."""
    if "json" not in files:
        raise ShardError(f"{where}: no .json target")
    images = [e for e in files if e != "json"]
    if len(images) != 1:
        raise ShardError(f"{where}: expected one image file, found {sorted(images) or 'none'}")
    try:
        target = _target_from_json(json.loads(files["json"]))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ShardError(f"{where}.json: bad target ({e})") from e
    return decode_image_bytes(files[images[0]], f"{where}.{images[0]}"), target


def _sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _check_local_shard(path: str, info: ShardInfo, verify: VerifyMode) -> None:
    if not os.path.isfile(path):
        raise ShardError(f"{path}: shard missing")
    if verify == "none":
        return
    size = os.path.getsize(path)
    if size != info.bytes:
        raise ShardError(f"{path}: shard has {size} bytes but {INDEX_NAME} says {info.bytes} (truncated or replaced)")
    if verify == "sha256" and (got := _sha256_file(path)) != info.sha256:
        raise ShardError(f"{path}: shard sha256 {got} does not match {INDEX_NAME} ({info.sha256}): corrupt")


def verify_shards(source: str | os.PathLike | ShardIndex, storage_options: dict[str, Any] | None = None) -> int:
    """Check every shard's size and sha256 against ``dataset.json``; return the sample count.

    Raises :class:`ShardError` naming the first bad shard.
    """
    index = load_index(source, storage_options)
    for i, info in enumerate(index.shards):
        loc = index.shard_location(i)
        if index.is_local:
            _check_local_shard(loc, info, "sha256")
        else:
            h, n = hashlib.sha256(), 0
            try:
                with _open_read(loc, storage_options) as f:
                    while b := f.read(1 << 20):
                        h.update(b)
                        n += len(b)
            except FileNotFoundError as e:
                raise ShardError(f"{loc}: shard missing") from e
            if n != info.bytes or h.hexdigest() != info.sha256:
                raise ShardError(f"{loc}: shard ({n} bytes, sha256 {h.hexdigest()}) does not match {INDEX_NAME} "
                                 f"({info.bytes} bytes, sha256 {info.sha256})")
    return index.num_samples


class ShardDataset(torch.utils.data.Dataset):
    """Map-style dataset over local shards: ``len(ds)``, ``ds[i] -> (image, Target)``, ``ds.class_names``.

    ``source`` is a packed folder, its ``dataset.json``, a ``file://`` URL of either, or a :class:`ShardIndex`.
    Sample ``i`` is the ``i``-th sample packed (the source dataset's order).

    The first access to a shard reads its tar headers into an in-memory offset index (a few int64 per sample);
    later accesses read the two members with one ``open`` and two ``seek``/``read``. ``verify`` checks each
    shard once, when it is indexed: ``"size"`` (default; catches truncation, the tar header checksums catch
    corrupt headers), ``"sha256"`` (reads the whole shard once more) or ``"none"``. The index travels with the
    dataset when it is pickled; with forking DataLoader workers, call :meth:`build_index` first so that the
    workers inherit it instead of each building its own.

    ``transform(image, target)``, when given, is applied to each sample and its result returned.
    """

    def __init__(self, source: str | os.PathLike | ShardIndex, *, transform: Transform | None = None,
                 verify: VerifyMode = "size") -> None:
        if verify not in ("sha256", "size", "none"):
            raise ValueError(f"verify must be 'sha256', 'size' or 'none', got {verify!r}")
        index = load_index(source)
        if not index.is_local:
            raise ValueError(f"ShardDataset reads local shards; {index.base} is a URL: use ShardIterableDataset")
        self.index = index
        self.class_names: list[str] = list(index.class_names)
        self.transform = transform
        self.verify: VerifyMode = verify
        self._starts = np.cumsum([0] + [s.samples for s in index.shards]).tolist()
        # Per shard, once indexed: int64 [n, 4] (image offset, image size, json offset, json size) and the image
        # extensions.
        self._offsets: list[np.ndarray | None] = [None] * len(index.shards)
        self._exts: list[list[str] | None] = [None] * len(index.shards)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def shard_of(self, index: int) -> tuple[int, int]:
        """``(shard number, position in that shard)`` of sample ``index``."""
        s = bisect.bisect_right(self._starts, index) - 1
        return s, index - self._starts[s]

    def build_index(self) -> None:
        """Index (and verify) every shard now instead of on first use."""
        for s in range(len(self.index.shards)):
            self._ensure(s)

    def _ensure(self, s: int) -> None:
        if self._offsets[s] is not None:
            return
        info = self.index.shards[s]
        path = self.index.shard_location(s)
        _check_local_shard(path, info, self.verify)
        rows: list[list[int]] = []
        exts: list[str] = []
        pending: dict[str, Any] = {}
        try:
            with tarfile.open(path, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = _split_name(m.name)
                    if pending and pending["key"] != key:
                        self._add_row(path, pending, rows, exts)
                        pending = {}
                    pending["key"] = key
                    pending[ext] = (m.offset_data, m.size)
                if pending:
                    self._add_row(path, pending, rows, exts)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ShardError(f"{path}: corrupt or truncated shard ({e})") from e
        if len(rows) != info.samples:
            raise ShardError(f"{path}: shard holds {len(rows)} samples but {INDEX_NAME} says {info.samples} "
                             "(truncated or corrupt)")
        self._offsets[s] = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        self._exts[s] = exts

    @staticmethod
    def _add_row(path: str, pending: dict[str, Any], rows: list[list[int]], exts: list[str]) -> None:
        key = pending.pop("key")
        if "json" not in pending:
            raise ShardError(f"{path}: sample {key} has no .json target")
        js = pending.pop("json")
        if len(pending) != 1:
            raise ShardError(f"{path}: sample {key}: expected one image file, found {sorted(pending) or 'none'}")
        ext, img = next(iter(pending.items()))
        rows.append([img[0], img[1], js[0], js[1]])
        exts.append(ext)

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        s, j = self.shard_of(i)
        self._ensure(s)
        path = self.index.shard_location(s)
        img_off, img_size, js_off, js_size = (int(v) for v in self._offsets[s][j])  # type: ignore[index]
        ext = self._exts[s][j]  # type: ignore[index]
        with open(path, "rb") as f:
            f.seek(img_off)
            img = f.read(img_size)
            f.seek(js_off)
            js = f.read(js_size)
        if len(img) != img_size or len(js) != js_size:
            raise ShardError(f"{path}: truncated shard (sample {j} lies past the end of the file)")
        image, target = _decode_sample({ext: img, "json": js}, f"{path}:{j}")
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


class _HashingReader:
    """File-like reader that hashes and counts what it reads (for streaming verification)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        self.pos += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _stream_shard(location: str, info: ShardInfo | None, verify: VerifyMode,
                  storage_options: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` per sample of one shard, read front to back.

    The sample count is always checked against ``info``; ``verify`` adds the byte count (``"size"``) and the
    sha256 (``"sha256"``), both known only once the shard has been read to its end, so a bad shard raises after
    its samples were yielded.
    """
    try:
        f = _open_read(location, storage_options)
    except FileNotFoundError as e:
        raise ShardError(f"{location}: shard missing") from e
    count = 0
    with f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:  # type: ignore[call-overload]
                key: str | None = None
                files: dict[str, bytes] = {}
                for m in tf:
                    if not m.isfile():
                        continue
                    k, ext = _split_name(m.name)
                    if k != key and files:
                        yield key, files  # type: ignore[misc]
                        count += 1
                        files = {}
                    key = k
                    member = tf.extractfile(m)
                    files[ext] = member.read() if member is not None else b""
                if files:
                    yield key, files  # type: ignore[misc]
                    count += 1
            if verify != "none":
                reader.drain()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ShardError(f"{location}: corrupt or truncated shard ({e})") from e
    if info is None:
        return
    if count != info.samples:
        raise ShardError(f"{location}: shard holds {count} samples but {INDEX_NAME} says {info.samples} "
                         "(truncated or corrupt)")
    if verify != "none" and reader.pos != info.bytes:
        raise ShardError(f"{location}: shard has {reader.pos} bytes but {INDEX_NAME} says {info.bytes} "
                         "(truncated or replaced)")
    if verify == "sha256" and (got := reader.sha.hexdigest()) != info.sha256:
        raise ShardError(f"{location}: shard sha256 {got} does not match {INDEX_NAME} ({info.sha256}): corrupt")


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardIterableDataset(torch.utils.data.IterableDataset):
    """Streams samples ``(image, Target)`` shard by shard from local paths or fsspec URLs.

    ``source``: a packed folder or its ``dataset.json``, as a path or URL (``s3://bucket/voc``,
    ``https://host/voc/dataset.json``, ``memory://voc``, ...), or a :class:`ShardIndex`. ``storage_options``
    go to ``fsspec.open`` (credentials, endpoint, ...). ``class_names`` come from ``dataset.json``.

    **Splitting.** Shards (not samples) are the unit of work. The shard list (shuffled with
    ``seed + epoch`` when ``shuffle_shards``; every rank draws the same order) is dealt first to the
    distributed ranks, ``shards[rank::world_size]``, then each rank's share to its DataLoader workers,
    ``share[worker_id::num_workers]``. So every sample is read exactly once per epoch over all ranks and
    workers, and no two readers open the same shard. ``rank``/``world_size`` default to
    ``torch.distributed`` when it is initialized, else 0/1. Use at least ``world_size * num_workers`` shards of
    similar size: a reader without a shard yields nothing (a warning says so), and ranks with unequal sample
    counts need ``drop_last``-style care in distributed training. ``len(ds)`` is this rank's sample count for
    the current epoch.

    ``shuffle_buffer > 0`` shuffles samples within a buffer of that many decoded samples (per worker);
    call :meth:`set_epoch` each epoch to change both shuffles. ``verify``: ``"sha256"`` (default; hashed while
    streaming, at almost no cost, and checked at the end of each shard), ``"size"`` or ``"none"``; the sample
    count is always checked. ``transform(image, target)``, when given, is applied to each sample.
    """

    def __init__(self, source: str | os.PathLike | ShardIndex, *, transform: Transform | None = None,
                 verify: VerifyMode = "sha256", shuffle_shards: bool = False, shuffle_buffer: int = 0,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        if verify not in ("sha256", "size", "none"):
            raise ValueError(f"verify must be 'sha256', 'size' or 'none', got {verify!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= int(rank) < int(world_size):  # type: ignore[arg-type]
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.index = load_index(source, storage_options)
        self.class_names: list[str] = list(self.index.class_names)
        self.transform = transform
        self.verify: VerifyMode = verify
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.storage_options = storage_options

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the shard order and the shuffle buffer."""
        self.epoch = int(epoch)

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return int(self.rank), int(self.world_size)
        return _dist_rank_world()

    def _shard_order(self) -> list[int]:
        order = list(range(len(self.index.shards)))
        if self.shuffle_shards:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def rank_shards(self) -> list[int]:
        """Shard numbers this rank reads this epoch (over all its workers)."""
        rank, world = self._rank_world()
        return self._shard_order()[rank::world]

    def worker_shards(self, worker_id: int = 0, num_workers: int = 1) -> list[int]:
        """Shard numbers DataLoader worker ``worker_id`` of ``num_workers`` of this rank reads this epoch."""
        return self.rank_shards()[worker_id::num_workers]

    def __len__(self) -> int:
        return sum(self.index.shards[s].samples for s in self.rank_shards())

    def __iter__(self) -> Iterator[Any]:
        wi = torch.utils.data.get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        shards = self.worker_shards(wid, nw)
        rank, world = self._rank_world()
        if not shards and self.index.shards:
            warnings.warn(f"rank {rank}/{world} worker {wid}/{nw}: no shard to read ({len(self.index.shards)} "
                          "shards for more readers); pack with smaller shards", RuntimeWarning, stacklevel=2)
        samples = self._samples(shards)
        if self.shuffle_buffer > 1:
            samples = self._shuffled(samples, np.random.default_rng([self.seed, self.epoch, rank, wid]))
        for image, target in samples:
            yield self.transform(image, target) if self.transform is not None else (image, target)

    def _samples(self, shards: Sequence[int]) -> Iterator[tuple[np.ndarray, Target]]:
        for s in shards:
            loc = self.index.shard_location(s)
            for key, files in _stream_shard(loc, self.index.shards[s], self.verify, self.storage_options):
                yield _decode_sample(files, f"{loc}:{key}")

    def _shuffled(self, it: Iterator[tuple[np.ndarray, Target]],
                  rng: np.random.Generator) -> Iterator[tuple[np.ndarray, Target]]:
        buf: list[tuple[np.ndarray, Target]] = []
        for sample in it:
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                k = int(rng.integers(len(buf)))
                buf[k], buf[-1] = buf[-1], buf[k]
                yield buf.pop()
        rng.shuffle(buf)  # type: ignore[arg-type]
        yield from buf
