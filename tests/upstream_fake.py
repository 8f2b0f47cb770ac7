"""A fake model server on 127.0.0.1 that writes exactly the bytes a test gives it.

Raw asyncio, no HTTP framework: each body piece goes out as one chunk of a
chunked response, so a test controls the framing byte for byte, and the fake
records when its peer hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import orjson


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


class Writer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def start(
        self, status: int = 200, headers: Iterable[tuple[str, str]] = (), chunked: bool = True
    ) -> None:
        # One request per connection keeps the hang-up watch exact.
        lines = [f"HTTP/1.1 {status} X", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self._writer.drain()

    async def chunk(self, data: bytes) -> None:
        if data:
            self._writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self._writer.drain()

    async def end(self) -> None:
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    async def raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def reset(self) -> None:
        """Abort the connection with a TCP reset, as a crashed server does."""
        sock = self._writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()


Handler = Callable[[Received, Writer], Awaitable[None]]

SSE_HEADERS = (("Content-Type", "text/event-stream"),)


def content_frame(content: str, chunk_id: str = "c", model: str = "m") -> bytes:
    """One clean OpenAI chat chunk carrying ``content``, as a data frame."""
    body = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def json_answer(status: int, body: bytes) -> Handler:
    """A whole JSON answer with its length, as a server answers an error."""

    async def handler(request: Received, out: Writer) -> None:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        await out.start(status, headers, chunked=False)
        await out.raw(body)

    return handler


def sse(
    pieces: Iterable[bytes], delay: float = 0.0, headers: Iterable[tuple[str, str]] = SSE_HEADERS
) -> Handler:
    """A 200 event stream of the given pieces, one chunk each, ``delay`` apart."""
    parts = list(pieces)
    head = list(headers)

    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, head)
        for part in parts:
            if delay:
                await asyncio.sleep(delay)
            await out.chunk(part)
        await out.end()

    return handler


@dataclass
class FakeUpstream:
    """Serves ``handler`` for every request; ``requests`` (what clients sent through the
    adapter), ``probes`` (the adapter's own readiness checks) and ``hangups`` record what happened.

    The adapter checks its upstream once when it starts; unless ``handles_probes``, such a
    check is answered 200 here, as a healthy server would, and never reaches the handler.
    """

    handler: Handler
    handles_probes: bool = False
    requests: list[Received] = field(default_factory=list)
    probes: list[Received] = field(default_factory=list)  # the adapter's own readiness checks
    hangups: asyncio.Queue[float] = field(default_factory=asyncio.Queue)
    port: int = 0
    open_connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            request = await _read_request(reader)
            if request is None:
                return
            if not request.headers.get("user-agent", "").startswith("sse-adapter/"):
                self.requests.append(request)
            elif self.handles_probes:
                self.probes.append(request)
            else:
                self.probes.append(request)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                return
            await self._answer(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hangups.put_nowait(asyncio.get_running_loop().time())
        finally:
            self.open_connections -= 1
            writer.close()

    async def _answer(
        self, request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Run the handler until it is done, or until the client hangs up on it."""
        handler = asyncio.ensure_future(self.handler(request, Writer(writer)))
        watch = asyncio.ensure_future(self._watch(reader, handler))
        try:
            await asyncio.wait({handler})
            if not handler.cancelled():
                handler.result()  # a write to a closed socket raises here
        finally:
            handler.cancel()
            watch.cancel()

    async def _watch(self, reader: asyncio.StreamReader, handler: asyncio.Future[None]) -> None:
        # A client that hangs up shows as EOF on the read side, even while we write nothing;
        # or as a reset, when it closed with our answer still unread in its socket.
        try:
            hung_up = await reader.read(1) == b""
        except ConnectionError:
            hung_up = True
        if hung_up:
            self.hangups.put_nowait(asyncio.get_running_loop().time())
            handler.cancel()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    start, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = start.split(" ", 2)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Received(method, target, headers, body)


@contextlib.asynccontextmanager
async def fake_upstream(
    handler: Handler, port: int = 0, handles_probes: bool = False
) -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(handler, handles_probes)
    server = await asyncio.start_server(fake._serve, "127.0.0.1", port, backlog=4096)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
