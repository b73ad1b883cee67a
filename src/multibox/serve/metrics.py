"""Prometheus text-format metrics of ``multibox serve`` (``GET /metrics``), kept in memory by one process.

Written by hand (the exposition format 0.0.4: ``# HELP``, ``# TYPE``, one ``name{labels} value`` line per
sample) so that the service needs no client library. Everything is updated from the event loop's thread or under
a lock, so a scrape sees consistent counts. With several worker processes (``--workers N``) each process has
its own numbers: a scrape reaches one of them (docs/serve.md).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "LATENCY_BUCKETS"]

# seconds: from a cached small image to an overloaded CPU
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + text + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.label_names)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the sample with these labels."""
        key = self._key(labels)
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        """The current value (0 when never counted)."""
        return self.values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self.values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    """A value that goes up and down (set or added to)."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        """Set the sample with these labels to ``value``."""
        key = self._key(labels)
        with self._lock:
            self.values[key] = float(value)


class Histogram(_Metric):
    """Cumulative buckets (``le``), ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self.samples: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Count ``value`` in every bucket whose upper bound ``le`` is >= it."""
        key = self._key(labels)
        with self._lock:
            counts, total = self.samples.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
            counts[-1] += 1  # +Inf
            total[0] += value

    def count(self, **labels: str) -> int:
        """How many values were observed with these labels."""
        entry = self.samples.get(self._key(labels))
        return 0 if entry is None else entry[0][-1]

    def lines(self) -> list[str]:
        out = self.header()
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self.samples.items())
        for key, (counts, total) in items:
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                labels = _labels((*self.label_names, "le"), (*key, _number(bound)))
                out.append(f"{self.name}_bucket{labels} {n}")
            base = _labels(self.label_names, key)
            out.append(f"{self.name}_sum{base} {_number(total)}")
            out.append(f"{self.name}_count{base} {counts[-1]}")
        return out


class Metrics:
    """The service's metrics; :meth:`render` is the body of ``GET /metrics``."""

    def __init__(self, max_batch: int = 8) -> None:
        self.requests = Counter("multibox_requests_total", "HTTP requests answered, by path and status code",
                                ("path", "code"))
        self.latency = Histogram("multibox_request_seconds", "time from request to answer of POST /v1/detect (200s)",
                                 LATENCY_BUCKETS, ("model",))
        self.batch_size = Histogram("multibox_batch_size", "images per forward pass of the micro-batcher",
                                    range(1, max(1, max_batch) + 1), ("model",))
        self.inference = Histogram("multibox_batch_seconds", "time of one batch (pre-processing, network, NMS)",
                                   LATENCY_BUCKETS, ("model",))
        self.rejections = Counter("multibox_rejections_total", "requests refused, by reason", ("reason",))
        self.queue_depth = Gauge("multibox_queue_depth", "requests waiting for a batch", ("model",))
        self.images = Counter("multibox_images_total", "images detected", ("model",))

    def render(self) -> str:
        """Everything in the Prometheus text exposition format (ends with a newline)."""
        lines: list[str] = []
        for m in (self.requests, self.latency, self.batch_size, self.inference, self.rejections, self.queue_depth,
                  self.images):
            lines += m.lines()
        return "\n".join(lines) + "\n"
