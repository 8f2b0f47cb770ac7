"""Streamed tool calls of every server shape, as OpenAI clients rebuild them.

Each transcript goes through the adapter over real sockets and is read
behind the One-API double and by the openai SDK's streaming helper: the
calls rebuilt are exactly the ones the model made, each with an id and a
type, and the stream finishes with ``tool_calls``. Read directly, the
broken shapes rebuild something else, or make the SDK raise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pytest

from sse_adapter.settings import Settings, Tags
from sse_adapter.tools.oneapi import LINE_LIMIT
from tests.adapter_server import run_adapter
from tests.end_client import assert_spec_clean, fixture, stream
from tests.upstream_fake import (
    SSE_HEADERS,
    Handler,
    Received,
    Writer,
    content_frame,
    fake_upstream,
    json_answer,
    sse,
)

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
WEATHER_AND_TIME = (("get_weather", '{"city": "Paris"}'), ("get_time", '{"zone": "CET"}'))


@dataclass(frozen=True)
class Row:
    fixture: str
    calls: tuple[tuple[str, str], ...]  # (name, arguments) of each call, in index order
    broken: bool  # whether an OpenAI client reading the server directly gets them wrong
    text: str = ""
    settings: tuple[tuple[str, Any], ...] = ()


ROWS = [
    Row("vllm-tool-calls.sse", WEATHER_AND_TIME, broken=False),
    Row(
        "vllm-hermes-tools.sse",
        (("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("get_time", '{"zone": "CET"}')),
        broken=False,
    ),
    Row("vllm-named-tool.sse", (("get_weather", '{"city": "Paris"}'),), broken=True),
    Row("vllm-null-arguments.sse", (("sum", '{"n1": 2, "n2": 2}'),), broken=True),
    Row("sglang-tools.sse", WEATHER_AND_TIME, broken=False),  # its nulls break stricter clients
    Row("llamacpp-tools.sse", (("run_command", '{"command":"pwd"}'),), broken=False),
    Row("llamacpp-tools-b5481.sse", (("final_result", '{"answer": "42"}'),), broken=True),
    Row(
        "qwen-tool-tags.sse",
        (("get_weather", '{"city":"Paris"}'), ("get_time", '{"zone":"CET"}')),
        broken=True,
        text="Checking both.\n\n",
        settings=(("tool_call_tags", "split"),),
    ),
    Row("interleaved-tools.sse", WEATHER_AND_TIME, broken=True),
]
PARAMS = [pytest.param(row, id=row.fixture.removesuffix(".sse")) for row in ROWS]


def settings_for(row: Row, upstream: str) -> Settings:
    return Settings(upstream=upstream, **dict(row.settings))


@pytest.mark.parametrize("row", PARAMS)
async def test_behind_one_api_the_calls_arrive_whole(row: Row) -> None:
    async with fake_upstream(sse([fixture(row.fixture)])) as upstream:
        async with run_adapter(settings_for(row, upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, {**ASK, "stream": True})
    assert_spec_clean(seen.raw)
    calls = seen.tool_calls()
    assert [(call["name"], call["arguments"]) for call in calls] == list(row.calls)
    assert all(call["type"] == "function" for call in calls)
    ids = [call["id"] for call in calls]
    assert all(ids)
    assert len(set(ids)) == len(ids)
    assert seen.finish_reason() == "tool_calls"
    assert seen.text() == row.text
    assert seen.dones() == 1
    assert_openai_shaped(seen.chunks)


def assert_openai_shaped(chunks: list[dict[str, Any]]) -> None:
    """The first delta of a call says who it is; the later ones carry argument text only."""
    started: set[int] = set()
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in (choice.get("delta") or {}).get("tool_calls") or []:
                if call["index"] in started:
                    assert call.keys() == {"index", "function"}, call
                    assert call["function"].keys() == {"arguments"}, call
                else:
                    assert isinstance(call["id"], str), call
                    assert call["type"] == "function", call
                    assert isinstance(call["function"]["name"], str), call
                started.add(call["index"])
                assert isinstance(call["function"].get("arguments", ""), str), call


async def final_with_sdk(base_url: str) -> Any:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0) as client:
        async with client.chat.completions.stream(**ASK) as events:  # type: ignore[arg-type]
            async for _ in events:
                pass
            return await events.get_final_completion()


def rebuilt(final: Any) -> tuple[list[tuple[str, str]], str | None, str]:
    choice = final.choices[0]
    calls = choice.message.tool_calls or []
    return (
        [(call.function.name, call.function.arguments) for call in calls],
        choice.finish_reason,
        choice.message.content or "",
    )


@pytest.mark.parametrize("row", PARAMS)
async def test_the_openai_sdk_rebuilds_exactly_the_calls_made(row: Row) -> None:
    async with fake_upstream(sse([fixture(row.fixture)])) as upstream:
        async with run_adapter(settings_for(row, upstream.url)) as adapter:
            final = await final_with_sdk(adapter)
    assert rebuilt(final) == (list(row.calls), "tool_calls", row.text)
    ids = [call.id for call in final.choices[0].message.tool_calls]
    assert all(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("row", [param for param in PARAMS if param.values[0].broken])  # type: ignore[union-attr]
async def test_read_directly_the_broken_shapes_rebuild_something_else(row: Row) -> None:
    async with fake_upstream(sse([fixture(row.fixture)])) as upstream:
        try:
            got = rebuilt(await final_with_sdk(upstream.url))
        except Exception:  # the SDK raised: a delta with no index, say
            return
    assert got != (list(row.calls), "tool_calls", row.text)


@pytest.mark.parametrize("row", PARAMS)
async def test_kept_as_they_come_with_tool_calls_keep(row: Row) -> None:
    async with fake_upstream(sse([fixture(row.fixture)])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, tool_calls="keep")) as adapter:  # type: ignore[arg-type]
            seen = await stream(adapter, CHAT, {**ASK, "stream": True})
    payloads = [payload for payload in seen.payloads if payload != b"[DONE]"]
    upstream_calls = [
        call
        for block in fixture(row.fixture).split(b"\n\n")
        if block.startswith(b"data: {")
        for choice in orjson.loads(block[6:])["choices"]
        for call in (choice.get("delta") or {}).get("tool_calls") or []
    ]
    relayed_calls = [
        call
        for payload in payloads
        for choice in orjson.loads(payload)["choices"]
        for call in (choice.get("delta") or {}).get("tool_calls") or []
    ]
    assert relayed_calls == upstream_calls


async def test_arguments_longer_than_a_line_are_split_over_deltas_of_the_same_call() -> None:
    arguments = orjson.dumps(
        {"path": "big.txt", "content": "".join(f"line {n}\n" for n in range(30_000))}
    ).decode()
    assert len(arguments) > 3 * LINE_LIMIT
    first = {
        "index": 0,
        "id": "call_big",
        "type": "function",
        "function": {"name": "write_file", "arguments": ""},
    }
    rest = {"index": 0, "function": {"arguments": arguments}}
    frames = [tool_frame(first), tool_frame(rest), tool_frame(None, "tool_calls"), b"data: [DONE]\n\n"]
    async with fake_upstream(sse(frames)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, {**ASK, "stream": True})
            final = await final_with_sdk(adapter)
    assert_spec_clean(seen.raw)
    assert max(map(len, seen.raw.split(b"\n"))) <= 65000
    [call] = seen.tool_calls()
    assert (call["id"], call["name"], call["arguments"]) == ("call_big", "write_file", arguments)
    assert len(seen.chunks) > 4
    assert rebuilt(final) == ([("write_file", arguments)], "tool_calls", "")


def tool_frame(call: dict[str, Any] | None, finish: str | None = None) -> bytes:
    delta = {"tool_calls": [call]} if call else {}
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@pytest.mark.parametrize("row", PARAMS)
async def test_the_stream_upgrade_assembles_the_same_calls(row: Row) -> None:
    async with fake_upstream(sse([fixture(row.fixture)])) as upstream:
        settings = Settings(upstream=upstream.url, nonstream_via_stream=True, **dict(row.settings))
        async with run_adapter(settings) as adapter:
            async with openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="k", max_retries=0) as client:
                final = await client.chat.completions.create(**ASK)  # type: ignore[call-overload]
    assert rebuilt(final) == (list(row.calls), "tool_calls", row.text)


async def test_a_body_gets_the_same_repairs() -> None:
    message = {
        "role": "assistant",
        "content": 'Sure.<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>',
        "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_x", "type": "function", "function": {"name": "noop", "arguments": None}},
        ],
    }
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
    body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]  # type: ignore[list-item]
    async with fake_upstream(json_answer(200, orjson.dumps(body))) as upstream:
        settings = Settings(upstream=upstream.url, tool_call_tags="split")  # type: ignore[arg-type]
        async with run_adapter(settings) as adapter:
            async with openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="k", max_retries=0) as client:
                final = await client.chat.completions.create(**ASK)  # type: ignore[call-overload]
    calls, finish, text = rebuilt(final)
    assert calls == [("get_weather", '{"city":"Paris"}'), ("noop", ""), ("get_time", '{"zone":"CET"}')]
    assert (finish, text) == ("tool_calls", "Sure.")
    assert all(call.id and call.type == "function" for call in final.choices[0].message.tool_calls)


async def test_700_tag_calls_in_one_event_arrive_whole_in_lines_one_api_reads() -> None:
    """The upstream's line fits; the 700 calls the adapter makes of it take
    more room (ids, types, arguments as escaped strings): it splits its own
    output over a few lines, never blaming the upstream for a line too long."""
    block = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    event = content_frame("Checking." + block * 700)
    assert len(event.split(b"\n")[0]) <= LINE_LIMIT
    frames = [event, tool_frame(None, "stop"), b"data: [DONE]\n\n"]
    async with fake_upstream(sse(frames)) as upstream:
        settings = Settings(upstream=upstream.url, tool_call_tags="split")  # type: ignore[arg-type]
        async with run_adapter(settings) as adapter:
            seen = await stream(adapter, CHAT, {**ASK, "stream": True})
            final = await final_with_sdk(adapter)
    assert_spec_clean(seen.raw)
    assert [(call["name"], call["arguments"]) for call in seen.tool_calls()] == [
        ("get_weather", '{"city":"Paris"}')
    ] * 700
    assert 2 < len(seen.chunks) < 10
    assert seen.finish_reason() == "tool_calls"
    assert (seen.text(), seen.dones()) == ("Checking.", 1)
    assert_openai_shaped(seen.chunks)
    assert rebuilt(final) == ([("get_weather", '{"city":"Paris"}')] * 700, "tool_calls", "Checking.")


async def test_text_after_a_tag_that_never_closes_reaches_the_client_while_the_model_writes() -> None:
    """A block is held only 4 KiB past its tag: the text after it arrives
    while the upstream is still streaming, not when it ends."""
    released = asyncio.Event()
    prose = ["Use it like this: <tool_call>{", *["x" * 100] * 60]

    async def writing(request: Received, out: Writer) -> None:
        await out.start(200, SSE_HEADERS)
        for piece in prose:
            await out.chunk(content_frame(piece))
        await released.wait()  # the model is still writing
        await out.chunk(tool_frame(None, "stop") + b"data: [DONE]\n\n")
        await out.end()

    async def read(reply: httpx.Response) -> str:
        text, buffer = "", b""
        async for piece in reply.aiter_raw():
            *frames, buffer = (buffer + piece).split(b"\n\n")
            for frame in frames:
                chunk = orjson.loads(frame.removeprefix(b"data: "))
                text += "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])
            if len(text) >= 5000:
                return text
        return text

    async with fake_upstream(writing) as upstream:
        settings = Settings(upstream=upstream.url, tool_call_tags="split")  # type: ignore[arg-type]
        async with run_adapter(settings) as adapter, httpx.AsyncClient(timeout=10) as client:
            body = {**ASK, "stream": True}
            async with client.stream("POST", adapter + CHAT, json=body) as reply:
                text = await asyncio.wait_for(read(reply), 10)
                released.set()
    assert text.startswith("Use it like this: <tool_call>{" + "x" * 4000)


TAGGED = 'Write <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> to call it.'


@pytest.mark.parametrize(
    ("request_fields", "calls"),
    [
        pytest.param({"tools": TOOLS}, 1, id="tools"),
        pytest.param({"tools": TOOLS, "tool_choice": "auto"}, 1, id="tool_choice-auto"),
        pytest.param({"tools": TOOLS, "tool_choice": "none"}, 0, id="tool_choice-none"),
        pytest.param({}, 0, id="no-tools"),
        pytest.param({"tools": []}, 0, id="empty-tools"),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "body", "body-from-stream"])
async def test_tags_are_calls_only_when_the_request_let_the_model_call_tools(
    request_fields: dict[str, Any], calls: int, mode: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **request_fields}
    async with fake_upstream(tagged_answer(streamed=mode != "body")) as upstream:
        via_stream = mode == "body-from-stream"
        settings = Settings(upstream.url, tool_call_tags=Tags.SPLIT, nonstream_via_stream=via_stream)
        async with run_adapter(settings) as adapter:
            if mode == "stream":
                seen = await stream(adapter, CHAT, {**body, "stream": True})
                got = (len(seen.tool_calls()), seen.text(), seen.finish_reason())
            else:
                async with httpx.AsyncClient(timeout=10) as client:
                    [choice] = (await client.post(adapter + CHAT, json=body)).json()["choices"]
                calls_made = choice["message"].get("tool_calls") or []
                got = (len(calls_made), choice["message"]["content"] or "", choice["finish_reason"])
    if calls:
        assert got == (1, "Write  to call it.", "tool_calls")
    else:
        assert got == (0, TAGGED, "stop")


def tagged_answer(streamed: bool) -> Handler:
    """An answer whose content holds one ``<tool_call>`` block, streamed or whole."""
    if streamed:
        return sse([content_frame(TAGGED), tool_frame(None, "stop"), b"data: [DONE]\n\n"])
    message = {"role": "assistant", "content": TAGGED}
    choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": choices}
    return json_answer(200, orjson.dumps(body))
