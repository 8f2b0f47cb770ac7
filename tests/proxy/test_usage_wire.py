"""Issue 25 over real sockets: the client's own choice about usage, and a
placeholder counted as none, read with the openai SDK and as One-API reads."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import openai
import orjson
import pytest

from sse_adapter.settings import Settings, StreamUsage
from tests.adapter_server import run_adapter
from tests.end_client import assert_spec_clean, fixture, stream
from tests.tokenize_fake import toy_answer
from tests.upstream_fake import FakeUpstream, Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
HEAD = {"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": "m"}
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 2,
    "total_tokens": 11,
    "completion_tokens_details": {"reasoning_tokens": 1},
}
# What the toy /tokenize counts for MESSAGES and the answer "Hi": the prompt is
# user, hi, <end>, assistant; the completion is Hi and the stop token.
PROMPT, COMPLETION = 4, 2


def data(choices: list[dict[str, Any]], **fields: Any) -> bytes:
    return b"data: " + orjson.dumps({**HEAD, "choices": choices, **fields}) + b"\n\n"


def tokenized(received: Received) -> bytes:
    """A toy /tokenize of words (tests/tokenize_fake.py); anything else (health) answers ``{}``."""
    body = received.json() if received.target == "/tokenize" else None
    return toy_answer(body) if isinstance(body, dict) else b"{}"


def delta(content: str, finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": {"content": content}, "finish_reason": finish}


def vllm(usage: dict[str, Any]) -> Any:
    """A vLLM-like server: ``usage`` as a ``choices: []`` chunk only when asked, and its /tokenize."""

    async def handler(received: Received, out: Writer) -> None:
        if received.target != CHAT:  # its /tokenize (a toy one of words), and its health
            await json_answer(200, tokenized(received))(received, out)
            return
        request = received.json()
        assert isinstance(request, dict)
        frames = [data([delta("Hi")]), data([delta("", "stop")])]
        if (request.get("stream_options") or {}).get("include_usage") is True:
            frames.append(data([], usage=usage))
        await sse([*frames, b"data: [DONE]\n\n"])(received, out)

    return handler


async def sdk_stream(adapter: str, **options: Any) -> tuple[str, list[Any]]:
    """The text and every usage the openai SDK hands its caller."""
    async with openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="k", max_retries=0) as client:
        chunks = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **options)  # type: ignore[arg-type]
        text, usages = "", []
        async for chunk in chunks:
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
            if chunk.usage is not None:
                usages.append(chunk.usage.model_dump(exclude_none=True))
    return text, usages


def upstream_asked(upstream: FakeUpstream) -> object:
    [request] = [r for r in upstream.requests if r.target == CHAT]
    body = request.json()
    assert isinstance(body, dict)
    return (body.get("stream_options") or {}).get("include_usage")


REFUSED = {"stream_options": {"include_usage": False}}


@pytest.mark.parametrize(
    ("mode", "options", "asked_upstream", "client_gets"),
    [
        # ask (the default): One-API needs the usage, so even a client that said false gets it,
        # on the last chunk with choices (never a usage-only chunk it did not ask for)
        pytest.param(StreamUsage.ASK, REFUSED, True, [USAGE], id="ask-refused"),
        pytest.param(StreamUsage.ASK, {}, True, [USAGE], id="ask-silent"),
        pytest.param(StreamUsage.ASK_KEEP_CLIENT, REFUSED, True, [], id="keep-client-refused"),
        pytest.param(StreamUsage.ASK_KEEP_CLIENT, {}, True, [USAGE], id="keep-client-silent"),
        pytest.param(
            StreamUsage.ASK_KEEP_CLIENT,
            {"stream_options": {"include_usage": True}},
            True,
            [USAGE],
            id="keep-client-asked",
        ),
        pytest.param(StreamUsage.PASS, REFUSED, False, [], id="pass-refused"),
        pytest.param(StreamUsage.PASS, {}, None, [], id="pass-silent"),
    ],
)
async def test_the_clients_own_choice(
    mode: StreamUsage, options: dict[str, Any], asked_upstream: object, client_gets: list[Any]
) -> None:
    async with (
        fake_upstream(vllm(USAGE)) as upstream,
        run_adapter(Settings(upstream=upstream.url, stream_usage=mode)) as adapter,
    ):
        text, usages = await sdk_stream(adapter, **options)
    assert text == "Hi"
    assert upstream_asked(upstream) == asked_upstream
    assert usages == client_gets


async def test_a_client_that_keeps_its_choice_gets_no_usage_only_chunk_and_no_count() -> None:
    async with (
        fake_upstream(
            vllm({})
        ) as upstream,  # sends no usage: nothing is counted for a client that refused it
        run_adapter(Settings(upstream=upstream.url, stream_usage=StreamUsage.ASK_KEEP_CLIENT)) as adapter,
    ):
        seen = await stream(adapter, CHAT, {"model": "m", "messages": MESSAGES, "stream": True, **REFUSED})
    assert_spec_clean(seen.raw)
    assert all(chunk["choices"] for chunk in seen.chunks)
    assert not [chunk for chunk in seen.chunks if "usage" in chunk]
    assert not [r for r in upstream.probes if r.target == "/tokenize"]


@pytest.mark.parametrize(
    "placeholder",
    [
        {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2},
        {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9},
        {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 30},
    ],
    ids=["no-prompt", "no-completion", "total-not-sum"],
)
async def test_a_placeholder_is_counted_with_the_servers_tokenizer_and_said_once(
    placeholder: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sse_adapter")
    async with (
        fake_upstream(vllm(placeholder), handles_probes=True) as upstream,
        run_adapter(Settings(upstream=upstream.url)) as adapter,
    ):
        runs = [await sdk_stream(adapter, stream_options={"include_usage": True}) for _ in range(2)]
    counted = {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}
    assert [usages for _, usages in runs] == [[counted], [counted]]
    said = [r.getMessage() for r in caplog.records if "placeholder" in r.getMessage()]
    assert len(said) == 1, said
    assert CHAT in said[0]


async def test_an_empty_answers_zero_completion_tokens_are_the_servers() -> None:
    empty = {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}

    async def handler(received: Received, out: Writer) -> None:
        if received.target != CHAT:
            await json_answer(200, tokenized(received))(received, out)
            return
        frames = [
            data([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "length"}])
        ]
        await sse([*frames, data([], usage=empty), b"data: [DONE]\n\n"])(received, out)

    async with (
        fake_upstream(handler, handles_probes=True) as upstream,
        run_adapter(Settings(upstream=upstream.url)) as adapter,
    ):
        _, usages = await sdk_stream(adapter, stream_options={"include_usage": True})
    assert usages == [empty]
    assert not [r for r in upstream.probes if r.target == "/tokenize"]  # not counted again


async def test_llama_servers_timings_are_the_usage_when_it_sends_none() -> None:
    # llama-server that ignores include_usage (or an old build): timings on the finish chunk only
    timings = {"prompt_n": 3, "cache_n": 6, "predicted_n": 2, "predicted_ms": 11.0}
    frames = [data([delta("Hi")]), data([delta("", "stop")], timings=timings), b"data: [DONE]\n\n"]
    async with (
        fake_upstream(sse(frames)) as upstream,
        run_adapter(Settings(upstream=upstream.url)) as adapter,
    ):
        seen = await stream(adapter, CHAT, {"model": "m", "messages": MESSAGES, "stream": True})
    assert_spec_clean(seen.raw)
    last = seen.chunks[-1]
    assert last["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 6},
    }
    assert (last["timings"], last["choices"][0]["finish_reason"]) == (timings, "stop")


@pytest.mark.parametrize(
    ("usage", "logged"),
    [
        pytest.param(
            USAGE, {"prompt_tokens": 9, "completion_tokens": 2, "usage_from": "server"}, id="server"
        ),
        pytest.param(
            {},
            {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "usage_from": "counted"},
            id="counted",
        ),
    ],
)
async def test_the_access_line_says_the_streams_tokens_and_where_they_came_from(
    usage: dict[str, Any], logged: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sse_adapter.access")
    async with (
        fake_upstream(vllm(usage), handles_probes=True) as upstream,
        run_adapter(Settings(upstream=upstream.url)) as adapter,
    ):
        await sdk_stream(adapter)
    [line] = [
        r for r in caplog.records if r.name == "sse_adapter.access" and "chat_completions" in r.getMessage()
    ]
    fields = line.fields  # type: ignore[attr-defined]
    assert {name: fields.get(name) for name in logged} == logged
    assert "usage_from=" in line.getMessage()


async def test_a_client_that_keeps_its_choice_still_has_its_usage_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sse_adapter.access")
    async with (
        fake_upstream(vllm(USAGE)) as upstream,
        run_adapter(Settings(upstream=upstream.url, stream_usage=StreamUsage.ASK_KEEP_CLIENT)) as adapter,
    ):
        _, usages = await sdk_stream(adapter, **REFUSED)
    assert usages == []
    [line] = [
        r for r in caplog.records if r.name == "sse_adapter.access" and "chat_completions" in r.getMessage()
    ]
    assert (line.fields["prompt_tokens"], line.fields["usage_from"]) == (9, "server")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("route", "recorded", "tokens"),
    [
        pytest.param("/v1/messages", "live/vllm-messages-text.sse", (26, 18), id="messages"),
        pytest.param("/v1/responses", "live/vllm-responses-text.sse", (26, 18), id="responses"),
        pytest.param(
            "/v1/messages", "live/llamacpp-messages-text-cached.sse", (66, 16), id="messages-cached"
        ),
    ],
)
async def test_typed_routes_log_the_servers_tokens(
    route: str, recorded: str, tokens: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sse_adapter.access")
    async with (
        fake_upstream(sse([fixture(recorded)])) as upstream,
        run_adapter(Settings(upstream=upstream.url)) as adapter,
        httpx.AsyncClient(timeout=10) as http,
    ):
        body = {"model": "m", "stream": True, "max_tokens": 16, "messages": MESSAGES, "input": "hi"}
        answer = await http.post(adapter + route, json=body)
    assert answer.status_code == 200
    [line] = [r for r in caplog.records if r.name == "sse_adapter.access" and route[4:] in r.getMessage()]
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["usage_from"]) == (*tokens, "server")
