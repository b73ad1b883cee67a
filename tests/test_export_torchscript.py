"""TorchScript export: the archive loads with ``torch.jit.load`` in a process without multibox on its path and
matches eager PyTorch (network outputs, and with ``--postprocess`` the detections of ``PostProcess``)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from multibox.cli import main
from multibox.detector import Detector
from multibox.export.torchscript import ScriptedPostProcess, detections_diff
from multibox.interop.bundle import save_bundle
from test_detect import SIZE, make_bundle

_LOADER = r"""
import sys


class NoMultibox:  # the venv may have multibox installed (editable): any import of it fails in this process
    def find_spec(self, name, path=None, target=None):
        if name == "multibox" or name.startswith("multibox."):
            raise ImportError("multibox is blocked in this process")
        return None


sys.meta_path.insert(0, NoMultibox())
import torch
extra = {"multibox.json": ""}
m = torch.jit.load(sys.argv[1], _extra_files=extra)
x = torch.load(sys.argv[2])
with torch.no_grad():
    out = m(x)
torch.save(tuple(out), sys.argv[3])
assert "multibox" not in sys.modules and "torchvision" not in sys.modules
sys.stdout.write(extra["multibox.json"].decode())
"""


def _load_elsewhere(tmp_path, archive, x):
    """Run ``archive`` on ``x`` in a fresh interpreter whose path holds no multibox (not installed, not src/)."""
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: isolated (no PYTHONPATH, no user site, not the current folder); the loader blocks multibox imports
    r = subprocess.run([sys.executable, "-I", "-c", _LOADER, str(archive), str(tmp_path / "x.pt"),
                        str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return torch.load(tmp_path / "out.pt"), json.loads(r.stdout)


@pytest.mark.parametrize("postprocess", [False, True])
def test_torchscript_export_loads_without_multibox_and_matches_eager(tmp_path, postprocess):
    bundle = make_bundle()
    model_file = tmp_path / "det.safetensors"
    save_bundle(bundle, model_file)
    out = tmp_path / "det.pt"
    args = ["export", "torchscript", str(model_file), "--out", str(out), "--batch-size", "2", "-q"]
    assert main(args + (["--postprocess", "--conf", "0.2"] if postprocess else [])) == 0
    x = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(7))  # not the traced batch size
    got, meta = _load_elsewhere(tmp_path, out, x)
    assert meta["class_names"] == ["background", "cat", "dog"] and meta["input_spec"]["channel_order"] == "BGR"
    with torch.no_grad():
        ref = bundle.model(x)
    if not postprocess:
        torch.testing.assert_close(got[0], ref.cls_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], ref.box_deltas, rtol=1e-5, atol=1e-5)
    else:
        post = Detector(bundle, runtime="eager").bundle.make_postprocess(conf_threshold=0.2)
        want = post.forward_padded(ref.cls_logits, ref.box_deltas)
        assert int(want.valid.sum()) > 0  # the comparison is not vacuous
        assert detections_diff(got, want) < 1e-5
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["max_abs_diff"] < 1e-4 and sidecar["bytes"] == out.stat().st_size
    # an existing file needs --overwrite; a wrong suffix is a usage error
    assert main(args) == 2
    assert main(["export", "torchscript", str(model_file), "--out", str(tmp_path / "x.onnx")]) == 2


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:FutureWarning")
def test_scripted_postprocess_hand_case():
    """Candidates (score > 0.1): prior 0 class 1 (0.84), prior 1 class 2 (0.84), prior 2 class 1 (0.67) and class 2
    (0.20). Prior 2's box [0.42, 0.4, 0.62, 0.6] overlaps priors 0 and 1's [0.4, 0.4, 0.6, 0.6] with IoU
    0.036 / 0.044 = 0.818: at NMS 0.45 both its candidates are suppressed within their class, at 0.9 none."""
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2]])
    logits = torch.log(torch.tensor([[[0.08, 0.84, 0.08], [0.08, 0.08, 0.84], [0.13, 0.67, 0.20]]]))

    def run(nms):
        post = torch.jit.script(ScriptedPostProcess(priors, (0.1, 0.1, 0.2, 0.2), 10.0, mode="per_class",
                                                    conf_threshold=0.1, top_k=10, nms_threshold=nms, keep_top_k=4,
                                                    clip=True, background_index=0, score="softmax"))
        return post(logits, torch.zeros(1, 3, 4))

    boxes, scores, labels, num = run(0.45)
    assert int(num[0]) == 2 and sorted(labels[0, :2].tolist()) == [1, 2]
    torch.testing.assert_close(scores[0], torch.tensor([0.84, 0.84, 0.0, 0.0]))
    torch.testing.assert_close(boxes[0, :2], torch.tensor([[0.4, 0.4, 0.6, 0.6]] * 2))
    boxes, scores, labels, num = run(0.9)
    assert int(num[0]) == 4 and labels[0, 2:].tolist() == [1, 2]
    torch.testing.assert_close(scores[0], torch.tensor([0.84, 0.84, 0.67, 0.20]))
    torch.testing.assert_close(boxes[0, 3], torch.tensor([0.42, 0.4, 0.62, 0.6]))
