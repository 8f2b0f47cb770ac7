"""What a stream holds, and that it gives it back: upstream connections, and
memory when the client reads slower than the upstream writes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from sse_adapter.proxy.app import create_app
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import stream
from tests.upstream_fake import Received, Writer, content_frame, fake_upstream

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
FINISHED = 150  # of each ending


async def ends_cleanly_or_in_error(request: Received, out: Writer) -> None:
    await out.start(200, [("Content-Type", "text/event-stream")])
    await out.chunk(content_frame("a"))
    if request.json()["model"] == "error":  # type: ignore[index]
        await out.chunk(b'data: {"error":{"message":"boom","type":"x","code":500}}\n\n')
    await out.chunk(b"data: [DONE]\n\n")
    await out.end()


def held_by(connector: aiohttp.BaseConnector) -> tuple[int, int]:
    """Connections the adapter's upstream client holds: (in use, idle in its pool).

    aiohttp keeps no public count, so this reads its bookkeeping.
    """
    idle = sum(len(entries) for entries in connector._conns.values())
    return len(connector._acquired), idle


async def test_finished_streams_leave_nothing_in_the_upstream_pool() -> None:
    """Streams end at the upstream's [DONE] or at an in-band error, unread
    bytes behind them; each used to leave an entry in the client's pool."""
    async with fake_upstream(ends_cleanly_or_in_error) as upstream:
        settings = Settings(upstream=upstream.url)
        app = create_app(settings)
        async with run_adapter(settings, app) as adapter:
            for model in ["done", "error"] * FINISHED:
                seen = await stream(adapter, CHAT, {"model": model, "stream": True})
                assert seen.text() == "a"
            connector = app.state.gateway.upstream.session.connector
            assert held_by(connector) == (0, 0)  # the fake answers "Connection: close"
    assert len(upstream.requests) == 2 * FINISHED


FLOOD = 256 * 1024 * 1024  # what the upstream would send, unhindered
PIECE = b"".join(content_frame("x" * 900) for _ in range(64))  # ~64 KiB of valid events


async def test_a_client_that_does_not_read_holds_the_upstream_back() -> None:
    """Nothing queues between a slow client and a fast upstream: the client's
    socket fills, the relay's send waits, it stops reading, the upstream's
    socket fills, and the upstream's own writes wait."""
    written = 0

    async def flood(request: Received, out: Writer) -> None:
        nonlocal written
        await out.start(200, [("Content-Type", "text/event-stream")])
        while written < FLOOD:
            await out.chunk(PIECE)  # waits while the adapter does not read
            written += len(PIECE)
        await out.end()

    async with fake_upstream(flood) as upstream, run_adapter(Settings(upstream=upstream.url)) as adapter:
        host, port = adapter.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps({"model": "m", "stream": True}).encode()
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (CHAT.encode(), len(body), body)
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.read(4096)  # the stream runs; from here on this client reads nothing
        before = -1
        while written != before:  # until the upstream is held back
            before = written
            await asyncio.sleep(0.5)
        writer.close()
    assert written < 64 * 1024 * 1024, f"the adapter took {written} bytes ahead of its client"
