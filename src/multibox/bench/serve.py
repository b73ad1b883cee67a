"""``multibox bench serve``: load on ``multibox serve`` from another process, with and without micro-batching.

The service runs as ``python -m multibox serve`` in a subprocess on 127.0.0.1 (a free port); this process is the
client (stdlib ``http.client``, one keep-alive connection per thread) and sends real photos (matplotlib's Grace
Hopper portrait, cropped, scaled and flipped, as JPEG). Every phase is bounded in requests and in seconds:

1. **reference**: each photo once, one at a time, on the micro-batching service (``--max-batch``, ``--max-wait-ms``);
2. **batched** and **one_at_a_time**: ``--clients`` closed-loop clients send ``--requests`` requests to it and to a
   second service started with ``--max-batch 1``, alternating in ``--rounds`` rounds (other load on the machine hits
   both alike); throughput, p50 / p99 latency, the mean batch size (from ``/metrics``); each answer is compared
   with the photo's reference (same detections, boxes within 1e-4 px, scores within 1e-5): ``wrong`` counts those
   that differ, ``errors`` the failed requests;
3. **overload**: open-loop arrivals at ``--overload-factor`` (5) times the batched throughput for
   ``--overload-seconds``, against a queue of ``--max-queue`` requests: the share of 503 answers, how fast they
   come (p50 / p99) and the p99 latency of the answered ones (bounded by the queue, not growing);
   ``share_fast_503`` counts the 503s answered within 100 ms, over all answers;
4. **memory**: the service's resident memory (``VmRSS``) before and after ``--long-requests`` more requests.

The figures depend on the machine and on what else runs on it; docs/serve.md has one run.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..commands.options import add_quiet_option, check_output_file, positive_int, quiet_output, write_json_output

# Imports inside functions below are heavy (numpy, PIL, matplotlib): `multibox --help` imports this module (it
# registers `multibox bench serve`) and must stay fast.

__all__ = ["register", "run_serve_benchmark"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``multibox bench serve``."""
    p = subparsers.add_parser(
        "serve", help="load on multibox serve: throughput and latency with and without micro-batching, overload",
        description="Starts multibox serve on 127.0.0.1 in a subprocess and loads it from this process: "
                    "throughput and p50/p99 latency with micro-batching and with --max-batch 1 at --clients "
                    "concurrent clients, the share of fast 503s at 5x overload, memory before and after a long "
                    "run, and every answer checked against a one-at-a-time reference. See docs/serve.md.")
    p.add_argument("--model", default="face-res10-300", help="zoo name or detector file (default face-res10-300)")
    p.add_argument("--runtime", default="auto", help="the service's --runtime (default auto)")
    p.add_argument("--clients", type=positive_int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=positive_int, default=400, help="requests per load phase (default 400)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="the batched service's --max-batch (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="its --max-wait-ms (default 5)")
    p.add_argument("--max-queue", type=positive_int, default=16, help="its --max-queue (default 16)")
    p.add_argument("--overload-factor", type=float, default=5.0, help="offered load over throughput (default 5)")
    p.add_argument("--overload-seconds", type=float, default=15.0, help="length of the overload phase (default 15)")
    p.add_argument("--long-requests", type=positive_int, default=2000,
                   help="requests of the memory run (default 2000)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="alternating rounds of the batched and one-at-a-time loads (default 3)")
    p.add_argument("--time-limit", type=float, default=120.0, help="most seconds per phase (default 120)")
    p.add_argument("--json", metavar="FILE", help="write the results to this JSON file ('-': standard output)")
    add_quiet_option(p)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    if not 1.0 < args.overload_factor <= 50 or args.overload_seconds <= 0 or args.time_limit <= 0:
        raise ValueError("--overload-factor must be in (1, 50], --overload-seconds and --time-limit > 0")
    with quiet_output(args):
        result = run_serve_benchmark(model=args.model, runtime=args.runtime, clients=args.clients,
                                     requests=args.requests, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                     max_queue=args.max_queue, overload_factor=args.overload_factor,
                                     overload_seconds=args.overload_seconds, long_requests=args.long_requests,
                                     time_limit=args.time_limit, rounds=args.rounds)
    if args.json:
        write_json_output(args.json, result)
    return 0


# ------------------------------------------------------------------------------------------------- the service
class _Service:
    """``python -m multibox serve`` in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, model: str, runtime: str, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "multibox", "serve", "--model", model, "--runtime", runtime, "--port",
               str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue",
               str(max_queue), "-q"]
        self.log = io.BytesIO()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"multibox serve exited with {self.proc.returncode}: "
                                   f"{self.log.getvalue().decode(errors='replace')[-2000:]}")
            try:
                status, _, _ = _request(self.port, "GET", "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("multibox serve did not become ready in 300 s")
            time.sleep(0.2)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)

    def rss_mb(self) -> float:
        """Resident memory of the service process in MiB (``VmRSS``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def metric(self, name: str) -> float:
        """The sum of a metric's samples named exactly ``name`` (any labels)."""
        _, _, body = _request(self.port, "GET", "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rpartition(" ")[2])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_local = threading.local()


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on this thread's keep-alive connection (reconnecting once when the server closed it)."""
    for attempt in (0, 1):
        conn = getattr(_local, "conns", {}).get(port)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            _local.__dict__.setdefault("conns", {})[port] = conn
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                _local.conns.pop(port, None)
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        except (ConnectionError, http.client.HTTPException):
            conn.close()
            _local.conns.pop(port, None)
            if attempt:
                raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------- the load
def _photos() -> list[bytes]:
    """Real photos as JPEG: the demo's portrait whole, cropped, halved, mirrored, grey, and a wide crop."""
    from PIL import Image, ImageOps

    from ..demo import default_photo

    with Image.open(default_photo()) as im:
        im = im.convert("RGB")
    w, h = im.size
    variants = [im, im.crop((40, 60, w - 30, h - 80)), im.resize((w // 2, h // 2)), ImageOps.mirror(im),
                ImageOps.grayscale(im).convert("RGB"), im.crop((0, 100, w, 400))]
    out = []
    for v in variants:
        buf = io.BytesIO()
        v.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two answers with the same detections: labels, boxes within 1e-4 px, scores within 1e-5."""
    x, y = a["annotations"], b["annotations"]
    return len(x) == len(y) and all(
        p["category_id"] == q["category_id"] and abs(p["score"] - q["score"]) <= 1e-5
        and all(abs(u - v) <= 1e-4 for u, v in zip(p["bbox"], q["bbox"], strict=True))
        for p, q in zip(x, y, strict=True))


_QUERY = "/v1/detect?conf=0.3"
_FAST_S = 0.1  # a 503 within this is "fast" (share_fast_503)
_HEADERS = {"Content-Type": "image/jpeg"}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def _closed_loop(port: int, photos: list[bytes], refs: list[dict[str, Any]] | None, clients: int, requests: int,
                 time_limit: float) -> dict[str, Any]:
    """``clients`` threads each sending the next request as soon as its last one is answered."""
    lock = threading.Lock()
    counter = iter(range(requests))
    latencies: list[float] = []
    stats = {"ok": 0, "errors": 0, "wrong": 0, "status_503": 0}
    stop_at = time.monotonic() + time_limit

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            i = k % len(photos)
            t0 = time.perf_counter()
            try:
                status, _, body = _request(port, "POST", _QUERY, photos[i], _HEADERS)
            except OSError:
                with lock:
                    stats["errors"] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    stats["ok"] += 1
                    latencies.append(dt)
                    if refs is not None and not _same(json.loads(body), refs[i]):
                        stats["wrong"] += 1
                elif status == 503:
                    stats["status_503"] += 1
                else:
                    stats["errors"] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    seconds = time.perf_counter() - t0
    return _summary(clients, [(stats, seconds, latencies)])


def _summary(clients: int, rounds: list[tuple[dict[str, int], float, list[float]]]) -> dict[str, Any]:
    """Rounds of one closed-loop load pooled: counts and seconds added, latencies pooled."""
    stats = {k: sum(r[0][k] for r in rounds) for k in ("ok", "errors", "wrong", "status_503")}
    seconds = sum(r[1] for r in rounds)
    latencies = [x for r in rounds for x in r[2]]
    done = stats["ok"]
    return {"clients": clients, "requests": done + stats["errors"] + stats["status_503"], **stats,
            "rounds": len(rounds), "seconds": round(seconds, 3),
            "throughput_rps": round(done / seconds, 2) if seconds else None,
            "p50_ms": _ms(_percentile(latencies, 50)), "p99_ms": _ms(_percentile(latencies, 99)),
            "max_ms": _ms(max(latencies) if latencies else None), "_rounds": rounds}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _open_loop(port: int, photos: list[bytes], refs: list[dict[str, Any]], rate: float, seconds: float,
               time_limit: float) -> dict[str, Any]:
    """Requests started at ``rate`` per second for ``seconds`` whatever the answers (open loop)."""
    lock = threading.Lock()
    ok_lat: list[float] = []
    rej_lat: list[float] = []
    stats = {"ok": 0, "status_503": 0, "errors": 0, "wrong": 0, "retry_after_missing": 0}
    n = max(1, int(rate * seconds))

    def one(k: int) -> None:
        i = k % len(photos)
        t0 = time.perf_counter()
        try:
            status, headers, body = _request(port, "POST", _QUERY, photos[i], _HEADERS)
        except OSError:
            with lock:
                stats["errors"] += 1
            return
        dt = time.perf_counter() - t0
        with lock:
            if status == 200:
                stats["ok"] += 1
                ok_lat.append(dt)
                if not _same(json.loads(body), refs[i]):
                    stats["wrong"] += 1
            elif status == 503:
                stats["status_503"] += 1
                rej_lat.append(dt)
                if "retry-after" not in headers:
                    stats["retry_after_missing"] += 1
            else:
                stats["errors"] += 1

    start = time.perf_counter()
    stop_at = time.monotonic() + time_limit
    sent = 0
    with ThreadPoolExecutor(min(256, max(8, int(rate)))) as pool:
        for k in range(n):
            if time.monotonic() > stop_at:
                break
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, k)
            sent += 1
    elapsed = time.perf_counter() - start
    answered = stats["ok"] + stats["status_503"]
    return {"offered_rps": round(rate, 2), "sent": sent, "seconds": round(elapsed, 3), **stats,
            "share_503": round(stats["status_503"] / answered, 4) if answered else None,
            "share_fast_503": round(sum(x <= _FAST_S for x in rej_lat) / answered, 4) if answered else None,
            "fast_503_ms": _FAST_S * 1000,
            "p50_503_ms": _ms(_percentile(rej_lat, 50)), "p99_503_ms": _ms(_percentile(rej_lat, 99)),
            "p50_ok_ms": _ms(_percentile(ok_lat, 50)), "p99_ok_ms": _ms(_percentile(ok_lat, 99)),
            "max_ok_ms": _ms(max(ok_lat) if ok_lat else None),
            "answered_rps": round(stats["ok"] / elapsed, 2) if elapsed else None}


def run_serve_benchmark(model: str = "face-res10-300", runtime: str = "auto", clients: int = 8, requests: int = 400,
                        max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 16,
                        overload_factor: float = 5.0, overload_seconds: float = 15.0, long_requests: int = 2000,
                        time_limit: float = 120.0, rounds: int = 3) -> dict[str, Any]:
    """Run the phases of the module docstring; returns the results (also printed).

    Both services run side by side (the idle one waits on its socket) and the batched and one-at-a-time loads
    alternate in ``rounds`` rounds of ``requests / rounds`` requests, so that other load on the machine hits
    both alike; throughput is the answered requests over the summed seconds, latencies are pooled."""
    photos = _photos()
    result: dict[str, Any] = {
        "model": model, "runtime": runtime, "photos": len(photos),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": list(os.getloadavg())},
    }
    service = _Service(model, runtime, max_batch, max_wait_ms, max_queue)
    single = None
    try:
        single = _Service(model, runtime, 1, 0.0, max_queue)
        refs = []
        for data in photos:
            status, _, body = _request(service.port, "POST", _QUERY, data, _HEADERS)
            if status != 200:
                raise RuntimeError(f"the reference request failed with {status}: {body[:300]!r}")
            refs.append(json.loads(body))
        result["detections_per_photo"] = [len(r["annotations"]) for r in refs]
        result["runtime_used"] = refs[0]["runtime"]
        print(f"services ready (max batch {max_batch} and 1, {refs[0]['runtime']}); {len(photos)} photos, "
              f"detections {result['detections_per_photo']}")
        rounds = max(1, min(rounds, requests))
        per_round = [requests // rounds + (1 if k < requests % rounds else 0) for k in range(rounds)]
        n0, s0 = service.metric("multibox_batch_size_count"), service.metric("multibox_batch_size_sum")
        got: dict[str, list] = {"batched": [], "one_at_a_time": []}
        for n in per_round:
            for name, svc in (("batched", service), ("one_at_a_time", single)):
                got[name] += _closed_loop(svc.port, photos, refs, clients, n, time_limit / rounds)["_rounds"]
        n1, s1 = service.metric("multibox_batch_size_count"), service.metric("multibox_batch_size_sum")
        batched = _summary(clients, got["batched"])
        one = _summary(clients, got["one_at_a_time"])
        batched.update(max_batch=max_batch, max_wait_ms=max_wait_ms,
                       mean_batch_size=round((s1 - s0) / (n1 - n0), 3) if n1 > n0 else None)
        one.update(max_batch=1, max_wait_ms=0.0)
        result["batched"], result["one_at_a_time"] = batched, one
        for name, r in (("batched", batched), ("max batch 1", one)):
            extra = f", mean batch {r['mean_batch_size']}" if "mean_batch_size" in r else ""
            print(f"{name + ':':14} {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms{extra} "
                  f"({r['wrong']} wrong, {r['errors']} errors)")
        if batched["throughput_rps"] and one["throughput_rps"]:
            result["throughput_gain"] = round(batched["throughput_rps"] / one["throughput_rps"], 3)
            print(f"micro-batching: {result['throughput_gain']}x the throughput of one at a time")
        single.stop()
        single = None

        rate = overload_factor * (batched["throughput_rps"] or 1.0)
        over = _open_loop(service.port, photos, refs, rate, overload_seconds, time_limit)
        over.update(factor=overload_factor, max_queue=max_queue)
        result["overload"] = over
        print(f"overload x{overload_factor:g} ({over['offered_rps']} req/s offered): 503 share {over['share_503']} "
              f"({over['share_fast_503']} within {over['fast_503_ms']:g} ms), "
              f"503 p50 {over['p50_503_ms']} ms, p99 {over['p99_503_ms']} ms; answered p99 {over['p99_ok_ms']} ms "
              f"(max {over['max_ok_ms']}), {over['wrong']} wrong, {over['errors']} errors")

        time.sleep(1.0)
        before = service.rss_mb()
        long = _closed_loop(service.port, photos, refs, clients, long_requests, time_limit * 4)
        after = service.rss_mb()
        result["memory"] = {"requests": long["requests"], "ok": long["ok"], "wrong": long["wrong"],
                            "errors": long["errors"], "rss_before_mb": round(before, 1),
                            "rss_after_mb": round(after, 1), "growth_mb": round(after - before, 1),
                            "throughput_rps": long["throughput_rps"]}
        print(f"memory: {before:.1f} MiB -> {after:.1f} MiB after {long['requests']} requests "
              f"({long['wrong']} wrong, {long['errors']} errors)")
    finally:
        service.stop()
        if single is not None:
            single.stop()
    for r in (result["batched"], result["one_at_a_time"]):
        r.pop("_rounds", None)
    result["lost_or_wrong"] = sum(r.get("errors", 0) + r.get("wrong", 0) for r in
                                  (result["batched"], result["overload"], result["one_at_a_time"], result["memory"]))
    return result
