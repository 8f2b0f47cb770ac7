"""Non-streaming requests over real sockets: normalised, kept alive, or assembled from a stream."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import openai
import orjson
import pytest

from sse_adapter.settings import Settings
from sse_adapter.tools.oneapi import channel_test_passes, nonstream_error
from tests.adapter_server import run_adapter
from tests.end_client import FIXTURES, TLS, fixture
from tests.upstream_fake import Handler, Received, Writer, fake_upstream, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
INTERVAL = 0.2
# The longest wait a test accepts: several intervals, for a loaded machine's scheduling, and still
# well under the upstream's delay (1 s) that a missing keep-alive would show as.
LATE = 3 * INTERVAL
ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def answer(status: int, body: dict[str, Any] | bytes, delay: float = 0.0) -> Handler:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def handler(request: Received, out: Writer) -> None:
        await asyncio.sleep(delay)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(raw)))]
        await out.start(status, headers, chunked=False)
        await out.raw(raw)

    return handler


def completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "eos_token"}],
    }


@dataclass
class Reply:
    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


async def post(adapter: str, body: dict[str, Any], path: str = CHAT) -> tuple[Reply, list[float]]:
    """The response, and when each piece of its body arrived."""
    arrivals: list[float] = []
    content = bytearray()
    start = anyio.current_time()
    async with httpx.AsyncClient(timeout=10, verify=TLS) as client:
        async with client.stream("POST", adapter + path, json=body) as reply:
            async for piece in reply.aiter_raw():
                arrivals.append(anyio.current_time() - start)
                content += piece
    return Reply(reply.status_code, reply.headers, bytes(content)), arrivals


async def test_a_slow_upstream_gets_spaces_then_the_json() -> None:
    async with fake_upstream(answer(200, completion(content="late"), delay=1.0)) as upstream:
        async with run_adapter(
            Settings(upstream=upstream.url, heartbeat_interval=INTERVAL, nonstream_keepalive=True)
        ) as adapter:
            reply, arrivals = await post(adapter, ASK)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    spaces = len(reply.content) - len(reply.content.lstrip(b" "))
    assert spaces >= 2  # 4 at 0.2 s on an idle machine, before the answer at 1 s
    assert INTERVAL - 0.05 <= arrivals[0] <= LATE  # nothing is committed before one interval
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert max(gaps) <= LATE
    assert nonstream_error(200, reply.content) is None
    assert channel_test_passes(200, reply.content)
    assert json.loads(reply.content)["choices"][0]["message"]["content"] == "late"


async def test_the_openai_sdk_reads_a_kept_alive_answer() -> None:
    async with fake_upstream(answer(200, completion(content="late"), delay=0.7)) as upstream:
        async with run_adapter(
            Settings(upstream=upstream.url, heartbeat_interval=INTERVAL, nonstream_keepalive=True)
        ) as adapter:
            async with openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="sk", max_retries=0) as client:
                reply = await client.chat.completions.create(model="m", messages=[])
    assert reply.choices[0].message.content == "late"
    assert reply.usage is not None


async def test_a_fast_upstream_error_keeps_its_real_status() -> None:
    body = {"error": "Input validation error: too long", "error_type": "validation"}
    async with fake_upstream(answer(422, body)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, heartbeat_interval=INTERVAL)) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.status_code == 422
    assert reply.json()["error"] == {
        "message": "Input validation error: too long",
        "type": "validation",
        "code": 422,
    }


async def test_a_late_upstream_error_is_a_200_whose_body_one_api_reads_as_an_error() -> None:
    body = {"error": "Model is overloaded", "error_type": "overloaded"}
    async with fake_upstream(answer(503, body, delay=0.7)) as upstream:
        async with run_adapter(
            Settings(upstream=upstream.url, heartbeat_interval=INTERVAL, nonstream_keepalive=True)
        ) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.status_code == 200
    assert reply.content.startswith(b" ")
    error = json.loads(reply.content)["error"]
    assert error["type"] == "overloaded"
    assert error["message"] == "Model is overloaded"
    assert nonstream_error(200, reply.content) == "Model is overloaded"


async def test_without_keepalive_the_client_waits_in_silence_for_the_real_status() -> None:
    async with fake_upstream(answer(503, {"error": "busy"}, delay=0.7)) as upstream:
        settings = Settings(upstream=upstream.url, heartbeat_interval=INTERVAL, nonstream_keepalive=False)
        async with run_adapter(settings) as adapter:
            reply, arrivals = await post(adapter, ASK)
    assert reply.status_code == 503
    assert arrivals[0] >= 0.6


async def test_a_client_that_leaves_during_keepalive_closes_the_upstream() -> None:
    async with fake_upstream(answer(200, completion(content="never"), delay=30)) as upstream:
        async with run_adapter(
            Settings(upstream=upstream.url, heartbeat_interval=INTERVAL, nonstream_keepalive=True)
        ) as adapter:
            async with httpx.AsyncClient() as client:
                async with client.stream("POST", adapter + CHAT, json=ASK) as reply:
                    async for _ in reply.aiter_raw():
                        break  # the first space
                left = asyncio.get_running_loop().time()
            hung_up = await asyncio.wait_for(upstream.hangups.get(), 2)
    assert hung_up - left < 1.0


@pytest.mark.parametrize(
    ("upstream_body", "usage"),
    [
        (completion(content="a"), {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
        (
            {**completion(content="a"), "usage": None},
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        ),
        (
            {**completion(content="a"), "details": {"generated_tokens": 7, "prefill": [{}, {}, {}]}},
            {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10},
        ),
        (
            {
                **completion(content="a"),
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            },
            {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
        ),
    ],
    ids=["missing", "null", "tgi-details", "kept"],
)
async def test_usage_is_always_present_and_the_channel_test_passes(
    upstream_body: dict[str, Any], usage: dict[str, int]
) -> None:
    async with fake_upstream(answer(200, upstream_body)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.json()["usage"] == usage
    assert channel_test_passes(reply.status_code, reply.content)


async def test_non_stream_bodies_get_the_chunk_repairs() -> None:
    body = completion(content="<think>hmm</think>Sure.", reasoning="from the parser")
    del body["object"]
    async with fake_upstream(answer(200, body)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, think_tags="split")) as adapter:  # type: ignore[arg-type]
            reply, _ = await post(adapter, ASK)
    got = reply.json()
    assert got["object"] == "chat.completion"
    choice = got["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Sure.",
        "reasoning_content": "from the parserhmm",
    }


async def test_null_content_becomes_a_string_unless_there_are_tool_calls() -> None:
    async with fake_upstream(answer(200, completion(content=None))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.json()["choices"][0]["message"]["content"] == ""
    assert channel_test_passes(200, reply.content)


@pytest.mark.parametrize("name", ["vllm", "reasoning", "vllm-tool-calls", "vllm-logprobs"])
async def test_the_stream_upgrade_assembles_what_the_upstream_would_have_returned(name: str) -> None:
    async with fake_upstream(sse([fixture(f"{name}.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, nonstream_via_stream=True)) as adapter:
            reply, _ = await post(adapter, {**ASK, "stream_options": {"continuous_usage_stats": False}})
    assert reply.status_code == 200
    assert reply.json() == json.loads((FIXTURES / f"{name}.json").read_text())
    sent = upstream.requests[0].json()
    assert sent["stream"] is True  # type: ignore[index]
    # a non-stream request's stream_options never go up (vLLM answers 400 to them); the upgrade asks anew
    assert sent["stream_options"] == {"include_usage": True}  # type: ignore[index]


async def test_the_stream_upgrade_reports_an_early_stream_error_with_its_status() -> None:
    async with fake_upstream(sse([fixture("vllm-error.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, nonstream_via_stream=True)) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith("The decoder prompt (length 9000)")


async def test_the_stream_upgrade_sees_a_cut_as_an_error() -> None:
    async def cut(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await out.chunk(fixture("llama-cpp-python-cut.sse"))
        await out.raw(b"10\r\ndata: {")

    async with fake_upstream(cut) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, nonstream_via_stream=True)) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_disconnected"


async def test_the_stream_upgrade_of_a_completion() -> None:
    async with fake_upstream(sse([fixture("vllm-completions.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, nonstream_via_stream=True)) as adapter:
            reply, _ = await post(adapter, {"model": "m", "prompt": "x"}, path="/v1/completions")
    got = reply.json()
    assert got["object"] == "text_completion"
    assert got["choices"] == [
        {"index": 0, "text": "Once upon a time", "logprobs": None, "finish_reason": "length"}
    ]


async def test_without_keepalive_a_silent_upstream_is_a_plain_504_never_spaces() -> None:
    async with fake_upstream(answer(200, completion(content="never"), delay=3)) as upstream:
        settings = Settings(
            upstream=upstream.url,
            heartbeat_interval=INTERVAL,
            nonstream_keepalive=False,
            first_byte_timeout=0.6,
        )
        async with run_adapter(settings) as adapter:
            reply, _ = await post(adapter, ASK)
    assert reply.status_code == 504
    assert not reply.content.startswith(b" ")
    assert reply.json()["error"]["code"] == "upstream_timeout"


ODD = {
    "id": ["not", "a", "string"],
    "choices": [
        {"index": [0], "message": {"content": [{"type": "text", "text": "a"}]}, "finish_reason": ["stop"]},
        {"index": 1, "message": {"role": 5, "content": 7, "reasoning": {"x": 1}}, "finish_reason": {"t": 1}},
    ],
    "usage": {"prompt_tokens": "many"},
}


@pytest.mark.parametrize("via_stream", [False, True], ids=["body", "assembled"])
async def test_values_of_any_type_still_give_an_openai_shaped_answer(via_stream: bool) -> None:
    if via_stream:
        chunks = [{"id": 3, "choices": [dict(choice, delta=choice["message"])]} for choice in ODD["choices"]]
        handler = sse([b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"])
    else:
        handler = answer(200, ODD)
    async with fake_upstream(handler) as upstream:
        settings = Settings(upstream=upstream.url, nonstream_via_stream=via_stream, think_tags="split")  # type: ignore[arg-type]
        async with run_adapter(settings) as adapter, httpx.AsyncClient() as client:
            reply = await client.post(adapter + CHAT, json=ASK)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert isinstance(reply.json()["choices"], list)


async def test_a_stream_answered_200_with_no_content_type_is_a_502_that_says_so() -> None:
    async def bare(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Length", "2")], chunked=False)
        await out.raw(b"{}")

    async with fake_upstream(bare) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.post(adapter + CHAT, json={**ASK, "stream": True})
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "not_an_event_stream")
    assert "no content type instead of an event stream" in error["message"]
