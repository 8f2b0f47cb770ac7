"""Counting a stream's usage runs on its own clock, after the upstream's have stopped: a complete
answer never ends in a timeout error, a stuck tokenizer never holds it for long, and a drain
during the count still finishes it."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import orjson
import pytest

from sse_adapter.proxy import relay
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.proxy.test_drain import cli_adapter
from tests.tokenize_fake import chat_or_health, toy_answer
from tests.upstream_fake import Received, Writer, content_frame, fake_upstream, json_answer

pytestmark = pytest.mark.anyio

ANSWER = [content_frame("Hello"), content_frame(", world"), b"data: [DONE]\n\n"]  # no usage


def server(tokenizer_stall: float) -> Any:
    """A vLLM-like upstream: a stream without usage, and a /tokenize that answers only after a stall."""

    async def handler(request: Received, out: Writer) -> None:
        if request.target == "/tokenize":
            body = orjson.loads(request.body)
            if "messages" in body or body.get("prompt") != "a":  # the search answers at once
                await asyncio.sleep(tokenizer_stall)
            await json_answer(200, toy_answer(body))(request, out)
            return
        await chat_or_health(request, out, b"".join(ANSWER))

    return handler


async def read(adapter: str) -> list[dict[str, Any]]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(adapter + "/v1/chat/completions", json=body)
    assert answer.content.endswith(b"data: [DONE]\n\n")
    payloads = [line[6:] for line in answer.content.split(b"\n") if line.startswith(b"data: {")]
    return [orjson.loads(payload) for payload in payloads]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def test_a_slow_tokenizer_does_not_trip_the_upstreams_timeouts() -> None:
    async with fake_upstream(server(tokenizer_stall=2.5), handles_probes=True) as upstream:
        settings = Settings(upstream=upstream.url, idle_timeout=1.0, total_timeout=2.0)
        async with run_adapter(settings) as adapter:
            chunks = await read(adapter)
    assert not [chunk for chunk in chunks if "error" in chunk]
    assert text_of(chunks) == "Hello, world"
    # "user hi <end> assistant"; "Hello," "world" (the stream has no finish_reason: no stop token)
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


async def test_a_stuck_tokenizer_ends_the_stream_cleanly_without_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "_COUNT_WITHIN", 1.0)
    async with fake_upstream(server(tokenizer_stall=60), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with asyncio.timeout(30):  # the count's bound (1 s), not the tokenizer's 60 s stall
                chunks = await read(adapter)
            page = (await httpx.AsyncClient().get(adapter + "/metrics")).text
    assert not [chunk for chunk in chunks if "error" in chunk]
    assert not [chunk for chunk in chunks if chunk.get("usage")]
    assert text_of(chunks) == "Hello, world"
    assert "sse_adapter_streams_without_usage_total 1.0" in page


async def test_sigterm_during_the_count_finishes_the_complete_answer() -> None:
    async with fake_upstream(server(tokenizer_stall=60), handles_probes=True) as upstream:
        async with cli_adapter(upstream.url, "--shutdown-grace", "1") as (adapter, base):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            raw, signalled = bytearray(), False
            async with httpx.AsyncClient(timeout=30) as http:
                async with http.stream("POST", base + "/v1/chat/completions", json=body) as answer:
                    async for piece in answer.aiter_raw():
                        raw += piece
                        if b"world" in raw and not signalled:
                            await asyncio.sleep(0.3)  # the count has begun: the tokenizer stalls
                            adapter.send_signal(signal.SIGTERM)
                            signalled = True
            await asyncio.wait_for(adapter.wait(), 20)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in raw
    assert b"shutting_down" not in raw


def llama_cpp_python() -> Any:
    """llama-cpp-python: no usage, no template endpoint; /extras/tokenize adds a BOS to every text."""

    async def handler(request: Received, out: Writer) -> None:
        if request.target == "/extras/tokenize":
            words = orjson.loads(request.body)["input"].split()
            await json_answer(200, orjson.dumps({"tokens": ["<s>", *words]}))(request, out)
        elif request.target == "/v1/chat/completions":
            await out.start(200, [("Content-Type", "text/event-stream")])
            for part in ANSWER:
                await out.chunk(part)
            await out.end()
        else:
            await json_answer(404, b'{"detail": "Not Found"}')(request, out)

    return handler


async def test_llama_cpp_python_is_counted_from_its_text_without_a_template() -> None:
    async with fake_upstream(llama_cpp_python(), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            chunks = await read(adapter)
    # the prompt: its BOS and "hi" (no chat markup: a lower bound); the answer "Hello," "world"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


async def test_a_completion_without_usage_is_counted_as_its_prompt_and_visible_text() -> None:
    """/v1/completions: the prompt's tokens, and each choice's text and its stop token."""

    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        body = {"id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    stream = chunk("Hi there", None) + chunk(" friend", "stop") + b"data: [DONE]\n\n"

    async def handler(request: Received, out: Writer) -> None:
        if request.target == "/tokenize":
            await json_answer(200, toy_answer(orjson.loads(request.body)))(request, out)
        elif request.target == "/v1/completions":
            await out.start(200, [("Content-Type", "text/event-stream")])
            await out.chunk(stream)
            await out.end()
        else:
            await json_answer(200, b"{}")(request, out)

    body = {"model": "m", "prompt": "one two three", "stream": True}
    async with fake_upstream(handler, handles_probes=True) as upstream:
        async with (
            run_adapter(Settings(upstream=upstream.url)) as adapter,
            httpx.AsyncClient(timeout=30) as http,
        ):
            answer = await http.post(adapter + "/v1/completions", json=body)
    payloads = [orjson.loads(line[6:]) for line in answer.content.split(b"\n") if line.startswith(b"data: {")]
    [usage] = [chunk["usage"] for chunk in payloads if chunk.get("usage")]
    # the toy tokenizer's words: three in the prompt; "Hi there friend" and the stop token
    assert usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
