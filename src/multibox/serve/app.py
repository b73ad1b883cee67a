"""The ``multibox serve`` application: FastAPI routes over micro-batched Detectors (docs/serve.md).

Endpoints: ``POST /v1/detect`` (a raw image body or ``multipart/form-data``; query ``conf``, ``max_detections``,
``classes``, ``model``) answers the records of ``multibox detect``'s ``detections.json`` for one image
(:class:`~multibox.commands.detect.DetectionRecords`: COCO ``xywh`` pixel boxes, image width and height);
``GET /v1/models``; ``GET /healthz`` (the process answers) and ``GET /readyz`` (models loaded and warmed up);
``GET /metrics`` (Prometheus text); ``GET /`` (the browser page, ``static/``); OpenAPI at ``/docs`` and
``/openapi.json``.

Hard limits, each answered with a JSON ``{"error": message, "status": code}`` and never a 500:

* a body over ``max_body_bytes``: 413, from ``Content-Length`` before reading anything, or as soon as the count of
  streamed bytes passes the limit (chunked uploads); the connection is then closed;
* a body that is not an image: 415; a corrupt or truncated image: 400; more than ``max_pixels`` pixels in the
  header (decompression bombs): 413, refused before decoding (:func:`multibox.data.image_io.load_image_bytes`);
* the micro-batcher's queue full: 503 at once with ``Retry-After``;
* an upload that sends nothing for ``read_timeout_s`` or takes longer than ``upload_timeout_s`` in all: 408 and the
  connection closed;
* bad query values: 422 (FastAPI's validation, plus ``conf`` under the service's ``min_conf``, unknown classes or
  models);
* with an API key set, ``/v1/*`` and ``/metrics`` without the right ``X-API-Key`` (or ``Authorization: Bearer``)
  header: 401.

Weights are loaded before the application is built (:func:`load_models`, through the Detector's safe loaders);
no endpoint takes a model file or path. Every model runs its batches at one score threshold (``min_conf``) and each
request is filtered to its own ``conf`` afterwards, so a request's result does not depend on what it was batched
with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from ..commands.detect import DetectionRecords, load_detector
from ..data.image_io import ImageDecodeError, ImageTooLargeError, NotAnImageError, load_image_bytes
from ..detector import Detector
from .batcher import MicroBatcher, QueueFull
from .metrics import Metrics

__all__ = ["ServeSettings", "ServedModel", "ServeError", "create_app", "load_models", "app_from_env", "serve_in_thread",
           "SETTINGS_ENV", "API_KEY_ENV"]

SETTINGS_ENV = "MULTIBOX_SERVE_SETTINGS"  # JSON ServeSettings for worker processes (--workers N)
API_KEY_ENV = "MULTIBOX_API_KEY"
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
_PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
             "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'")
_RAW_TYPES = ("image/", "application/octet-stream")


@dataclass
class ServeSettings:
    """What ``multibox serve`` was started with (the command's options; docs/serve.md)."""

    models: list[str] = field(default_factory=lambda: ["face-res10-300"])
    runtime: str = "auto"
    device: str = "cpu"
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    min_conf: float = 0.05
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    read_timeout_s: float = 10.0
    upload_timeout_s: float = 60.0
    api_key: str | None = None
    warmup: bool = True

    def to_json(self) -> str:
        """The settings as JSON (``api_key`` left out: workers read it from ``MULTIBOX_API_KEY``)."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "api_key"})

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """Settings from :meth:`to_json`."""
        return cls(**json.loads(text))


class ServeError(Exception):
    """A request refused with ``status`` and a message (JSON ``{"error", "status"}``)."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, dict(headers or {})


class ServedModel:
    """A Detector behind its micro-batcher.

    ``detector`` runs batches of ``[H, W, 3]`` uint8 RGB arrays at ``min_conf``; :meth:`detect` returns the
    :class:`~multibox.detections.Detections` of one image (``xyxy`` pixels of that image, scores >= ``min_conf``).
    """

    def __init__(self, name: str, detector: Detector, settings: ServeSettings, metrics: Metrics) -> None:
        self.name, self.detector, self.settings, self.metrics = name, detector, settings, metrics
        detector.batch_size = settings.max_batch
        self.batcher = MicroBatcher(self._run, settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue,
                                    on_batch=self._on_batch, name=name)

    def _run(self, images: list[np.ndarray]) -> list[Any]:
        return self.detector.detect_arrays(images, self.settings.min_conf)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size, model=self.name)
        self.metrics.inference.observe(seconds, model=self.name)
        self.metrics.images.inc(size, model=self.name)

    def warm_up(self) -> None:
        """Run every batch size once (1..max_batch) so that the runtime builds and checks its network for each
        before the first request (``/readyz`` answers 503 until then)."""
        h, w = self.detector.input_spec.image_size
        rng = np.random.default_rng(0)
        for b in range(1, self.settings.max_batch + 1):
            self._run([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(b)])

    def info(self) -> dict[str, Any]:
        """``GET /v1/models`` entry: name, classes (background left out), input size ``[h, w]``, runtime."""
        spec = self.detector.input_spec
        return {"name": self.name, "classes": self.detector.class_names[1:], "input_size": list(spec.image_size),
                "channel_order": spec.channel_order, "runtime": self.detector.runtime_name,
                "min_conf": self.settings.min_conf, "max_batch": self.settings.max_batch}

    async def detect(self, image: np.ndarray) -> Any:  # noqa: ANN401
        """The detections of one image, through the micro-batcher (:class:`QueueFull` when it is full)."""
        self.metrics.queue_depth.set(self.batcher.depth + 1, model=self.name)
        try:
            return await self.batcher.submit(image)
        finally:
            self.metrics.queue_depth.set(self.batcher.depth, model=self.name)


def load_models(settings: ServeSettings) -> list[tuple[str, Detector]]:
    """``(name, Detector)`` for each ``settings.models`` entry (a zoo name or a detector file, loaded as
    ``multibox detect`` loads it); names are the zoo name or the file's stem and must differ."""
    out: list[tuple[str, Detector]] = []
    for spec in settings.models:
        det = load_detector(spec, settings.device, settings.max_batch, settings.runtime)
        name = det.name
        if any(name == n for n, _ in out):
            raise ValueError(f"--model {spec}: a model named {name!r} is loaded already (names must differ)")
        out.append((name, det))
    if not out:
        raise ValueError("--model: no model to serve")
    return out


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _safe_file_name(name: str | None) -> str:
    """The last path component of a client's file name, printable and at most 200 characters."""
    if not name:
        return "upload"
    base = PureWindowsPath(PurePosixPath(name).name).name
    base = "".join(c for c in base if c.isprintable())[:200]
    return base or "upload"


async def _read_body(request: Request, settings: ServeSettings) -> bytes:
    """The request body, at most ``max_body_bytes``, with the read and upload timeouts (:class:`ServeError`)."""
    limit = settings.max_body_bytes
    close = {"Connection": "close"}
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ServeError(400, f"Content-Length {length!r} is not a byte count", "bad_request", close)
        if int(length) > limit:
            raise ServeError(413, f"body of {int(length)} bytes exceeds the limit of {limit} bytes", "body_too_large",
                             close)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.upload_timeout_s
    buf = bytearray()
    stream = request.stream().__aiter__()
    while True:
        wait = min(settings.read_timeout_s, deadline - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            break
        except ClientDisconnect:
            raise ServeError(400, f"the client went away after {len(buf)} bytes of the body", "client_disconnect",
                             close) from None
        except TimeoutError:
            raise ServeError(408, f"upload stalled: {len(buf)} bytes received, then nothing for "
                                  f"{settings.read_timeout_s:g} s (or over {settings.upload_timeout_s:g} s in all)",
                             "upload_timeout", close) from None
        buf += chunk
        if len(buf) > limit:
            raise ServeError(413, f"body exceeds the limit of {limit} bytes", "body_too_large", close)
    return bytes(buf)


def _image_bytes(body: bytes, content_type: str) -> tuple[bytes, str]:
    """``(image bytes, file name)`` from a raw image body or a ``multipart/form-data`` one (its first part
    with a file name, or the part named ``image`` or ``file``)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if not ctype or ctype.startswith(_RAW_TYPES):
        return body, "upload"
    if ctype != "multipart/form-data":
        raise ServeError(415, f"Content-Type {ctype!r} is not an image: send the image bytes (image/* or "
                              "application/octet-stream) or multipart/form-data with an 'image' file", "not_an_image")
    if "boundary=" not in content_type:
        raise ServeError(400, "multipart/form-data without a boundary", "bad_request")
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ServeError(400, "cannot parse the multipart/form-data body", "bad_request")
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        if filename is not None or name in ("image", "file"):
            data = part.get_payload(decode=True) or b""
            return data, _safe_file_name(filename)
    raise ServeError(400, "the multipart/form-data body has no file part (send the image as field 'image')",
                     "bad_request")


def _select(dets: Any, conf: float, classes: set[int] | None, max_detections: int) -> Any:  # noqa: ANN401
    """Detections with score >= ``conf``, of ``classes`` (all when ``None``), at most ``max_detections`` (the
    highest scores; order kept)."""
    keep = dets.scores >= conf
    if classes is not None:
        keep &= torch.tensor([int(lab) in classes for lab in dets.labels.tolist()], dtype=torch.bool)
    idx = torch.nonzero(keep).flatten()
    if idx.numel() > max_detections:
        top = torch.argsort(dets.scores[idx], descending=True, stable=True)[:max_detections]
        idx = torch.sort(idx[top]).values
    return dets[idx]


def _parse_classes(text: str | None, class_names: Sequence[str], model: str) -> set[int] | None:
    """``"face,2"`` -> class indices (names or numbers >= 1); :class:`ServeError` 422 for unknown ones."""
    if text is None or not text.strip():
        return None
    out: set[int] = set()
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token.isdigit() and 1 <= int(token) < len(class_names):
            out.add(int(token))
        elif token in class_names[1:]:
            out.add(class_names.index(token))
        else:
            raise ServeError(422, f"classes: {token!r} is not a class of {model} (names: "
                                  f"{', '.join(class_names[1:][:20])}; or indices 1..{len(class_names) - 1})",
                             "bad_query")
    return out


def _static_files() -> dict[str, bytes]:
    root = resources.files("multibox.serve").joinpath("static")
    return {name: root.joinpath(name).read_bytes() for name in _STATIC}


_DETECT_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image: its bytes (image/jpeg, image/png, ... or application/octet-stream) or a "
                       "multipart/form-data field 'image'",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary"}}, "required": ["image"]}},
        },
    }
}


def create_app(models: Sequence[tuple[str, Detector]], settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving ``models`` (``(name, Detector)``, the first is the default).

    The micro-batchers start, and the models are warmed up (``settings.warmup``), in the application's lifespan:
    run it under uvicorn or ``with fastapi.testclient.TestClient(app)``."""
    if not models:
        raise ValueError("create_app: no model to serve")
    metrics = Metrics(settings.max_batch)
    served = {name: ServedModel(name, det, settings, metrics) for name, det in models}
    default = models[0][0]
    static = _static_files()
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for m in served.values():
            m.batcher.start()
        if settings.warmup:
            for m in served.values():
                await asyncio.to_thread(m.warm_up)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            for m in served.values():
                await m.batcher.stop()

    app = FastAPI(title="multibox serve", version="1", lifespan=lifespan, docs_url=None,
                  description="SSD object detection over HTTP (docs/serve.md).")
    docs_assets = _swagger_assets()

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> Response:
        """Swagger UI for ``/openapi.json``, its script and style served from the package ``swagger-ui-bundle``
        (nothing from the internet)."""
        if docs_assets is None:
            return _error(404, "the OpenAPI page needs the package swagger-ui-bundle (pip install "
                               "'multibox[serve]'); the spec is at /openapi.json")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="multibox serve: API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if docs_assets is None or name not in docs_assets:
            return _error(404, "not found")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(docs_assets[name], media_type=kind,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=86400"})
    app.state.metrics = metrics
    app.state.models = served
    app.state.settings = settings

    @app.middleware("http")
    async def count_and_guard(request: Request, call_next: Any) -> Response:  # noqa: ANN401
        path = request.url.path
        if settings.api_key and (path.startswith("/v1/") or path == "/metrics"):
            given = request.headers.get("x-api-key") or ""
            auth = request.headers.get("authorization") or ""
            if not given and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                metrics.rejections.inc(reason="unauthorized")
                response: Response = _error(401, "missing or wrong API key (header X-API-Key)")
                metrics.requests.inc(path=_path_label(path), code=str(response.status_code))
                return response
        response = await call_next(request)
        metrics.requests.inc(path=_path_label(path), code=str(response.status_code))
        return response

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        metrics.rejections.inc(reason=exc.reason)
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejections.inc(reason="bad_query")
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(parts) or "invalid request", "status": 422,
                             "detail": json.loads(json.dumps(exc.errors(), default=str))}, status_code=422)

    @app.post("/v1/detect", openapi_extra=_DETECT_BODY, summary="detect objects in one image",
              responses={400: {"description": "corrupt image"}, 408: {"description": "upload stalled"},
                         413: {"description": "body or pixels over the limit"},
                         415: {"description": "not an image"}, 422: {"description": "bad query value"},
                         503: {"description": "queue full (Retry-After)"}})
    async def detect(request: Request,
                     conf: float = Query(0.5, ge=0.0, le=1.0, description="keep detections with score >= conf"),
                     max_detections: int = Query(100, ge=1, le=10000,
                                                 description="at most this many (the highest scores)"),
                     classes: str | None = Query(None, max_length=4096,
                                                 description="comma-separated class names or indices (>= 1)"),
                     model: str | None = Query(None, max_length=256, description="a name of GET /v1/models")
                     ) -> JSONResponse:
        t0 = time.perf_counter()
        name = default if model is None else model
        if name not in served:
            raise ServeError(422, f"model: {name!r} is not served here ({', '.join(served)})", "bad_query")
        m = served[name]
        if conf < settings.min_conf:
            raise ServeError(422, f"conf: {conf:g} is below this service's min_conf {settings.min_conf:g} "
                                  "(multibox serve --min-conf)", "bad_query")
        wanted = _parse_classes(classes, m.detector.class_names, name)
        if not state["ready"]:
            raise ServeError(503, "the service is starting (models warming up)", "not_ready", {"Retry-After": "1"})
        body = await _read_body(request, settings)  # read even when busy: an unread body resets the connection
        if m.batcher.depth >= settings.max_queue:  # refused before decoding: overload costs little
            raise ServeError(503, f"busy: {m.batcher.depth} requests are waiting already (max queue "
                                  f"{settings.max_queue}); retry later", "queue_full",
                             {"Retry-After": str(_retry_after(m))})
        data, file_name = _image_bytes(body, request.headers.get("content-type", ""))
        try:
            image = await asyncio.to_thread(load_image_bytes, data, file_name, settings.max_pixels)
        except ImageTooLargeError as e:
            raise ServeError(413, str(e), "too_many_pixels") from None
        except NotAnImageError as e:
            raise ServeError(415, str(e), "not_an_image") from None
        except ImageDecodeError as e:
            raise ServeError(400, str(e), "corrupt_image") from None
        try:
            dets = await m.detect(image)
        except QueueFull as e:
            raise ServeError(503, f"busy: {e}; retry later", "queue_full",
                             {"Retry-After": str(_retry_after(m))}) from None
        dets = _select(dets, conf, wanted, max_detections)
        records = DetectionRecords(m.detector.class_names)
        records.add(dets, file_name, file_name, image.shape[1], image.shape[0])
        seconds = time.perf_counter() - t0
        metrics.latency.observe(seconds, model=name)
        doc = {**records.document(name, conf), "runtime": m.detector.runtime_name, "seconds": round(seconds, 6)}
        return JSONResponse(doc)

    @app.get("/v1/models", summary="the models served (the first is the default)")
    async def list_models() -> dict[str, Any]:
        return {"default": default, "models": [m.info() for m in served.values()]}

    @app.get("/healthz", summary="the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="models loaded and warmed up")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return _error(503, "starting: models warming up", {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "models": list(served)})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
    async def metrics_text() -> PlainTextResponse:
        for m in served.values():
            metrics.queue_depth.set(m.batcher.depth, model=m.name)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _static_response(static, "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:
            return _error(404, f"no static file {name!r}")
        return _static_response(static, name)

    return app


def _swagger_assets() -> dict[str, bytes] | None:
    """``swagger-ui-bundle.js`` and ``swagger-ui.css`` read from the installed ``swagger_ui_bundle`` package, or
    ``None`` when it is not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    try:
        return {n: (folder / n).read_bytes() for n in ("swagger-ui-bundle.js", "swagger-ui.css")}
    except OSError:
        return None


def _static_response(static: dict[str, bytes], name: str) -> Response:
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if name == "index.html":
        headers.update({"Content-Security-Policy": _PAGE_CSP, "X-Frame-Options": "DENY",
                        "Referrer-Policy": "no-referrer"})
    return Response(static[name], media_type=_STATIC[name], headers=headers)


def _path_label(path: str) -> str:
    """Metric label of a path: the known endpoints, else ``other`` (unbounded label values are not kept)."""
    known = ("/v1/detect", "/v1/models", "/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json")
    if path in known:
        return path
    return "/static" if path.startswith("/static/") else "other"


def _retry_after(m: ServedModel) -> int:
    """Seconds a refused client should wait: the queue's batches at the mean batch time, at least 1."""
    count = m.metrics.inference.count(model=m.name)
    entry = m.metrics.inference.samples.get((m.name,))
    mean = entry[1][0] / count if entry and count else 0.1
    return max(1, math.ceil(m.batcher.depth / m.settings.max_batch * mean))


def app_from_env() -> FastAPI:
    """The application of a worker process (``multibox serve --workers N``): settings from
    ``MULTIBOX_SERVE_SETTINGS`` (JSON) and the API key from ``MULTIBOX_API_KEY``; loads its own models."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start workers with `multibox serve --workers N`")
    settings = ServeSettings.from_json(text)
    settings.api_key = os.environ.get(API_KEY_ENV) or None
    return create_app(load_models(settings), settings)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 120.0,
                    **uvicorn_options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread of this process (tests, notebooks) and yield its base
    URL (``http://127.0.0.1:PORT``; ``port=0`` takes a free port) once it is ready; stops it on exit."""
    import uvicorn  # the optional extra, as for the whole package; imported here to keep module import light

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    options = {"log_level": "warning", "timeout_keep_alive": 5, **uvicorn_options}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="multibox-serve")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
