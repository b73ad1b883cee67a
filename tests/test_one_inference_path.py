"""``multibox eval CHECKPOINT`` and ``multibox detect --model CHECKPOINT`` run one inference path: the same
preprocessing (:func:`multibox.data.transforms.preprocess`, also behind ``EvalTransform`` and the per-sample eval
transform), the same runtime choice and post-processing, hence identical detections."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from multibox.cli import main
from multibox.data import EvalTransform
from multibox.data.augment import ssd_eval_transform
from multibox.data.transforms import preprocess
from multibox.data.types import Target
from multibox.detector import Detector
from multibox.engine.checkpoint import save_weights
from multibox.engine.evaluator import EVAL_POSTPROCESS
from multibox.interop.bundle import save_bundle
from test_detect import NAMES, SIZE, SPEC, make_bundle, photo, reference


def test_one_preprocess_behind_detector_eval_transform_and_eval_sample_transform():
    images = [photo(), photo(70, 90, seed=3), photo(*SIZE, seed=4)]  # larger, smaller, already the input size
    det = Detector(make_bundle(), runtime="eager")
    x, sizes = preprocess(images, SPEC)
    assert sizes == [(150, 200), (70, 90), SIZE] and x.shape == (3, 3, *SIZE) and x.dtype == torch.float32
    x_det, sizes_det = det.preprocess(images)
    x_tf, sizes_tf = EvalTransform(SPEC)(images)
    assert sizes_det == sizes_tf == sizes
    assert torch.equal(x_det, x) and torch.equal(x_tf, x)
    empty = Target(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), image_id="i", orig_size=(0, 0))
    for i, img in enumerate(images):
        xi, _ = ssd_eval_transform(SPEC)(img, empty, None)
        assert torch.equal(xi, x[i])
    # and it is the hand-written reference pipeline (resize, BGR, mean/std) of test_detect
    bundle = make_bundle()
    with torch.no_grad():
        out = bundle.model(x[:1])
    ref = reference(bundle, images[0])
    assert out.cls_logits.shape[1] == bundle.priors.shape[0] and len(ref) > 0


def _voc_root(tmp_path, arrays):
    root = tmp_path / "voc"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    for stem, arr in arrays.items():
        h, w = arr.shape[:2]
        Image.fromarray(arr).save(root / "JPEGImages" / f"{stem}.png")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><size><width>{w}</width><height>{h}</height><depth>3"
            "</depth></size><object><name>cat</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
            "<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(arrays) + "\n")
    return root


@pytest.mark.parametrize("kind", ["checkpoint", "bundle"])
def test_detect_and_eval_of_one_checkpoint_give_identical_detections(tmp_path, kind):
    """For a training checkpoint and for a detector bundle (what `multibox import` writes; `eval` could not load
    one before): `detect --conf 0.01` and `eval` (0.01, keep 200: EVAL_POSTPROCESS) find the same boxes."""
    bundle = make_bundle()
    if kind == "checkpoint":
        ck = save_weights(tmp_path / "best.safetensors", bundle.model, model_name="ssd7", class_names=NAMES,
                          model_kwargs={"image_size": list(SIZE)}, config=None, step=1)
    else:
        bundle.postprocess = {**bundle.postprocess, **EVAL_POSTPROCESS}
        ck = save_bundle(bundle, tmp_path / "imported.safetensors")
    arrays = {"a1": photo(seed=1), "b2": photo(120, 90, seed=2), "c3": photo(80, 100, seed=3)}
    root = _voc_root(tmp_path, arrays)
    assert main(["detect", str(root / "JPEGImages"), "--model", str(ck), "--conf", "0.01", "--out",
                 str(tmp_path / "det"), "--no-draw", "--quiet"]) == 0
    assert main(["eval", str(ck), "--data", str(root), "--out", str(tmp_path / "ev")]) == 0
    det = json.loads((tmp_path / "det" / "detections.json").read_text())
    ev = json.loads((tmp_path / "ev" / "detections.json").read_text())
    stem = {im["id"]: im["file_name"][:-4] for im in det["images"]}

    def per_image(records, image_of):
        out = {}
        for r in records:
            out.setdefault(image_of(r), []).append((r["category_name"], r["score"], r["bbox"]))
        return {k: sorted(v, key=lambda t: (-t[1], t[0])) for k, v in out.items()}

    got_det = per_image(det["annotations"], lambda r: stem[r["image_id"]])
    got_ev = per_image(ev, lambda r: str(r["image_id"]))
    assert set(got_det) == set(got_ev) == set(arrays)
    for k in arrays:
        a, b = got_det[k], got_ev[k]
        assert len(a) == len(b) > 50, k  # the random tiny model finds plenty above 0.01
        assert [t[0] for t in a] == [t[0] for t in b]
        # identical float32 results: JSON carries them as float64 (boxes as xywh computed on either side)
        np.testing.assert_array_equal(np.float32([t[1] for t in a]), np.float32([t[1] for t in b]))
        np.testing.assert_allclose(np.array([t[2] for t in a]), np.array([t[2] for t in b]), rtol=0, atol=1e-4)
