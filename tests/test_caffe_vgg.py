"""The original Caffe VGG16 SSD300 / SSD512 (VOC, 21 classes) deploy graphs through the Caffe importer.

The deploy prototxt is generated here from the published SSD structure (VGG16 with pool5 3x3 s1, dilated fc6 and
1x1 fc7, the conv6..conv9 (conv10 for SSD512) extra layers, conv4_3 Normalize, per-source loc / conf heads with
Permute + Flatten, PriorBox, the three Concats, the conf Reshape + Softmax + Flatten and DetectionOutput), a
caffemodel is filled with seeded He-scaled random weights, and the imported detector is compared with the
independent native ``build_model("ssd300_vgg16")`` / ``"ssd512_vgg16"`` given the same weights: priors, raw
outputs on a real photo, and post-processed detections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from multibox.anchors import get_prior_preset
from multibox.interop import caffe_pb
from multibox.interop.bundle import DetectorBundle, load_bundle
from multibox.interop.caffe import import_caffe, parse_prototxt
from multibox.models import build_model
from multibox.models.detector import SSD
from multibox.postprocess import PostProcess

NUM_CLASSES = 21
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"

#: VGG16's 13 convolutions: (name, output channels); pools follow conv1_2, conv2_2, conv3_3, conv4_3, conv5_3.
_VGG = (("conv1_1", 64), ("conv1_2", 64), ("conv2_1", 128), ("conv2_2", 128), ("conv3_1", 256), ("conv3_2", 256),
        ("conv3_3", 256), ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("conv5_1", 512),
        ("conv5_2", 512), ("conv5_3", 512))
_POOL_AFTER = {"conv1_2": "pool1", "conv2_2": "pool2", "conv3_3": "pool3", "conv4_3": "pool4", "conv5_3": "pool5"}


@dataclass(frozen=True)
class Extra:
    """One Caffe extra block ``convN_1`` (1x1, ``mid``) / ``convN_2`` (``kernel``, ``stride``, ``pad``, ``out``)."""

    index: int
    mid: int
    out: int
    kernel: int
    stride: int
    pad: int


#: SSD300: fc7 19x19 -> conv6_2 10, conv7_2 5, conv8_2 3, conv9_2 1.
EXTRAS_300 = (Extra(6, 256, 512, 3, 2, 1), Extra(7, 128, 256, 3, 2, 1), Extra(8, 128, 256, 3, 1, 0),
              Extra(9, 128, 256, 3, 1, 0))
#: SSD512: fc7 32x32 -> conv6_2 16, conv7_2 8, conv8_2 4, conv9_2 2, conv10_2 1 (4x4 kernel, stride 1, pad 1).
EXTRAS_512 = (Extra(6, 256, 512, 3, 2, 1), Extra(7, 128, 256, 3, 2, 1), Extra(8, 128, 256, 3, 2, 1),
              Extra(9, 128, 256, 3, 2, 1), Extra(10, 128, 256, 4, 1, 1))


# --------------------------------------------------------------------------------------------------------------
# the deploy prototxt


class DeployWriter:
    """Writes a Caffe deploy prototxt layer by layer and records each convolution's weight shape
    ``[out, in, k, k]`` (input channels tracked per blob) so that a caffemodel can be filled for it."""

    def __init__(self, name: str) -> None:
        self.lines: list[str] = [f'name: "{name}"']
        self.channels: dict[str, int] = {}
        self.conv_shapes: dict[str, tuple[int, int, int, int]] = {}
        self.layer_names: list[str] = []
        self.layer_types: dict[str, str] = {}

    def layer(self, name: str, type_: str, bottoms: list[str], tops: list[str], body: str = "") -> None:
        self.layer_names.append(name)
        self.layer_types[name] = type_
        text = [f'layer {{\n  name: "{name}"\n  type: "{type_}"']
        text += [f'  bottom: "{b}"' for b in bottoms]
        text += [f'  top: "{t}"' for t in tops]
        if body:
            text.append("  " + body.strip().replace("\n", "\n  "))
        self.lines.append("\n".join(text) + "\n}")

    def input(self, size: int, as_layer: bool) -> None:
        """The ``data`` blob ``1 x 3 x size x size``: an ``Input`` layer, or the older net-level ``input:``."""
        shape = f"shape {{\n  dim: 1\n  dim: 3\n  dim: {size}\n  dim: {size}\n}}"
        if as_layer:
            self.layer("input", "Input", [], ["data"], "input_param {\n  " + shape.replace("\n", "\n  ") + "\n}")
        else:
            self.lines.append(f'input: "data"\ninput_{shape}')
        self.channels["data"] = 3

    def conv(self, name: str, bottom: str, num_output: int, kernel: int, pad: int = 0, stride: int = 1,
             dilation: int = 1, relu: str | None = None) -> None:
        """A convolution (``top == name``) with Caffe SSD's training-only fields, optionally a ReLU in place."""
        opts = [f"num_output: {num_output}"]
        if pad:
            opts.append(f"pad: {pad}")
        opts.append(f"kernel_size: {kernel}")
        if stride != 1:
            opts.append(f"stride: {stride}")
        opts += ['weight_filler {\n  type: "xavier"\n}', 'bias_filler {\n  type: "constant"\n  value: 0\n}']
        if dilation != 1:
            opts.append(f"dilation: {dilation}")
        body = ("param {\n  lr_mult: 1\n  decay_mult: 1\n}\nparam {\n  lr_mult: 2\n  decay_mult: 0\n}\n"
                "convolution_param {\n  " + "\n".join(opts).replace("\n", "\n  ") + "\n}")
        self.layer(name, "Convolution", [bottom], [name], body)
        self.conv_shapes[name] = (num_output, self.channels[bottom], kernel, kernel)
        self.channels[name] = num_output
        if relu:
            self.layer(relu, "ReLU", [name], [name])

    def pool(self, name: str, bottom: str, kernel: int, stride: int, pad: int = 0) -> None:
        body = f"pooling_param {{\n  pool: MAX\n  kernel_size: {kernel}\n  stride: {stride}\n" + \
            (f"  pad: {pad}\n" if pad else "") + "}"
        self.layer(name, "Pooling", [bottom], [name], body)
        self.channels[name] = self.channels[bottom]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _num(v: float) -> str:
    """A prototxt float: ``30.0``, ``35.84``."""
    return repr(float(v))


def ssd_vgg16_deploy(size: int) -> DeployWriter:
    """The original Caffe SSD deploy net for VGG16 at ``size`` (300 or 512), 21 VOC classes.

    Prior sizes, aspect ratios and steps are those of the ``ssd300-voc`` / ``ssd512-voc`` presets. SSD300 declares
    its input with an ``Input`` layer, SSD512 with the net-level ``input:`` / ``input_shape`` (both forms occur in
    published deploy files).
    """
    extras = {300: EXTRAS_300, 512: EXTRAS_512}[size]
    priors = get_prior_preset(f"ssd{size}-voc")
    w = DeployWriter(f"VGG_VOC0712_SSD_{size}x{size}_deploy")
    w.input(size, as_layer=size == 300)
    bottom = "data"
    for name, ch in _VGG:
        w.conv(name, bottom, ch, 3, pad=1, relu="relu" + name[4:])
        bottom = name
        if name in _POOL_AFTER:
            pool = _POOL_AFTER[name]
            if pool == "pool5":
                w.pool(pool, bottom, 3, 1, pad=1)
            else:
                w.pool(pool, bottom, 2, 2)
            bottom = pool
    w.conv("fc6", bottom, 1024, 3, pad=6, dilation=6, relu="relu6")
    w.conv("fc7", "fc6", 1024, 1, relu="relu7")
    bottom = "fc7"
    for e in extras:
        w.conv(f"conv{e.index}_1", bottom, e.mid, 1, relu=f"conv{e.index}_1_relu")
        w.conv(f"conv{e.index}_2", f"conv{e.index}_1", e.out, e.kernel, pad=e.pad, stride=e.stride,
               relu=f"conv{e.index}_2_relu")
        bottom = f"conv{e.index}_2"
    w.layer("conv4_3_norm", "Normalize", ["conv4_3"], ["conv4_3_norm"],
            'norm_param {\n  across_spatial: false\n  scale_filler {\n    type: "constant"\n    value: 20\n  }\n'
            "  channel_shared: false\n}")
    w.channels["conv4_3_norm"] = 512
    sources = ["conv4_3_norm", "fc7"] + [f"conv{e.index}_2" for e in extras]
    assert len(sources) == len(priors.levels)
    for src, level in zip(sources, priors.levels, strict=True):
        a = level.num_priors
        for kind, per_box in (("loc", 4), ("conf", NUM_CLASSES)):
            head = f"{src}_mbox_{kind}"
            w.conv(head, src, a * per_box, 3, pad=1)
            w.layer(f"{head}_perm", "Permute", [head], [f"{head}_perm"],
                    "permute_param {\n  order: 0\n  order: 2\n  order: 3\n  order: 1\n}")
            w.layer(f"{head}_flat", "Flatten", [f"{head}_perm"], [f"{head}_flat"], "flatten_param {\n  axis: 1\n}")
        prior = [f"min_size: {_num(s)}" for s in level.min_sizes] + [f"max_size: {_num(s)}" for s in
                                                                     level.max_sizes]
        prior += [f"aspect_ratio: {_num(r)}" for r in level.aspect_ratios]
        prior += [f"flip: {str(level.flip).lower()}", "clip: false"]
        prior += [f"variance: {_num(v)}" for v in priors.variances]
        assert isinstance(level.step, float | int)  # one step for both axes in these presets
        prior += [f"step: {_num(level.step)}", f"offset: {_num(level.offset)}"]
        w.layer(f"{src}_mbox_priorbox", "PriorBox", [src, "data"], [f"{src}_mbox_priorbox"],
                "prior_box_param {\n  " + "\n  ".join(prior) + "\n}")
    for kind, axis in (("loc", 1), ("conf", 1), ("priorbox", 2)):
        suffix = "" if kind == "priorbox" else "_flat"
        w.layer(f"mbox_{kind}", "Concat", [f"{s}_mbox_{kind}{suffix}" for s in sources], [f"mbox_{kind}"],
                f"concat_param {{\n  axis: {axis}\n}}")
    w.layer("mbox_conf_reshape", "Reshape", ["mbox_conf"], ["mbox_conf_reshape"],
            f"reshape_param {{\n  shape {{\n    dim: 0\n    dim: -1\n    dim: {NUM_CLASSES}\n  }}\n}}")
    w.layer("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], ["mbox_conf_softmax"],
            "softmax_param {\n  axis: 2\n}")
    w.layer("mbox_conf_flatten", "Flatten", ["mbox_conf_softmax"], ["mbox_conf_flatten"],
            "flatten_param {\n  axis: 1\n}")
    w.layer("detection_out", "DetectionOutput", ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
            ["detection_out"],
            f"include {{\n  phase: TEST\n}}\ndetection_output_param {{\n  num_classes: {NUM_CLASSES}\n"
            "  share_location: true\n  background_label_id: 0\n  nms_param {\n    nms_threshold: 0.45\n"
            "    top_k: 400\n  }\n" + _save_output(size) + "  code_type: CENTER_SIZE\n  keep_top_k: 200\n"
            "  confidence_threshold: 0.01\n}")
    return w


def _save_output(size: int) -> str:
    """DetectionOutput's evaluation-only ``save_output_param``, left in published deploy files: the full block
    (with a ``resize_param``) for SSD300, the label map alone for SSD512. The importer must skip it."""
    if size == 512:
        return '  save_output_param {\n    label_map_file: "data/VOC0712/labelmap_voc.prototxt"\n  }\n'
    return ('  save_output_param {\n    output_directory: "data/VOCdevkit/results/VOC2007/SSD_300x300/Main"\n'
            '    output_name_prefix: "comp4_det_test_"\n    output_format: "VOC"\n'
            '    label_map_file: "data/VOC0712/labelmap_voc.prototxt"\n'
            '    name_size_file: "data/VOC0712/test_name_size.txt"\n    num_test_image: 4952\n'
            "    resize_param {\n      prob: 1\n      resize_mode: WARP\n      height: 300\n      width: 300\n"
            "      interp_mode: LINEAR\n    }\n  }\n")


# --------------------------------------------------------------------------------------------------------------
# weights: a caffemodel, and the same numbers as a native state dict


def random_weights(w: DeployWriter, seed: int) -> dict[str, list[np.ndarray]]:
    """Seeded weights for every convolution (``[out, in, k, k]`` He-normal, std ``sqrt(2 / fan_in)``, and a small
    bias ``[out]``) plus the ``conv4_3_norm`` scale ``[512]`` = 20. ``conv1_1`` is divided by 64 (the spread of
    mean-subtracted pixels) so that activations stay of order 1 through the net, and the loc / conf heads use
    ``std = 1 / sqrt(fan_in)`` (no ReLU follows them), which keeps logits of order 1 (scores not saturated)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for name, shape in w.conv_shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        head = "_mbox_" in name
        std = math.sqrt((1.0 if head else 2.0) / fan_in) / (64.0 if name == "conv1_1" else 1.0)
        weight = (rng.standard_normal(shape) * std).astype(np.float32)
        bias = (rng.standard_normal(shape[0]) * 0.05).astype(np.float32)
        out[name] = [weight, bias]
    out["conv4_3_norm"] = [np.full(512, 20.0, np.float32)]
    return out


#: Deploy-only layers: a trained caffemodel is the TRAIN net's, which ends in MultiBoxLoss instead.
_DEPLOY_ONLY = ("input", "mbox_conf_reshape", "mbox_conf_softmax", "mbox_conf_flatten", "detection_out")


def write_caffemodel(path: Path, w: DeployWriter, weights: dict[str, list[np.ndarray]]) -> None:
    """A binary caffemodel shaped like one saved by Caffe SSD's solver: the TRAIN net's layers (an
    ``AnnotatedData`` input, every deploy layer but the deploy-only ones, ``MultiBoxLoss``), each with its type and
    ``phase: TRAIN``, blobs with ``shape``."""
    net = caffe_pb.NetParameter(name="VGG_VOC0712_SSD_train")
    names = ["data"] + [n for n in w.layer_names if n not in _DEPLOY_ONLY] + ["mbox_loss"]
    types = {"data": "AnnotatedData", "mbox_loss": "MultiBoxLoss"}
    for name in names:
        layer = net.layer.add(name=name, type=types.get(name, w.layer_types.get(name, "")), phase=0)
        for arr in weights.get(name, []):
            blob = layer.blobs.add()
            blob.shape.dim.extend(arr.shape)
            blob.data.extend(arr.reshape(-1).tolist())
    path.write_bytes(net.SerializeToString())


def native_state_dict(weights: dict[str, list[np.ndarray]], sources: list[str], extras: tuple[Extra, ...]
                      ) -> dict[str, Tensor]:
    """The Caffe weights under the native SSD's parameter names.

    VGG ``convX_Y`` / ``fc6`` / ``fc7`` -> ``backbone.<same>``; ``conv4_3_norm`` -> ``backbone.l2norm.weight``;
    Caffe's extra ``conv{6+i}_1`` / ``conv{6+i}_2`` -> ``extras.conv{8+i}.reduce`` / ``.expand`` (torchvision's
    numbering); ``<source k>_mbox_loc`` / ``_mbox_conf`` -> ``head.regression.k`` / ``head.classification.k``.
    ``conv1_1``'s input channels are reversed: the Caffe net reads BGR, the native model RGB.
    """
    sd: dict[str, Tensor] = {}

    def put(prefix: str, caffe_name: str) -> None:
        weight, bias = (torch.from_numpy(a.copy()) for a in weights[caffe_name])
        sd[f"{prefix}.weight"] = weight.flip(1) if caffe_name == "conv1_1" else weight
        sd[f"{prefix}.bias"] = bias

    for name, _ in _VGG:
        put(f"backbone.{name}", name)
    put("backbone.fc6", "fc6")
    put("backbone.fc7", "fc7")
    sd["backbone.l2norm.weight"] = torch.from_numpy(weights["conv4_3_norm"][0].copy())
    for i, e in enumerate(extras):
        put(f"extras.conv{8 + i}.reduce", f"conv{e.index}_1")
        put(f"extras.conv{8 + i}.expand", f"conv{e.index}_2")
    for k, src in enumerate(sources):
        put(f"head.regression.{k}", f"{src}_mbox_loc")
        put(f"head.classification.{k}", f"{src}_mbox_conf")
    return sd


# --------------------------------------------------------------------------------------------------------------
# one case per input size, built once per module


@dataclass
class Case:
    size: int
    deploy: DeployWriter
    bundle: DetectorBundle
    native: SSD
    imported_out: tuple[Tensor, Tensor]  # (cls_logits [1, P, 21], box_deltas [1, P, 4])
    native_out: tuple[Tensor, Tensor]


def photo_rgb(size: int) -> Tensor:
    """``grace_hopper.jpg`` resized to ``size x size`` (bilinear): RGB ``[1, 3, size, size]`` float 0-255."""
    img = Image.open(PHOTO).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1).unsqueeze(0)


def build_case(size: int, tmp: Path) -> Case:
    extras = {300: EXTRAS_300, 512: EXTRAS_512}[size]
    deploy = ssd_vgg16_deploy(size)
    weights = random_weights(deploy, seed=size)
    proto, model = tmp / "deploy.prototxt", tmp / f"VGG_VOC0712_SSD_{size}x{size}.caffemodel"
    proto.write_text(deploy.text())
    write_caffemodel(model, deploy, weights)
    bundle = load_bundle(import_caffe(proto, model, tmp / "out"))  # Caffe's BGR mean (104, 117, 123) by default
    native = build_model(f"ssd{size}_vgg16", num_classes=NUM_CLASSES).eval()
    sources = ["conv4_3_norm", "fc7"] + [f"conv{e.index}_2" for e in extras]
    native.load_state_dict(native_state_dict(weights, sources, extras), strict=True)
    rgb = photo_rgb(size)
    with torch.no_grad():
        got = bundle.model(bundle.input_spec.normalize(rgb))  # BGR - (104, 117, 123), as Caffe's data layer
        want = native(native.input_spec.normalize(rgb))  # RGB - (123, 117, 104)
    return Case(size, deploy, bundle, native, (got.cls_logits, got.box_deltas), (want.cls_logits, want.box_deltas))


@pytest.fixture(scope="module", params=[300, 512], ids=["ssd300", "ssd512"])
def case(request, tmp_path_factory) -> Case:
    return build_case(request.param, tmp_path_factory.mktemp(f"ssd{request.param}"))


# --------------------------------------------------------------------------------------------------------------
# tests


def test_deploy_is_the_original_layout(case):
    """The generated deploy parses and has the published layer counts (guards the generator itself)."""
    net = parse_prototxt(text=case.deploy.text())
    counts: dict[str, int] = {}
    for layer in net.layer:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    n_src = 6 if case.size == 300 else 7
    n_extra = 4 if case.size == 300 else 5
    assert counts["Convolution"] == 13 + 2 + 2 * n_extra + 2 * n_src
    assert counts["ReLU"] == 13 + 2 + 2 * n_extra
    assert counts["Pooling"] == 5 and counts["Normalize"] == 1 and counts["PriorBox"] == n_src
    assert counts["Permute"] == counts["Flatten"] - 1 == 2 * n_src
    assert counts["Concat"] == 3 and counts["DetectionOutput"] == 1
    assert counts.get("Input", 0) == (1 if case.size == 300 else 0)
    # the bundle's source report: the whole graph was read
    assert case.bundle.source["layers"]["Convolution"] == counts["Convolution"]
    assert sum(p.numel() for p in case.bundle.model.parameters()) == \
        sum(p.numel() for p in case.native.parameters())


def test_priors_equal_native(case):
    want = case.native.priors
    assert want.shape == ((8732, 4) if case.size == 300 else (24564, 4))
    got = case.bundle.priors
    assert got.shape == want.shape
    err = (got - want).abs().max().item()
    assert err <= 1e-6, f"max prior difference {err}"
    info = case.bundle.source["priors"]
    sizes = [tuple(i["feature_size"]) for i in info]
    assert sizes == [tuple(s) for s in case.native.feature_sizes()]
    assert case.bundle.variances == (0.1, 0.1, 0.2, 0.2)


def _rel_err(got: Tensor, want: Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def test_raw_outputs_equal_native(case):
    (got_cls, got_box), (want_cls, want_box) = case.imported_out, case.native_out
    p = case.native.num_priors
    assert got_cls.shape == want_cls.shape == (1, p, NUM_CLASSES)
    assert got_box.shape == want_box.shape == (1, p, 4)
    # the comparison means something: outputs of order 1, varied, and not saturated softmax scores
    for t in (want_cls, want_box):
        assert 0.3 < t.std().item() < 30.0
    probs = want_cls.softmax(-1)
    assert probs.max().item() < 0.999 and probs[..., 1:].amax(-1).mean().item() > 0.05
    # the per-source stds are of order 1 too (no vanished branch)
    start = 0
    for (fh, fw), level in zip(case.native.feature_sizes(), case.native.prior_config.levels, strict=True):
        n = fh * fw * level.num_priors
        assert want_cls[:, start:start + n].std().item() > 0.1
        start += n
    for got, want in ((got_cls, want_cls), (got_box, want_box)):
        err = _rel_err(got, want)
        assert err <= 1e-4, f"relative error {err}"


def test_detections_equal_native(case):
    bundle = case.bundle
    assert bundle.postprocess == {"mode": "per_class", "conf_threshold": 0.01, "top_k": 400, "nms_threshold": 0.45,
                                  "keep_top_k": 200, "clip": False, "background_index": 0}
    got = bundle.make_postprocess()(*case.imported_out)[0]
    native_post = PostProcess.from_model(case.native, conf_threshold=0.01, top_k=400, nms_threshold=0.45,
                                         keep_top_k=200, clip=False, background_index=0)
    want = native_post(*case.native_out)[0]
    assert len(want.scores) > 20  # random weights on a photo: many boxes pass 0.01
    assert len(got.scores) == len(want.scores)
    assert torch.equal(got.labels.sort().values, want.labels.sort().values)
    # pair each native detection with an unused imported one of the same label, score and box
    used = torch.zeros(len(got.scores), dtype=torch.bool)
    for box, score, label in zip(want.boxes, want.scores, want.labels, strict=True):
        ok = (~used & (got.labels == label) & ((got.scores - score).abs() <= 1e-4)
              & ((got.boxes - box).abs().amax(-1) <= 1e-3))
        assert bool(ok.any()), f"native detection {label.item()} {score.item():.5f} {box.tolist()} not reproduced"
        used[int(ok.nonzero()[0, 0])] = True
