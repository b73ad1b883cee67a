"""``multibox bench export``: eager PyTorch vs our default fp32 runtime (ONNX Runtime) vs int8 (ONNX Runtime QDQ),
per model, network only at batch 1 and 8, and end to end per image for the zoo detectors, in one run.

Models: SSD300-VGG16 and SSDLite320-MobileNetV2 (random weights, 21 classes: speed only), and the zoo's face and
person detectors when cached (speed, and the int8 detections checked against fp32 on real photos with the issue's
bounds: every fp32 detection >= 0.5 found with IoU >= 0.9 and a score within 0.05). int8 graphs are calibrated
on real photos that are not the checked ones (matplotlib's Minduka photo, imgaug's quokka, two deepforest tiles,
where cached) with ``minmax``. Network times are medians of ``--repeats`` timed calls after a warm-up (``min_ms``:
the fastest); the roofline fields are those of ``bench core`` (GFLOP per image counted on the float network, so
int8's rate is "effective"). The machine's load average is recorded: on a shared machine the times move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..commands.options import add_quiet_option, check_output_file, positive_int, quiet_output

__all__ = ["register", "run_export_benchmark", "calibration_folder", "check_photos", "kept_detections",
           "time_calls"]

_CONF = 0.3
_BATCHES = (1, 8)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench export`` parser."""
    p = subparsers.add_parser("export", help="eager vs fp32 runtime vs int8, per model, batch 1 and 8",
                              description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None)
    p.add_argument("--json", metavar="FILE", help="write the results to this JSON file")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed calls per case (default 5)")
    p.add_argument("--models", nargs="+", default=["ssd300_vgg16", "ssdlite320_mobilenetv2", "face", "person"],
                   choices=["ssd300_vgg16", "ssdlite320_mobilenetv2", "face", "person", "ssd7"],
                   help="which models (default all but ssd7, the tiny smoke-test model; face / person only when the "
                        "zoo has them cached)")
    p.add_argument("--calibrate", metavar="DIR", help="calibration images (default: the real photos above)")
    p.add_argument("--calib-images", type=positive_int, default=200, metavar="N",
                   help="calibrate on the first N images (default 200: all of the default set)")
    add_quiet_option(p)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    with quiet_output(args):
        run_export_benchmark(json_path=Path(args.json) if args.json else None, threads=args.threads,
                             repeats=args.repeats, models=tuple(args.models), calibrate=args.calibrate,
                             calib_images=args.calib_images)
    return 0


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict[str, Any]:
    """Median (``ms``) and fastest (``min_ms``) milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` calls,
    with every call's time (``runs_ms``)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(runs), "min_ms": min(runs), "runs_ms": runs}


def calibration_folder(tmp: Path) -> Path:
    """Real photos other than the checked ones (matplotlib's Minduka photo, and where cached or fetchable imgaug's
    quokka and deepforest's OSBS_029 and SOAP_061), copied into the folder ``tmp``; returns ``tmp``."""
    import matplotlib

    from ..data import real

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "Minduka_Present_Blue_Pack.png"]
    for get in (lambda: real.quokka()[0], lambda: real.deepforest_sample("OSBS_029")[0],
                lambda: real.deepforest_sample("SOAP_061")[0]):
        try:
            paths.append(Path(get()))
        except real.RealDataUnavailable:
            pass
    for i, p in enumerate(paths):
        (tmp / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    return tmp


def check_photos() -> list[Any]:
    """grace_hopper.jpg, its mirror image and a crop (``[H, W, 3]`` uint8 RGB arrays): the photos the int8
    detections are checked on."""
    import matplotlib
    import numpy as np

    from ..data.image_io import load_image

    img = load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [img, np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(img[40:460, 30:480])]


def kept_detections(ref: list[Any], got: list[Any]) -> dict[str, Any]:
    """The issue's check: each fp32 detection >= 0.5 has an int8 one of its class with IoU >= 0.9 and a score
    within 0.05. ``ref`` / ``got``: the fp32 and int8 :class:`~multibox.detections.Detections` of the same images
    (xyxy pixels). Returns ``{"fp32_detections", "kept", "all_kept", "worst_iou", "largest_score_change"}``
    (``all_kept`` is false when there is no fp32 detection >= 0.5 to check)."""
    from torchvision.ops import box_iou

    total = kept = 0
    worst_iou, worst_score = 1.0, 0.0
    for a, b in zip(ref, got, strict=True):
        for i in range(len(a)):
            if float(a.scores[i]) < 0.5:
                continue
            total += 1
            same = b.labels == a.labels[i]
            if not bool(same.any()):
                worst_iou = 0.0
                continue
            ious = box_iou(a.boxes[i:i + 1], b.boxes[same])[0]
            j = int(ious.argmax())
            iou, ds = float(ious[j]), abs(float(b.scores[same][j]) - float(a.scores[i]))
            worst_iou, worst_score = min(worst_iou, iou), max(worst_score, ds)
            kept += int(iou >= 0.9 and ds <= 0.05)
    return {"fp32_detections": total, "kept": kept, "all_kept": total > 0 and kept == total,
            "worst_iou": worst_iou, "largest_score_change": worst_score}


def _bench_model(key: str, det_fp32: Any, calib_dir: Path, calib_images: int, repeats: int, tmp: Path,  # noqa: ANN401
                 end_to_end: bool) -> dict[str, Any]:
    import torch

    from ..detector import Detector
    from ..export.onnx import export_onnx_bytes
    from ..export.quantize import calibration_inputs, output_error, quantize_onnx
    from ..models.outputs import network_outputs
    from ..runtime.ort import OrtNetwork
    from .roofline import forward_gflop

    model = det_fp32.model.eval()
    h, w = det_fp32.input_spec.image_size
    t0 = time.perf_counter()
    float_graph = export_onnx_bytes(model, torch.zeros(1, 3, h, w), dynamic_batch=True)
    calib = calibration_inputs(calib_dir, det_fp32.input_spec, calib_images)
    int8_graph = quantize_onnx(float_graph, calib, method="minmax")
    quantize_s = time.perf_counter() - t0
    fp32_net, int8_net = OrtNetwork(float_graph), OrtNetwork(int8_graph)
    gflop = forward_gflop(lambda x: model(x), (1, 3, h, w))
    out: dict[str, Any] = {"input": [3, h, w], "gflop_per_image": gflop, "quantize_seconds": quantize_s,
                           "calibration_images": int(calib.shape[0]), "network": {}}
    err = output_error([t.numpy() for t in int8_net(calib[:4])], [t.numpy() for t in fp32_net(calib[:4])])
    out["int8_output_error"] = err
    gen = torch.Generator().manual_seed(0)
    for b in _BATCHES:
        x = torch.randn(b, 3, h, w, generator=gen)
        row: dict[str, Any] = {}
        with torch.inference_mode():
            row["eager"] = time_calls(lambda x=x: network_outputs(model(x)), repeats)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the Detector does around ONNX Runtime (multibox.runtime.ort.OrtNetwork)
        try:
            row["onnxruntime_fp32"] = time_calls(lambda x=x: fp32_net(x), repeats)
            row["onnxruntime_int8"] = time_calls(lambda x=x: int8_net(x), repeats)
        finally:
            torch.set_num_threads(torch_threads)
        for k in ("eager", "onnxruntime_fp32", "onnxruntime_int8"):
            row[k]["gflops"] = gflop * b / (row[k]["ms"] / 1e3)
        row["int8_speedup_vs_fp32_runtime"] = row["onnxruntime_fp32"]["ms"] / row["onnxruntime_int8"]["ms"]
        row["int8_speedup_vs_eager"] = row["eager"]["ms"] / row["onnxruntime_int8"]["ms"]
        out["network"][f"batch_{b}"] = row
    if end_to_end:
        path = tmp / f"{key}.int8.onnx"
        path.write_bytes(int8_graph)
        det_int8 = Detector(det_fp32.bundle, runtime="onnxruntime-int8", runtime_options={"model": str(path)},
                            batch_size=1, name=det_fp32.name)
        photos = check_photos()
        ref = [det_fp32(p, conf=_CONF) for p in photos]
        got = [det_int8(p, conf=_CONF) for p in photos]
        out["detections"] = kept_detections(ref, got)
        e2e = {}
        for name, det in (("onnxruntime_fp32", det_fp32), ("onnxruntime_int8", det_int8)):
            e2e[name] = time_calls(lambda det=det: [det.detect_arrays([p], _CONF) for p in photos], repeats)
            e2e[name] = {k: (v / len(photos) if k != "runs_ms" else [r / len(photos) for r in v])
                         for k, v in e2e[name].items()}
        e2e["int8_speedup_vs_fp32_runtime"] = e2e["onnxruntime_fp32"]["ms"] / e2e["onnxruntime_int8"]["ms"]
        e2e["runtimes_in_use"] = {"fp32": det_fp32.runtime_name, "int8": det_int8.runtime_name}
        out["end_to_end_per_image"] = e2e
    return out


def run_export_benchmark(json_path: Path | None = None, threads: int = 2, repeats: int = 5,
                         models: tuple[str, ...] = ("ssd300_vgg16", "ssdlite320_mobilenetv2", "face", "person"),
                         calibrate: str | None = None, calib_images: int = 200) -> dict[str, Any]:
    """Run the benchmark, print a table, write JSON to ``json_path`` (atomically) and return the results."""
    import json

    import onnxruntime
    import torch

    from ..detector import Detector
    from ..fileio import atomic_write_bytes
    from ..interop import zoo
    from ..models.registry import build_model
    from .roofline import conv_peak_gflops

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    zoo_names = {"face": "face-res10-300", "person": "person-ssdlite-mbv2"}
    result: dict[str, Any] = {"threads": threads, "repeats": repeats, "torch": torch.__version__,
                              "onnxruntime": onnxruntime.__version__, "machine": platform.processor() or
                              platform.machine(), "cpu_count": os.cpu_count(),
                              "load_average_before": list(os.getloadavg()), "calibration": "minmax, per-channel "
                              "int8 weights, QDQ, u8 activations", "models": {}}
    result["conv_peak_gflops"] = conv_peak_gflops()
    with tempfile.TemporaryDirectory(prefix="multibox-bench-export-") as tmp_name:
        tmp = Path(tmp_name)
        if calibrate:
            calib_dir = Path(calibrate)
        else:
            (tmp / "calib").mkdir()
            calib_dir = calibration_folder(tmp / "calib")
        result["calibration_folder"] = str(calibrate) if calibrate else "Minduka, quokka, OSBS_029, SOAP_061"
        for key in models:
            if key in zoo_names:
                if not zoo.bundle_path(zoo_names[key]).is_file():
                    result["models"][key] = {"skipped": f"{zoo_names[key]} is not in the zoo cache"}
                    continue
                det = Detector.from_pretrained(zoo_names[key], runtime="onnxruntime", batch_size=1)
            else:
                model = build_model(key, num_classes=21, **({"image_size": (96, 128)} if key == "ssd7" else {}))
                model = model.eval()
                det = Detector.from_model(model, runtime="onnxruntime", batch_size=1)
            r = _bench_model(key, det, calib_dir, calib_images, repeats, tmp, end_to_end=key in zoo_names)
            result["models"][key] = r
            for b in _BATCHES:
                row = r["network"][f"batch_{b}"]
                print(f"{key} batch {b}: eager {row['eager']['ms']:.1f} ms, onnxruntime fp32 "
                      f"{row['onnxruntime_fp32']['ms']:.1f} ms, int8 {row['onnxruntime_int8']['ms']:.1f} ms "
                      f"-> int8 {row['int8_speedup_vs_fp32_runtime']:.2f}x fp32 runtime, "
                      f"{row['int8_speedup_vs_eager']:.2f}x eager")
            if "end_to_end_per_image" in r:
                e = r["end_to_end_per_image"]
                d = r["detections"]
                print(f"{key} end to end per image: fp32 {e['onnxruntime_fp32']['ms']:.1f} ms, int8 "
                      f"{e['onnxruntime_int8']['ms']:.1f} ms ({e['int8_speedup_vs_fp32_runtime']:.2f}x); "
                      f"fp32 detections kept {d['kept']}/{d['fp32_detections']} (worst IoU {d['worst_iou']:.3f}, "
                      f"score change {d['largest_score_change']:.3f})")
    result["load_average_after"] = list(os.getloadavg())
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {json_path}")
    return result
