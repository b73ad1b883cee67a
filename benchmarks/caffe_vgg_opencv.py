"""The imported VGG16 SSD300 Caffe graph against OpenCV DNN on the same deploy prototxt and caffemodel.

Not a test: OpenCV is not a dependency of multibox. It needs a second Python with ``opencv-python-headless`` 4.x
and numpy (``--ref-python``, default ``/tmp/refenv/bin/python``). The deploy file and the seeded He-scaled random
weights are those of ``tests/test_caffe_vgg.py`` (the original Caffe SSD layout). Both sides get the same input
blob: ``grace_hopper.jpg`` resized to 300x300, BGR, minus ``(104, 117, 123)``, ``[1, 3, 300, 300]`` float32.

Compared (maxima over all entries):

* ``mbox_priorbox`` ``[1, 2, 4P]``: OpenCV's corner-form priors (``xmin, ymin, xmax, ymax`` normalized) and
  variances vs the imported bundle's cxcywh priors converted to corners;
* ``mbox_loc`` ``[1, 4P]`` vs the bundle's ``box_deltas`` and ``mbox_conf_flatten`` ``[1, 21P]`` vs the softmax of
  its ``cls_logits`` (absolute, and relative to the largest magnitude);
* ``detection_out`` ``[1, 1, N, 7]`` (``image, label, score, xmin, ymin, xmax, ymax``) vs the bundle's
  post-processing: count, and for each OpenCV row the closest imported detection of the same label.

SSD300's prior sizes are integers; SSD512's are not (``min_size: 35.84``): Caffe casts them to int and so does the
importer by default, OpenCV does not, so at 512 the priors (and detections) differ from OpenCV's unless
``--float-sizes`` imports with ``int_sizes=False``.

Usage: ``python benchmarks/caffe_vgg_opencv.py [--size 300|512] [--float-sizes] [--ref-python PATH] [--json FILE]``;
prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from multibox.anchors import cxcywh_to_xyxy
from multibox.interop.caffe import convert_caffe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# the deploy generator and weights of the test (one definition of the original layout)
from test_caffe_vgg import photo_rgb, random_weights, ssd_vgg16_deploy, write_caffemodel  # noqa: E402

_OPENCV_SCRIPT = r"""
import sys, time
import cv2
import numpy as np
proto, model, blob_path, out_path = sys.argv[1:5]
net = cv2.dnn.readNetFromCaffe(proto, model)
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
net.setInput(np.load(blob_path))
names = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]
t = time.perf_counter()
outs = net.forward(names)
elapsed = time.perf_counter() - t
np.savez(out_path, seconds=np.float64(elapsed), version=np.array(cv2.__version__),
         **{n: o for n, o in zip(names, outs)})
"""


def run_opencv(ref_python: str, proto: Path, model: Path, blob: np.ndarray, work: Path) -> dict[str, np.ndarray]:
    """OpenCV DNN's blobs for ``blob`` ``[1, 3, H, W]`` (run in ``ref_python``)."""
    blob_path, out_path = work / "blob.npy", work / "opencv.npz"
    np.save(blob_path, blob)
    subprocess.run([ref_python, "-c", _OPENCV_SCRIPT, str(proto), str(model), str(blob_path), str(out_path)],
                   check=True)
    with np.load(out_path) as z:
        return {k: z[k] for k in z.files}


def compare(size: int, ref_python: str, seed: int, int_sizes: bool = True) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deploy = ssd_vgg16_deploy(size)
        proto, model = work / "deploy.prototxt", work / "weights.caffemodel"
        proto.write_text(deploy.text())
        write_caffemodel(model, deploy, random_weights(deploy, seed=seed))
        t = time.perf_counter()
        bundle = convert_caffe(proto, model, int_sizes=int_sizes)
        convert_s = time.perf_counter() - t
        blob = bundle.input_spec.normalize(photo_rgb(size))  # [1, 3, H, W] BGR minus (104, 117, 123)
        with torch.no_grad():
            t = time.perf_counter()
            out = bundle.model(blob)
            forward_s = time.perf_counter() - t
        dets = bundle.make_postprocess()(out.cls_logits, out.box_deltas)[0]
        ref = run_opencv(ref_python, proto, model, blob.numpy(), work)

    def diff(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        return {"max_abs": float(err.max()), "max_rel": float(err.max() / np.abs(want).max()),
                "max_abs_want": float(np.abs(want).max())}

    p = bundle.priors.shape[0]
    corners = cxcywh_to_xyxy(bundle.priors).numpy().reshape(-1)
    variances = np.tile(np.asarray(bundle.variances, np.float32), p)
    loc = out.box_deltas.reshape(1, -1).numpy()
    conf = out.cls_logits.softmax(-1).reshape(1, -1).numpy()

    want = ref["detection_out"].reshape(-1, 7)
    want = want[want[:, 0] >= 0]  # OpenCV pads an empty result with a -1 row
    got = np.concatenate([dets.labels.numpy()[:, None], dets.scores.numpy()[:, None], dets.boxes.numpy()], 1)
    score_err, box_err, unmatched = 0.0, 0.0, 0
    used = np.zeros(len(got), bool)
    for row in want:
        cand = np.flatnonzero(~used & (got[:, 0] == row[1]))
        if not len(cand):
            unmatched += 1
            continue
        cost = np.abs(got[cand, 2:] - row[3:]).max(1) + np.abs(got[cand, 1] - row[2])
        best = cand[int(np.argmin(cost))]
        used[best] = True
        score_err = max(score_err, float(abs(got[best, 1] - row[2])))
        box_err = max(box_err, float(np.abs(got[best, 2:] - row[3:]).max()))
    return {
        "size": size,
        "num_priors": int(p),
        "int_sizes": int_sizes,
        "opencv_version": str(ref["version"]),
        "priors": diff(corners, ref["mbox_priorbox"][0, 0]),
        "prior_variances": diff(variances, ref["mbox_priorbox"][0, 1]),
        "mbox_loc": diff(loc, ref["mbox_loc"]),
        "mbox_conf_flatten": diff(conf, ref["mbox_conf_flatten"]),
        "detections": {"opencv": int(len(want)), "imported": int(len(got)), "unmatched_label": unmatched,
                       "max_score_diff": score_err, "max_box_diff_normalized": box_err},
        "seconds": {"convert": round(convert_s, 3), "imported_forward": round(forward_s, 3),
                    "opencv_forward": round(float(ref["seconds"]), 3)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=300, choices=(300, 512))
    ap.add_argument("--ref-python", default="/tmp/refenv/bin/python")
    ap.add_argument("--seed", type=int, default=None, help="weight seed (default: the size, as the test)")
    ap.add_argument("--float-sizes", action="store_true",
                    help="import with int_sizes=False (OpenCV's float PriorBox sizes; Caffe casts them to int)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else args.size
    result = compare(args.size, args.ref_python, seed, int_sizes=not args.float_sizes)
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "threads": torch.get_num_threads()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
