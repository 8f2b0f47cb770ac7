"""Requests every server accepts, and usage on every stream, over real sockets.

Each fake upstream emulates one server behaviour byte for byte: usage sent
only when asked (vLLM, llama.cpp), none even then (llama-cpp-python, TGI
2.x) with or without tokenize endpoints of each kind, and refusals of
fields in each server's shape. Streams are read behind the One-API double
and with the openai SDK.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import orjson
import pytest

from sse_adapter.repair.request import ModelAlias
from sse_adapter.settings import ReasoningField, Settings, StreamUsage
from tests.adapter_server import run_adapter
from tests.end_client import assert_spec_clean, fixture, stream
from tests.repair.test_request_body import REFUSALS
from tests.upstream_fake import Handler, Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
ASK = {"model": "m", "messages": [{"role": "user", "content": "two words"}], "stream": True}
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
WORDS = ["Hello", " big", " world"]


async def metrics(adapter: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(adapter + "/metrics")).text


def chunk(delta: dict[str, Any], finish: str | None = None, model: str = "served-model") -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def answer_chunks(model: str = "served-model") -> list[bytes]:
    return [
        chunk({"role": "assistant", "content": ""}, model=model),
        *(chunk({"content": word}, model=model) for word in WORDS),
        chunk({}, "stop", model=model),
    ]


def usage_chunk(model: str = "served-model") -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": model}
    return b"data: " + orjson.dumps({**body, "choices": [], "usage": USAGE}) + b"\n\n"


def usage_when_asked(received: Received) -> list[bytes]:
    """vLLM and llama.cpp server: a usage chunk only with stream_options.include_usage."""
    request = received.json()
    assert isinstance(request, dict)
    options = request.get("stream_options") or {}
    pieces = answer_chunks(str(request.get("model")))
    if options.get("include_usage") is True:
        pieces.append(usage_chunk(str(request.get("model"))))
    return [*pieces, b"data: [DONE]\n\n"]


async def vllm_like(received: Received, out: Writer) -> None:
    await sse(usage_when_asked(received))(received, out)


@pytest.mark.parametrize("client_asked", [False, True])
async def test_usage_reaches_the_gateway_whether_or_not_the_client_asked(client_asked: bool) -> None:
    body = {**ASK, "stream_options": {"include_usage": True}} if client_asked else ASK
    async with fake_upstream(vllm_like) as upstream, run_adapter(Settings(upstream=upstream.url)) as adapter:
        seen = await stream(adapter, CHAT, body)
    sent = upstream.requests[0].json()
    assert sent["stream_options"] == {"include_usage": True}  # type: ignore[index]
    assert_spec_clean(seen.raw)
    assert seen.text() == "".join(WORDS)
    assert seen.usage() == USAGE  # One-API: the last non-null usage
    assert seen.last_chunk_usage() == USAGE  # new-api: the last data chunk's
    empty = [chunk for chunk in seen.chunks if chunk["choices"] == []]
    if client_asked:  # OpenAI's shape: a usage-only chunk, last
        assert empty == [seen.chunks[-1]]
    else:  # no chunk the client did not ask for: the usage rides on the finish chunk
        assert empty == []
        assert seen.chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_the_openai_sdk_reads_the_usage_on_the_last_chunk() -> None:
    async with fake_upstream(vllm_like) as upstream, run_adapter(Settings(upstream=upstream.url)) as adapter:
        async with openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="k", max_retries=0) as client:
            chunks = [piece async for piece in await client.chat.completions.create(**ASK)]  # type: ignore[call-overload]
            plain = {name: value for name, value in ASK.items() if name != "stream"}
            async with client.chat.completions.stream(**plain) as helper:  # type: ignore[arg-type]
                final = await helper.get_final_completion()
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12
    assert all(chunk.choices for chunk in chunks)
    assert final.usage is not None
    assert final.usage.completion_tokens == 3
    assert final.choices[0].message.content == "".join(WORDS)


async def test_pass_mode_asks_for_nothing() -> None:
    async with fake_upstream(vllm_like) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, stream_usage=StreamUsage.PASS)) as adapter:
            seen = await stream(adapter, CHAT, ASK)
    assert "stream_options" not in upstream.requests[0].json()  # type: ignore[operator]
    assert seen.usage() is None


# Tokenizers of each kind, counting one token per whitespace-separated word
# of the text they are given; the chat template is "<role>: <content>\n" per message.


def _template(messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    """A chat template: each turn its role and content; the prompt ends in an open assistant turn."""
    turns = "".join(f"{message['role']}: {message['content']}\n" for message in messages)
    return turns + ("assistant:" if generation_prompt else "")


def _tokens(text: str, special: bool = False) -> list[int]:
    return list(range(len(text.split()) + (1 if special else 0)))


def tokenizer(kind: str, log: list[str]) -> Handler:
    """A server with no usage in its streams, even when asked, and ``kind``'s tokenize endpoints."""

    async def handler(received: Received, out: Writer) -> None:
        path = received.target
        request = received.json() if received.body else {}
        assert isinstance(request, dict)
        if path == CHAT:
            await sse([*answer_chunks(), b"data: [DONE]\n\n"])(received, out)
            return
        if path in ("/tokenize", "/apply-template", "/chat_tokenize"):  # not the readiness check
            log.append(path)
        reply: object = None
        if kind == "vllm" and path == "/tokenize" and ("prompt" in request or "messages" in request):
            text = request.get("prompt") or _template(
                request["messages"], request.get("add_generation_prompt", True)
            )
            special = request.get("add_special_tokens", "prompt" in request)  # vLLM's defaults
            tokens = _tokens(text, special)
            reply = {"count": len(tokens), "max_model_len": 9, "tokens": tokens}
        elif kind == "llama.cpp" and path == "/tokenize":
            reply = {"tokens": _tokens(request.get("content", ""), request.get("add_special", False))}
        elif kind == "llama.cpp" and path == "/apply-template":
            reply = {"prompt": _template(request["messages"], request.get("add_generation_prompt", True))}
        elif kind == "tgi" and path == "/tokenize" and "inputs" in request:
            reply = [
                {"id": token} for token in _tokens(request["inputs"], request.get("add_special_tokens", True))
            ]
        elif kind == "tgi" and path == "/chat_tokenize":
            tokens = _tokens(_template(request["messages"]), special=True)
            reply = {"tokenize_response": [{"id": token} for token in tokens], "templated_text": ""}
        if reply is None:
            await json_answer(404, b'{"error": "not found"}')(received, out)
        else:
            await json_answer(200, orjson.dumps(reply))(received, out)

    return handler


# "user: two words\nassistant:" is 4 words; with a BOS, 5. "Hello big world" is 3, and its stop token.
@pytest.mark.parametrize(("kind", "prompt"), [("vllm", 4), ("llama.cpp", 5), ("tgi", 5)])
async def test_usage_is_counted_with_the_upstreams_own_tokenizer(kind: str, prompt: int) -> None:
    calls: list[str] = []
    async with fake_upstream(tokenizer(kind, calls), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            first = await stream(adapter, CHAT, ASK)
            detected = len(calls)
            second = await stream(adapter, CHAT, {**ASK, "stream_options": {"include_usage": True}})
            page = await metrics(adapter)
    expected = {"prompt_tokens": prompt, "completion_tokens": 4, "total_tokens": prompt + 4}
    assert first.usage() == expected
    assert first.chunks[-1]["choices"]  # rides on the last chunk: the client did not ask
    assert second.usage() == expected
    assert second.chunks[-1]["choices"] == []  # the client asked: OpenAI's usage chunk
    assert len(calls) - detected < detected  # the tokenizer was found once, not again
    assert 'sse_adapter_repairs_total{kind="usage_counted",route="chat_completions"} 2.0' in page
    assert "sse_adapter_streams_without_usage_total 0.0" in page


async def test_without_a_tokenizer_no_usage_is_made_up_and_the_stream_is_counted() -> None:
    calls: list[str] = []
    async with fake_upstream(tokenizer("none", calls), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, ASK)
            page = await metrics(adapter)
    assert seen.usage() is None
    assert seen.text() == "".join(WORDS)
    assert seen.chunks[-1]["choices"][0]["finish_reason"] == "stop"  # the held chunk still went out
    assert "sse_adapter_streams_without_usage_total 1.0" in page


# Refusals: each server's shape, sent while the request holds the field it names.


def refusing(status: int, body: object, names: set[str]) -> Handler:
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    content_type = "text/plain" if isinstance(body, str) else "application/json"

    async def handler(received: Received, out: Writer) -> None:
        request = received.json()
        assert isinstance(request, dict)
        if names & request.keys():
            await out.start(
                status, [("Content-Type", content_type), ("Content-Length", str(len(raw)))], False
            )
            await out.raw(raw)
        elif request.get("stream"):
            await vllm_like(received, out)
        else:
            await json_answer(200, orjson.dumps(_completion()))(received, out)

    return handler


def _completion(model: str = "served-model") -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(WORDS)}
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": USAGE,
    }


# stream_options never reaches a server in the shapes it refuses (see the test after next)
FIELD_REFUSALS = [param for param in REFUSALS if "stream_options" not in param.values[2]]  # type: ignore[operator]


@pytest.mark.parametrize(("status", "body", "names"), FIELD_REFUSALS)
async def test_a_refused_field_is_dropped_and_the_request_sent_once_more(
    status: int, body: object, names: set[str]
) -> None:
    fields = dict.fromkeys(names, 1)
    async with fake_upstream(refusing(status, body, names)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            first = await stream(adapter, CHAT, {**ASK, **fields})
            second = await stream(adapter, CHAT, {**ASK, **fields})
            page = await metrics(adapter)
    for seen in (first, second):
        assert seen.status == 200
        assert seen.text() == "".join(WORDS)
    sent = [request.json() for request in upstream.requests]
    assert len(sent) == 3  # refused, sent again; then sent without them at once
    assert names <= sent[0].keys()  # type: ignore[attr-defined]
    assert not names & sent[1].keys()  # type: ignore[attr-defined]
    assert not names & sent[2].keys()  # type: ignore[attr-defined]
    assert sent[1]["messages"] == ASK["messages"]  # type: ignore[index]
    assert (
        'sse_adapter_repairs_total{kind="request_field_dropped",route="chat_completions"} '
        f"{float(2 * len(names))}" in page
    )


async def test_a_refusal_of_a_non_stream_request_is_retried_too() -> None:
    refusal = {"detail": "Unexpected fields in the request: {'x_extra'}"}
    async with fake_upstream(refusing(422, refusal, {"x_extra"})) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.post(adapter + CHAT, json={**ASK, "stream": False, "x_extra": 1})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "".join(WORDS)
    assert len(upstream.requests) == 2


async def test_a_refusal_that_names_no_field_of_the_request_is_the_answer() -> None:
    refusal = {"detail": "Unexpected fields in the request: {'other'}"}
    async with fake_upstream(json_answer(422, orjson.dumps(refusal))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = await stream(adapter, CHAT, ASK)
    assert seen.status == 422
    assert len(upstream.requests) == 1


async def test_no_second_request_once_the_stream_has_started() -> None:
    refusal = orjson.dumps({"detail": "Unexpected fields in the request: {'x_extra'}"})

    async def late_refusal(received: Received, out: Writer) -> None:
        await asyncio.sleep(0.5)  # past the status hold: the 200 and a heartbeat are out
        await json_answer(422, refusal)(received, out)

    async with fake_upstream(late_refusal) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, heartbeat_interval=0.1)) as adapter:
            seen = await stream(adapter, CHAT, {**ASK, "x_extra": 1})
            again = await stream(adapter, CHAT, {**ASK, "x_extra": 1})
    assert seen.status == 200
    assert "x_extra" in seen.errors()[0]
    assert len(upstream.requests) == 2  # one each: no resend after the 200
    assert "x_extra" in upstream.requests[1].json()  # type: ignore[operator]  # not resent: not learned
    assert again.errors()  # the fake refuses every request late


async def test_stream_options_never_reach_a_non_stream_request_nor_as_null() -> None:
    vllm_refusal = {"object": "error", "message": "Stream options can only be defined when stream=True."}
    tgi_refusal = (
        "Failed to deserialize the JSON body into the target type: stream_options: invalid type: null"
    )

    async def strict(received: Received, out: Writer) -> None:
        request = received.json()
        assert isinstance(request, dict)
        if "stream_options" in request and not request.get("stream"):
            await json_answer(400, orjson.dumps(vllm_refusal))(received, out)
        elif "stream_options" in request and request["stream_options"] is None:
            await json_answer(422, tgi_refusal.encode())(received, out)
        elif request.get("stream"):
            await vllm_like(received, out)
        else:
            await json_answer(200, orjson.dumps(_completion()))(received, out)

    async with fake_upstream(strict) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            plain = await client.post(
                adapter + CHAT, json={**ASK, "stream": False, "stream_options": {"include_usage": True}}
            )
            streamed = await stream(adapter, CHAT, {**ASK, "stream_options": None})
    assert plain.status_code == 200
    assert streamed.usage() == USAGE
    assert len(upstream.requests) == 2  # each went up once: nothing had to be refused


async def test_drop_fields_are_never_sent() -> None:
    async with fake_upstream(vllm_like) as upstream:
        settings = Settings(upstream=upstream.url, drop_fields=("logit_bias", "seed"))
        async with run_adapter(settings) as adapter:
            await stream(adapter, CHAT, {**ASK, "logit_bias": {"1": 1}, "seed": 3, "top_p": 0.5})
    sent = upstream.requests[0].json()
    assert isinstance(sent, dict)
    assert sent.keys() >= {"top_p"}
    assert not sent.keys() & {"logit_bias", "seed"}


NOTHINK = ModelAlias(
    "qwen3-nothink",
    upstream_model="Qwen/Qwen3-8B",
    set={"chat_template_kwargs": {"enable_thinking": False}},
    defaults={"max_tokens": 4096},
    drop=("logit_bias",),
)


async def test_an_alias_is_renamed_both_ways_streamed_or_not() -> None:
    async def handler(received: Received, out: Writer) -> None:
        request = received.json() if received.body else {}
        assert isinstance(request, dict)
        if received.target == "/v1/models":
            listing = {"object": "list", "data": [{"id": "Qwen/Qwen3-8B", "object": "model", "created": 5}]}
            await json_answer(200, orjson.dumps(listing))(received, out)
        elif request.get("stream"):
            await vllm_like(received, out)
        else:
            await json_answer(200, orjson.dumps(_completion(request["model"])))(received, out)

    async with fake_upstream(handler) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, models=(NOTHINK,))) as adapter:
            asked = {**ASK, "model": "qwen3-nothink", "max_tokens": 10, "logit_bias": {"1": 1}}
            seen = await stream(adapter, CHAT, asked)
            async with httpx.AsyncClient() as client:
                plain = await client.post(adapter + CHAT, json={**asked, "stream": False})
                listed = await client.get(adapter + "/v1/models")
                plain_model = await client.post(
                    adapter + CHAT, json={**ASK, "model": "Qwen/Qwen3-8B", "stream": False}
                )
    sent = upstream.requests[0].json()
    assert isinstance(sent, dict)
    assert sent["model"] == "Qwen/Qwen3-8B"
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["max_tokens"] == 10  # the client's own value wins over a default
    assert "logit_bias" not in sent
    assert {chunk["model"] for chunk in seen.chunks} == {"qwen3-nothink"}
    assert plain.json()["model"] == "qwen3-nothink"
    assert [model["id"] for model in listed.json()["data"]] == ["Qwen/Qwen3-8B", "qwen3-nothink"]
    assert plain_model.json()["model"] == "Qwen/Qwen3-8B"  # the upstream's own name is no alias


async def test_reasoning_as_think_tags_for_clients_that_show_only_content() -> None:
    reply_body = {
        **_completion(),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "It is 42.", "reasoning_content": "Think."},
                "finish_reason": "stop",
            }
        ],
    }

    async def handler(received: Received, out: Writer) -> None:
        request = received.json()
        assert isinstance(request, dict)
        if request.get("stream"):
            await sse([fixture("reasoning.sse")])(received, out)
        else:
            await json_answer(200, orjson.dumps(reply_body))(received, out)

    async with fake_upstream(handler) as upstream:
        settings = Settings(upstream=upstream.url, reasoning_field=ReasoningField.THINK_TAGS)
        async with run_adapter(settings) as adapter:
            seen = await stream(adapter, CHAT, ASK)
            async with httpx.AsyncClient() as client:
                plain = await client.post(adapter + CHAT, json={**ASK, "stream": False})
    assert seen.reasoning() == ""
    assert seen.text().startswith("<think>")
    assert "</think>It is 42." in seen.text()
    assert plain.json()["choices"][0]["message"] == {
        "role": "assistant",
        "content": "<think>Think.</think>It is 42.",
    }


@pytest.mark.parametrize(("hold", "status"), [(None, 200), (2.0, 503)])
async def test_the_status_hold_keeps_a_slow_refusal_failover_able(hold: float | None, status: int) -> None:
    refusal = orjson.dumps({"error": {"message": "overloaded", "type": "server_error", "code": 503}})

    async def slow_refusal(received: Received, out: Writer) -> None:
        await asyncio.sleep(0.6)
        await json_answer(503, refusal)(received, out)

    async with fake_upstream(slow_refusal) as upstream:
        settings = Settings(upstream=upstream.url, heartbeat_interval=0.2, status_hold=hold)
        async with run_adapter(settings) as adapter:
            seen = await stream(adapter, CHAT, ASK)
    assert seen.status == status  # One-API retries another channel only on an error status
    assert "overloaded" in seen.errors()[0]
    if status == 200:
        assert seen.heartbeats() >= 1


async def test_a_tokenizer_search_that_fails_is_not_repeated_on_every_stream() -> None:
    searches: list[str] = []

    async def handler(received: Received, out: Writer) -> None:
        if received.target == CHAT:
            await sse([*answer_chunks(), b"data: [DONE]\n\n"])(received, out)
        elif received.target == "/tokenize":
            searches.append(received.target)
            out.reset()  # a server that fails: no answer that says whether it tokenizes
        else:
            await json_answer(404, b"{}")(received, out)

    async with fake_upstream(handler, handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            first = await stream(adapter, CHAT, ASK)
            second = await stream(adapter, CHAT, ASK)
    assert first.usage() is None
    assert second.text() == "".join(WORDS)
    assert searches == ["/tokenize"]


async def test_a_stream_without_usage_from_a_server_that_sent_it_before_is_counted_as_such() -> None:
    answered: list[int] = []

    async def usage_once(received: Received, out: Writer) -> None:
        answered.append(1)
        pieces = answer_chunks() + ([usage_chunk()] if len(answered) == 1 else [])
        await sse([*pieces, b"data: [DONE]\n\n"])(received, out)

    async with fake_upstream(usage_once) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            first = await stream(adapter, CHAT, ASK)
            second = await stream(adapter, CHAT, ASK)
            page = await metrics(adapter)
    assert first.usage() == USAGE
    assert second.usage() is None
    assert "sse_adapter_streams_without_usage_total 1.0" in page
