"""The search for the upstream's tokenizer: only an answer settles it.

A server that is down, loading or overloaded is asked again later; one that
says it has no such endpoint (404, 405) is not asked again.
"""

from __future__ import annotations

import asyncio

import pytest

from sse_adapter.proxy import tokens
from sse_adapter.proxy.tokens import TokenCounter, Tokenizer
from sse_adapter.proxy.upstream import Upstream
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import stream
from tests.proxy.test_requests_wire import ASK, CHAT, WORDS, tokenizer
from tests.upstream_fake import Handler, Received, Writer, fake_upstream, json_answer

pytestmark = pytest.mark.anyio


def retry_after(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """How long a failed search waits before the next (30 s in the adapter): set by the
    test, so that "not yet" and "again" never depend on how fast the machine is."""
    monkeypatch.setattr(tokens, "_RETRY_AFTER", seconds)


def first_search_answers(status: int, then: Handler, searches: list[int]) -> Handler:
    """``then``'s server, whose tokenize endpoint answers ``status`` to the first call."""

    async def handler(received: Received, out: Writer) -> None:
        if received.target == "/tokenize":
            searches.append(status)
            if len(searches) == 1:
                await json_answer(status, b'{"error": "the model is loading"}')(received, out)
                return
        await then(received, out)

    return handler


@pytest.mark.parametrize("status", [503, 500, 502, 429, 408])
async def test_a_tokenizer_that_cannot_answer_yet_is_asked_again_later(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    searches: list[int] = []
    handler = first_search_answers(status, tokenizer("vllm", calls), searches)
    async with fake_upstream(handler, handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            retry_after(monkeypatch, 3600)
            first = await stream(adapter, CHAT, ASK)
            soon = await stream(adapter, CHAT, ASK)  # within the retry delay: not asked again
            asked_soon = len(searches)
            retry_after(monkeypatch, 0)  # the delay has passed
            later = await stream(adapter, CHAT, ASK)
    assert first.text() == soon.text() == later.text() == "".join(WORDS)
    assert later.usage() == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert first.usage() is None
    assert soon.usage() is None
    assert asked_soon == 1  # one failed call, then the search waited


@pytest.mark.parametrize("status", [404, 405])
async def test_no_tokenize_endpoint_settles_the_search(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    retry_after(monkeypatch, 0)  # were it a failure, the next stream would search again
    searches: list[str] = []

    async def handler(received: Received, out: Writer) -> None:
        if received.target == "/tokenize":
            searches.append(received.target)
            await json_answer(status, b'{"detail": "Not Found"}')(received, out)
        else:
            await tokenizer("none", [])(received, out)

    async with fake_upstream(handler, handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            first = await stream(adapter, CHAT, ASK)
            later = await stream(adapter, CHAT, ASK)
    assert first.usage() is None
    assert later.usage() is None
    assert searches == ["/tokenize", "/tokenize"]  # vLLM's shape, then TGI's; never again


async def test_a_search_that_times_out_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    retry_after(monkeypatch, 0)
    calls: list[str] = []
    vllm = tokenizer("vllm", calls)
    slow_once: list[bool] = []

    async def handler(received: Received, out: Writer) -> None:
        if received.target == "/tokenize" and not slow_once:
            slow_once.append(True)
            await asyncio.sleep(30)  # past the counter's bound: no answer at all
        await vllm(received, out)

    async with fake_upstream(handler, handles_probes=True) as upstream:
        async with Upstream(Settings(upstream=upstream.url)) as client:
            counter = TokenCounter(client, within=0.3)
            first = await counter.tokenizer("m")
            later = await counter.tokenizer("m")
    assert (first, later) == (None, Tokenizer.VLLM)
