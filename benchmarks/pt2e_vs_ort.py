"""int8 post-training quantization two ways, measured in one run (issue 13): ONNX Runtime's QDQ quantization
(what ``multibox export onnx --int8`` and the ``onnxruntime-int8`` runtime use) against PyTorch's PT2E flow with the
x86 Inductor quantizer (``torch.export`` -> ``prepare_pt2e`` -> calibration -> ``convert_pt2e`` -> ``torch.compile``
with freezing, the int8 convolutions then run as oneDNN kernels).

    pip install --no-deps --target /tmp/torchao torchao      # torch 2.14 has PT2E only through torchao
    PYTHONPATH=/tmp/torchao python benchmarks/pt2e_vs_ort.py [--models ssd300_vgg16 face person] \\
        [--repeats 5] [--json benchmarks/results/pt2e-vs-ort.json]

torchao is needed only by this benchmark, never by multibox. Both int8 paths get the same calibration tensors (the
real photos of ``bench export``) with each flow's default ranges: ONNX Runtime ``minmax`` (what ``bench export``
uses), PT2E's x86 default (histogram observers for activations, per-channel min/max for weights); per-channel int8
weights and uint8 activations in both. The same models: SSD300-VGG16 (random weights: speed only) and the zoo's face
and person detectors (speed, and the int8 detections checked against fp32 on real photos with the issue's bounds:
every fp32 detection >= 0.5 found with IoU >= 0.9 and a score within 0.05,
:func:`multibox.bench.export.kept_detections`). Network times (medians of ``--repeats`` calls after warm-up) at
batch 1 and 8 for: eager fp32, ONNX Runtime fp32 (our default runtime), Inductor fp32 (``torch.compile`` with
freezing: the control for what compilation alone gives), ONNX Runtime int8 and PT2E int8. Each engine gets
``--threads`` threads. The set-up times (quantization, export + compilation) are recorded too, and the CPU's vector
flags, since int8 speed depends on VNNI.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from multibox.bench.export import calibration_folder, check_photos, kept_detections
from multibox.bench.export import time_calls as timed
from multibox.bench.roofline import cpu_flags
from multibox.detector import Detector
from multibox.export.onnx import export_onnx_bytes
from multibox.export.quantize import calibration_inputs, output_error, quantize_onnx
from multibox.fileio import atomic_write_bytes
from multibox.interop import zoo
from multibox.models.outputs import network_outputs
from multibox.models.registry import build_model
from multibox.runtime.base import Runtime, register_runtime
from multibox.runtime.ort import OrtNetwork

ZOO = {"face": "face-res10-300", "person": "person-ssdlite-mbv2"}
CONF = 0.3


class Outputs(nn.Module):
    """``model`` with its output as the plain pair ``(cls_logits [B, P, C], box_deltas [B, P, 4])``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return network_outputs(self.model(x))


def exported(model: nn.Module, example: Tensor) -> Any:  # noqa: ANN401
    """``torch.export`` of :class:`Outputs` with a dynamic batch axis, as a graph module (``example`` should have
    batch >= 2: an example of batch 1 is specialized to 1)."""
    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(Outputs(model).eval(), (example,), dynamic_shapes=({0: batch},)).module()


def compiled(graph: Any) -> Callable[[Tensor], tuple[Tensor, Tensor]]:  # noqa: ANN401
    """``torch.compile`` (Inductor, with freezing: weights folded and prepacked for oneDNN) of ``graph``."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    fn = torch.compile(graph)

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            out = fn(x)
        return out[0], out[1]

    return run


def pt2e_int8(model: nn.Module, calib: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The PT2E x86 Inductor int8 network of ``model``, calibrated on ``calib`` ``[N, 3, H, W]`` (batches of 8)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    try:  # the int8 fusion passes for Inductor live in torchao and register themselves on import
        import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401
    except ImportError:
        pass
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        prepared = prepare_pt2e(exported(model, calib[:2]), quantizer)
        for i in range(0, calib.shape[0], 8):
            prepared(calib[i:i + 8])
        converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return compiled(converted)


class _Fixed(Runtime):
    """A runtime that hands the Detector an already built network callable (this benchmark only)."""

    name: ClassVar[str] = "bench-fixed"
    exact: ClassVar[bool] = False

    def __init__(self, name: str, net: Callable[[Tensor], tuple[Tensor, Tensor]]) -> None:
        self.name = name  # type: ignore[misc]
        self.net = net

    def build(self, model: nn.Module, example: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return self.net


def bench_model(key: str, calib_dir: Path, repeats: int) -> dict[str, Any]:
    """Every engine on model ``key`` (a registry name, or ``face`` / ``person`` from the zoo)."""
    if key in ZOO:
        det = Detector.from_pretrained(ZOO[key], runtime="onnxruntime", batch_size=1)
    else:
        det = Detector.from_model(build_model(key, num_classes=21).eval(), runtime="onnxruntime", batch_size=1)
    model = det.model.eval()
    h, w = det.input_spec.image_size
    calib = calibration_inputs(calib_dir, det.input_spec, 200)
    out: dict[str, Any] = {"input": [3, h, w], "calibration_images": int(calib.shape[0]), "setup_seconds": {},
                           "network": {}}
    nets: dict[str, Callable[[Tensor], Any]] = {}
    t0 = time.perf_counter()
    float_graph = export_onnx_bytes(model, torch.zeros(1, 3, h, w), dynamic_batch=True)
    nets["onnxruntime_fp32"] = OrtNetwork(float_graph)
    nets["onnxruntime_int8"] = OrtNetwork(quantize_onnx(float_graph, calib, method="minmax"))
    out["setup_seconds"]["onnxruntime_int8"] = time.perf_counter() - t0
    for name, build in (("inductor_fp32", lambda: compiled(exported(model, calib[:2]))),
                        ("pt2e_int8", lambda: pt2e_int8(model, calib))):
        t0 = time.perf_counter()
        try:
            net = build()
            for b in (1, 8):  # compile for both batch sizes inside the set-up time
                net(calib[:b])
        except Exception as err:  # noqa: BLE001 - a failed flow is a result of this benchmark
            out[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:2000]}"
            traceback.print_exc()
            continue
        nets[name] = net
        out["setup_seconds"][name] = time.perf_counter() - t0
    with torch.no_grad():
        ref = [t.numpy() for t in Outputs(model)(calib[:4])]
    out["output_error_vs_eager"] = {k: output_error([t.detach().numpy() for t in net(calib[:4])], ref)
                                    for k, net in nets.items()}
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    for b in (1, 8):
        x = torch.randn(b, 3, h, w, generator=gen)
        row: dict[str, Any] = {}
        with torch.inference_mode():
            row["eager_fp32"] = timed(lambda x=x: Outputs(model)(x), repeats)
        for name, net in nets.items():
            ort = name.startswith("onnxruntime")
            torch.set_num_threads(1 if ort else threads)  # as multibox.runtime.ort does around ONNX Runtime
            try:
                row[name] = timed(lambda x=x, net=net: net(x), repeats)
            finally:
                torch.set_num_threads(threads)
        for a, c in (("onnxruntime_fp32", "onnxruntime_int8"), ("onnxruntime_fp32", "pt2e_int8"),
                     ("inductor_fp32", "pt2e_int8"), ("onnxruntime_int8", "pt2e_int8")):
            if a in row and c in row:
                row[f"{c}_speedup_vs_{a}"] = row[a]["ms"] / row[c]["ms"]
        out["network"][f"batch_{b}"] = row
        print(f"{key} batch {b}: " + ", ".join(f"{k} {v['ms']:.1f} ms" for k, v in row.items()
                                               if isinstance(v, dict)), flush=True)
    if key in ZOO:
        photos = check_photos()
        ref_dets = [det(p, conf=CONF) for p in photos]
        out["detections"] = {}
        for name in ("onnxruntime_int8", "pt2e_int8"):
            if name not in nets:
                continue
            runtime = register_runtime(_Fixed(f"bench-{name}", nets[name]), replace=True)
            d8 = Detector(det.bundle, runtime=runtime.name, batch_size=1, name=det.name)
            out["detections"][name] = kept_detections(ref_dets, [d8(p, conf=CONF) for p in photos])
            print(f"{key} {name}: fp32 detections kept {out['detections'][name]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["ssd300_vgg16", "face", "person"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import onnxruntime

    try:
        import torchao
        torchao_version = torchao.__version__
    except ImportError:
        torchao_version = None
    result: dict[str, Any] = {"benchmark": "pt2e_vs_ort", "torch": torch.__version__, "torchao": torchao_version,
                              "onnxruntime": onnxruntime.__version__, "threads": args.threads,
                              "repeats": args.repeats, "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
                              "load_average_before": list(os.getloadavg()), "models": {}}
    with tempfile.TemporaryDirectory(prefix="multibox-pt2e-") as tmp:
        calib_dir = calibration_folder(Path(tmp))
        for key in args.models:
            if key in ZOO and not zoo.bundle_path(ZOO[key]).is_file():
                zoo.fetch(ZOO[key])
            result["models"][key] = bench_model(key, calib_dir, args.repeats)
            if args.json:
                atomic_write_bytes(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    result["load_average_after"] = list(os.getloadavg())
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=1))


if __name__ == "__main__":
    main()
