"""The floor: the least a relay of these streams can do on this stack, measured beside the adapter.

    python bench/floor.py PORT UPSTREAM_URL [--sse-starlette]

A raw ASGI app under uvicorn (uvloop, httptools), as the adapter runs: for each
POST it opens the upstream with httpx over the httpx-aiohttp transport, and for
each upstream read decodes the SSE events (split on blank lines), parses and
re-serialises each JSON payload with orjson, frames them, and makes one ASGI
send. No repairs, heartbeats, timeouts, limits, logs or metrics: the work per
event that no relay can skip. It relays each format in that format's framing:
chat's ``data:`` events (and its ``[DONE]``) on /v1/chat/completions, typed
``event: <type>`` + ``data:`` events on /v1/responses and /v1/messages, the
name passed on as it came. ``--sse-starlette`` sends the same frames through
sse-starlette's EventSourceResponse instead of a raw send, to price that library.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import orjson
import uvicorn
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

DONE = b"data: [DONE]\n\n"
Framer = Callable[[bytes, bytes], tuple[bytes, bytes]]
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def framed(tail: bytes, raw: bytes) -> tuple[bytes, bytes]:
    """The frames one read completes, and the unfinished rest."""
    blocks = (tail + raw).split(b"\n\n")
    rest = blocks.pop()
    out = []
    for block in blocks:
        payload = block[6:] if block.startswith(b"data: ") else block[5:]
        out.append(
            DONE if payload == b"[DONE]" else b"data: " + orjson.dumps(orjson.loads(payload)) + b"\n\n"
        )
    return b"".join(out), rest


def typed_framed(tail: bytes, raw: bytes) -> tuple[bytes, bytes]:
    """As :func:`framed`, for typed events (Responses, Messages): each block is
    an ``event:`` line and one ``data:`` line."""
    blocks = (tail + raw).split(b"\n\n")
    rest = blocks.pop()
    out = []
    for block in blocks:
        name, _, payload = block.partition(b"\ndata: ")
        out.append(name + b"\ndata: " + orjson.dumps(orjson.loads(payload)) + b"\n\n")
    return b"".join(out), rest


TYPED = frozenset({"/v1/responses", "/v1/messages"})


class Floor:
    def __init__(self, upstream: str, sse_starlette: bool) -> None:
        self.upstream = upstream
        self.sse_starlette = sse_starlette
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.client is not None
        request = self.client.build_request(
            "POST", self.upstream + scope["path"], content=body, headers={"content-type": "application/json"}
        )
        response = await self.client.send(request, stream=True)
        try:
            if self.sse_starlette:
                await self.through_sse_starlette(response, scope, receive, send)
            else:
                await self.raw(response, send, typed_framed if scope["path"] in TYPED else framed)
        finally:
            await response.aclose()

    async def raw(self, response: httpx.Response, send: Any, frame: Framer) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        tail = b""
        async for raw in response.aiter_raw():
            frames, tail = frame(tail, raw)
            if frames:
                await send({"type": "http.response.body", "body": frames, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def through_sse_starlette(
        self, response: httpx.Response, scope: Any, receive: Any, send: Any
    ) -> None:
        from sse_starlette import EventSourceResponse, ServerSentEvent

        async def frames() -> AsyncIterator[ServerSentEvent]:
            tail = b""
            async for raw in response.aiter_raw():
                blocks = (tail + raw).split(b"\n\n")
                tail = blocks.pop()
                for block in blocks:
                    payload = block[6:]
                    data = payload if payload == b"[DONE]" else orjson.dumps(orjson.loads(payload))
                    yield ServerSentEvent(data.decode(), sep="\n")

        await EventSourceResponse(frames(), ping=0, sep="\n")(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                self.client = HttpxAiohttpClient(
                    timeout=httpx.Timeout(10.0, read=None), transport=AiohttpTransport(client=session)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    app = Floor(upstream, "--sse-starlette" in sys.argv[3:])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
