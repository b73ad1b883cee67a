"""Crafted model files: what their metadata asks for is bounded (multibox.limits) before anything is built.

Each command runs in a subprocess whose address space is capped (RLIMIT_AS: what torch reserves at import plus
about 1.5 GB), so a file that still made multibox allocate gigabytes fails the test instead of the machine."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from multibox.interop import caffe_pb
from multibox.interop.bundle import BUNDLE_FORMAT

SRC = str(Path(__file__).resolve().parents[1] / "src")
LIMIT = 5 * 1024**3  # torch's import alone reserves ~3.2 GB of address space


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def multibox(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "multibox", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, preexec_fn=_cap)


def hostile_bundle(path: Path, *, image_size=(300, 300), num_classes=3, spec_extra=None) -> Path:
    names = ["background", *(f"c{i}" for i in range(1, num_classes))]
    spec = {"name": "ssd7", "num_classes": num_classes, "class_names": names,
            "kwargs": {"image_size": list(image_size)}, **(spec_extra or {})}
    meta = {"format": BUNDLE_FORMAT, "builder": "multibox", "spec": json.dumps(spec),
            "input_spec": json.dumps({"image_size": list(image_size), "channel_order": "RGB", "mean": [127.5] * 3,
                                      "std": [127.5] * 3}),
            "class_names": json.dumps(names), "variances": "[0.1, 0.1, 0.2, 0.2]", "postprocess": "{}",
            "source": "{}"}
    save_file({"__priors__": torch.zeros(8, 4), "x": torch.zeros(2)}, str(path), metadata=meta)
    return path


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
    return p


@pytest.mark.parametrize("case", ["side", "classes"])
@pytest.mark.parametrize("command", ["detect", "export"])
def test_crafted_bundle_is_refused_before_building(tmp_path, image, case, command):
    kw = {"image_size": (60000, 60000)} if case == "side" else {"num_classes": 100001}
    model = hostile_bundle(tmp_path / "evil.safetensors", **kw)
    if command == "detect":
        r = multibox("detect", str(image), "--model", str(model), "--out", str(tmp_path / "o"), "--no-draw",
                     "--runtime", "eager")
    else:
        r = multibox("export", "onnx", str(model), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "evil.safetensors" in r.stderr and "Traceback" not in r.stderr
    assert ("60000" in r.stderr and "4096" in r.stderr) if case == "side" else "100001 classes" in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_bundle_spec_asking_for_more_than_its_weights_is_refused(tmp_path):
    """Within the limits, but the spec's network does not match the tensors in the file: refused after a meta
    build, before any real one."""
    from multibox.interop.bundle import load_bundle

    model = hostile_bundle(tmp_path / "mismatch.safetensors", image_size=(2048, 2048), num_classes=9000)
    with pytest.raises(ValueError, match=r"mismatch\.safetensors: weights do not fit"):
        load_bundle(model)


def test_deeply_nested_bundle_metadata_is_refused(tmp_path):
    from multibox.interop.bundle import load_bundle

    p = hostile_bundle(tmp_path / "deep.safetensors", spec_extra={"kwargs": json.loads("[" * 200 + "]" * 200)})
    with pytest.raises(ValueError, match=r"deep\.safetensors: bundle metadata 'spec' is nested more than"):
        load_bundle(p)


def _caffemodel(path: Path) -> Path:
    net = caffe_pb.NetParameter()
    layer = net.layer.add()
    layer.name, layer.type = "conv1", "Convolution"
    path.write_bytes(net.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["input_shape", "input_layer", "input_dim"])
def test_prototxt_asking_for_a_huge_input_is_refused(tmp_path, how):
    if how == "input_shape":
        head = 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 100000 dim: 100000 }\n'
    elif how == "input_dim":
        head = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 100000\ninput_dim: 100000\n'
    else:
        head = ('layer { name: "data" type: "Input" top: "data" '
                'input_param { shape { dim: 1 dim: 3 dim: 100000 dim: 100000 } } }\n')
    body = "".join(f'layer {{ name: "p{i}" type: "PriorBox" bottom: "data" bottom: "data" top: "p{i}" '
                   f'prior_box_param {{ min_size: 30 }} }}\n' for i in range(250))  # ~28 KB
    proto = tmp_path / "deploy.prototxt"
    proto.write_text("name: \"evil\"\n" + head + body)
    assert 20_000 < proto.stat().st_size < 40_000
    r = multibox("import", "caffe", str(proto), str(_caffemodel(tmp_path / "w.caffemodel")),
                 "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "deploy.prototxt" in r.stderr and "100000" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "out").glob("*.safetensors")) if (tmp_path / "out").exists() else True


def test_deeply_nested_prototxt_is_refused(tmp_path):
    proto = tmp_path / "deep.prototxt"
    proto.write_text("layer {" * 100000 + "}" * 100000)
    r = multibox("import", "caffe", str(proto), str(_caffemodel(tmp_path / "w.caffemodel")),
                 "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "deep.prototxt" in r.stderr and "nested" in r.stderr and "Traceback" not in r.stderr


def test_prior_box_count_is_bounded(tmp_path, monkeypatch):
    """A net within the input bound whose PriorBox layers would make more priors than allowed."""
    from multibox.interop.caffe import caffe_priors
    from multibox.limits import LimitError

    monkeypatch.setenv("MULTIBOX_MAX_PRIORS", "1000")
    layer = {"name": "p", "_bottom_ids": ["f@0", "data@0"],
             "params": {"min_size": [30.0], "max_size": [], "aspect_ratio": [2.0], "flip": True, "clip": False,
                        "img_h": 0, "img_w": 0, "step_h": 0.0, "step_w": 0.0, "offset": 0.5,
                        "variance": [0.1, 0.1, 0.2, 0.2]}}
    with pytest.raises(LimitError, match="3072 prior boxes exceed the bound of 1000"):
        caffe_priors([layer], {"f@0": [1, 8, 32, 32], "data@0": [1, 3, 300, 300]})


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=_cap)


def test_tf_graph_op_asking_for_a_huge_array_is_refused():
    """A constant sub-graph (as the anchor generator is) whose Fill asks for 10^10 values."""
    r = _run_python(
        "import numpy as np\n"
        "from multibox.interop import tf_pb\n"
        "from multibox.interop.tensorflow import TFGraph, TFImportError, evaluate\n"
        "g = tf_pb.GraphDef()\n"
        "def const(name, arr):\n"
        "    n = g.node.add(name=name, op='Const'); t = n.attr['value'].tensor\n"
        "    t.dtype = tf_pb.DT['DT_INT32' if arr.dtype == np.int32 else 'DT_FLOAT']\n"
        "    [t.tensor_shape.dim.add(size=d) for d in arr.shape]\n"
        "    t.tensor_content = arr.tobytes()\n"
        "const('dims', np.array([100000, 100000], np.int32)); const('v', np.array(1.0, np.float32))\n"
        "g.node.add(name='fill', op='Fill', input=['dims', 'v'])\n"
        "try:\n"
        "    evaluate(TFGraph(g, 'evil.pb'), ['fill'])\n"
        "except TFImportError as e:\n"
        "    print('refused:', e)\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: evil.pb: node 'fill' (Fill) would make 10000000000 values" in r.stdout


def test_tf_graph_asking_for_a_huge_input_is_refused(tmp_path):
    from multibox.interop.tensorflow import person_detector_graph, read_graph_def, tensor_to_numpy

    g = read_graph_def(person_detector_graph())
    node = next(n for n in g.node if n.name.endswith("ResizeImage/stack"))
    size = tensor_to_numpy(node.attr["value"].tensor)
    t = node.attr["value"].tensor
    t.ClearField("int_val")
    t.tensor_content = np.full(size.shape, 60000, size.dtype).astype(size.dtype.newbyteorder("<")).tobytes()
    evil = tmp_path / "evil.pb"
    evil.write_bytes(g.SerializeToString())
    r = multibox("import", "tf-od", str(evil), "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "evil.pb" in r.stderr and "60000" in r.stderr and "Traceback" not in r.stderr
