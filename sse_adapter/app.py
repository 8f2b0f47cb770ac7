"""The web layer: routes that wire upstream -> relay -> client, and nothing more."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from sse_adapter.chunks import Kind, StreamIdentity, heartbeat_chunk
from sse_adapter.dialects import RequestFields
from sse_adapter.encoder import comment, frame
from sse_adapter.errors import AdapterError
from sse_adapter.nonstream import complete, keepalive_body
from sse_adapter.relay import StreamRelay, is_event_stream, refusal
from sse_adapter.repair import StreamRepairer
from sse_adapter.settings import HeartbeatMode, Settings
from sse_adapter.upstream import Upstream, UpstreamRequest, forwardable

__all__ = ["create_app", "run_server", "serving"]

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_OWN_HEADERS = frozenset({"date", "server"})  # uvicorn writes its own


def create_app(settings: Settings) -> FastAPI:
    gateway = _Gateway(settings)
    app = FastAPI(
        title="sse-adapter",
        lifespan=gateway.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_api_route("/healthz", gateway.healthz, methods=["GET"])
    app.add_api_route("/v1/chat/completions", gateway.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", gateway.completions, methods=["POST"])
    app.add_api_route("/v1/{path:path}", gateway.passthrough, methods=_METHODS)
    app.add_exception_handler(AdapterError, _adapter_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    return app


def run_server(settings: Settings) -> None:
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, lifespan="on")
    uvicorn.Server(config).run()


@asynccontextmanager
async def serving(settings: Settings, log_level: str = "warning") -> AsyncIterator[str]:
    """Serve the adapter inside the running event loop; yields its base URL.

    Binds ``settings.host`` on ``settings.port``, or on a free port when it is 0.
    For the demo and the tests, which run their own clients beside it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), lifespan="on", log_level=log_level, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces a start-up failure
            await asyncio.sleep(0.01)
        yield f"http://{settings.host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


class _Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._upstream: Upstream | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        async with Upstream(self.settings) as upstream:
            self._upstream = upstream
            yield
            self._upstream = None

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            raise RuntimeError("the app was started without its lifespan")
        return self._upstream

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def chat_completions(self, request: Request) -> Response:
        return await self._relay(request, Kind.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._relay(request, Kind.COMPLETION)

    async def passthrough(self, request: Request) -> Response:
        return _passthrough(await self.upstream.open(await _upstream_request(request)))

    async def _relay(self, request: Request, kind: Kind) -> Response:
        upstream_request = await _upstream_request(request)
        fields = RequestFields.parse(upstream_request.body)
        if fields.stream:
            return await self._stream(upstream_request, fields, kind)
        return await self._complete(upstream_request, kind)

    async def _stream(self, request: UpstreamRequest, fields: RequestFields, kind: Kind) -> Response:
        started = anyio.current_time()
        opening = asyncio.ensure_future(self.upstream.open(request))
        if await _settled(opening, self._grace(self.settings.heartbeats)) and not is_event_stream(
            response := opening.result()
        ):
            return await self._refuse(response)
        identity = StreamIdentity(kind, fields.model, int(time.time()))
        relay = StreamRelay(
            opening,
            self.upstream.url(request),
            StreamRepairer(identity, self.settings),
            heartbeat=self._heartbeat(identity),
            interval=self.settings.heartbeat_interval,
            max_event_bytes=self.settings.max_event_bytes,
            max_body_bytes=self.settings.max_event_bytes,
            started=started,
        )
        return _event_stream(relay)

    async def _complete(self, request: UpstreamRequest, kind: Kind) -> Response:
        answering = asyncio.ensure_future(complete(self.upstream, request, kind, self.settings))
        if await _settled(answering, self._grace(self.settings.nonstream_keepalive)):
            answer = answering.result()
            return Response(answer.body, status_code=answer.status, media_type=answer.media_type)
        body = keepalive_body(answering, self.settings.heartbeat_interval)
        return StreamingResponse(body, media_type="application/json")

    def _grace(self, keeping_alive: bool) -> float | None:
        """How long to wait for the upstream before the 200 goes out: one
        interval, so a fast error keeps its real status; forever with no keep-alive."""
        return self.settings.heartbeat_interval if keeping_alive else None

    async def _refuse(self, response: httpx.Response) -> Response:
        """An answer that is no stream becomes our error, with the upstream's
        words and, when it was an error status, that status."""
        try:
            error = await refusal(response, str(response.request.url), self.settings.max_event_bytes)
        finally:
            await response.aclose()
        raise error

    def _heartbeat(self, identity: StreamIdentity) -> Callable[[], bytes] | None:
        mode = self.settings.heartbeat_mode
        if mode is HeartbeatMode.CHUNK:
            return lambda: frame(heartbeat_chunk(identity))
        if mode is HeartbeatMode.COMMENT:
            return partial(comment, "keep-alive")
        return None


async def _upstream_request(request: Request) -> UpstreamRequest:
    url = request.url
    return UpstreamRequest(
        request.method, url.path, url.query, tuple(request.headers.items()), await request.body()
    )


async def _settled(task: asyncio.Future[Any], grace: float | None) -> bool:
    """Whether the task is done within ``grace`` seconds (None: however long it takes)."""
    try:
        await asyncio.wait({task}, timeout=grace)
    except BaseException:
        task.cancel()  # the request itself was cancelled
        raise
    return task.done()


def _event_stream(relay: StreamRelay) -> Response:
    sender, receiver = anyio.create_memory_object_stream[bytes](0)
    response = EventSourceResponse(
        receiver,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        ping=0,  # its pings run on a fixed timer; ours are idle-based, in the relay
        sep="\n",
        data_sender_callable=partial(relay.run, sender),
        background=BackgroundTask(relay.close),
    )
    # sse-starlette forces this hop-by-hop header, which HTTP/2 forbids (shared/keepalive.md).
    del response.headers["connection"]
    return response


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


async def _adapter_error(request: Request, error: AdapterError) -> JSONResponse:
    return JSONResponse(error.to_openai(), status_code=error.http_status)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = (
        f"{error.detail}: {request.method} {request.url.path} is not served here; "
        "sse-adapter serves /v1/* and /healthz"
    )
    body = {
        "error": {"message": message, "type": "invalid_request_error", "code": f"http_{error.status_code}"}
    }
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)
