"""``multibox quant analyze MODEL --calibrate DIR``: which layers lose accuracy in int8 (docs/quantization.md).

The network is exported to ONNX, its activation ranges calibrated once on the first ``--calib-images`` images of
``DIR`` (the model's own pre-processing), and then, for each convolution, quantized twice: that layer alone in int8
(``alone``) and every layer but that one (``all but``). Each is run on ``--eval-images`` images of ``DIR`` (the
first ones; they may overlap the calibration images) and its outputs compared with the float graph's: the relative
RMS error of ``cls_logits`` and ``box_deltas`` (RMS of the difference over the RMS of the float output around its
mean). Layers are listed most sensitive first; ``recovered`` is how much of the all-int8 error keeping that one
layer in float removes. Use the names with ``multibox export onnx MODEL --int8 --keep-float NAME``.
"""

from __future__ import annotations

import argparse

from .detect import load_detector
from .options import (
    UsageError,
    add_calibration_options,
    add_json_option,
    add_quiet_option,
    check_output_file,
    is_quiet,
    positive_int,
    write_json_output,
)

__all__ = ["register", "run_analyze"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quant`` parser (``quant analyze``)."""
    p = subparsers.add_parser("quant", help="int8 quantization: per-layer sensitivity (quant analyze)",
                              description="int8 quantization tools (see docs/quantization.md).")
    sub = p.add_subparsers(dest="quant_command", required=True, metavar="QUANT")
    a = sub.add_parser("analyze", help="per-layer int8 sensitivity of a detector's network",
                       description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None)
    a.add_argument("model", help="zoo name or detector file (bundle or checkpoint)")
    add_calibration_options(a)
    a.add_argument("--eval-images", type=positive_int, default=8, metavar="N",
                   help="images the errors are measured on (the first N of --calibrate; default 8)")
    a.add_argument("--top", type=positive_int, default=None, metavar="N", help="print only the N most sensitive")
    add_json_option(a, "the report")
    add_quiet_option(a)
    a.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    """``multibox quant analyze`` (see the module docstring)."""
    # torch, onnx and onnxruntime load when the command runs: every command module is imported for --help
    import torch

    from ..export.onnx import export_onnx_bytes
    from ..export.quantize import calibration_inputs, sensitivity

    if not args.calibrate:
        raise UsageError("--calibrate DIR is required (images to calibrate on and to measure the error on)")
    if args.keep_float:
        raise UsageError("--keep-float does not apply to quant analyze (each layer is tried in float in turn)")
    if args.json:
        check_output_file(args.json, "--json")
    det = load_detector(args.model, "cpu", 1, "eager")
    calib = calibration_inputs(args.calibrate, det.input_spec, args.calib_images or 32)
    inputs = calibration_inputs(args.calibrate, det.input_spec, args.eval_images)
    graph = export_onnx_bytes(det.model.eval(), torch.zeros(1, 3, *det.input_spec.image_size), dynamic_batch=True)
    report = {"model": args.model, **sensitivity(graph, calib, inputs, method=args.method or "minmax")}
    if args.json:
        write_json_output(args.json, report)
    if is_quiet(args) or args.json == "-":
        return 0
    full = report["all_int8"]
    print(f"{args.model}: all layers int8 ({report['method']}, {report['calibration_images']} calibration images, "
          f"{report['eval_images']} evaluation images): relative RMS error cls_logits {full['cls_logits']:.4f}, "
          f"box_deltas {full['box_deltas']:.4f}")
    print(f"{'layer':<48} {'#':>3} {'alone cls':>9} {'alone box':>9} {'all-but':>8} {'recovered':>9}")
    for r in report["layers"][:args.top]:
        print(f"{r['name'][-48:]:<48} {r['index']:>3} {r['alone']['cls_logits']:>9.4f} "
              f"{r['alone']['box_deltas']:>9.4f} {r['all_but']['total']:>8.4f} {r['recovered']:>9.4f}")
    return 0
