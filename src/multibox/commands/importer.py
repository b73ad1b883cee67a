"""``multibox import caffe | tf-od``: convert a pretrained SSD of another framework into a detector bundle.

* ``multibox import caffe DEPLOY.prototxt WEIGHTS.caffemodel --out DIR [--name N] [--classes ...]
  [--mean B,G,R] [--std ...] [--channel-order BGR]``: see :mod:`multibox.interop.caffe`;
* ``multibox import tf-od FROZEN_GRAPH.pb --out DIR [--name N] [--classes ...]``: see
  :mod:`multibox.interop.tensorflow`.

Both write ``DIR/<name>.safetensors`` (load it with :func:`multibox.interop.bundle.load_bundle`) and a JSON report
``DIR/<name>.json``. Imports happen inside the functions so that ``multibox --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "parse_floats", "parse_classes"]


def parse_floats(text: str, n: int, what: str) -> tuple[float, ...]:
    """``"104,117,123"`` -> ``(104.0, 117.0, 123.0)``; exactly ``n`` numbers or a ``ValueError`` naming ``what``."""
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ValueError(f"{what}: expected {n} comma-separated numbers, got {text!r}") from None
    if len(vals) != n:
        raise ValueError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    return vals


def parse_classes(text: str | None) -> list[str] | None:
    """Class names from ``--classes``: a file with one name per line, or comma-separated names (background first)."""
    if not text:
        return None
    p = Path(text)
    if p.is_file():
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"--classes: no class names in {text!r}")
    return names


def _run_caffe(args: argparse.Namespace) -> int:
    from ..interop.caffe import import_caffe

    path = import_caffe(args.prototxt, args.caffemodel, args.out, name=args.name,
                        class_names=parse_classes(args.classes), mean=parse_floats(args.mean, 3, "--mean"),
                        std=parse_floats(args.std, 3, "--std"), channel_order=args.channel_order,
                        int_sizes=not args.float_sizes)
    _print_summary(path)
    return 0


def _run_tf_od(args: argparse.Namespace) -> int:
    from ..interop.tensorflow import import_tf_od

    options = {"name": args.name}
    classes = parse_classes(args.classes)
    if classes is not None:
        options["class_names"] = classes
    path = import_tf_od(args.graph, args.out, **options)
    _print_summary(Path(path))
    return 0


def _print_summary(path: Path) -> None:
    report = path.with_suffix(".json")
    print(f"wrote {path}")
    if report.is_file():
        info = json.loads(report.read_text())
        priors = info.get("num_priors")
        classes = info.get("class_names")
        print(f"wrote {report}" + (f": {priors} priors" if priors is not None else "")
              + (f", classes {classes}" if classes else ""))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import`` parser with its ``caffe`` and ``tf-od`` subcommands."""
    p = subparsers.add_parser(
        "import", help="convert a pretrained Caffe or TensorFlow OD API SSD into a detector bundle",
        description="Convert another framework's pretrained SSD into a multibox detector bundle (.safetensors, "
                    "plus a JSON report). Neither Caffe nor TensorFlow is needed. See docs/importers.md.")
    sub = p.add_subparsers(dest="import_command", required=True, metavar="FORMAT")

    c = sub.add_parser(
        "caffe", help="a Caffe SSD: deploy .prototxt + .caffemodel",
        description="Rebuild a Caffe SSD from its deploy prototxt and caffemodel: the layer graph becomes the "
                    "network, PriorBox layers the priors, DetectionOutput the post-processing settings. The "
                    "pre-processing cannot be read from a deploy file: give it with --mean/--std/--channel-order "
                    "(default: Caffe's BGR, mean 104,117,123; OpenCV's face detector uses --mean 104,177,123).")
    c.add_argument("prototxt", help="the deploy .prototxt (text)")
    c.add_argument("caffemodel", help="the trained weights (.caffemodel, binary)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--name", help="output file stem (default: the caffemodel's stem)")
    c.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated "
                                     "(default: background, class_1, ...)")
    c.add_argument("--mean", default="104,117,123",
                   help="per-channel mean on the 0-255 scale, in --channel-order (default 104,117,123)")
    c.add_argument("--std", default="1,1,1", help="per-channel std, in --channel-order (default 1,1,1)")
    c.add_argument("--channel-order", choices=("BGR", "RGB"), default="BGR",
                   help="channel order of the network input (default BGR, Caffe's)")
    c.add_argument("--float-sizes", action="store_true",
                   help="keep PriorBox min/max sizes as floats (OpenCV) instead of Caffe's int cast")
    c.set_defaults(func=_run_caffe)

    t = sub.add_parser("tf-od", help="a TensorFlow Object Detection API SSD: frozen_inference_graph.pb",
                       description="Convert an SSD (MobileNet v1/v2, SSDLite) frozen GraphDef of the TensorFlow "
                                   "Object Detection API into a detector bundle.")
    t.add_argument("graph", help="the frozen GraphDef (.pb)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--name", help="output file stem (default: the graph's stem)")
    t.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated")
    t.set_defaults(func=_run_tf_od)
