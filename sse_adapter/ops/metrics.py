"""Prometheus metrics, one set per app, correct across uvicorn workers.

With several workers, ``run_server`` points PROMETHEUS_MULTIPROC_DIR at a
fresh folder before they start: prometheus-client then keeps each worker's
values in files there, and ``/metrics`` sums them (multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics"]

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_DURATION = (0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        # A *_created series per counter and histogram only doubles the scrape: the
        # process start time says the same.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self._registry = CollectorRegistry()
        # In multiprocess mode the values live in files, read at scrape time.
        registry = None if self._multiprocess else self._registry
        self.requests = Counter(
            "sse_adapter_requests",
            "Requests by route, mode and status.",
            ["route", "mode", "status"],
            registry=registry,
        )
        self.active_streams = Gauge(
            "sse_adapter_active_streams", "Streams open now.", multiprocess_mode="livesum", registry=registry
        )
        self.heartbeats = Counter(
            "sse_adapter_heartbeats",
            "Heartbeats sent, by route and mode.",
            ["route", "mode"],
            registry=registry,
        )
        self.repairs = Counter(
            "sse_adapter_repairs",
            "Upstream quirks repaired, by route and kind.",
            ["route", "kind"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "sse_adapter_upstream_errors", "Errors reported to clients, by kind.", ["kind"], registry=registry
        )
        self.first_event = Histogram(
            "sse_adapter_time_to_first_event_seconds",
            "From the request to the upstream's first event.",
            buckets=_LATENCY,
            registry=registry,
        )
        self.stream_duration = Histogram(
            "sse_adapter_stream_duration_seconds",
            "How long streams last.",
            buckets=_DURATION,
            registry=registry,
        )
        self.streams_without_usage = Counter(
            "sse_adapter_streams_without_usage",
            "Streams that ended with no usage: the upstream sent none and its tokenizer could not count it.",
            registry=registry,
        )
        self.events = Counter("sse_adapter_events_relayed", "Events relayed to clients.", registry=registry)

    def render(self) -> bytes:
        if not self._multiprocess:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
