"""/v1/responses over real sockets: a fake upstream writing exact bytes, the openai SDK as client."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.formats_fake import (
    USAGE,
    responses_delta,
    responses_head,
    responses_stream,
    responses_tail,
    typed,
)
from tests.tokenize_fake import with_toy_tokenizer
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

WORDS = ["Hello", ", ", "world", "."]
INTERVAL = 0.3


def settings(upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"heartbeat_interval": INTERVAL, "status_hold": 0.1} | overrides
    return Settings(upstream=upstream, **values)


@asynccontextmanager
async def client(adapter: str) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="k", max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


def paced(parts: list[bytes], pauses: dict[int, float]) -> Any:
    """A 200 event stream that waits ``pauses[n]`` seconds before part ``n``."""

    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        for number, part in enumerate(parts):
            if number in pauses:
                await asyncio.sleep(pauses[number])
            await out.chunk(part)
        await out.end()

    return handler


def cut_after(parts: list[bytes]) -> Any:
    """The parts, then a reset: a crashed server."""

    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        for part in parts:
            await out.chunk(part)
        await asyncio.sleep(0.05)
        out.reset()

    return handler


async def events_of(adapter: str, body: dict[str, Any] | None = None) -> list[tuple[float, Any]]:
    """Every event the SDK yields, with the time it came."""
    async with client(adapter) as sdk:
        stream = await sdk.responses.create(model="m", input="hi", stream=True, **(body or {}))
        return [(time.monotonic(), event) async for event in stream]


def check_numbering(events: list[Any]) -> None:
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    ids = {event.response.id for event in events if getattr(event, "response", None) is not None}
    assert len(ids) == 1, ids


async def test_a_clean_stream_passes_with_its_text_numbers_id_and_usage() -> None:
    async with fake_upstream(sse(responses_stream(WORDS))) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            got = [event for _, event in await events_of(adapter)]
    assert [event.type for event in got][:2] == ["response.created", "response.in_progress"]
    assert "".join(e.delta for e in got if e.type == "response.output_text.delta") == "Hello, world."
    assert got[-1].type == "response.completed"
    assert got[-1].response.id == "resp_up"
    assert got[-1].response.usage.input_tokens == 7
    check_numbering(got)
    assert next(g.sequence_number for g in got) == 0
    assert upstream.requests[0].json() == {"model": "m", "input": "hi", "stream": True}


async def test_clean_events_go_out_byte_for_byte() -> None:
    parts = responses_stream(WORDS)
    async with fake_upstream(sse(parts)) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                body = {"model": "m", "input": "hi", "stream": True}
                answer = await http.post(adapter + "/v1/responses", json=body)
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.content == b"".join(parts)


async def frame_gaps(url: str, body: dict[str, Any]) -> float:
    """The longest wait between two frames on the wire, the first from the request."""
    async with httpx.AsyncClient(timeout=60) as http:
        started = time.monotonic()
        times, data = [started], b""
        async with http.stream("POST", url, json=body) as answer:
            async for raw in answer.aiter_raw():
                data += raw
                times += [time.monotonic()] * raw.count(b"\n\n")
    return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("silent_at", [0, 6], ids=["before-first-event", "mid-answer"])
async def test_silences_get_typed_keepalives_and_the_sdk_finishes(silent_at: int) -> None:
    parts = responses_stream(WORDS)
    async with fake_upstream(paced(parts, {silent_at: 2.0})) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            # the wire, read as it comes (the SDK's first parse of a type can take a second on a busy machine)
            gap = await frame_gaps(adapter + "/v1/responses", {"model": "m", "input": "hi", "stream": True})
            async with client(adapter) as sdk:
                async with sdk.responses.stream(model="m", input="hi") as stream:
                    events = [event async for event in stream]
                    final = await stream.get_final_response()
    assert gap < INTERVAL + 1.0
    assert final.output_text == "Hello, world."
    keepalives = [e for e in events if e.type == "keepalive"]
    assert keepalives  # 2 s of silence: about six at 0.3 s; a loaded machine's timers may fire late
    assert events[0].type == "response.created"
    check_numbering(events)
    if silent_at == 0:  # the adapter spoke first: its id, not the upstream's, from first to last
        assert final.id != "resp_up"
        assert final.id.startswith("resp_")
        assert sum(e.type == "response.created" for e in events) == 1
    else:
        assert final.id == "resp_up"


async def test_a_made_id_goes_upstream_as_the_upstreams_own_in_previous_response_id() -> None:
    parts = responses_stream(WORDS, rid="resp_upstream_1")
    async with fake_upstream(paced(parts, {0: 1.0})) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            got = [event for _, event in await events_of(adapter)]
            ours = got[-1].response.id
            await events_of(adapter, {"previous_response_id": ours})
            await events_of(adapter, {"previous_response_id": "resp_unknown"})
    assert ours != "resp_upstream_1"
    sent = [request.json() for request in upstream.requests]
    assert sent[1]["previous_response_id"] == "resp_upstream_1"  # type: ignore[index]
    assert sent[2]["previous_response_id"] == "resp_unknown"  # type: ignore[index]


FAILURES = [
    pytest.param(
        cut_after([*responses_head(), responses_delta("Hel", 4)]), "server_error", id="cut-connection"
    ),
    pytest.param(
        sse([*responses_head(), responses_delta("Hel", 4)]), "server_error", id="eof-without-terminal"
    ),
    pytest.param(
        sse(
            [
                *responses_head(),
                typed(
                    {
                        "type": "error",
                        "code": "boom",
                        "message": "CUDA out of memory",
                        "param": None,
                        "sequence_number": 4,
                    }
                ),
            ]
        ),
        "server_error",
        id="error-event",
    ),
    pytest.param(
        sse(
            [
                *responses_head(),
                typed(
                    {
                        "type": "error",
                        "code": None,
                        "sequence_number": 4,
                        "message": "This model's maximum context length is 2048 tokens.",
                    }
                ),
            ]
        ),
        "context_length_exceeded",
        id="context-overflow",
    ),
    pytest.param(
        sse(
            [
                *responses_head(),
                typed(
                    {
                        "type": "response.failed",
                        "sequence_number": 4,
                        "response": {
                            "id": "resp_up",
                            "status": "failed",
                            "error": {"code": "server_error", "message": "engine died"},
                        },
                    }
                ),
            ]
        ),
        "server_error",
        id="upstream-response-failed",
    ),
    pytest.param(paced(responses_stream(WORDS), {6: 30.0}), "server_error", id="idle-timeout"),
    pytest.param(sse([*responses_head(), b"data: {not json\n\n"]), "server_error", id="undecodable"),
]


@pytest.mark.parametrize(("handler", "code"), FAILURES)
async def test_every_failure_ends_in_one_response_failed(handler: Any, code: str) -> None:
    async with fake_upstream(handler) as upstream:
        async with run_adapter(settings(upstream.url, idle_timeout=1.5)) as adapter:
            got = [event for _, event in await events_of(adapter)]
            async with client(adapter) as sdk:
                async with sdk.responses.stream(model="m", input="hi") as stream:
                    async for _ in stream:
                        pass
                    with pytest.raises(RuntimeError, match=r"response\.completed"):
                        await stream.get_final_response()
    terminal = [e for e in got if e.type in ("response.completed", "response.incomplete", "response.failed")]
    assert [e.type for e in terminal] == ["response.failed"]
    assert got[-1].type == "response.failed"
    assert got[-1].response.status == "failed"
    assert got[-1].response.error.code == code
    assert got[-1].response.error.message
    check_numbering(got)


async def test_a_failure_before_any_event_still_starts_with_response_created() -> None:
    async def silent(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await asyncio.sleep(30)

    async with fake_upstream(silent) as upstream:
        async with run_adapter(
            settings(upstream.url, first_byte_timeout=1.0, heartbeat_interval=0.3)
        ) as adapter:
            got = [event for _, event in await events_of(adapter)]
    assert got[0].type == "response.created"
    assert got[-1].type == "response.failed"
    assert "--first-byte-timeout" in got[-1].response.error.message
    check_numbering(got)


async def test_upfront_errors_keep_their_status_in_openais_shape() -> None:
    body = b'{"object":"error","message":"model not found","type":"NotFoundError","code":404}'
    async with fake_upstream(json_answer(404, body)) as upstream:
        # A hold the answer cannot outlast on a loaded machine: past it, the error would be in-band.
        async with run_adapter(settings(upstream.url, status_hold=10.0)) as adapter:
            async with client(adapter) as sdk:
                with pytest.raises(openai.NotFoundError) as raised:
                    await sdk.responses.create(model="m", input="hi", stream=True)
    assert raised.value.status_code == 404
    assert "model not found" in str(raised.value)


async def test_missing_usage_is_counted_with_the_servers_tokenizer() -> None:
    parts = responses_stream(WORDS, usage=None)

    async with fake_upstream(with_toy_tokenizer(sse(parts)), handles_probes=True) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            got = [event for _, event in await events_of(adapter)]
    usage = got[-1].response.usage
    # the input as a chat turn: "user hi <end> assistant"; the answer "Hello," "world." and its stop token
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (4, 3, 7)
    chats = [request.json() for request in upstream.probes if request.target == "/tokenize"]
    prompts = [chat["messages"] for chat in chats if isinstance(chat, dict) and "messages" in chat]
    assert [{"role": "user", "content": "hi"}] in prompts  # the input, as a chat turn


async def test_a_delta_over_the_line_limit_is_split_into_deltas_of_the_same_item() -> None:
    long = "x" * 5000
    parts = [*responses_head(), responses_delta(long, 4), *responses_tail(long, 5)]
    async with fake_upstream(sse(parts)) as upstream:
        async with run_adapter(settings(upstream.url, max_line_bytes=1024)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    adapter + "/v1/responses", json={"model": "m", "input": "hi", "stream": True}
                )
            got = [event for _, event in await events_of(adapter)]
    deltas = [e for e in got if e.type == "response.output_text.delta"]
    assert len(deltas) > 5
    assert "".join(e.delta for e in deltas) == long
    assert {e.item_id for e in deltas} == {"msg_1"}
    check_numbering(got)
    lines = [line for line in answer.content.split(b"\n") if line.startswith(b"data: ")]
    too_long = [line for line in lines if len(line) > 1024]
    assert all(
        b'"response.' in line and b'.delta"' not in line for line in too_long
    )  # only whole-answer events


async def test_keepalive_mode_comment_sends_no_typed_event() -> None:
    async with fake_upstream(paced(responses_stream(WORDS), {0: 1.5})) as upstream:
        async with run_adapter(settings(upstream.url, responses_heartbeat="comment")) as adapter:
            async with httpx.AsyncClient() as http:
                body = {"model": "m", "input": "hi", "stream": True}
                answer = await http.post(adapter + "/v1/responses", json=body)
    assert b": keep-alive\n\n" in answer.content
    assert b"keepalive" not in answer.content.replace(b": keep-alive", b"")
    assert answer.content.replace(b": keep-alive\n\n", b"") == b"".join(responses_stream(WORDS))


async def test_a_client_that_leaves_cancels_the_upstream_request() -> None:
    async def endless(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        for part in responses_head():
            await out.chunk(part)
        for number in range(4, 10_000):
            await out.chunk(responses_delta("x", number))
            await asyncio.sleep(0.05)

    async with fake_upstream(endless) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                body = {"model": "m", "input": "hi", "stream": True}
                async with http.stream("POST", adapter + "/v1/responses", json=body) as answer:
                    async for _ in answer.aiter_raw():
                        break
            left = time.monotonic()
            hung_up = await asyncio.wait_for(upstream.hangups.get(), 10)
    assert hung_up - left < 5.0


async def test_usage_already_sent_is_not_counted_again() -> None:
    async with fake_upstream(sse(responses_stream(WORDS))) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            got = [event for _, event in await events_of(adapter)]
    assert got[-1].response.usage.output_tokens == USAGE["output_tokens"]
    assert not [request for request in upstream.probes if request.target == "/tokenize"]


async def test_an_answer_cut_short_is_not_counted() -> None:
    async def server(request: Received, out: Writer) -> None:
        if request.target == "/tokenize":
            await json_answer(200, b'{"count": 3, "tokens": [1, 2, 3]}')(request, out)
            return
        await sse([*responses_head(), responses_delta("Hel", 4)])(request, out)

    async with fake_upstream(server, handles_probes=True) as upstream:
        async with run_adapter(settings(upstream.url)) as adapter:
            got = [event for _, event in await events_of(adapter)]
    assert got[-1].type == "response.failed"
    assert not [request for request in upstream.probes if request.target == "/tokenize"]
