"""1,000 concurrent streams through one adapter: every token arrives, in order,
and what the client reads is byte for byte what the upstream sent (clean
frames need no repair, so the adapter passes them through untouched)."""

from __future__ import annotations

import asyncio
import resource

import httpx
import orjson
import pytest

from sse_adapter.settings import HeartbeatMode, Settings
from tests.adapter_server import run_adapter
from tests.upstream_fake import Received, Writer, fake_upstream

pytestmark = pytest.mark.anyio

STREAMS = 1000
EVENTS = 20
SOCKETS_NEEDED = 4 * STREAMS + 200  # each stream holds four: client, adapter x2, upstream


def transcript(stream: int) -> bytes:
    frames = []
    for n in range(EVENTS):
        chunk = {
            "id": f"chatcmpl-{stream}",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": f"<{stream}:{n}>"}, "finish_reason": None}],
        }
        frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return b"".join(frames) + b"data: [DONE]\n\n"


async def fast(request: Received, out: Writer) -> None:
    stream = int(request.json()["model"])  # type: ignore[index]
    await out.start(200, [("Content-Type", "text/event-stream")])
    for frame in transcript(stream).split(b"\n\n")[:-1]:
        await out.chunk(frame + b"\n\n")
        await asyncio.sleep(0.01)
    await out.end()


def enough_sockets() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SOCKETS_NEEDED:
        if hard < SOCKETS_NEEDED:
            pytest.fail(
                f"the load test needs {SOCKETS_NEEDED} open files; this machine allows {hard} (ulimit -n)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOCKETS_NEEDED, hard))


async def test_1000_concurrent_streams_arrive_whole_and_in_order() -> None:
    enough_sockets()
    async with fake_upstream(fast) as upstream:
        # Heartbeats are not the subject: a loaded machine that takes an interval to open
        # a thousand streams would put one before the data, and byte for byte is the point.
        # A generous connect timeout: a thousand connects at once to the fake, in this process, on
        # a loaded machine took more than the default 10 s; the subject is the bytes, not the clock.
        settings = Settings(upstream=upstream.url, heartbeat_mode=HeartbeatMode.OFF, connect_timeout=60)
        async with run_adapter(settings) as adapter:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:

                async def read(stream: int) -> bytes:
                    body = {"model": str(stream), "messages": [], "stream": True}
                    async with client.stream("POST", adapter + "/v1/chat/completions", json=body) as reply:
                        assert reply.status_code == 200, await reply.aread()
                        return b"".join([piece async for piece in reply.aiter_raw()])

                received = await asyncio.gather(*(read(stream) for stream in range(STREAMS)))
    for stream, raw in enumerate(received):
        assert raw == transcript(stream), stream
