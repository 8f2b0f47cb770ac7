"""The watch: one timer per exchange that cancels the task at its deadline."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from sse_adapter.errors import UpstreamTimeout
from sse_adapter.proxy.timeouts import Watch
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.upstream_fake import Handler, Received, Writer, content_frame, fake_upstream

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
    clock = watch(idle_timeout=0.5)
    with clock:
        clock.received(b"data: x\n\n", event=True)
        for _ in range(12):  # 1.2 s in all, never 0.5 s without a read (0.1 s on an idle machine)
            await asyncio.sleep(0.1)
            clock.received(b": ping\n\n", event=False)
    assert clock.expired is None


async def test_the_idle_clock_runs_from_the_first_event_not_from_the_first_byte_deadline() -> None:
    clock = watch(first_byte_timeout=60, idle_timeout=0.2)

    async def one_event_then_silence() -> None:
        with clock:
            clock.received(b"data: x\n\n", event=True)
            await asyncio.sleep(60)

    # a TimeoutError instead: the idle clock waited for the first-byte deadline
    with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0.2 s \(--idle-timeout\)"):
        await asyncio.wait_for(one_event_then_silence(), 20)


async def test_the_total_timeout_fires_however_often_bytes_come() -> None:
    clock = watch(idle_timeout=10, total_timeout=0.3)
    reads = 0

    async def streaming_without_pause() -> None:
        nonlocal reads
        with clock:
            while True:
                await asyncio.sleep(0)  # a read that never waits
                clock.received(b"data: x\n\n", event=True)
                reads += 1

    # a TimeoutError instead: the total timeout never fired (the idle one is at 10 s)
    with pytest.raises(UpstreamTimeout, match=r"did not finish within 0.3 s \(--total-timeout\)"):
        await asyncio.wait_for(streaming_without_pause(), 8)
    assert reads > 0


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


def stalls_after_one_event(streaming: bool) -> Handler:
    """The upstream answers, sends one event (or the start of its JSON body), then says nothing."""

    async def handler(request: Received, out: Writer) -> None:
        if streaming or orjson.loads(request.body).get("stream"):
            await out.start(200, [("Content-Type", "text/event-stream")])
            await out.chunk(content_frame("half"))
        else:
            await out.start(200, [("Content-Type", "application/json"), ("Content-Length", "500")], False)
            await out.raw(b'{"id":"c","choices":[')
        await asyncio.sleep(120)

    return handler


@pytest.mark.parametrize(
    ("streaming", "via_stream"),
    [(True, False), (False, False), (False, True)],
    ids=["stream", "non-stream", "non-stream-via-stream"],
)
async def test_a_stall_after_the_first_event_ends_at_the_idle_timeout(
    streaming: bool, via_stream: bool
) -> None:
    """Each deadline on its own clock: the idle timeout (1 s) does not wait for the
    first-byte deadline (60 s) to pass once the upstream has started answering."""
    async with fake_upstream(stalls_after_one_event(streaming)) as upstream:
        settings = Settings(
            upstream=upstream.url, first_byte_timeout=60, idle_timeout=1, nonstream_via_stream=via_stream
        )
        async with run_adapter(settings) as adapter:
            started = asyncio.get_running_loop().time()
            async with httpx.AsyncClient(timeout=90) as client:
                body = {"model": "m", "messages": [], "stream": streaming}
                reply = await asyncio.wait_for(client.post(adapter + "/v1/chat/completions", json=body), 90)
            took = asyncio.get_running_loop().time() - started
    if streaming:
        assert reply.status_code == 200
        frames = [line[6:] for line in reply.text.split("\n\n") if line.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        assert "half" in frames[0]
        error = orjson.loads(frames[-2])["error"]
    else:
        assert reply.status_code == 504
        error = reply.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert "sent nothing for 1 s (--idle-timeout)" in error["message"]
    assert took < 20  # the idle deadline is at ~1 s; today's bug waits for the first-byte one at 60 s
