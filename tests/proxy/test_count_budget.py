"""What all of a process's token counts hold at once is bounded: each holds its
request's size of one ``--max-request-bytes`` budget while it runs (budget.py)."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest

from sse_adapter.proxy.budget import ByteBudget
from sse_adapter.proxy.tokens import TokenCounter
from sse_adapter.repair.chunks import Kind
from sse_adapter.repair.request import prepare
from sse_adapter.repair.turns import Turns
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.tokenize_fake import chat_or_health, toy_answer
from tests.upstream_fake import Received, Writer, content_frame, fake_upstream, json_answer

pytestmark = pytest.mark.anyio


async def test_holds_that_fit_run_together_and_one_that_does_not_waits() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    release = asyncio.Event()

    async def work(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    first = asyncio.create_task(work("a", 60))
    second = asyncio.create_task(work("b", 40))  # fits beside a
    await asyncio.sleep(0.01)
    third = asyncio.create_task(work("c", 10))  # does not fit until one leaves
    huge = asyncio.create_task(work("d", 10_000))  # more than the whole: waits for all of it
    await asyncio.sleep(0.01)
    assert order == ["a in", "b in"]
    assert budget.held == 100
    release.set()
    await asyncio.gather(first, second, third, huge)
    assert order.index("c in") > order.index("a out")
    assert order.index("d in") > order.index("c out")
    assert budget.held == 0


def server(in_flight: dict[str, int], most: list[int]) -> Any:
    """A stream without usage; a /tokenize that stalls, keeping which requests' counts are under way
    (a count's calls go at once; each request's text starts with its own tag)."""

    async def handler(request: Received, out: Writer) -> None:
        if request.target == "/tokenize":
            body = orjson.loads(request.body)
            if "messages" in body:
                tag = body["messages"][0]["content"].split()[0]
                in_flight[tag] = in_flight.get(tag, 0) + 1
                most[0] = max(most[0], len(in_flight))
                await asyncio.sleep(1.0)  # long enough that counts side by side overlap
                in_flight[tag] -= 1
                if not in_flight[tag]:
                    del in_flight[tag]
            await json_answer(200, toy_answer(body))(request, out)
            return
        await chat_or_health(request, out, content_frame("Hello") + b"data: [DONE]\n\n")

    return handler


@pytest.mark.parametrize(("words", "together"), [(5, True), (6_000, False)], ids=["small", "large"])
async def test_large_requests_are_counted_one_at_a_time(words: int, together: bool) -> None:
    in_flight: dict[str, int] = {}
    most = [0]

    def body(tag: str) -> dict[str, Any]:
        content = " ".join([tag, *["word"] * words])  # 6,000 words: 30 KB, over half of the budget
        return {"model": "m", "messages": [{"role": "user", "content": content}], "stream": True}

    async with fake_upstream(server(in_flight, most), handles_probes=True) as upstream:
        settings = Settings(upstream=upstream.url, max_request_bytes=48 * 1024)
        async with run_adapter(settings) as adapter, httpx.AsyncClient(timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post(adapter + "/v1/chat/completions", json=body(tag)) for tag in "abc")
            )
    for answer in answers:
        assert b'"usage"' in answer.content  # each counted, in turn
    assert (most[0] > 1) is together


async def test_a_count_holds_at_most_32_times_its_request() -> None:
    """The multiple the deploy manifests budget for one count (tests/test_deploy.py)."""
    one = {"role": "user", "content": "hello there, how are you today? " * 4}
    body = orjson.dumps({"model": "m", "stream": True, "messages": [one] * 4000})  # 0.7 MB
    outgoing = prepare(body, ask_usage=True)
    turns = Turns()
    turns.add_chat({"index": 0, "delta": {"content": "Hi there"}})
    turns.end({"index": 0, "finish_reason": "stop"})
    answers: dict[bytes, tuple[int, bytes]] = {}

    class Tokenizer:  # vLLM's: token ids, answered from what was recorded
        record = True

        async def post_json(self, path: str, sent: Any, within: float, limit: int) -> tuple[int, bytes]:
            key = path.encode() + orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)
            if self.record:
                ids = [1000 + len(word) for word in orjson.loads(toy_answer(sent))["tokens"]]
                answers[key] = (200, orjson.dumps({"count": len(ids), "tokens": ids}))
            return answers[key]

    server = Tokenizer()
    await TokenCounter(server).usage(Kind.CHAT, outgoing.fields, turns)  # type: ignore[arg-type]
    server.record = False  # measured: what the adapter holds, not the fake
    tracemalloc.start()
    try:
        usage = await TokenCounter(server).usage(Kind.CHAT, outgoing.fields, turns)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert usage is not None
    assert usage["prompt_tokens"] > len(body) // 8  # a token every few bytes: the lists are long
    assert peak <= 32 * len(body)


async def test_what_a_count_keeps_of_a_requests_tools_is_a_digest() -> None:
    """The template's end of a turn is kept per model and tools; a client's tools may be
    megabytes, and many of them: what is kept of each is small."""
    tools = [{"type": "function", "function": {"name": "f", "description": "x" * 1_000_000}}]
    body = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    turns = Turns()
    turns.add_chat({"index": 0, "delta": {"content": "Hi"}})
    turns.end({"index": 0, "finish_reason": "stop"})

    class Tokenizer:
        async def post_json(self, path: str, sent: Any, within: float, limit: int) -> tuple[int, bytes]:
            return 200, toy_answer(sent)

    counter = TokenCounter(Tokenizer())  # type: ignore[arg-type]
    request = {**orjson.loads(body), "tools": tools}
    assert await counter.usage(Kind.CHAT, request, turns) is not None
    kept = counter._ends  # what the counter holds for later streams
    assert len(kept) == 1
    assert all(len(key) <= 64 for key in kept)
