"""The relay over real sockets: fixture upstreams, the One-API double, the openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial

import httpx
import openai
import orjson
import pytest

from sse_adapter.settings import Settings
from sse_adapter.tools.oneapi import OneAPIRelay
from tests.adapter_server import run_adapter
from tests.end_client import Seen, assert_spec_clean, fixture, stream
from tests.upstream_fake import Received, Writer, content_frame, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

DIALECTS = [
    pytest.param("tgi-2.0.sse", CHAT, "Hello from TGI!", id="tgi-2.0"),
    pytest.param("vllm.sse", CHAT, "The answer is 42.", id="vllm"),
    pytest.param("vllm-completions.sse", COMPLETIONS, "Once upon a time", id="vllm-completions"),
    pytest.param("xinference.sse", CHAT, "你好，世界", id="xinference"),
    pytest.param("cr-only.sse", CHAT, "Carriage returns only", id="cr-only"),
    pytest.param("multiline.sse", CHAT, "multi-line", id="multiline"),
    pytest.param("bom-fields.sse", CHAT, "fields are ignored", id="bom-fields"),
    pytest.param("no-done.sse", CHAT, "no done marker", id="no-done"),
]


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def settings(upstream: str, **overrides: object) -> Settings:
    return Settings(upstream=upstream, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("delivery", [0, 7, 1], ids=["whole", "7-byte-reads", "byte-by-byte"])
@pytest.mark.parametrize(("name", "path", "text"), DIALECTS)
async def test_every_dialect_reaches_the_client_behind_one_api(
    name: str, path: str, text: str, delivery: int
) -> None:
    transcript = fixture(name)
    async with fake_upstream(sse(pieces(transcript, delivery or len(transcript)))) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            seen = await stream(adapter, path, {"model": "m", "stream": True})
    assert seen.status == 200
    assert seen.text() == text
    assert seen.dones() == 1
    assert seen.payloads[-1] == b"[DONE]"
    assert_spec_clean(seen.raw)
    ids = {chunk["id"] for chunk in seen.chunks}
    assert len(ids) == 1
    assert ids != {""}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("tgi-2.0.sse", "Hello from TGI!"),
        ("cr-only.sse", "Carriage returns only"),
        ("multiline.sse", "multi-line"),
    ],
    ids=["tgi-2.0", "cr-only", "multiline"],
)
def test_without_the_adapter_one_api_breaks_these_streams(name: str, text: str) -> None:
    """The double is strict enough to fail: straight from upstream, the text is lost."""
    relay = OneAPIRelay()
    seen = Seen(
        200, httpx.Headers(), frames=[(0.0, frame) for frame in relay.feed(fixture(name)) + relay.close()]
    )
    assert seen.payloads[-1] == b"[DONE]"
    try:
        readable = seen.text()
    except orjson.JSONDecodeError:
        readable = None  # a frame the end client cannot even parse
    assert readable != text


async def test_headers_are_those_of_a_clean_event_stream() -> None:
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.headers["content-type"] == "text/event-stream"
    assert seen.headers["cache-control"] == "no-cache"
    assert seen.headers["x-accel-buffering"] == "no"
    assert "keep-alive" not in seen.headers.get("connection", "")


@pytest.mark.parametrize(("name", "path", "text"), DIALECTS)
async def test_the_openai_sdk_reads_every_dialect(name: str, path: str, text: str) -> None:
    async with fake_upstream(sse([fixture(name)])) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            client = openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="sk-test", max_retries=0)
            parts: list[str] = []
            if path == CHAT:
                chat = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async for chunk in chat:
                    parts += [choice.delta.content or "" for choice in chunk.choices]
            else:
                completion = await client.completions.create(model="m", prompt="hi", stream=True)
                async for piece in completion:
                    parts += [choice.text for choice in piece.choices]
            await client.close()
    assert "".join(parts) == text


def silent_then(*steps: tuple[float, bytes], headers_after: float = 0.0) -> object:
    """An upstream that waits before its headers, then before each piece."""

    async def handler(request: Received, out: Writer) -> None:
        await asyncio.sleep(headers_after)
        await out.start(200, [("Content-Type", "text/event-stream")])
        for pause, piece in steps:
            await asyncio.sleep(pause)
            await out.chunk(piece)
        await out.end()

    return handler


chunk = partial(content_frame, chunk_id="chatcmpl-x", model="up")

INTERVAL = 0.2
# The longest gap a test accepts: several intervals, for a loaded machine's scheduling, and still
# well under the upstream's silences (1 s and more) that a missing heartbeat would show as.
LATE = 3 * INTERVAL


@pytest.mark.parametrize("headers_after", [0.0, 0.9], ids=["headers-at-once", "headers-late"])
async def test_heartbeats_reach_the_end_client_while_the_upstream_is_silent(headers_after: float) -> None:
    upstream_steps = [(1.0, chunk("think")), (1.0, chunk("ing")), (0.0, b"data: [DONE]\n\n")]
    handler = silent_then(*upstream_steps, headers_after=headers_after)
    async with fake_upstream(handler) as upstream:  # type: ignore[arg-type]
        async with run_adapter(settings(upstream.url, heartbeat_interval=INTERVAL)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "reasoner", "stream": True})
    assert seen.text() == "thinking"
    assert max(seen.gaps()) <= LATE, seen.gaps()
    beats = [chunk for chunk in seen.chunks if chunk["choices"][0]["delta"] == {"content": ""}]  # type: ignore[index]
    assert len(beats) >= 3  # about 2.0 s of silence: 10 at 0.2 s, and at least one every LATE
    first_token = next(n for n, chunk in enumerate(seen.chunks) if chunk not in beats)
    # the request's model until the upstream names its own; then the upstream's, as its chunks carry
    assert {beat["model"] for beat in seen.chunks[:first_token]} == {"reasoner"}
    assert {chunk["model"] for chunk in seen.chunks[first_token:]} == {"up"}
    assert {chunk["created"] for chunk in seen.chunks[first_token:]} == {1}
    assert {chunk["id"] for chunk in seen.chunks} == {beats[0]["id"]}
    assert str(beats[0]["id"]).startswith("chatcmpl-")


async def test_completion_heartbeats_carry_empty_text() -> None:
    body = (
        b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}\n\n'
    )
    handler = silent_then((0.5, body))
    async with fake_upstream(handler) as upstream:  # type: ignore[arg-type]
        async with run_adapter(settings(upstream.url, heartbeat_interval=INTERVAL)) as adapter:
            seen = await stream(adapter, COMPLETIONS, {"model": "m", "prompt": "x", "stream": True})
    first = seen.chunks[0]
    assert first["object"] == "text_completion"
    assert first["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": None}]
    assert seen.text() == "ok"
    assert seen.chunks[-1]["id"] == first["id"]


async def test_comment_mode_keeps_only_the_hop_alive() -> None:
    handler = silent_then((0.7, chunk("late")))
    async with fake_upstream(handler) as upstream:  # type: ignore[arg-type]
        adapter_settings = settings(upstream.url, heartbeat_interval=INTERVAL, heartbeat_mode="comment")
        async with run_adapter(adapter_settings) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    before, _, _ = seen.raw.partition(b"data: ")
    assert before.startswith(b": keep-alive\n\n")
    assert before == b": keep-alive\n\n" * before.count(b":")  # comments only, until the token
    assert seen.text() == "late"
    assert seen.frames[0][0] >= 0.6  # One-API drops comments: its client heard nothing before the token


async def test_heartbeats_off_sends_nothing_but_the_stream() -> None:
    handler = silent_then((0.7, chunk("late")))
    async with fake_upstream(handler) as upstream:  # type: ignore[arg-type]
        async with run_adapter(
            settings(upstream.url, heartbeat_interval=INTERVAL, heartbeat_mode="off")
        ) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.raw.startswith(b'data: {"id":"chatcmpl-x"')
    assert seen.text() == "late"
    assert seen.dones() == 1


def endless(pause: float, headers: bool = True) -> object:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        while True:
            await out.chunk(chunk("tick"))
            await asyncio.sleep(pause)

    async def silent(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await asyncio.sleep(3600)

    return handler if pause else silent


@pytest.mark.parametrize("pause", [0.02, 0.0], ids=["mid-stream", "before-first-token"])
async def test_a_client_that_leaves_closes_the_upstream(pause: float) -> None:
    async with fake_upstream(endless(pause)) as upstream:  # type: ignore[arg-type]
        async with run_adapter(settings(upstream.url, heartbeat_interval=0.1)) as adapter:
            async with httpx.AsyncClient() as client:
                async with client.stream(
                    "POST", adapter + CHAT, json={"model": "m", "stream": True}
                ) as reply:
                    async for _ in reply.aiter_raw():
                        break  # the first frame: a token, or a heartbeat while the upstream is silent
                left = asyncio.get_running_loop().time()
            hung_up = await asyncio.wait_for(upstream.hangups.get(), 2)
    assert hung_up - left < 1.0


async def test_an_upstream_cut_mid_stream_ends_in_an_error_not_a_clean_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await out.chunk(chunk("half"))
        await out.raw(b"5\r\ndat")  # then the socket closes inside a chunk

    async with fake_upstream(handler) as upstream, run_adapter(settings(upstream.url)) as adapter:
        seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.text() == "half"
    error = seen.chunks[-1]["error"]
    assert error["code"] == "upstream_disconnected"  # type: ignore[index]
    assert "broke off" in error["message"]  # type: ignore[index]
    # the model server's address and aiohttp's words: in our log, with the request id, not to the client
    assert upstream.url not in error["message"]  # type: ignore[index]
    logged = [r.getMessage() for r in caplog.records if upstream.url in r.getMessage()]
    assert logged
    assert logged[0].startswith("request ")
    assert "ClientPayloadError" in logged[0]
    assert seen.dones() == 1
    assert_spec_clean(seen.raw)


async def test_the_openai_sdk_raises_on_the_in_band_error() -> None:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await out.chunk(chunk("half"))

    async with fake_upstream(handler) as upstream, run_adapter(settings(upstream.url)) as adapter:
        client = openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="sk-test", max_retries=0)
        chat = await client.chat.completions.create(model="m", messages=[], stream=True)
        with pytest.raises(openai.APIError, match="broke off the response"):
            async for _ in chat:
                pass
        await client.close()


async def test_an_unreachable_upstream_is_a_502_in_openai_shape() -> None:
    async with fake_upstream(sse([])) as upstream:
        dead = upstream.url
    async with run_adapter(settings(dead)) as adapter, httpx.AsyncClient() as client:
        reply = await client.post(adapter + CHAT, json={"model": "m", "stream": True})
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert dead not in error["message"]  # the address is for our log
    assert "--upstream" in error["message"]


async def test_a_fast_upstream_error_keeps_its_status() -> None:
    body = b'{"error":"Input validation error: max_new_tokens","error_type":"validation"}'
    async with fake_upstream(json_answer(422, body)) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.post(adapter + CHAT, json={"model": "m", "stream": True})
    assert reply.status_code == 422
    assert "Input validation error" in reply.text


async def test_a_late_upstream_error_goes_in_band_after_heartbeats() -> None:
    async def handler(request: Received, out: Writer) -> None:
        await asyncio.sleep(0.5)
        body = b'{"error":"Model is overloaded","error_type":"overloaded"}'
        await out.start(
            503, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], chunked=False
        )
        await out.raw(body)

    async with fake_upstream(handler) as upstream:
        async with run_adapter(settings(upstream.url, heartbeat_interval=INTERVAL)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.status == 200
    error = seen.chunks[-1]["error"]
    assert error["message"] == "the upstream answered 503: Model is overloaded"  # type: ignore[index]
    assert seen.chunks[-1]["choices"][0]["finish_reason"] == "error"  # type: ignore[index]
    assert seen.dones() == 1


async def test_an_upstream_event_over_the_bound_is_an_in_band_error() -> None:
    big = b"data: " + b"x" * 5000
    async with fake_upstream(sse([chunk("before"), big])) as upstream:
        async with run_adapter(settings(upstream.url, max_event_bytes=4096)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.text() == "before"
    assert seen.chunks[-1]["error"]["code"] == "event_too_large"  # type: ignore[index]
    assert seen.dones() == 1


async def test_a_stream_that_ends_empty_says_what_most_often_causes_it() -> None:
    """llama-cpp-python answers a prompt over its context with a 200 and no byte at all."""
    async with fake_upstream(sse([])) as upstream, run_adapter(settings(upstream.url)) as adapter:
        seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    error = seen.chunks[-1]["error"]
    assert error["code"] == "empty_stream"  # type: ignore[index]
    assert "longer than the model's context" in error["message"]  # type: ignore[index]
    assert "--upstream" not in error["message"]  # type: ignore[index]


async def test_the_error_chunk_names_the_upstreams_model_once_it_has_spoken() -> None:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await out.chunk(chunk("half"))
        await out.raw(b"5\r\ndat")

    async with fake_upstream(handler) as upstream, run_adapter(settings(upstream.url)) as adapter:
        seen = await stream(adapter, CHAT, {"model": "alias", "stream": True})
    assert {item["model"] for item in seen.chunks} == {"up"}


LLAMA_SERVER_OVERFLOW = (
    b'{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
    b'"type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}'
)


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "non-stream"])
async def test_error_bodies_keep_the_servers_own_fields(streaming: bool) -> None:
    handler = json_answer(400, LLAMA_SERVER_OVERFLOW)
    async with fake_upstream(handler) as upstream, run_adapter(settings(upstream.url)) as adapter:
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                adapter + CHAT, json={"model": "m", "stream": streaming, "messages": []}
            )
    assert reply.status_code == 400
    assert reply.json()["error"] == orjson.loads(LLAMA_SERVER_OVERFLOW)["error"]


async def test_a_200_committed_early_gets_its_first_heartbeat_an_interval_out_not_at_the_hold() -> None:
    async def headers_then_silence(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])  # at once: the 200 commits
        await asyncio.sleep(2.0)
        await out.chunk(chunk("late") + b"data: [DONE]\n\n")
        await out.end()

    async with fake_upstream(headers_then_silence) as upstream:
        overrides = {"heartbeat_interval": 0.3, "status_hold": 30.0}  # a hold far past the silence
        async with run_adapter(settings(upstream.url, **overrides)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.text() == "late"
    assert seen.heartbeats() >= 1  # before: none, the first beat waited for the 30 s hold
