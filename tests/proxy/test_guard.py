"""Who may use the adapter, what reaches the upstream, and the limits and clocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

import httpx
import orjson
import pytest

from sse_adapter.proxy.timeouts import Deadlines
from sse_adapter.proxy.upstream import upstream_request_id
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import stream
from tests.upstream_fake import Received, Writer, fake_upstream, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
DONE_STREAM = sse(
    [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}\n\n',
        b"data: [DONE]\n\n",
    ]
)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer sk-wrong", 401),
        ("Basic sk-one", 401),
        ("Bearer sk-one", 200),
        ("bearer  sk-two", 200),
        ("Bearer sk-one-longer", 401),
    ],
)
async def test_api_keys_are_required_on_v1_only(authorization: str | None, status: int) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, api_keys=("sk-one", "sk-two"))) as adapter:
            async with httpx.AsyncClient() as client:
                reply = await client.post(
                    adapter + CHAT, json={"model": "m", "stream": True}, headers=headers
                )
                health = await client.get(adapter + "/healthz")
    assert reply.status_code == status
    assert health.status_code == 200
    if status == 401:
        assert reply.json()["error"]["code"] == "invalid_api_key"
        assert reply.headers["www-authenticate"] == "Bearer"
        assert upstream.requests == []
    else:
        assert "authorization" not in upstream.requests[0].headers  # the adapter's key stays here


@pytest.mark.parametrize(
    ("keys", "upstream_key", "sent", "forwarded"),
    [
        ((), None, "Bearer sk-channel", "Bearer sk-channel"),
        ((), "sk-gpu", "Bearer sk-channel", "Bearer sk-gpu"),
        (("sk-channel",), "sk-gpu", "Bearer sk-channel", "Bearer sk-gpu"),
        (("sk-channel",), None, "Bearer sk-channel", None),
    ],
    ids=["pass-through", "upstream-key", "both", "adapter-key-only"],
)
async def test_which_key_reaches_the_upstream(
    keys: tuple[str, ...], upstream_key: str | None, sent: str, forwarded: str | None
) -> None:
    settings = Settings(upstream="http://x", api_keys=keys, upstream_api_key=upstream_key)
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(replace(settings, upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient() as client:
                await client.get(adapter + "/v1/models", headers={"Authorization": sent})
    assert upstream.requests[0].headers.get("authorization") == forwarded


async def test_the_request_id_is_passed_on_or_made_and_always_echoed() -> None:
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            given = await client.get(adapter + "/v1/models", headers={"X-Request-ID": "trace-42"})
            made = await client.get(adapter + "/v1/models")
            unsafe = await client.get(adapter + "/v1/models", headers={"X-Request-ID": "a b"})
    assert given.headers["x-request-id"] == "trace-42"
    # the model server gets a UUID (llama-cpp-python refuses any other), derived from the client's
    assert upstream.requests[0].headers["x-request-id"] == upstream_request_id("trace-42") != "trace-42"
    assert len(made.headers["x-request-id"]) == 32
    assert upstream.requests[1].headers["x-request-id"] == made.headers["x-request-id"]
    assert unsafe.headers["x-request-id"] != "a b"


async def test_past_the_stream_limit_a_429_with_retry_after() -> None:
    async def slow(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await asyncio.sleep(1.0)
        await out.chunk(b"data: [DONE]\n\n")
        await out.end()

    async with fake_upstream(slow) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, max_concurrent_streams=2)) as adapter:
            async with httpx.AsyncClient(timeout=10) as client:
                ask = {"model": "m", "stream": True}
                first, second, third = await asyncio.gather(
                    *(client.post(adapter + CHAT, json=ask) for _ in range(3))
                )
                after = await client.post(adapter + CHAT, json=ask)
    statuses = sorted(reply.status_code for reply in (first, second, third))
    assert statuses == [200, 200, 429]
    refused = next(reply for reply in (first, second, third) if reply.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200  # the count came back down


async def test_only_v1_and_health_paths_are_served_and_the_host_is_fixed() -> None:
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            admin = await client.get(adapter + "/admin")
            absolute = await client.get(adapter + "/v1/models", headers={"Host": "evil.example:80"})
    assert admin.status_code == 404
    assert absolute.status_code == 200
    assert upstream.requests[0].headers["host"] == f"127.0.0.1:{upstream.port}"


@pytest.mark.parametrize(
    ("last_read", "streaming", "at", "flag"),
    [
        (0.0, False, 600.0, "--first-byte-timeout"),
        (100.0, True, 400.0, "--idle-timeout"),
        (700.0, True, 1000.0, "--idle-timeout"),
    ],
)
def test_the_deadline_in_force(last_read: float, streaming: bool, at: float, flag: str) -> None:
    deadline, why = Deadlines(started=0.0, first_byte=600.0, idle=300.0, total=0.0).next(last_read, streaming)
    assert deadline == at
    assert flag in why


def test_the_total_timeout_caps_the_others() -> None:
    deadline, why = Deadlines(started=0.0, first_byte=600.0, idle=300.0, total=50.0).next(0.0, False)
    assert (deadline, "--total-timeout" in why) == (50.0, True)


async def test_the_total_timeout_ends_a_stream_that_never_stops() -> None:
    async def forever(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        while True:
            await out.chunk(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"."}}]}\n\n')
            await asyncio.sleep(0.05)

    async with fake_upstream(forever) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, total_timeout=0.5)) as adapter:
            # bounded: with a total timeout that never fires, the stream would run forever
            seen = await asyncio.wait_for(stream(adapter, CHAT, {"model": "m", "stream": True}), 30)
    assert seen.text().startswith("...")
    error = seen.chunks[-1]["error"]
    assert error["code"] == "upstream_timeout"
    assert "did not finish within 0.5 s (--total-timeout)" in error["message"]
    assert seen.duration < 10 * 0.5  # generous: how soon it fires on a loaded machine is bench/'s


async def test_the_total_timeout_ends_a_stream_that_never_pauses() -> None:
    """An upstream that streams as fast as it can: no read ever waits, and the
    total timeout must fire all the same."""

    async def torrent(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        piece = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"."}}]}\n\n' * 50
        while True:
            await out.chunk(piece)

    async with fake_upstream(torrent) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, total_timeout=1.0)) as adapter:
            # bounded: with a total timeout that never fires, the stream would run forever
            seen = await asyncio.wait_for(stream(adapter, CHAT, {"model": "m", "stream": True}), 30)
    assert seen.text().startswith("....")
    assert seen.chunks[-1]["error"]["code"] == "upstream_timeout"
    assert "did not finish within 1 s (--total-timeout)" in seen.chunks[-1]["error"]["message"]
    # Generous: the client reads what was relayed before the error, in the same loop as the
    # adapter, and on a loaded 2-core machine that took 3.2 s. How soon it fires is bench/'s.
    assert seen.duration < 10 * 1.0


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({f"x-h{n}": "v" for n in range(5000)}, "5,000 headers"),
        ({"x-big": "v" * 70_000}, "one header of 70 KB"),
    ],
    ids=["count", "bytes"],
)
async def test_too_many_header_bytes_or_headers_get_a_431_at_once(headers: dict[str, str], why: str) -> None:
    settings = Settings(upstream="http://x", request_read_timeout=30)
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(replace(settings, upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient(timeout=60) as client:
                started = asyncio.get_running_loop().time()
                # No body: the answer comes once the head is read, and uvicorn closes a connection
                # whose body it did not read; a body still on its way then resets the connection,
                # and the client loses the answer (seen under load).
                reply = await client.post(adapter + CHAT, headers=headers)
                took = asyncio.get_running_loop().time() - started
            # A connection of its own: the refused one may be closing, and a client that reuses
            # it before the close reaches it reads nothing (seen under load).
            async with httpx.AsyncClient(timeout=60) as client:
                fine = await client.post(
                    adapter + CHAT,
                    json={"model": "m", "stream": True},
                    headers={f"x-h{n}": "v" for n in range(60)},
                )
    assert reply.status_code == 431, why
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_headers_too_large")
    assert "--max-header-count" in error["message"]
    # at once, not at the request read timeout (30 s): the client's own work on 5,000
    # headers took 2.2 s on a loaded 2-core machine, so the bound is generous
    assert took < 10, why
    assert fine.status_code == 200  # a request with a reasonable head passes
    assert len(upstream.requests) == 1


async def test_heartbeats_off_and_no_headers_is_a_504_at_the_first_byte_timeout() -> None:
    async def mute(request: Received, out: Writer) -> None:
        await asyncio.sleep(30)

    settings = Settings(upstream="http://x", heartbeat_mode="off", first_byte_timeout=0.5)  # type: ignore[arg-type]
    async with fake_upstream(mute) as upstream:
        async with run_adapter(replace(settings, upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient(timeout=10) as client:
                reply = await client.post(adapter + CHAT, json={"model": "m", "stream": True})
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "upstream_timeout"
    assert orjson.loads(reply.content)["error"]["type"] == "upstream_error"


async def test_credentials_in_the_upstream_url_authenticate_and_are_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake_upstream(DONE_STREAM) as upstream:
        dead = upstream.url
    live = fake_upstream(DONE_STREAM)
    upstream = await live.__aenter__()
    try:
        with_secret = upstream.url.replace("http://", "http://user:s3cret@")
        async with run_adapter(Settings(upstream=with_secret)) as adapter, httpx.AsyncClient() as client:
            ok = await client.post(
                adapter + CHAT, json={"model": "m", "stream": True}, headers={"Authorization": "Bearer sk-c"}
            )
            metrics = await client.get(adapter + "/metrics")
        async with run_adapter(Settings(upstream=dead.replace("http://", "http://user:s3cret@"))) as adapter:
            async with httpx.AsyncClient() as client:
                failed = await client.post(adapter + CHAT, json={"model": "m", "stream": True})
                ready = await client.get(adapter + "/readyz")
    finally:
        await live.__aexit__(None, None, None)
    assert ok.status_code == 200
    assert upstream.requests[0].headers["authorization"] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret
    assert failed.status_code == 502
    assert "cannot connect to the model server" in failed.json()["error"]["message"]
    assert dead.removeprefix("http://") in caplog.text  # the host, named in our log only
    shown = failed.text + ready.text + metrics.text + caplog.text
    assert "s3cret" not in shown
    assert "user:" not in shown


async def raw_exchange(adapter: str, *pieces: bytes, pause: float = 0.0) -> bytes:
    """Send bytes as a client that may dribble them; what the adapter sent back before it closed."""
    host, port = adapter.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    received = bytearray()

    async def read_all() -> None:  # beside the writes: an answer may come, and the reset after it
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.ensure_future(read_all())
    try:
        for piece in pieces:
            with contextlib.suppress(ConnectionError):  # the adapter may have answered and closed
                writer.write(piece)
                await writer.drain()
            await asyncio.sleep(pause)
        await asyncio.wait_for(reading, 10)
    finally:
        reading.cancel()
        writer.close()
    return bytes(received)


async def dribble(adapter: str, pieces: list[bytes], pause: float) -> tuple[bytes, int]:
    """Send the pieces ``pause`` apart until the adapter answers; what it sent back
    before it closed, and how many pieces were still unsent when its answer came."""
    host, port = adapter.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    first = asyncio.ensure_future(reader.read(65536))
    try:
        for sent, piece in enumerate(pieces):
            if first.done():
                unsent = len(pieces) - sent
                break
            with contextlib.suppress(ConnectionError):  # the adapter may have answered and closed
                writer.write(piece)
                await writer.drain()
            await asyncio.wait({first}, timeout=pause)
        else:
            unsent = 0
        received = bytearray(await asyncio.wait_for(first, 30))
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                received.extend(chunk)
    finally:
        first.cancel()
        writer.close()
    return bytes(received), unsent


def error_of(raw: bytes) -> tuple[int, str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), orjson.loads(body)["error"]["code"], head


async def test_a_head_that_dribbles_past_the_read_timeout_gets_a_408_and_is_closed() -> None:
    # a header line every 0.2 s for 3 s: each byte is on time, the head as a whole is late
    head = [b"POST /v1/chat/completions HTTP/1.1\r\n", *(b"X-Slow-%d: v\r\n" % n for n in range(15))]
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, request_read_timeout=0.5)) as adapter:
            raw, unsent = await dribble(adapter, head, pause=0.2)
            silent = await raw_exchange(adapter)  # connects, sends nothing
    assert error_of(raw)[:2] == (408, "request_timeout")
    assert unsent > 0  # the answer came while the head was still dribbling in, not after it
    assert error_of(silent)[:2] == (408, "request_timeout")
    assert upstream.requests == []


async def test_a_body_that_dribbles_past_the_read_timeout_gets_a_408() -> None:
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, request_read_timeout=0.5)) as adapter:
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
            raw = await raw_exchange(adapter, head, b'{"model":', b'"m",', b'"x":1', pause=0.3)
    status, code, _ = error_of(raw)
    assert (status, code) == (408, "request_timeout")
    assert upstream.requests == []


async def test_past_max_connections_a_503_at_once() -> None:
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, max_connections=3)) as adapter:
            host, port = adapter.removeprefix("http://").split(":")
            held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
            await asyncio.sleep(0.1)
            refused = await raw_exchange(adapter, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                after = await client.get(adapter + "/healthz")
    status, code, head = error_of(refused)
    assert (status, code) == (503, "too_many_connections")
    assert b"connection: close" in head
    assert after.status_code == 200


async def test_bytes_that_are_no_http_get_an_openai_shaped_400() -> None:
    async with fake_upstream(DONE_STREAM) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            raw = await raw_exchange(adapter, b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
    assert error_of(raw)[:2] == (400, "invalid_request")
