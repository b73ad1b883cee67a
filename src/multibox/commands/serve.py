"""``multibox serve``: the HTTP detection service with its browser page (docs/serve.md).

``multibox serve [--model NAME|PATH ...] [--host 127.0.0.1] [--port 8000] [--runtime auto|...] [--max-batch 8]
[--max-wait-ms 5] [--max-queue 64] [--workers N] [--api-key KEY]`` loads each model once (a zoo name or a detector
file, as ``multibox detect`` loads it), warms it up, and serves :mod:`multibox.serve.app` with uvicorn. It binds
127.0.0.1 unless told otherwise; bound elsewhere it wants an API key (``--api-key`` or ``MULTIBOX_API_KEY``), or
``--no-api-key`` to say that something in front of it (a reverse proxy) checks who calls. FastAPI and uvicorn are
the optional extra ``multibox[serve]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from ..interop.zoo import ZOO, ZooUnavailable
from .detect import DEFAULT_MODEL
from .options import UsageError, add_quiet_option, finite_float, is_quiet, positive_int, probability

__all__ = ["register", "run", "settings_from_args", "is_loopback"]

_RUNTIME_HELP = ("how the network runs: auto (default), eager, jit, jit+channels_last, channels_last or "
                 "onnxruntime (as in multibox detect)")


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not in 0..65535")
    return v


def _non_negative_ms(text: str) -> float:
    return finite_float(text, lambda v: 0 <= v <= 10_000, "must be in 0..10000 milliseconds",
                        "a number of milliseconds")


def _positive_float(text: str) -> float:
    return finite_float(text, lambda v: v > 0, "must be a finite number > 0")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` parser."""
    p = subparsers.add_parser(
        "serve", help="an HTTP detection service with a browser page (FastAPI, micro-batching, limits)",
        description="Serve detectors over HTTP: POST /v1/detect (an image -> the records of multibox detect's "
                    "detections.json), GET /v1/models, /healthz, /readyz, /metrics (Prometheus), /docs, and a "
                    "browser page at /. Concurrent requests are micro-batched. Needs the extra: pip install "
                    "'multibox[serve]'. See docs/serve.md.")
    p.add_argument("--model", action="append", metavar="NAME|PATH",
                   help=f"zoo name or detector file; repeat to serve several (the first is the default; default "
                        f"{DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--runtime", default="auto", help=_RUNTIME_HELP)
    p.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="most images per forward pass (default 8; 1: no micro-batching)")
    p.add_argument("--max-wait-ms", type=_non_negative_ms, default=5.0, metavar="MS",
                   help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--max-queue", type=positive_int, default=64, metavar="N",
                   help="requests waiting per model before new ones get 503 + Retry-After (default 64)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="worker processes, each loading the models (default 1)")
    p.add_argument("--min-conf", type=probability, default=0.05,
                   help="the lowest conf a request may ask; batches run at it (default 0.05)")
    p.add_argument("--max-body-mb", type=_positive_float, default=20.0, metavar="MB",
                   help="largest request body in MiB (default 20; larger: 413)")
    p.add_argument("--max-megapixels", type=_positive_float, default=40.0, metavar="MP",
                   help="largest image in millions of pixels, checked before decoding (default 40; larger: 413)")
    p.add_argument("--read-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="close an upload that sends nothing for S seconds (default 10; 408)")
    p.add_argument("--upload-timeout", type=_positive_float, default=60.0, metavar="S",
                   help="close an upload that takes longer than S seconds in all (default 60; 408)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require this key in the X-API-Key header on /v1/* and /metrics (default: "
                        "$MULTIBOX_API_KEY; required when --host is not a loopback address)")
    p.add_argument("--no-api-key", action="store_true",
                   help="bind a non-loopback --host without an API key (something in front checks callers)")
    add_quiet_option(p)
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_args(args: argparse.Namespace) -> object:
    """The :class:`~multibox.serve.app.ServeSettings` of the parsed options (checks them: ``UsageError``)."""
    from ..serve.app import API_KEY_ENV, ServeSettings  # FastAPI: an optional extra, imported when serve runs

    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    if api_key is not None and (len(api_key) < 8 or not api_key.isprintable() or " " in api_key):
        raise UsageError("--api-key: use at least 8 printable characters without spaces")
    if not is_loopback(args.host) and api_key is None and not args.no_api_key:
        raise UsageError(f"--host {args.host} is reachable from other machines: give --api-key KEY (or set "
                         f"{API_KEY_ENV}), or --no-api-key when a reverse proxy in front checks callers")
    if args.min_conf <= 0:
        raise UsageError("--min-conf must be > 0 (a threshold of 0 keeps every prior box)")
    return ServeSettings(models=list(args.model or [DEFAULT_MODEL]), runtime=args.runtime, device=args.device,
                         max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         min_conf=args.min_conf, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                         max_pixels=int(args.max_megapixels * 1_000_000), read_timeout_s=args.read_timeout,
                         upload_timeout_s=args.upload_timeout, api_key=api_key)


def _check_models(specs: list[str]) -> None:
    """Each spec is a detector file or a zoo name (fetched and converted now, once, before workers start)."""
    from ..interop.zoo import fetch

    for spec in specs:
        if Path(spec).is_file():
            continue
        if spec in ZOO:
            fetch(spec)
            continue
        if Path(spec).suffix in (".safetensors", ".pt") or "/" in spec or "\\" in spec:
            raise FileNotFoundError(f"--model {spec}: no such detector file")
        raise UsageError(f"--model {spec!r} is neither a detector file nor a zoo model; zoo models: "
                         f"{', '.join(sorted(ZOO))}")


def run(args: argparse.Namespace) -> int:
    """``multibox serve`` (see the module docstring)."""
    try:  # the optional extra: a clear error instead of a traceback
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("FastAPI and uvicorn are not installed: pip install 'multibox[serve]'") from None
    from ..serve.app import API_KEY_ENV, SETTINGS_ENV, create_app, load_models

    settings = settings_from_args(args)
    log_level = "warning" if is_quiet(args) else "info"
    try:
        if args.workers > 1:
            _check_models(settings.models)
            os.environ[SETTINGS_ENV] = settings.to_json()
            if settings.api_key:
                os.environ[API_KEY_ENV] = settings.api_key
            uvicorn.run("multibox.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                        workers=args.workers, log_level=log_level, timeout_keep_alive=5)
            return 0
        models = load_models(settings)
    except ZooUnavailable as e:
        print(f"multibox serve: error: {e}", file=sys.stderr)
        return 2
    if not is_quiet(args):
        names = ", ".join(f"{n} ({d.runtime})" for n, d in models)
        print(f"multibox serve: {names}; max batch {settings.max_batch}, max wait {settings.max_wait_ms:g} ms, "
              f"queue {settings.max_queue}; http://{args.host}:{args.port}/", file=sys.stderr)
    app = create_app(models, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=log_level, timeout_keep_alive=5)
    return 0
