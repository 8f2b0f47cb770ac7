"""The watch: one timer per exchange that cancels the task at its deadline."""

from __future__ import annotations

import asyncio

import pytest

from sse_adapter.errors import UpstreamTimeout
from sse_adapter.proxy.timeouts import Watch
from sse_adapter.settings import Settings

pytestmark = pytest.mark.anyio

URL = "http://tgi:80/v1/chat/completions"


def watch(**deadlines: float) -> Watch:
    settings = Settings(upstream="http://tgi", **deadlines)  # type: ignore[arg-type]
    return Watch(settings, URL, asyncio.get_running_loop().time())


async def test_silence_past_the_idle_timeout_cancels_the_wait() -> None:
    clock = watch(idle_timeout=0.2)
    clock.received(b"data: x\n\n", event=True)
    with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0.2 s \(--idle-timeout\)"), clock:
        await asyncio.sleep(5)
    assert clock.expired is not None


async def test_each_read_moves_the_idle_deadline() -> None:
    clock = watch(idle_timeout=0.2)
    with clock:
        for _ in range(6):  # 0.6 s in all, never 0.2 s without a read
            await asyncio.sleep(0.1)
            clock.received(b": ping\n\n", event=False)
            clock.streaming = True
    assert clock.expired is None


async def test_the_total_timeout_fires_however_often_bytes_come() -> None:
    clock = watch(idle_timeout=10, total_timeout=0.3)
    started = asyncio.get_running_loop().time()

    async def streaming_without_pause() -> None:
        with clock:
            while True:
                await asyncio.sleep(0)  # a read that never waits
                clock.received(b"data: x\n\n", event=True)

    with pytest.raises(UpstreamTimeout, match="--total-timeout"):
        await streaming_without_pause()
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_blocked_write_to_the_client_is_no_upstream_silence() -> None:
    clock = watch(idle_timeout=0.2, total_timeout=0.6)
    clock.received(b"data: x\n\n", event=True)
    clock.paused = True  # the relay waits on a slow client, reading nothing
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout, match="--total-timeout"), clock:
        await asyncio.sleep(5)
    assert asyncio.get_running_loop().time() - started >= 0.55  # not the idle timeout at 0.2 s


async def test_leaving_the_block_stops_the_timer() -> None:
    clock = watch(first_byte_timeout=0.1)
    with clock:
        pass
    await asyncio.sleep(0.3)  # a timer left armed would cancel this task now
    assert clock.expired is None
