"""``multibox export onnx MODEL --out FILE.onnx``: a detector's network as an ONNX graph.

``MODEL`` is a zoo name (``multibox zoo list``) or a detector file (a bundle or a multibox training checkpoint).
The graph takes ``images`` ``[B, 3, H, W]`` float32 (resized and normalized as the detector's input spec says,
printed by the command and written to ``FILE.json``) and returns ``cls_logits`` ``[B, P, C]`` and ``box_deltas``
``[B, P, 4]``; the priors are written to ``FILE.priors.npy`` (``[P, 4]`` float32 normalized ``cx, cy, w, h``), so
that decoding and NMS can be done outside. With ``--postprocess`` the decoding and NMS (the model's settings,
``--conf`` to change the threshold) are part of the graph, which then returns ``boxes [B, K, 4]`` (normalized
``x1, y1, x2, y2``), ``scores [B, K]``, ``labels [B, K]`` and ``num_detections [B]``. With ``onnxruntime``
installed the export is checked against PyTorch on a random input (largest absolute difference printed and
recorded). ``--out`` is checked before any work (a folder or an unwritable place is an error); an existing file
is only replaced with ``--overwrite``; ``--json FILE`` also writes the export's summary (``-``: standard output).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json

from ..fileio import atomic_write_bytes
from .detect import load_detector
from .options import (
    UsageError,
    add_calibration_options,
    add_json_option,
    add_overwrite_option,
    add_progress_options,
    check_output_file,
    is_quiet,
    positive_int,
    probability,
    write_json_output,
)

__all__ = ["register", "run", "run_torchscript"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` parser."""
    p = subparsers.add_parser("export", help="export a detector's network (ONNX, TorchScript)",
                              description="Export a zoo model or a detector file to another runtime's format.")
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    o = sub.add_parser("onnx", help="the network as an ONNX graph (+ priors and input spec)",
                       description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None)
    o.add_argument("model", help="zoo name or detector file (bundle or checkpoint)")
    o.add_argument("--out", required=True, help="output .onnx file")
    o.add_argument("--batch-size", type=positive_int, default=1, help="batch size of the traced example (default 1)")
    o.add_argument("--static-batch", action="store_true", help="fix the batch axis to --batch-size")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    o.add_argument("--postprocess", action="store_true",
                   help="append decoding and NMS (the model's own settings) as ONNX operators: outputs boxes "
                        "[B, K, 4] normalized xyxy, scores [B, K], labels [B, K], num_detections [B]")
    o.add_argument("--conf", type=probability,
                   help="with --postprocess: score threshold in [0, 1] (default: the model's)")
    o.add_argument("--int8", action="store_true",
                   help="post-training static int8 quantization (ONNX Runtime QDQ, per-channel int8 weights), "
                        "calibrated on --calibrate DIR; run it with --runtime onnxruntime-int8 --int8-model FILE")
    add_calibration_options(o)
    add_json_option(o, "the export's summary (the FILE.json sidecar's content)")
    add_overwrite_option(o, "an existing output file")
    add_progress_options(o)
    o.set_defaults(func=run)

    t = sub.add_parser("torchscript", help="the network as a TorchScript archive (torch.jit.load, no multibox)",
                       description="The network traced to TorchScript (input images [B, 3, H, W] float32, resized "
                                   "and normalized as the detector's input spec says; outputs cls_logits "
                                   "[B, P, C], box_deltas [B, P, 4]); with --postprocess decoding and NMS "
                                   "(scripted) follow: outputs boxes [B, K, 4] normalized xyxy, scores [B, K], "
                                   "labels [B, K], num_detections [B]. Loads with torch.jit.load alone; the "
                                   "class names and input spec are the archive's extra file multibox.json and "
                                   "FILE.json. Checked against eager PyTorch on a random batch.")
    t.add_argument("model", help="zoo name or detector file (bundle or checkpoint)")
    t.add_argument("--out", required=True, help="output .pt file")
    t.add_argument("--batch-size", type=positive_int, default=1, help="batch size of the traced example (default 1)")
    t.add_argument("--postprocess", action="store_true", help="append decoding and NMS (the model's own settings)")
    t.add_argument("--conf", type=probability,
                   help="with --postprocess: score threshold in [0, 1] (default: the model's)")
    add_json_option(t, "the export's summary (the FILE.json sidecar's content)")
    add_overwrite_option(t, "an existing output file")
    add_progress_options(t)
    t.set_defaults(func=run_torchscript)


def run(args: argparse.Namespace) -> int:
    """``multibox export onnx`` (see the module docstring)."""
    # numpy and the exporter (torch) load when the command runs: every command module is imported for --help
    import numpy as np

    from ..export.onnx import export_onnx
    from ..export.quantize import export_onnx_int8

    out = check_output_file(args.out)
    if out.suffix != ".onnx":
        raise UsageError(f"--out {out}: the output file must end in .onnx")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out}: exists; give --overwrite to replace it")
    if args.json:
        check_output_file(args.json, "--json")
    if args.conf is not None and not args.postprocess:
        raise UsageError("--conf only applies with --postprocess")
    calib_flags = [f for f, v in (("--calibrate", args.calibrate), ("--calib-images", args.calib_images),
                                  ("--method", args.method), ("--keep-float", args.keep_float)) if v is not None]
    if calib_flags and not args.int8:
        raise UsageError(f"{', '.join(calib_flags)}: only with --int8")
    if args.int8 and not args.calibrate:
        raise UsageError("--int8 needs --calibrate DIR (a folder of images like those the model will see)")
    if args.int8 and args.postprocess:
        raise UsageError("--int8 exports the network only; the runtime onnxruntime-int8 appends the "
                         "post-processing itself (leave out --postprocess)")
    det = load_detector(args.model, "cpu", 1, "eager")
    post = None
    if args.postprocess:
        post = det.postprocess_for(None) if args.conf is None else \
            det.bundle.make_postprocess(conf_threshold=args.conf)
    quant = None
    if args.int8:
        quant = {"calibrate": args.calibrate, "calib_images": args.calib_images or 200,
                 "method": args.method or "minmax", "keep_float": list(args.keep_float or ())}
        info = export_onnx_int8(det.model, out, det.input_spec, batch_size=args.batch_size,
                                dynamic_batch=not args.static_batch, opset=args.opset, **quant)
    else:
        info = export_onnx(det.model, out, det.input_spec.image_size, batch_size=args.batch_size,
                           dynamic_batch=not args.static_batch, opset=args.opset, postprocess=post,
                           num_classes=len(det.class_names))
    priors_path = out.with_suffix(".priors.npy")
    buf = io.BytesIO()
    np.save(buf, det.bundle.priors.detach().cpu().float().numpy())
    atomic_write_bytes(priors_path, buf.getvalue())
    spec = dataclasses.asdict(det.input_spec) if dataclasses.is_dataclass(det.input_spec) else vars(det.input_spec)
    meta = {**info, "model": args.model, "class_names": det.class_names, "input_spec": spec,
            "priors": str(priors_path), "postprocess": dict(det.bundle.postprocess),
            "variances": list(getattr(det.bundle, "variances", ()))}
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(meta, indent=2, default=str) + "\n").encode())
    check = "not checked (onnxruntime missing)" if info["max_abs_diff"] is None else \
        f"max |onnxruntime - torch| = {info['max_abs_diff']:.2e}"
    if quant:
        err = info["int8"]["error"]
        check = (f"int8 ({quant['method']}, {info['int8']['calibration_images']} calibration images, "
                 f"{len(info['int8']['float_nodes'])} nodes kept in float): relative RMS error vs float "
                 f"cls_logits {err['cls_logits']:.4f}, box_deltas {err['box_deltas']:.4f}")
    check += f"; outputs {', '.join(info['outputs'])}"
    if args.json:
        write_json_output(args.json, meta)
    if is_quiet(args) or args.json == "-":
        return 0
    h, w = det.input_spec.image_size
    print(f"wrote {out} ({info['bytes'] / 1e6:.1f} MB, opset {args.opset}, input [B, 3, {h}, {w}] "
          f"{det.input_spec.channel_order} mean {list(det.input_spec.mean)} std {list(det.input_spec.std)}; {check}), "
          f"{priors_path} and {out.with_suffix('.json')}")
    return 0


def _spec_dict(det: object) -> dict:
    spec = det.input_spec  # type: ignore[attr-defined]
    return dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(vars(spec))


def run_torchscript(args: argparse.Namespace) -> int:
    """``multibox export torchscript`` (see its description)."""
    # the exporter (torch) loads when the command runs: every command module is imported for --help
    from ..export.torchscript import META_FILE, export_torchscript

    out = check_output_file(args.out)
    if out.suffix not in (".pt", ".ts"):
        raise UsageError(f"--out {out}: the output file must end in .pt (or .ts)")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out}: exists; give --overwrite to replace it")
    if args.json:
        check_output_file(args.json, "--json")
    if args.conf is not None and not args.postprocess:
        raise UsageError("--conf only applies with --postprocess")
    det = load_detector(args.model, "cpu", 1, "eager")
    post = None
    if args.postprocess:
        post = det.postprocess_for(None) if args.conf is None else \
            det.bundle.make_postprocess(conf_threshold=args.conf)
        if int(post.keep_top_k) <= 0:
            raise UsageError(f"{args.model}: keep_top_k {post.keep_top_k} gives no fixed output size; "
                             "export without --postprocess")
    meta = {"model": args.model, "class_names": det.class_names, "input_spec": _spec_dict(det),
            "postprocess": dict(det.bundle.postprocess) if post is None else
            {"mode": post.mode, "conf_threshold": post.conf_threshold, "top_k": post.top_k,
             "nms_threshold": post.nms_threshold, "keep_top_k": post.keep_top_k, "clip": post.clip,
             "score": post.score},
            "variances": list(getattr(det.bundle, "variances", ())), "num_priors": int(det.bundle.priors.shape[0])}
    info = export_torchscript(det.model, out, det.input_spec.image_size, batch_size=args.batch_size,
                              postprocess=post, meta=meta)
    meta = {**info, **meta, "extra_file": META_FILE}
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(meta, indent=2, default=str) + "\n").encode())
    if args.json:
        write_json_output(args.json, meta)
    if is_quiet(args) or args.json == "-":
        return 0
    h, w = det.input_spec.image_size
    print(f"wrote {out} ({info['bytes'] / 1e6:.1f} MB, input [B, 3, {h}, {w}] {det.input_spec.channel_order} "
          f"mean {list(det.input_spec.mean)} std {list(det.input_spec.std)}; max |torchscript - eager| = "
          f"{info['max_abs_diff']:.2e}; outputs {', '.join(info['outputs'])}) and {out.with_suffix('.json')}")
    return 0
