"""``multibox serve``: records equal to ``multibox detect``'s, micro-batched results equal to one-by-one results,
every hard limit with its status code (the service answering after each), metrics, the API key, the CLI.

The services run under uvicorn in a thread on a free 127.0.0.1 port, on a tiny random SSD7 bundle (fast)."""

import io
import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[dev]'")
httpx = pytest.importorskip("httpx")

from multibox.cli import main  # noqa: E402
from multibox.detector import Detector  # noqa: E402
from multibox.interop.bundle import DetectorBundle, save_bundle  # noqa: E402
from multibox.models import build_model  # noqa: E402
from multibox.serve.app import ServeSettings, create_app, serve_in_thread  # noqa: E402
from multibox.serve.batcher import MicroBatcher, QueueFull  # noqa: E402
from multibox.serve.metrics import Histogram, Metrics  # noqa: E402

NAMES = ["background", "cat", "dog"]


def _bundle() -> DetectorBundle:
    torch.manual_seed(0)
    model = build_model("ssd7", num_classes=3, class_names=NAMES, image_size=(64, 64)).eval()
    with torch.no_grad():  # box offsets of the size a trained model predicts (random ones blow up through exp)
        for p in model.head.regression.parameters():
            p.mul_(0.1)
    return DetectorBundle(model=model, priors=model.priors, input_spec=model.input_spec, class_names=NAMES,
                          builder="multibox", spec={"name": "ssd7", "kwargs": {"image_size": [64, 64]},
                                                    "num_classes": 3, "class_names": NAMES},
                          postprocess={"keep_top_k": 40}, source={"importer": "test"})


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    save_bundle(_bundle(), path)
    return path


def _app(bundle_file, **kw):
    settings = ServeSettings(models=[str(bundle_file)], runtime="eager", **kw)
    det = Detector.from_file(bundle_file, runtime="eager", batch_size=settings.max_batch)
    return create_app([("tiny", det)], settings)


def _png(seed: int, size=(96, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(bundle_file):
    app = _app(bundle_file, max_batch=4, max_wait_ms=30, max_body_bytes=300_000, max_pixels=1_000_000,
               read_timeout_s=0.6, upload_timeout_s=5)
    with serve_in_thread(app) as url:
        yield url, app


def _detect(url, data, query="", ctype="image/png", **kw):
    return httpx.post(f"{url}/v1/detect{query}", content=data, headers={"content-type": ctype}, timeout=30, **kw)


def _assert_alive(url):
    r = _detect(url, _png(99))
    assert r.status_code == 200, r.text


def _same(a, b):
    """Two answers' annotations equal: same labels, boxes within 1e-4 px, scores within 1e-5."""
    assert len(a["annotations"]) == len(b["annotations"])
    for x, y in zip(a["annotations"], b["annotations"], strict=True):
        assert x["category_id"] == y["category_id"]
        assert np.allclose(x["bbox"], y["bbox"], atol=1e-4, rtol=0), (x, y)
        assert abs(x["score"] - y["score"]) <= 1e-5


# ------------------------------------------------------------------------------------------------- answers
def test_records_equal_multibox_detect(service, bundle_file, tmp_path):
    url, _ = service
    img = tmp_path / "a.png"
    img.write_bytes(_png(1))
    assert main(["detect", str(img), "--model", str(bundle_file), "--runtime", "eager", "--conf", "0.05",
                 "--out", str(tmp_path / "o"), "--no-draw", "-q"]) == 0
    ref = json.loads((tmp_path / "o" / "detections.json").read_text())
    r = httpx.post(f"{url}/v1/detect?conf=0.05&max_detections=10000", files={"image": ("a.png", img.read_bytes())})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert len(ref["annotations"]) > 3  # a random model finds plenty: the comparison means something
    _same(doc, ref)
    assert doc["categories"] == ref["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert doc["images"] == [{"id": 1, "file_name": "a.png", "source": "a.png", "width": 96, "height": 80}]
    assert set(doc["annotations"][0]) == set(ref["annotations"][0])
    assert doc["model"] == "tiny" and doc["conf"] == 0.05 and doc["runtime"] == "eager"
    # the raw body gives the same; conf filters; classes and max_detections select
    raw = _detect(url, img.read_bytes(), "?conf=0.05&max_detections=10000").json()
    _same(raw, doc)
    scores = [a["score"] for a in doc["annotations"]]
    high = _detect(url, img.read_bytes(), "?conf=0.4&max_detections=10000").json()
    assert len(high["annotations"]) == sum(s >= 0.4 for s in scores)
    dogs = _detect(url, img.read_bytes(), "?conf=0.05&classes=dog&max_detections=10000").json()
    assert {a["category_name"] for a in dogs["annotations"]} <= {"dog"}
    assert len(dogs["annotations"]) == sum(a["category_id"] == 2 for a in doc["annotations"])
    assert len(_detect(url, img.read_bytes(), "?conf=0.05&classes=2,cat&max_detections=10000")
               .json()["annotations"]) == len(doc["annotations"])
    top2 = _detect(url, img.read_bytes(), "?conf=0.05&max_detections=2").json()["annotations"]
    assert sorted(a["score"] for a in top2) == sorted(scores)[-2:]


def test_batched_results_equal_one_by_one(service):
    url, app = service
    images = [_png(10 + i, (60 + 17 * i, 50 + 11 * i)) for i in range(6)]
    query = "?conf=0.05&max_detections=10000"
    hist = app.state.metrics.batch_size
    alone = []
    for data in images:
        alone.append(_detect(url, data, query).json())
    before = {b: hist.samples[("tiny",)][0][b - 1] for b in range(1, 5)}  # cumulative counts by bound
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda d: _detect(url, d, query), images * 2))
    after = {b: hist.samples[("tiny",)][0][b - 1] for b in range(1, 5)}
    assert after[4] - after[1] > before[4] - before[1], "no batch of more than one image was formed"
    for k, r in enumerate(together):
        assert r.status_code == 200
        _same(r.json(), alone[k % len(images)])


# ------------------------------------------------------------------------------------------------- limits
def _raw_request(url, head: bytes, body: bytes = b"", wait_s: float = 10.0) -> tuple[bytes, float]:
    """Send a request by hand; return what the server answered (until it closed) and how long that took."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(head + body)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
    return out, time.perf_counter() - t0


def test_body_over_the_limit_is_413_without_reading_it(service):
    url, _ = service
    head = (b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n")
    out, seconds = _raw_request(url, head, b"\x89PNG" + b"0" * 1000)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    assert b"exceeds the limit of 300000 bytes" in out and seconds < 5
    # chunked (no Content-Length): counted while streaming
    sent = []

    def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"0" * 10_000

    r = httpx.post(f"{url}/v1/detect", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit of 300000 bytes" in r.json()["error"]
    _assert_alive(url)


@pytest.mark.parametrize(("data", "ctype", "status", "words"), [
    (b"hello world", "text/plain", 415, "not an image"),
    (b"hello world", "image/png", 415, "not in a known image format"),
    (b"", "image/png", 415, "empty image"),
    ("truncated", "image/png", 400, "cannot decode image"),
    (b"{}", "application/json", 415, "not an image"),
])
def test_not_an_image_or_corrupt(service, data, ctype, status, words):
    url, _ = service
    if data == "truncated":
        data = _png(3)[:300]
    r = _detect(url, data, ctype=ctype)
    assert r.status_code == status and words in r.json()["error"] and r.json()["status"] == status
    _assert_alive(url)


def test_multipart_without_a_file_is_400(service):
    url, _ = service
    r = httpx.post(f"{url}/v1/detect", data={"note": "x"}, files={"other": ("", b"")})
    assert r.status_code in (400, 415)
    r = httpx.post(f"{url}/v1/detect", data={"note": "x"}, headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "boundary" in r.json()["error"]
    _assert_alive(url)


def test_pixel_bomb_is_413_before_decoding(service):
    url, _ = service
    buf = io.BytesIO()
    Image.new("1", (4000, 3000)).save(buf, format="PNG")  # 12 Mpx in a few kB; the limit is 1 Mpx
    assert len(buf.getvalue()) < 300_000
    r = _detect(url, buf.getvalue())
    assert r.status_code == 413 and "4000x3000 pixels exceeds the limit of 1000000" in r.json()["error"]
    _assert_alive(url)


def test_stalled_upload_is_closed(service):
    url, _ = service
    head = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
    out, seconds = _raw_request(url, head, b"\x89PNG\r\n" + b"0" * 100)
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert b"upload stalled" in out and 0.5 < seconds < 5
    _assert_alive(url)


@pytest.mark.parametrize(("query", "words"), [
    ("?conf=abc", "conf"), ("?conf=-0.1", "conf"), ("?conf=1.5", "conf"), ("?conf=nan", "conf"),
    ("?conf=0.01", "below this service's min_conf"), ("?max_detections=0", "max_detections"),
    ("?max_detections=x", "max_detections"), ("?classes=horse", "'horse' is not a class of tiny"),
    ("?classes=0", "'0' is not a class"), ("?model=other", "'other' is not served here"),
])
def test_bad_query_values_are_422(service, query, words):
    url, app = service
    before = app.state.metrics.rejections.get(reason="bad_query")
    r = _detect(url, _png(5), query)
    assert r.status_code == 422 and words in r.json()["error"], r.text
    assert app.state.metrics.rejections.get(reason="bad_query") == before + 1
    _assert_alive(url)


def test_queue_full_is_503_at_once(bundle_file):
    app = _app(bundle_file, max_batch=1, max_wait_ms=0, max_queue=1)
    model = app.state.models["tiny"]
    gate = threading.Event()
    run = model.batcher.run_batch

    def held(items):
        gate.wait(20)
        return run(items)

    model.batcher.run_batch = held
    with serve_in_thread(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(_detect, url, _png(1))  # runs (held)
        deadline = time.monotonic() + 10
        while model.batcher.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = pool.submit(_detect, url, _png(2))  # waits in the queue
        while model.batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        third = _detect(url, _png(3))
        # answered at once: while the first request is still held, not after the queue moved (no timing: the
        # machine may be loaded)
        assert third.status_code == 503 and not first.done() and not second.done()
        assert int(third.headers["retry-after"]) >= 1 and "busy" in third.json()["error"]
        gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        _assert_alive(url)
        text = httpx.get(f"{url}/metrics").text
        assert 'multibox_rejections_total{reason="queue_full"} 1' in text


def test_api_key(bundle_file):
    app = _app(bundle_file, api_key="s3cret-key")
    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert _detect(url, _png(1)).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"x-api-key": "wrong-key!"}).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"x-api-key": "s3cret-key"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/").status_code == 200


# ------------------------------------------------------------------------------------------------- endpoints
def test_models_health_docs_page(service):
    url, _ = service
    info = httpx.get(f"{url}/v1/models").json()
    assert info == {"default": "tiny", "models": [{"name": "tiny", "classes": ["cat", "dog"], "input_size": [64, 64],
                                                   "channel_order": "RGB", "runtime": "eager", "min_conf": 0.05,
                                                   "max_batch": 4}]}
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "models": ["tiny"]}
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "https://" not in docs.text and "http://" not in docs.text  # nothing from the internet
    js = httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000 and "javascript" in js.headers["content-type"]
    assert httpx.get(f"{url}/docs-assets/secret.txt").status_code == 404
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/detect" in spec["paths"] and "multipart/form-data" in json.dumps(spec["paths"]["/v1/detect"])
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="conf"' in page.text and "http" not in page.text.split("<body>")[0].replace('http-equiv', '')
    for name in ("app.js", "style.css"):
        r = httpx.get(f"{url}/static/{name}")
        assert r.status_code == 200 and "https://" not in r.text  # nothing from the internet
    assert httpx.get(f"{url}/static/..%2Fapp.py").status_code == 404


def _metric_samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_text(service):
    url, _ = service
    _assert_alive(url)
    _detect(url, b"nope", ctype="text/plain")
    text = httpx.get(f"{url}/metrics").text
    for name in ("multibox_requests_total", "multibox_request_seconds", "multibox_batch_size",
                 "multibox_rejections_total", "multibox_queue_depth"):
        assert f"# TYPE {name} " in text
    s = _metric_samples(text)
    assert s['multibox_requests_total{path="/v1/detect",code="200"}'] >= 1
    assert s['multibox_rejections_total{reason="not_an_image"}'] >= 1
    buckets = [v for k, v in s.items() if k.startswith('multibox_request_seconds_bucket{model="tiny"')]
    assert buckets == sorted(buckets) and buckets[-1] == s['multibox_request_seconds_count{model="tiny"}']


def test_histogram_and_label_escaping():
    h = Histogram("x_seconds", "help", (0.1, 1.0), ("model",))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v, model='a"b')
    lines = h.lines()
    assert 'x_seconds_bucket{model="a\\"b",le="0.1"} 1' in lines
    assert 'x_seconds_bucket{model="a\\"b",le="1"} 3' in lines
    assert 'x_seconds_bucket{model="a\\"b",le="+Inf"} 4' in lines
    assert 'x_seconds_sum{model="a\\"b"} 4.05' in lines
    assert Metrics().render().endswith("\n")


# ------------------------------------------------------------------------------------------------- batcher
def test_batcher_gathers_up_to_max_batch():
    import asyncio

    seen = []

    def run(items):
        seen.append(list(items))
        return [i * 10 for i in items]

    async def go(max_batch, max_wait, n):
        b = MicroBatcher(run, max_batch=max_batch, max_wait_s=max_wait, max_queue=100)
        b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(n)))
        await b.stop()
        return out

    assert asyncio.run(go(4, 0.2, 6)) == [0, 10, 20, 30, 40, 50]
    assert [len(s) for s in seen] == [4, 2]
    seen.clear()
    assert asyncio.run(go(1, 0.2, 3)) == [0, 10, 20]
    assert [len(s) for s in seen] == [1, 1, 1]

    async def full():
        b = MicroBatcher(lambda items: [time.sleep(0.3) or i for i in items], max_batch=1, max_wait_s=0, max_queue=1)
        b.start()
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)  # taken by the worker
        second = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(3)
        assert await first == 1 and await second == 2
        await b.stop()

    asyncio.run(full())


def test_batcher_failure_fails_only_its_batch():
    import asyncio

    def run(items):
        if -1 in items:
            raise ValueError("bad item")
        return items

    async def go():
        b = MicroBatcher(run, max_batch=1, max_wait_s=0, max_queue=10)
        b.start()
        with pytest.raises(ValueError, match="bad item"):
            await b.submit(-1)
        assert await b.submit(5) == 5
        await b.stop()

    asyncio.run(go())


# ------------------------------------------------------------------------------------------------- command line
def test_cli_help_and_errors(capsys, bundle_file, monkeypatch):
    monkeypatch.delenv("MULTIBOX_API_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--max-wait-ms" in capsys.readouterr().out
    for argv, words in [
        (["--host", "0.0.0.0"], "give --api-key"),
        (["--model", "no-such-model"], "neither a detector file nor a zoo model"),
        (["--model", "x/y.safetensors"], "no such detector file"),
        (["--api-key", "short"], "at least 8"),
        (["--model", str(bundle_file), "--model", str(bundle_file), "--runtime", "eager"], "names must differ"),
        (["--model", str(bundle_file), "--runtime", "warp"], "warp"),
    ]:
        assert main(["serve", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("multibox serve: error: ") and words in err, (argv, err)
    for argv in (["--max-batch", "0"], ["--port", "70000"], ["--max-wait-ms", "-1"], ["--min-conf", "2"]):
        with pytest.raises(SystemExit) as e:
            main(["serve", *argv])
        assert e.value.code == 2 and "multibox serve: error:" in capsys.readouterr().err
    assert not math.isnan(0.0)


def test_cli_serves(bundle_file, monkeypatch):
    """``multibox serve`` itself, with uvicorn.run replaced to drive the app it built in a thread."""
    import uvicorn

    seen = {}

    def fake_run(app, host, port, **kw):
        seen.update(host=host, port=port)
        with serve_in_thread(app) as url:
            seen["models"] = httpx.get(f"{url}/v1/models").json()
            seen["detect"] = _detect(url, _png(1)).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--model", str(bundle_file), "--runtime", "eager", "--max-batch", "2", "-q"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000 and seen["detect"] == 200
    info = seen["models"]["models"][0]
    assert info["name"] == Path(bundle_file).stem and info["max_batch"] == 2


def test_bench_serve_json_shape(bundle_file, tmp_path, capsys):
    """``multibox bench serve`` with tiny counts: the JSON contract and its bookkeeping (figures not judged)."""
    out = tmp_path / "bench.json"
    assert main(["bench", "serve", "--model", str(bundle_file), "--runtime", "eager", "--clients", "2",
                 "--requests", "6", "--long-requests", "6", "--overload-seconds", "0.5", "--max-queue", "2",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["photos"] == 6 and r["runtime_used"] == "eager" and r["lost_or_wrong"] == 0
    for phase in ("batched", "one_at_a_time"):
        p = r[phase]
        assert p["requests"] == 6 == p["ok"] + p["errors"] + p["status_503"] and p["wrong"] == 0
        assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] and p["throughput_rps"] > 0
    assert r["one_at_a_time"]["max_batch"] == 1 and 1 <= r["batched"]["mean_batch_size"] <= 8
    assert abs(r["throughput_gain"] - r["batched"]["throughput_rps"] / r["one_at_a_time"]["throughput_rps"]) < 0.01
    o = r["overload"]
    assert o["sent"] == o["ok"] + o["status_503"] + o["errors"] and o["wrong"] == 0 and o["errors"] == 0
    assert abs(o["offered_rps"] - 5 * r["batched"]["throughput_rps"]) < 0.05
    assert 0 <= o["share_fast_503"] <= o["share_503"] <= 1
    m = r["memory"]
    assert m["requests"] == 6 and abs(m["growth_mb"] - (m["rss_after_mb"] - m["rss_before_mb"])) < 0.11
    assert "micro-batching:" in capsys.readouterr().out


def test_worker_processes_build_their_app_from_the_environment(bundle_file, monkeypatch):
    """``--workers N``: each uvicorn worker builds the app from MULTIBOX_SERVE_SETTINGS and MULTIBOX_API_KEY."""
    from multibox.serve.app import API_KEY_ENV, SETTINGS_ENV, app_from_env

    settings = ServeSettings(models=[str(bundle_file)], runtime="eager", max_batch=3, api_key="not-in-the-json")
    assert "not-in-the-json" not in settings.to_json()
    monkeypatch.setenv(SETTINGS_ENV, settings.to_json())
    monkeypatch.setenv(API_KEY_ENV, "worker-key-123")
    app = app_from_env()
    assert app.state.settings.max_batch == 3 and app.state.settings.api_key == "worker-key-123"
    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        r = httpx.post(f"{url}/v1/detect", content=_png(1), headers={"x-api-key": "worker-key-123"})
        assert r.status_code == 200 and r.json()["model"] == "tiny"
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(RuntimeError, match="MULTIBOX_SERVE_SETTINGS is not set"):
        app_from_env()


def test_client_that_leaves_mid_upload_does_not_break_the_service(service):
    url, app = service
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                  + b"\x89PNG" + b"0" * 100)
    deadline = time.monotonic() + 5
    while app.state.metrics.rejections.get(reason="client_disconnect") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.metrics.rejections.get(reason="client_disconnect") == 1
    _assert_alive(url)
