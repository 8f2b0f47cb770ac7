"""A client that leaves must stop the generation: the upstream sees its
connection closed within a second, every time, and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import httpx
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import TLS
from tests.upstream_fake import Received, Writer, content_frame, fake_upstream

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
TRIES = 50
ABORTS = 500
AT_ONCE = 50


async def endless(request: Received, out: Writer) -> None:
    await out.start(200, [("Content-Type", "text/event-stream")])
    if request.json()["model"] == "thinking":  # type: ignore[index]
        await asyncio.sleep(3600)  # silent: the client only ever sees heartbeats
    while True:
        await out.chunk(content_frame("tick"))
        await asyncio.sleep(0.02)


async def leave_after_first_frame(client: httpx.AsyncClient, adapter: str, model: str) -> float:
    """Read one frame (a token, or a heartbeat), hang up; when we hung up."""
    body = {"model": model, "messages": [], "stream": True}
    async with client.stream("POST", adapter + CHAT, json=body) as reply:
        async for _ in reply.aiter_raw():
            break
    return asyncio.get_running_loop().time()


@pytest.mark.parametrize("model", ["streaming", "thinking"], ids=["mid-stream", "before-first-token"])
async def test_the_upstream_sees_the_client_leave_within_a_second_every_time(model: str) -> None:
    latencies = []
    async with fake_upstream(endless) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, heartbeat_interval=0.05)) as adapter:
            for _ in range(TRIES):
                async with httpx.AsyncClient(verify=TLS) as client:
                    left = await leave_after_first_frame(client, adapter, model)
                hung_up = await asyncio.wait_for(upstream.hangups.get(), 2)
                latencies.append(hung_up - left)
    assert len(latencies) == TRIES
    assert max(latencies) < 1.0, max(latencies)


def sockets() -> int:
    """Open sockets of this process (the adapter, its clients and the fake upstream)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked, as the listing's own
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def settles(measure: Callable[[], int], target: int, seconds: float = 10.0) -> int:
    """The measure once it is back at ``target``, or its last value when time runs out."""
    for _ in range(int(seconds / 0.05)):
        if (value := measure()) <= target:
            return value
        await asyncio.sleep(0.05)
    return measure()


async def aborted(adapter: str, model: str) -> float:
    async with httpx.AsyncClient(verify=TLS) as client:
        return await leave_after_first_frame(client, adapter, model)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets through /proc")
async def test_500_aborted_streams_leave_no_task_socket_or_upstream_connection() -> None:
    async with fake_upstream(endless) as upstream:
        settings = Settings(upstream=upstream.url, heartbeat_interval=0.05, max_concurrent_streams=AT_ONCE)
        async with run_adapter(settings) as adapter:
            await aborted(adapter, "streaming")  # warm up: the first request builds what stays
            await settles(lambda: upstream.open_connections, 0)
            tasks, socks = len(asyncio.all_tasks()), sockets()
            for start in range(0, ABORTS, AT_ONCE):
                models = ["thinking" if n % 2 else "streaming" for n in range(start, start + AT_ONCE)]
                await asyncio.gather(*(aborted(adapter, model) for model in models))
            assert await settles(lambda: upstream.open_connections, 0) == 0
            assert await settles(lambda: len(asyncio.all_tasks()), tasks) <= tasks
            assert await settles(sockets, socks) <= socks
            # the stream count came back down: a full set of new streams is still let in
            ends = await asyncio.gather(*(aborted(adapter, "streaming") for _ in range(AT_ONCE)))
            assert len(ends) == AT_ONCE
