"""Every row of shared/upstream-dialects.md, from the end client's side.

Each fixture goes through the adapter over real sockets; what comes out is
read behind the One-API double and by the openai SDK. The client gets the
right text, or the upstream's own error message, and always one [DONE].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import openai
import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import TLS, Seen, assert_spec_clean, fixture, stream
from tests.upstream_fake import Handler, Received, Writer, content_frame, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class Row:
    fixture: str
    text: str
    error: str | None = None  # the upstream's own message, which the client must see
    reasoning: str = ""
    usage: int | None = None  # total_tokens of the one usage chunk, last before [DONE]
    path: str = CHAT
    delivery: str = "sse"  # or "cut": the connection dies after the bytes; "ndjson": not SSE at all


def cut(body: bytes) -> Handler:
    async def handler(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await out.chunk(body)
        await out.raw(b"10\r\ndata: {")  # dies inside a chunk

    return handler


def ndjson(body: bytes) -> Handler:
    return sse([body], headers=[("Content-Type", "application/x-ndjson")])


HANDLERS = {"sse": lambda body: sse([body]), "cut": cut, "ndjson": ndjson}

ROWS = [
    Row("tgi-2.0.sse", "Hello from TGI!"),
    Row("tgi-2.4.sse", "Bonjour le monde", usage=13),
    Row(
        "tgi-2.0-error.sse",
        "Partial",
        error="Request failed during generation: Server error: CUDA out of memory. "
        "Tried to allocate 2.00 GiB",
    ),
    Row(
        "tgi-2.4-error.sse",
        "Partial",
        error="Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
    ),
    Row("tgi-native.sse", "", error="the upstream's stream held no OpenAI chunks"),
    Row("vllm.sse", "The answer is 42.", usage=17),
    Row("vllm-completions.sse", "Once upon a time", path=COMPLETIONS),
    Row(
        "vllm-error.sse",
        "Partial",
        error="The decoder prompt (length 9000) is longer than the maximum model length of 8192.",
    ),
    Row("vllm-reasoning.sse", "Six.", reasoning="Let me think."),
    Row("llamacpp.sse", "Llama here", reasoning="Hmm.", usage=131),
    Row("llamacpp-legacy-error.sse", "Partial", error="context shift is disabled"),
    Row(
        "llamacpp-late-error.sse",
        "Partial",
        error="the request exceeds the available context size, try increasing it",
    ),
    Row("ollama-native.ndjson", "", error="instead of an event stream", delivery="ndjson"),
    Row("ollama-v1.sse", "Ollama says hi", reasoning="Short thought"),
    Row("ollama-v1-completions.sse", "Roses are red", path=COMPLETIONS),
    Row("sglang.sse", "SGLang"),
    Row(
        "sglang-error.sse",
        "Partial",
        error="The input (9000 tokens) is longer than the model's context length (8192 tokens).",
    ),
    Row("xinference.sse", "你好，世界"),
    Row(
        "xinference-error.sse", "Partial", error="[address=0.0.0.0:38451, pid=1234] CUDA error: out of memory"
    ),
    Row("localai.sse", "LocalAI", usage=13),
    Row(
        "localai-error.sse",
        "Partial",
        error="rpc error: code = Unavailable desc = error reading from server: EOF",
    ),
    Row("fastchat.sse", "FastChat"),
    Row(
        "fastchat-error.sse",
        "",
        error="**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
        "\n\n(CUDA out of memory)",
    ),
    Row("llama-cpp-python.sse", "python"),
    Row("llama-cpp-python-cut.sse", "Partial", error="broke off the response", delivery="cut"),
    Row("lmstudio.sse", "LM Studio", reasoning="User greets."),
]
PARAMS = [pytest.param(row, id=row.fixture.rsplit(".", 1)[0]) for row in ROWS]


def reasoning(seen: Seen) -> str:
    return "".join(
        choice.get("delta", {}).get("reasoning_content") or ""
        for chunk in seen.chunks
        for choice in chunk.get("choices") or []  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("row", PARAMS)
async def test_behind_one_api(row: Row) -> None:
    async with fake_upstream(HANDLERS[row.delivery](fixture(row.fixture))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = await stream(adapter, row.path, {"model": "m", "stream": True})
    if row.delivery == "ndjson":  # refused before the stream started: an error status, OpenAI-shaped
        assert seen.status == 502
        assert row.error in seen.raw.decode()  # type: ignore[operator]
        return
    assert seen.status == 200
    assert_spec_clean(seen.raw)
    assert seen.text() == row.text
    assert reasoning(seen) == row.reasoning
    assert seen.dones() == 1
    assert seen.payloads[-1] == b"[DONE]"
    last = seen.chunks[-1]
    if row.error is not None:
        assert row.error in last["error"]["message"]  # type: ignore[index]
        assert last["choices"][0]["finish_reason"] == "error"  # type: ignore[index]
        assert not any("error" in chunk for chunk in seen.chunks[:-1])
        return
    assert "error" not in last
    choices = [choice for chunk in seen.chunks for choice in chunk["choices"]]  # type: ignore[attr-defined]
    finish_reasons = [choice["finish_reason"] for choice in choices]
    assert set(finish_reasons) <= {None, "stop", "length"}
    usages = [chunk for chunk in seen.chunks if "usage" in chunk]
    if row.usage is None:
        assert usages == []
    else:
        # the client did not ask for usage: it rides on the last chunk with choices, no chunk of its own
        assert usages == [last]
        assert last["choices"]
        assert last["choices"][-1]["finish_reason"] in ("stop", "length")  # type: ignore[index]
        assert last["usage"]["total_tokens"] == row.usage  # type: ignore[index]


@pytest.mark.parametrize("row", [row for row in ROWS if row.usage is not None], ids=lambda row: row.fixture)
async def test_a_client_that_asks_for_usage_gets_openais_usage_chunk_last(row: Row) -> None:
    async with fake_upstream(HANDLERS[row.delivery](fixture(row.fixture))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            ask = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
            seen = await stream(adapter, row.path, ask)
    usages = [chunk for chunk in seen.chunks if "usage" in chunk]
    assert usages == [seen.chunks[-1]]
    assert usages[0]["choices"] == []
    assert usages[0]["usage"]["total_tokens"] == row.usage  # type: ignore[index]


async def read_with_sdk(client: openai.AsyncOpenAI, path: str, parts: list[str]) -> None:
    if path == CHAT:
        chat = await client.chat.completions.create(model="m", messages=[], stream=True)
        async for chunk in chat:
            parts += [choice.delta.content or "" for choice in chunk.choices]
    else:
        completion = await client.completions.create(model="m", prompt="x", stream=True)
        async for piece in completion:
            parts += [choice.text for choice in piece.choices]


@pytest.mark.parametrize("row", PARAMS)
async def test_with_the_openai_sdk(row: Row) -> None:
    parts: list[str] = []
    async with fake_upstream(HANDLERS[row.delivery](fixture(row.fixture))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with openai.AsyncOpenAI(
                base_url=adapter + "/v1", api_key="sk-test", max_retries=0
            ) as client:
                if row.error is None:
                    await read_with_sdk(client, row.path, parts)
                else:
                    with pytest.raises(openai.APIError, match=re.escape(row.error)):
                        await read_with_sdk(client, row.path, parts)
    assert "".join(parts) == row.text


async def test_a_200_kb_delta_arrives_intact_with_no_line_over_the_limit() -> None:
    text = "".join(chr(0x4E00 + i % 500) if i % 3 else f"{i}\n" for i in range(70_000))
    assert len(text.encode()) > 200_000
    async with fake_upstream(sse([content_frame(text), b"data: [DONE]\n\n"])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert_spec_clean(seen.raw)  # no line over One-API's limit
    assert max(map(len, seen.raw.split(b"\n"))) <= 65000
    assert seen.text() == text  # every piece passed the One-API double, in order
    assert len(seen.chunks) > 3


async def test_think_tags_split_across_chunks_reach_the_client_as_reasoning() -> None:
    pieces = ["<thi", "nk>Let me", " think.</th", "ink>\n\nThe answer", " is 4."]
    body = [content_frame(piece) for piece in pieces] + [b"data: [DONE]\n\n"]
    async with fake_upstream(sse(body)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, think_tags="split")) as adapter:  # type: ignore[arg-type]
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert reasoning(seen) == "Let me think."
    assert seen.text() == "\n\nThe answer is 4."


def finish_frame() -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return (
        b"data: "
        + orjson.dumps({**body, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + b"\n\n"
    )


THOUGHT = "The user asks for 2 + 2. That is 4."


@pytest.mark.parametrize(
    ("thought", "ask"),
    [
        # llama-server with templates/think_tools.jinja: the prompt ends in "<think>\n" unless
        # the request turns thinking off, and the request need not say anything.
        pytest.param(THOUGHT, {}, id="unsaid-a-short-thought"),
        pytest.param(
            THOUGHT * 60, {"chat_template_kwargs": {"enable_thinking": True}}, id="thinking-on-a-long-one"
        ),
    ],
)
async def test_a_stream_that_starts_inside_the_thought_gives_the_client_reasoning_and_content(
    thought: str, ask: dict[str, object]
) -> None:
    text = thought + "</think>\n\nThe answer is 4."
    pieces = [text[n : n + 7] for n in range(0, len(text), 7)]  # the closing tag cut too
    body = [content_frame(piece) for piece in pieces] + [finish_frame(), b"data: [DONE]\n\n"]
    async with fake_upstream(sse(body)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, think_tags="split")) as adapter:  # type: ignore[arg-type]
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True, **ask})
    assert_spec_clean(seen.raw)
    assert reasoning(seen) == thought
    assert seen.text() == "\n\nThe answer is 4."


async def test_a_body_that_starts_inside_the_thought_gives_the_client_reasoning_and_content() -> None:
    message = {"role": "assistant", "content": THOUGHT * 60 + "</think>\n\nThe answer is 4."}
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": []}
    body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
    async with fake_upstream(json_answer(200, orjson.dumps(body))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, think_tags="split")) as adapter:  # type: ignore[arg-type]
            async with httpx.AsyncClient(timeout=10, verify=TLS) as client:
                response = await client.post(adapter + CHAT, json={"model": "m", "messages": []})
    got = response.json()["choices"][0]["message"]
    assert (got["reasoning_content"], got["content"]) == (THOUGHT * 60, "\n\nThe answer is 4.")


async def test_a_200_json_error_before_the_stream_gets_an_error_status() -> None:
    body = b'{"error":{"message":"server overloaded","type":"overloaded","code":503}}'
    async with fake_upstream(json_answer(200, body)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
    assert seen.status == 503
    assert orjson.loads(seen.raw) == {
        "error": {"message": "server overloaded", "type": "overloaded", "code": 503}
    }
