"""What each request did, recorded once it is over: one access log line and its metrics.

The routes and the relay fill a :class:`RequestStats` as they go (found at
``request.state.stats``); this middleware, outermost, writes it out when the
response has ended, streams included. No prompt text and no key is logged.

It also leaves the server's own ``send`` in the scope under :data:`WIRE`. A
stream sends its status line through every middleware, then writes its
frames there: one event passing five ``send`` wrappers, each a coroutine,
cost more than decoding it. Nothing between may therefore change a response
body; the relay records the frames for ``--trace-dir`` itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sse_adapter.ops.logs import logfmt
from sse_adapter.ops.metrics import Metrics
from sse_adapter.ops.trace import Trace

__all__ = ["WIRE", "Observe", "RequestStats", "request_id"]

WIRE = "sse_adapter.wire"

log = logging.getLogger("sse_adapter.access")


@dataclass
class RequestStats:
    started: float
    route: str
    mode: str = "-"  # stream or nonstream, once the route knows
    model: str = ""
    upstream_status: int | None = None
    outcome: str = "ok"  # else the error code the client was given
    first_event: float | None = None  # seconds from the request to the upstream's first event
    events: int = 0
    heartbeats: int = 0
    heartbeat_mode: str = ""
    repairs: Counter[str] = field(default_factory=Counter)
    without_usage: bool = False  # a stream that ended with no usage, none could be counted
    usage: dict[str, Any] | None = None  # the usage a stream ended with (chat's names), sent or not
    trace: Trace | None = None  # with --trace-dir

    @property
    def tap(self) -> Callable[[bytes], None] | None:
        return self.trace.from_upstream if self.trace is not None else None

    def answered(self, status: int, headers: list[tuple[str, str]]) -> None:
        """The upstream's status line and headers have come."""
        self.upstream_status = status
        if self.trace is not None:
            self.trace.upstream_headers = headers


_ROUTES = {
    "/v1/chat/completions": "chat_completions",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}


def request_id(scope: Scope) -> str:
    """The request's id, as the guard set it: what ties a log line to an access line."""
    found = next((value for name, value in scope.get("headers", ()) if name == b"x-request-id"), b"-")
    return found.decode("latin-1")


def _route(path: str) -> str:
    """A fixed set, so that no client can add a label, a series, to /metrics."""
    return _ROUTES.get(path) or ("passthrough" if path.startswith("/v1/") else "other")


class Observe:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, trace_dir: str | None = None, trace_bodies: bool = False
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.trace_dir = Path(trace_dir) if trace_dir else None
        self.trace_bodies = trace_bodies
        self._trace_failed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        stats = RequestStats(loop.time(), _route(scope["path"]))
        if self.trace_dir is not None:
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
            stats.trace = Trace(self.trace_dir, self.trace_bodies, scope["method"], scope["path"], headers)
        scope.setdefault("state", {})["stats"] = stats
        scope[WIRE] = send
        status, request_id = 500, "-"

        async def recording(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = dict(message.get("headers", [])).get(b"x-request-id", b"-").decode("latin-1")
            elif message["type"] == "http.response.body" and stats.trace is not None:
                stats.trace.to_client(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            self._record(stats, status, request_id, loop.time() - stats.started)
            if stats.trace is not None:
                stats.trace.outcome = stats.outcome
                await self._save(stats.trace, request_id, status, stats.upstream_status)

    async def _save(self, trace: Trace, request_id: str, status: int, upstream_status: int | None) -> None:
        """Tracing never fails a request: a trace that cannot be written is
        logged, the first time as a warning."""
        try:
            await trace.save(request_id, status, upstream_status)
        except OSError as error:
            level = logging.DEBUG if self._trace_failed else logging.WARNING
            self._trace_failed = True
            log.log(level, "could not write the trace of %s to %s: %s", request_id, trace.folder, error)

    def _record(self, stats: RequestStats, status: int, request_id: str, duration: float) -> None:
        metrics = self.metrics
        metrics.requests.labels(stats.route, stats.mode, str(status)).inc()
        metrics.events.inc(stats.events)
        if stats.heartbeats:
            metrics.heartbeats.labels(stats.route, stats.heartbeat_mode).inc(stats.heartbeats)
        for kind, count in stats.repairs.items():
            metrics.repairs.labels(stats.route, kind).inc(count)
        if stats.without_usage:
            metrics.streams_without_usage.inc()
        if stats.outcome != "ok":
            metrics.upstream_errors.labels(stats.outcome).inc()
        if stats.first_event is not None:
            metrics.first_event.observe(stats.first_event)
        if stats.mode == "stream":
            metrics.stream_duration.observe(duration)
        fields = {
            "request_id": request_id,
            "route": stats.route,
            "stream": stats.mode == "stream",
            "model": stats.model,
            "status": status,
            "upstream_status": stats.upstream_status,
            "outcome": stats.outcome,
            "ttft_ms": None if stats.first_event is None else round(stats.first_event * 1000, 1),
            "events": stats.events,
            "heartbeats": stats.heartbeats,
            "repairs": dict(stats.repairs),
            "duration_ms": round(duration * 1000, 1),
            **_usage_fields(stats),
        }
        text = " ".join(f"{name}={logfmt(value)}" for name, value in fields.items() if name != "repairs")
        repairs = ",".join(f"{kind}:{count}" for kind, count in stats.repairs.items()) or "-"
        failed = status >= 500 or (stats.upstream_status or 0) >= 500  # an operator should look
        log.log(
            logging.WARNING if failed else logging.INFO,
            "%s repairs=%s",
            text,
            repairs,
            extra={"fields": fields},
        )


def _usage_fields(stats: RequestStats) -> dict[str, Any]:
    """A stream's token counts, for reconciling with what a gateway billed: the server's
    (``usage_from=server``) or the adapter's (``counted``); none when it ended without."""
    usage = stats.usage
    if usage is None:
        return {}
    counted = "counted" if stats.repairs["usage_counted"] else "server"
    names = ("prompt_tokens", "completion_tokens")
    return {**{name: usage.get(name) for name in names}, "usage_from": counted}
