"""/v1/messages over real sockets: a fake upstream writing exact bytes, the anthropic SDK as client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.formats_fake import (
    message_start,
    messages_delta,
    messages_head,
    messages_stream,
    messages_tail,
    typed,
)
from tests.proxy.test_responses_wire import cut_after, frame_gaps, paced
from tests.tokenize_fake import with_toy_tokenizer
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

WORDS = ["Hello", ", ", "world", "."]
INTERVAL = 0.3
ASK: dict[str, Any] = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def settings(upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"heartbeat_interval": INTERVAL, "status_hold": 0.1} | overrides
    return Settings(upstream=upstream, **values)


@asynccontextmanager
async def client(adapter: str, key: str = "k") -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=adapter, api_key=key, max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


async def test_a_clean_stream_passes_byte_for_byte_and_the_sdk_reads_it() -> None:
    parts = messages_stream(WORDS)
    async with fake_upstream(sse(parts)) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(adapter + "/v1/messages", json={**ASK, "stream": True})
            async with client(adapter) as sdk:
                async with sdk.messages.stream(**ASK) as stream:
                    text = "".join([piece async for piece in stream.text_stream])
                    final = await stream.get_final_message()
    assert answer.content == b"".join(parts)
    assert text == "Hello, world."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)


@pytest.mark.parametrize("silent_at", [0, 3], ids=["before-first-event", "mid-answer"])
async def test_silences_get_pings_and_the_sdk_finishes(silent_at: int) -> None:
    parts = messages_stream(WORDS)
    async with fake_upstream(paced(parts, {silent_at: 2.0})) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            gap = await frame_gaps(adapter + "/v1/messages", {**ASK, "stream": True})
            async with httpx.AsyncClient() as http:
                answer = await http.post(adapter + "/v1/messages", json={**ASK, "stream": True})
            async with client(adapter) as sdk:
                async with sdk.messages.stream(**ASK) as stream:
                    final = await stream.get_final_message()
    assert gap < INTERVAL + 1.0
    assert b'event: ping\ndata: {"type":"ping"}\n\n' in answer.content  # about six in 2 s of silence
    assert final.content[0].text == "Hello, world."  # type: ignore[union-attr]


async def test_upstream_pings_count_as_liveness_and_are_not_doubled() -> None:
    ping = typed({"type": "ping"})

    async def pinging(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        for part in messages_head():
            await out.chunk(part)
        for _ in range(8):
            await asyncio.sleep(INTERVAL / 2)
            await out.chunk(ping)
        for part in [messages_delta("ok"), *messages_tail()]:
            await out.chunk(part)
        await out.end()

    async with fake_upstream(pinging) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(adapter + "/v1/messages", json={**ASK, "stream": True})
    assert answer.content.count(b"event: ping") == 8


FAILURES = [
    pytest.param(cut_after([*messages_head(), messages_delta("Hel")]), "api_error", id="cut-connection"),
    pytest.param(sse([*messages_head(), messages_delta("Hel")]), "api_error", id="eof-without-message-stop"),
    pytest.param(
        sse(
            [
                *messages_head(),
                typed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
            ]
        ),
        "overloaded_error",
        id="error-event",
    ),
    pytest.param(paced(messages_stream(WORDS), {3: 30.0}), "timeout_error", id="idle-timeout"),
    pytest.param(sse([*messages_head(), b"data: [not json\n\n"]), "api_error", id="undecodable"),
]


@pytest.mark.parametrize(("handler", "kind"), FAILURES)
async def test_every_failure_ends_in_one_error_event_the_sdk_raises(handler: Any, kind: str) -> None:
    async with fake_upstream(handler) as upstream:
        async with run_adapter(settings(upstream.url, idle_timeout=1.5, first_byte_timeout=3)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(adapter + "/v1/messages", json={**ASK, "stream": True})
            async with client(adapter) as sdk:
                with pytest.raises(anthropic.APIError):
                    async with sdk.messages.stream(**ASK) as stream:
                        await stream.get_final_message()
    frames = [frame for frame in answer.content.split(b"\n\n") if frame]
    assert sum(frame.startswith(b"event: error\n") for frame in frames) == 1
    assert frames[-1].startswith(b"event: error\ndata: ")
    error = orjson.loads(frames[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["type"] == kind
    assert error["error"]["message"]
    assert b"event: message_stop" not in answer.content


UPFRONT = [
    pytest.param(
        400,
        b'{"object":"error","message":"bad","type":"BadRequestError","code":400}',
        "invalid_request_error",
        anthropic.BadRequestError,
        id="400-openai-shape",
    ),
    pytest.param(
        404, b'{"detail":"Not Found"}', "not_found_error", anthropic.NotFoundError, id="404-fastapi"
    ),
    pytest.param(503, b"overloaded", "overloaded_error", anthropic.InternalServerError, id="503-text"),
    pytest.param(
        529,
        b'{"type":"error","error":{"type":"overloaded_error","message":"full"}}',
        "overloaded_error",
        anthropic.InternalServerError,
        id="529-anthropic",
    ),
]


@pytest.mark.parametrize(("status", "body", "kind", "raised"), UPFRONT)
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "non-stream"])
async def test_upfront_errors_keep_their_status_in_anthropics_shape(
    status: int, body: bytes, kind: str, raised: type[Exception], streaming: bool
) -> None:
    async with fake_upstream(json_answer(status, body)) as upstream:
        # A hold the answer cannot outlast on a loaded machine: an error that came after a
        # 200 went out would be in-band, and this test is about the status.
        async with run_adapter(settings(upstream.url, status_hold=10.0)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(adapter + "/v1/messages", json={**ASK, "stream": streaming})
            async with client(adapter) as sdk:
                with pytest.raises(raised):
                    await sdk.messages.create(**ASK, stream=streaming)  # type: ignore[call-overload]
    assert answer.status_code == status
    got = answer.json()
    assert got["type"] == "error"
    assert got["error"]["type"] == kind
    assert got["error"]["message"]


async def test_the_non_stream_path_passes_the_servers_message() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "content": [{"type": "text", "text": "whole"}],
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    async with fake_upstream(json_answer(200, orjson.dumps(message))) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with client(adapter) as sdk:
                got = await sdk.messages.create(**ASK)
    assert got.content[0].text == "whole"  # type: ignore[union-attr]


async def test_keys_x_api_key_in_and_both_headers_out() -> None:
    async with fake_upstream(sse(messages_stream(WORDS))) as upstream:
        overrides = {"api_keys": ("inner",), "upstream_api_key": "outer"}
        async with run_adapter(settings(upstream.url, **overrides)) as adapter:
            async with client(adapter, key="wrong") as sdk:
                with pytest.raises(anthropic.AuthenticationError) as refused:
                    await sdk.messages.create(**ASK, stream=True)
            async with client(adapter, key="inner") as sdk:
                async with sdk.messages.stream(**ASK, extra_headers={"anthropic-beta": "b1"}) as stream:
                    await stream.get_final_message()
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index,call-overload]
    sent = upstream.requests[0].headers
    assert sent["authorization"] == "Bearer outer"
    assert sent["x-api-key"] == "outer"
    assert sent["anthropic-version"]
    assert sent["anthropic-beta"] == "b1"


async def test_count_tokens_is_relayed() -> None:
    async with fake_upstream(json_answer(200, b'{"input_tokens":12}')) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with client(adapter) as sdk:
                counted = await sdk.messages.count_tokens(model="m", messages=ASK["messages"])
    assert counted.input_tokens == 12
    assert upstream.requests[0].target == "/v1/messages/count_tokens"


async def test_missing_output_usage_is_counted_with_the_servers_tokenizer() -> None:
    parts = messages_stream(WORDS, output_tokens=None)

    async with fake_upstream(with_toy_tokenizer(sse(parts)), handles_probes=True) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with client(adapter) as sdk:
                async with sdk.messages.stream(**ASK) as stream:
                    final = await stream.get_final_message()
    assert final.usage.output_tokens == 3  # "Hello," "world." and the stop token of end_turn
    assert final.usage.input_tokens == 7  # the server's own, from message_start


async def test_a_long_text_delta_is_split_under_the_line_limit() -> None:
    long = "y" * 6000
    parts = [*messages_head(), messages_delta(long), *messages_tail()]
    async with fake_upstream(sse(parts)) as upstream:
        async with run_adapter(settings(upstream.url, max_line_bytes=1024)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(adapter + "/v1/messages", json={**ASK, "stream": True})
            async with client(adapter) as sdk:
                async with sdk.messages.stream(**ASK) as stream:
                    final = await stream.get_final_message()
    assert final.content[0].text == long  # type: ignore[union-attr]
    lines = answer.content.split(b"\n")
    assert max(len(line) for line in lines) <= 1024
    assert sum(line.startswith(b"event: content_block_delta") for line in lines) > 5


async def test_a_client_that_leaves_cancels_the_upstream_request() -> None:
    async def endless(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        for part in messages_head():
            await out.chunk(part)
        for _ in range(10_000):
            await out.chunk(messages_delta("x"))
            await asyncio.sleep(0.05)

    async with fake_upstream(endless) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                async with http.stream(
                    "POST", adapter + "/v1/messages", json={**ASK, "stream": True}
                ) as answer:
                    async for _ in answer.aiter_raw():
                        break
            left = time.monotonic()
            hung_up = await asyncio.wait_for(upstream.hangups.get(), 10)
    assert hung_up - left < 5.0


async def test_a_message_start_without_usage_gets_one_and_the_sdk_finishes() -> None:
    """The anthropic SDK's stream raises on a message_start with no usage (seen live, behind a
    proxy that strips usage): the adapter gives it one, and the count fills it in at the end."""
    start = orjson.loads(message_start()[len(b"event: message_start\ndata: ") : -2])
    del start["message"]["usage"]
    parts = [typed(start), *messages_stream(WORDS, output_tokens=None)[1:]]

    async with fake_upstream(with_toy_tokenizer(sse(parts)), handles_probes=True) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with client(adapter) as sdk:
                async with sdk.messages.stream(**ASK) as stream:
                    final = await stream.get_final_message()
    assert "".join(block.text for block in final.content if block.type == "text") == "Hello, world."
    assert final.usage.output_tokens == 3  # counted: "Hello," "world." and the stop token
    assert final.usage.input_tokens == 4  # counted: the toy template's user, hi, <end>, assistant
