"""The web layer: routes that wire upstream -> relay -> client, and nothing more."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from sse_adapter.errors import (
    AdapterError,
    InternalError,
    RequestTimeout,
    RequestTooLarge,
    ShuttingDown,
    TooManyStreams,
)
from sse_adapter.ops.metrics import Metrics
from sse_adapter.ops.observe import Observe, RequestStats, request_id
from sse_adapter.proxy.budget import ByteBudget
from sse_adapter.proxy.guard import Guard
from sse_adapter.proxy.health import Readiness
from sse_adapter.proxy.models import with_aliases
from sse_adapter.proxy.nonstream import complete, keepalive_body
from sse_adapter.proxy.relay import EventStream
from sse_adapter.proxy.resend import Exchange, Refused
from sse_adapter.proxy.templates import ThinkOpening
from sse_adapter.proxy.tokens import TokenCounter
from sse_adapter.proxy.upstream import (
    Upstream,
    UpstreamRequest,
    forwardable,
    is_messages_path,
    upstream_path,
)
from sse_adapter.repair import messages, responses
from sse_adapter.repair.chunks import Kind, StreamIdentity, heartbeat_chunk
from sse_adapter.repair.format import Format, StreamFormat
from sse_adapter.repair.messages import PING, MessagesRepairer
from sse_adapter.repair.pipeline import Pipeline
from sse_adapter.repair.request import Outgoing, prepare
from sse_adapter.repair.responses import ResponseIds, ResponsesRepairer
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.repair.turns import Turns
from sse_adapter.settings import (
    HeartbeatMode,
    MessagesHeartbeat,
    ResponsesHeartbeat,
    Settings,
    StreamUsage,
    Tags,
)
from sse_adapter.sse.encoder import comment, frame

__all__ = ["create_app"]

log = logging.getLogger("sse_adapter")

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_OWN_HEADERS = frozenset({"date", "server"})  # uvicorn writes its own
_RETRY_AFTER = "1"  # seconds: streams end all the time


def create_app(settings: Settings) -> FastAPI:
    gateway = _Gateway(settings)
    app = _App(
        title="sse-adapter",
        lifespan=gateway.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # a redirect would echo the client's Host header back to it
    )
    app.add_api_route("/healthz", gateway.healthz, methods=["GET"])
    app.add_api_route("/readyz", gateway.readyz, methods=["GET"])
    app.add_api_route("/metrics", gateway.metrics_page, methods=["GET"])
    app.add_api_route("/v1/chat/completions", gateway.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", gateway.completions, methods=["POST"])
    app.add_api_route("/v1/responses", gateway.responses, methods=["POST"])
    app.add_api_route("/v1/messages", gateway.messages, methods=["POST"])
    app.add_api_route("/v1/{path:path}", gateway.passthrough, methods=_METHODS)
    app.add_exception_handler(AdapterError, _adapter_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(
        Guard,
        api_keys=settings.api_keys,
        max_header_count=settings.max_header_count,
        max_header_bytes=settings.max_header_bytes,
    )
    app.state.gateway = gateway
    app.observer = partial(
        Observe, metrics=gateway.metrics, trace_dir=settings.trace_dir, trace_bodies=settings.trace_bodies
    )
    return app


class _App(FastAPI):
    """FastAPI with the access observer outside even FastAPI's own error
    middleware: it sees every answer, a 401 or a 500 too, and it hands the
    server's own ``send`` on to the relay (see ops/observe.py)."""

    observer: Callable[[ASGIApp], ASGIApp] = staticmethod(lambda app: app)

    def build_middleware_stack(self) -> ASGIApp:
        return self.observer(super().build_middleware_stack())


class _Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.streams = 0  # active streaming requests, for --max-concurrent-streams
        self.aliases = {alias.name: alias for alias in settings.models}
        self.refused = Refused()
        self.response_ids = ResponseIds()
        self._plain_settings = replace(settings, nonstream_via_stream=False)
        self._ask_usage = settings.stream_usage.asks
        self._keep_client = settings.stream_usage is StreamUsage.ASK_KEEP_CLIENT
        self._sends_usage: set[str] = set()  # routes whose streams carried usage: nothing kept to count
        self._placeholders: set[str] = set()  # routes whose placeholder usage has been logged
        self._upstream: Upstream | None = None
        self._readiness: Readiness | None = None
        self._counter: TokenCounter | None = None
        self._think_opening: ThinkOpening | None = None
        self._counting = ByteBudget(settings.max_request_bytes)  # what all counts hold at once

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        async with Upstream(self.settings) as upstream:
            self._upstream = upstream
            self._readiness = Readiness(upstream)
            self._counter = TokenCounter(upstream)
            self._think_opening = ThinkOpening(upstream)
            # said once, without holding up the start: a model server may take minutes to load
            announcing = asyncio.ensure_future(self._announce())
            yield
            announcing.cancel()
            self._upstream = None

    async def _announce(self) -> None:
        assert self._readiness is not None
        url = self.upstream.base_url
        reason = await self._readiness.reason_not_ready()
        if reason is None:
            log.info("sse-adapter relays to %s, which answers", url)
        else:
            detail = f" ({self._readiness.detail})" if self._readiness.detail else ""
            log.warning("sse-adapter relays to %s, which does not answer yet: %s%s", url, reason, detail)

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            raise RuntimeError("the app was started without its lifespan")
        return self._upstream

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self, request: Request) -> Response:
        assert self._readiness is not None, "the app was started without its lifespan"
        reason = await self._readiness.reason_not_ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        request.state.stats.outcome = "not_ready"
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    async def metrics_page(self) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def chat_completions(self, request: Request) -> Response:
        return await self._relay(request, Format.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._relay(request, Format.COMPLETION)

    async def responses(self, request: Request) -> Response:
        return await self._relay(request, Format.RESPONSES)

    async def messages(self, request: Request) -> Response:
        return await self._relay(request, Format.MESSAGES)

    async def passthrough(self, request: Request) -> Response:
        upstream_request = await _upstream_request(
            request, self.settings.max_request_bytes, self.settings.request_read_timeout
        )
        response = await self.upstream.open(upstream_request)
        request.state.stats.answered(response.status_code, response.headers.multi_items())
        if self.aliases and upstream_request.method == "GET" and upstream_request.route == "/v1/models":
            return await with_aliases(response, self.aliases)
        return _passthrough(response)

    async def _relay(self, request: Request, form: Format) -> Response:
        upstream_request = await _upstream_request(
            request, self.settings.max_request_bytes, self.settings.request_read_timeout
        )
        stats: RequestStats = request.state.stats
        if stats.trace is not None:
            stats.trace.request_body = upstream_request.body
        outgoing = prepare(
            upstream_request.body,
            ask_usage=self._ask_usage and form.is_chat,  # stream_options is chat's alone
            drop=(*self.settings.drop_fields, *self.refused.of(upstream_request.route)),
            models=self.aliases,
        )
        if form is Format.RESPONSES:
            outgoing = self._previous_upstream_id(outgoing)
        stats.model = outgoing.model
        stats.mode = "stream" if outgoing.stream else "nonstream"
        stats.repairs.update(outgoing.repairs)
        exchange = Exchange(self.upstream, upstream_request.with_body(outgoing.body), outgoing, self.refused)
        if outgoing.stream:
            return await self._stream(exchange, form, stats)
        return await self._complete(exchange, form, stats)

    def _previous_upstream_id(self, outgoing: Outgoing) -> Outgoing:
        """A ``previous_response_id`` the adapter made goes upstream as the upstream's own."""
        upstream = self.response_ids.upstream_of(outgoing.get("previous_response_id"))
        return outgoing if upstream is None else outgoing.with_fields(previous_response_id=upstream)

    async def _stream(self, exchange: Exchange, form: Format, stats: RequestStats) -> Response:
        limit = self.settings.max_concurrent_streams
        if limit and self.streams >= limit:
            raise TooManyStreams(
                f"sse-adapter is serving its limit of {limit} streams (--max-concurrent-streams); "
                "retry shortly"
            )
        self.streams += 1
        self.metrics.active_streams.inc()
        try:
            opened = await self._think_opened(form, exchange.outgoing)
        except BaseException:
            self.streams -= 1
            self.metrics.active_streams.dec()
            raise
        return self._open_stream(exchange, form, stats, opened)

    async def _think_opened(self, form: Format, outgoing: Outgoing) -> bool | None:
        """Whether the prompt opens ``<think>``, for ``--think-tags split``: the request's
        word, else the server's own on the model's template, else None (unsaid)."""
        opened = outgoing.opens_think()
        if opened is not None or self.settings.think_tags is not Tags.SPLIT or not form.is_chat:
            return opened
        assert self._think_opening is not None, "the app was started without its lifespan"
        return await self._think_opening.opens(outgoing.model)

    def _stream_closed(self, route: str, repairer: StreamFormat) -> None:
        self.streams -= 1
        self.metrics.active_streams.dec()
        if repairer.saw_usage:
            self._sends_usage.add(route)
        if repairer.repairs["usage_placeholder"] and route not in self._placeholders:
            self._placeholders.add(route)
            log.warning(
                "the upstream's stream usage on %s is a placeholder (no prompt tokens, no completion "
                "tokens for an answer with text, or a total that is not the sum): it is counted as none "
                '(said once a route; counted in sse_adapter_repairs_total{kind="usage_placeholder"})',
                route,
            )
        if isinstance(repairer, ResponsesRepairer) and (made := repairer.made_id) is not None:
            self.response_ids.add(*made)

    def _open_stream(
        self, exchange: Exchange, form: Format, stats: RequestStats, think_opened: bool | None
    ) -> Response:
        outgoing, route = exchange.outgoing, exchange.request.route
        counts = self._ask_usage and not self._hides_usage(outgoing)
        collect = counts and route not in self._sends_usage
        repairer, heartbeat, mode = self._stream_format(form, outgoing, collect, think_opened)
        return EventStream(
            exchange,
            Pipeline(repairer, self.settings.max_event_bytes),
            self.settings,
            stats,
            heartbeat=heartbeat,
            heartbeat_mode=mode,
            count_usage=partial(self._count_usage, form, outgoing) if counts else None,
            on_close=partial(self._stream_closed, route, repairer),
        )

    def _stream_format(
        self, form: Format, outgoing: Outgoing, collect: bool, think_opened: bool | None
    ) -> tuple[StreamFormat, Callable[[], bytes] | None, str]:
        """The stream's repairer, its heartbeat and the heartbeat's name, in the route's format."""
        settings, alias = self.settings, outgoing.model if outgoing.aliased else None
        keep_alive: Callable[[], bytes] = partial(comment, "keep-alive")
        if form is Format.RESPONSES:
            typed = ResponsesRepairer(
                outgoing.model, settings.max_line_bytes, alias=alias, collect_text=collect
            )
            beats = {ResponsesHeartbeat.KEEPALIVE: typed.keepalive, ResponsesHeartbeat.COMMENT: keep_alive}
            return typed, beats.get(settings.responses_heartbeat), settings.responses_heartbeat.value
        if form is Format.MESSAGES:
            anthropic = MessagesRepairer(settings.max_line_bytes, alias=alias, collect_text=collect)
            pings = {MessagesHeartbeat.PING: _ping, MessagesHeartbeat.COMMENT: keep_alive}
            return anthropic, pings.get(settings.messages_heartbeat), settings.messages_heartbeat.value
        identity = StreamIdentity(_KINDS[form], outgoing.model, int(time.time()))
        repairer = StreamRepairer(
            identity,
            settings,
            usage_on_last_choice=self._ask_usage and not outgoing.usage_asked,
            alias=alias,
            collect_text=collect,
            offers_tools=outgoing.offers_tools,
            think_opened=think_opened,
            hide_usage=self._hides_usage(outgoing),
            usage_asked=self._ask_usage or outgoing.usage_asked,
        )
        return repairer, self._heartbeat(identity), settings.heartbeat_mode.value

    def _hides_usage(self, outgoing: Outgoing) -> bool:
        """The client said ``include_usage: false`` and keeps its choice
        (``--stream-usage ask-keep-client``): its usage is read, not sent, and
        not counted when the server sends none."""
        return self._keep_client and outgoing.usage_refused

    async def _count_usage(self, form: Format, outgoing: Outgoing, answer: Turns) -> dict[str, Any] | None:
        """The stream's usage counted with the server's tokenizer, within the counting budget:
        the request is parsed whole for it, and the prompt's tokens held (budget.py)."""
        assert self._counter is not None, "the app was started without its lifespan"
        async with self._counting.hold(len(outgoing.body)):
            if form.is_chat:
                return await self._counter.usage(_KINDS[form], outgoing.fields, answer)
            as_chat = responses.chat_request if form is Format.RESPONSES else messages.chat_request
            return await self._counter.usage(Kind.CHAT, as_chat(outgoing.fields), answer)

    async def _complete(self, exchange: Exchange, form: Format, stats: RequestStats) -> Response:
        # Only chat answers are assembled from a stream (--nonstream-via-stream).
        settings = self.settings if form.is_chat else self._plain_settings
        kind = _KINDS.get(form, Kind.CHAT)  # a body of another format has no choices to normalise
        answering = asyncio.ensure_future(complete(exchange, kind, settings, stats))
        if await _settled(answering, self._grace(self.settings.nonstream_keepalive)):
            answer = answering.result()
            return Response(answer.body, status_code=answer.status, media_type=answer.media_type)
        render = _anthropic_body if form is Format.MESSAGES else _openai_body
        body = keepalive_body(answering, self.settings.heartbeat_interval, render)
        return StreamingResponse(body, media_type="application/json")

    def _grace(self, keeping_alive: bool) -> float | None:
        """How long to wait for the upstream before the 200 goes out: one
        interval, so a fast error keeps its real status. With no keep-alive,
        there is no early 200: None, and the exchange's own deadlines apply."""
        if not keeping_alive:
            return None
        return min(self.settings.hold, self.settings.first_byte_timeout)

    def _heartbeat(self, identity: StreamIdentity) -> Callable[[], bytes] | None:
        mode = self.settings.heartbeat_mode
        if mode is HeartbeatMode.CHUNK:
            return lambda: frame(heartbeat_chunk(identity))
        if mode is HeartbeatMode.COMMENT:
            return partial(comment, "keep-alive")
        return None


async def _upstream_request(request: Request, limit: int, read_timeout: float) -> UpstreamRequest:
    declared = request.headers.get("content-length", "")
    too_large = RequestTooLarge(f"the request body is over {limit} bytes (--max-request-bytes)")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(read_timeout):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {read_timeout:g} s (--request-read-timeout): "
            "send it whole"
        ) from None
    path = upstream_path(request.scope.get("raw_path") or request.scope["path"].encode())
    headers = tuple(request.headers.items())
    return UpstreamRequest(request.method, path, request.url.query, headers, bytes(body))


async def _settled(task: asyncio.Future[Any], grace: float | None) -> bool:
    """Whether the task is done within ``grace`` seconds (None: however long it takes)."""
    try:
        await asyncio.wait({task}, timeout=grace)
    except asyncio.CancelledError:
        # Nothing but uvicorn cancels a request, once --shutdown-grace has passed.
        task.cancel()
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        raise ShuttingDown(
            "sse-adapter is shutting down and this request outlasted --shutdown-grace: send it again"
        ) from None
    except BaseException:
        task.cancel()
        raise
    return task.done()


def _passthrough(response: httpx.Response) -> Response:
    headers = {
        name: value
        for name, value in forwardable(response.headers.multi_items())
        if name.lower() not in _OWN_HEADERS
    }
    return StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        headers=headers,
        background=BackgroundTask(response.aclose),
    )


_KINDS = {Format.CHAT: Kind.CHAT, Format.COMPLETION: Kind.COMPLETION}


def _ping() -> bytes:
    return PING


def _openai_body(error: AdapterError) -> dict[str, Any]:
    return error.to_openai()


def _anthropic_body(error: AdapterError) -> dict[str, Any]:
    return error.to_anthropic()


def _error_body(request: Request, error: AdapterError) -> dict[str, Any]:
    """The error in the shape of the route's clients: Anthropic's on /v1/messages."""
    return error.to_anthropic() if is_messages_path(request.url.path) else error.to_openai()


async def _adapter_error(request: Request, error: AdapterError) -> JSONResponse:
    request.state.stats.outcome = error.code
    if error.detail:
        log.warning("request %s failed: %s (%s)", request_id(request.scope), error.message, error.detail)
    headers = None
    if isinstance(error, TooManyStreams):
        headers = {"Retry-After": _RETRY_AFTER}
    elif isinstance(error, RequestTimeout):
        headers = {"Connection": "close"}  # the rest of its body may still come: the connection is spent
    return JSONResponse(_error_body(request, error), status_code=error.http_status, headers=headers)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = (
        f"{error.detail}: {request.method} {request.url.path} is not served here; "
        "sse-adapter serves /v1/*, /healthz, /readyz and /metrics"
    )
    body = {
        "error": {"message": message, "type": "invalid_request_error", "code": f"http_{error.status_code}"}
    }
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug of ours still answers in OpenAI's shape; the traceback goes to the log."""
    failure = InternalError("sse-adapter failed on this request; see its log")
    request.state.stats.outcome = failure.code
    return JSONResponse(_error_body(request, failure), status_code=failure.http_status)
