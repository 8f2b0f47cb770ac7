"""The fault matrix: every upstream and client fault, streaming and not, over
real sockets. Each gives its expected client-visible outcome with no hang,
and a normal request through the same adapter succeeds right after."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import free_port, run_adapter
from tests.end_client import TLS
from tests.upstream_fake import Handler, Received, Writer, fake_upstream
from tests.upstream_fake import content_frame as chunk

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
SETTINGS = dict(heartbeat_interval=0.3, first_byte_timeout=1.0, idle_timeout=0.6, connect_timeout=1.0)
SSE = [("Content-Type", "text/event-stream")]
JSON = [("Content-Type", "application/json")]


COMPLETION = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    }
)


@dataclass(frozen=True)
class Outcome:
    status: int
    code: str | None  # the error code the client sees, in-band or in the body
    text: str = ""  # what reached the client before it


Fault = Callable[[bool], Handler]  # given "is this a streaming request", how the upstream misbehaves


def reset_before_headers(streaming: bool) -> Handler:
    async def handler(request: Received, out: Writer) -> None:
        out.reset()

    return handler


def partly_then(ending: Callable[[Writer], Awaitable[None]]) -> Fault:
    """Headers and part of the answer, then ``ending``."""

    def fault(streaming: bool) -> Handler:
        async def handler(request: Received, out: Writer) -> None:
            if streaming:
                await out.start(200, SSE)
                await out.chunk(chunk("half"))
            else:
                await out.start(200, [*JSON, ("Content-Length", str(len(COMPLETION)))], chunked=False)
                await out.raw(COMPLETION[:20])
            await ending(out)

        return handler

    return fault


async def reset(out: Writer) -> None:
    await asyncio.sleep(0.05)
    out.reset()


async def stall(out: Writer) -> None:
    await asyncio.sleep(30)


reset_mid_stream = partly_then(reset)
stall_mid_stream = partly_then(stall)


def stall_before_headers(streaming: bool) -> Handler:
    async def handler(request: Received, out: Writer) -> None:
        await asyncio.sleep(30)

    return handler


def body(status: int, headers: list[tuple[str, str]], streamed: bytes, whole: bytes) -> Fault:
    def fault(streaming: bool) -> Handler:
        async def handler(request: Received, out: Writer) -> None:
            await out.start(status, headers if streaming else [*headers[1:], *JSON])
            await out.chunk(streamed if streaming else whole)
            await out.end()

        return handler

    return fault


def drip(streaming: bool) -> Handler:
    data = (
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        if streaming
        else b'{"choices":[{"message":{}}]}'
    )

    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, SSE if streaming else JSON)
        for byte in data:
            await out.chunk(bytes([byte]))
            await asyncio.sleep(0.05)
        await out.end()

    return handler


def no_terminator(streaming: bool) -> Handler:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, SSE if streaming else JSON)
        await out.chunk(chunk("whole") if streaming else COMPLETION)  # and never the final 0-chunk

    return handler


def gzipped(streaming: bool) -> Handler:
    data = gzip.compress(chunk("zipped") + b"data: [DONE]\n\n" if streaming else COMPLETION)

    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [*(SSE if streaming else JSON), ("Content-Encoding", "gzip")])
        await out.chunk(data)
        await out.end()

    return handler


def closed_after_headers(streaming: bool) -> Handler:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, SSE if streaming else JSON)

    return handler


HTML = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
GARBAGE = bytes(range(256)) * 8
BAD_UTF8 = b'data: {"choices":[{"index":0,"delta":{"content":"a\xff\xfeb"}}]}\n\n'
BIG = b"data: " + b"x" * (20 * 1024 * 1024)

MATRIX: list[tuple[str, Fault, Outcome, Outcome]] = [
    (
        "reset-before-headers",
        reset_before_headers,
        Outcome(502, "upstream_disconnected"),
        Outcome(502, "upstream_disconnected"),
    ),
    (
        "reset-mid-stream",
        reset_mid_stream,
        Outcome(200, "upstream_disconnected", "half"),
        Outcome(502, "upstream_disconnected"),
    ),
    (
        "stall-before-headers",
        stall_before_headers,
        Outcome(200, "upstream_timeout"),
        Outcome(504, "upstream_timeout"),  # no keep-alive by default: the real status
    ),
    (
        "stall-mid-stream",
        stall_mid_stream,
        Outcome(200, "upstream_timeout", "half"),
        Outcome(504, "upstream_timeout"),
    ),
    (
        "garbage",
        body(200, SSE, GARBAGE, GARBAGE),
        Outcome(200, "upstream_error"),
        Outcome(502, "upstream_error"),
    ),
    (
        "invalid-utf8",
        body(200, SSE, BAD_UTF8, b'{"choices":[{"message":{"content":"a\xffb"}}]}'),
        Outcome(200, None, "a\ufffd\ufffdb"),
        Outcome(200, None, "a\ufffdb"),
    ),
    (
        "20-mib-line",
        body(200, SSE, BIG, b'{"choices":"' + b"x" * (20 * 1024 * 1024) + b'"}'),
        Outcome(200, "event_too_large"),
        Outcome(502, "response_too_large"),
    ),
    ("drip", drip, Outcome(200, None, "hi"), Outcome(200, None, "")),
    (
        "html-502",
        body(502, [("Content-Type", "text/html"), ("X-Proxy", "nginx")], HTML, HTML),
        Outcome(502, 502),
        Outcome(502, 502),
    ),  # type: ignore[arg-type]
    (
        "no-chunk-terminator",
        no_terminator,
        Outcome(200, "upstream_disconnected", "whole"),
        Outcome(502, "upstream_disconnected"),
    ),
    ("gzip", gzipped, Outcome(200, None, "zipped"), Outcome(200, None, "hi")),
    (
        "closed-after-headers",
        closed_after_headers,
        Outcome(200, "upstream_disconnected"),
        Outcome(502, "upstream_disconnected"),
    ),
]


def normal_or(fault: Handler) -> Handler:
    """The fault for every request, but a clean answer for model "normal"."""

    async def handler(request: Received, out: Writer) -> None:
        fields: Any = request.json()
        if fields.get("model") != "normal":
            await fault(request, out)
        elif fields.get("stream"):
            await out.start(200, SSE)
            await out.chunk(chunk("fine") + b"data: [DONE]\n\n")
            await out.end()
        else:
            await out.start(200, [*JSON, ("Content-Length", str(len(COMPLETION)))], chunked=False)
            await out.raw(COMPLETION)

    return handler


async def ask(adapter: str, streaming: bool, model: str = "m", **options: Any) -> Outcome:
    """One request as a client makes it, bounded in time: a hang fails the test."""
    body = {"model": model, "messages": [], "stream": streaming}
    async with httpx.AsyncClient(timeout=10, verify=TLS) as client:
        reply = await asyncio.wait_for(client.post(adapter + CHAT, json=body, **options), 60)
    if not streaming or not reply.headers.get("content-type", "").startswith("text/event-stream"):
        parsed = orjson.loads(reply.content)
        error = parsed.get("error")
        text = "" if error else parsed["choices"][0]["message"].get("content") or ""
        return Outcome(reply.status_code, error and error.get("code"), text)
    assert reply.text.endswith("data: [DONE]\n\n")
    assert reply.text.count("[DONE]") == 1
    chunks = [orjson.loads(line[6:]) for line in reply.text.split("\n\n") if line[6:] not in ("", "[DONE]")]
    text = "".join(
        (c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c.get("choices")
    )
    errors = [c["error"]["code"] for c in chunks if "error" in c]
    return Outcome(reply.status_code, errors[-1] if errors else None, text)


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize(
    ("fault", "on_stream", "on_nonstream"), [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX]
)
async def test_upstream_fault(
    fault: Fault, on_stream: Outcome, on_nonstream: Outcome, streaming: bool
) -> None:
    # Short deadlines only where a timeout is the expected outcome: elsewhere (a drip's first event
    # takes 2.5 s to complete, a 20 MiB line is read whole on a loaded machine) they would race it.
    times_out = "upstream_timeout" in (on_stream.code, on_nonstream.code)
    settings = SETTINGS if times_out else {**SETTINGS, "first_byte_timeout": 30.0, "idle_timeout": 30.0}
    async with fake_upstream(normal_or(fault(streaming))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, **settings)) as adapter:  # type: ignore[arg-type]
            got = await ask(adapter, streaming)
            assert got == (on_stream if streaming else on_nonstream)
            assert await ask(adapter, streaming, model="normal") == Outcome(
                200, None, "fine" if streaming else "hi"
            )


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "non-stream"])
async def test_connection_refused_then_the_upstream_comes_back(streaming: bool) -> None:
    port = free_port()  # not from the kernel's own range: no parallel test's socket takes it meanwhile
    async with run_adapter(Settings(upstream=f"http://127.0.0.1:{port}", **SETTINGS)) as adapter:  # type: ignore[arg-type]
        assert await ask(adapter, streaming) == Outcome(502, "upstream_unreachable")
        async with fake_upstream(normal_or(drip), port=port):
            assert await ask(adapter, streaming, model="normal") == Outcome(
                200, None, "fine" if streaming else "hi"
            )


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "non-stream"])
async def test_client_faults(streaming: bool) -> None:
    settings = replace(Settings(upstream="http://x", max_request_bytes=4096, api_keys=("sk-right",)))
    async with fake_upstream(normal_or(drip)) as upstream:
        async with run_adapter(replace(settings, upstream=upstream.url)) as adapter:
            good = {"Authorization": "Bearer sk-right"}
            async with httpx.AsyncClient(timeout=10) as client:
                invalid = await client.post(adapter + CHAT, content=b"{not json", headers=good)
                too_big = await client.post(adapter + CHAT, json={"messages": ["x" * 5000]}, headers=good)
                wrong = await client.post(
                    adapter + CHAT, json={"model": "normal"}, headers={"Authorization": "Bearer no"}
                )
            assert (invalid.status_code, invalid.json()["error"]["code"]) == (400, "invalid_json")
            assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "request_too_large")
            assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
            normal = await ask(adapter, streaming, model="normal", headers=good)
            assert normal == Outcome(200, None, "fine" if streaming else "hi")
    assert len(upstream.requests) == 1  # none of the bad requests reached the model server
