"""Every repair's work grows in proportion to its input (issue 23, item 8).

A repair runs on the event loop: one that rescans what it has already seen
(a max over every call so far, text re-sliced after each tag, a string grown
by copying it) blocks every other stream for a time that grows with the
square of its input. Here twice the input may cost at most about twice the
CPU (``_SLACK``); a quadratic repair costs four times as much.

CPU time of this thread, the best of several runs with the collector off,
so a loaded machine slows both sizes alike; a case fails only if it fails
on every attempt. Each size takes tens of milliseconds once linear.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.completion import Assembler, normalise_completion
from sse_adapter.repair.dialects import body_error
from sse_adapter.repair.fitting import fit
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.repair.think import ThinkSplitter
from sse_adapter.repair.toolcalls import ToolCalls, split_tool_tags
from sse_adapter.settings import Settings, Tags
from sse_adapter.sse.decoder import Event

_SLACK = 2.2
SPLIT = Tags.SPLIT
_RUNS = 7
_ATTEMPTS = 3


@dataclass(frozen=True)
class Case:
    """``build(n)`` makes an input of size n (untimed); ``work`` repairs it (timed)."""

    build: Callable[[int], Any]
    work: Callable[[Any], object]
    size: int


def cpu(case: Case, size: int) -> float:
    data = case.build(size)
    gc.disable()
    try:
        start = time.thread_time()
        case.work(data)
        return time.thread_time() - start
    finally:
        gc.enable()


def best_cpu(case: Case) -> tuple[float, float]:
    """The least CPU each size took; the sizes take turns, so both meet the same load."""
    small = large = float("inf")
    for _ in range(_RUNS):
        small = min(small, cpu(case, case.size))
        large = min(large, cpu(case, 2 * case.size))
    return small, large


def feed_all(splitter: ThinkSplitter, pieces: list[str]) -> None:
    for piece in pieces:
        splitter.feed(piece)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def repairer(**options: Any) -> StreamRepairer:
    return StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x", **options))


def stream_through(events: list[str], **options: Any) -> None:
    repairing = repairer(**options)
    for data in events:
        repairing.repair(Event(data))
    repairing.finish()


def normalised(deltas: list[list[dict[str, Any]]]) -> None:
    calls = ToolCalls(Counter())
    for delta in deltas:
        calls.normalise(delta)


def assembled(chunks: list[dict[str, Any]]) -> None:
    assembler = Assembler(Kind.CHAT)
    for one in chunks:
        assembler.add(one)
    assembler.result()


BLOCK = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call> '
CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}

CASES = [
    pytest.param(
        Case(lambda n: [[{"id": f"c{i}", "function": {**CALL}}] for i in range(n)], normalised, 2500),
        id="tool-call deltas without an index, told apart by id",
    ),
    pytest.param(
        Case(
            lambda n: [[{"function": {"name": f"f{i % 2}", "arguments": "{}"}}] for i in range(n)],
            normalised,
            5000,
        ),
        id="tool-call deltas without index or id, each naming another function",
    ),
    pytest.param(
        Case(
            lambda n: [
                orjson.dumps(chunk({"tool_calls": [{"id": f"c{i}", "function": {**CALL}}]})).decode()
                for i in range(n)
            ],
            stream_through,
            5000,
        ),
        id="a stream of index-less tool-call chunks",
    ),
    pytest.param(
        Case(lambda n: BLOCK * n, split_tool_tags, 4000),
        id="tool-call tags in one content",
    ),
    pytest.param(
        Case(
            lambda n: [
                orjson.dumps(chunk({"content": piece})).decode()
                for piece in ("<thi", "nk>a</th", "ink>b <tool_", 'call>{"name": "f"}</tool_call>') * n
            ],
            lambda events: stream_through(events, think_tags="split", tool_call_tags="split"),
            1000,
        ),
        id="tags cut across a stream's chunks",
    ),
    pytest.param(
        Case(lambda n: "<think>a</think>b" * n, lambda text: ThinkSplitter().feed(text), 10000),
        id="think tags in one content",
    ),
    pytest.param(
        Case(
            lambda n: ["<thi", "nk>a"] * n + ["</think>b"],
            lambda pieces: feed_all(ThinkSplitter(True), pieces),
            10000,
        ),
        id="a thought the request opened, in small pieces",
    ),
    pytest.param(
        Case(lambda n: "x" * n + "</think>b", lambda text: ThinkSplitter(None, hold=None).feed(text), 100000),
        id="a thought opened in the prompt, in a body",
    ),
    pytest.param(
        Case(
            lambda n: {"choices": [{"index": 0, "message": {"content": BLOCK * n}, "finish_reason": "stop"}]},
            lambda body: normalise_completion(body, Kind.CHAT, Settings("http://x", tool_call_tags=SPLIT), 1),
            4000,
        ),
        id="tool-call tags in a body",
    ),
    pytest.param(
        Case(lambda n: [chunk({"content": "word " * 10}) for _ in range(n)], assembled, 8000),
        id="content chunks assembled into a body",
    ),
    pytest.param(
        Case(
            lambda n: [
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ab" * 25}}]}) for _ in range(n)
            ],
            assembled,
            8000,
        ),
        id="argument chunks assembled into a body",
    ),
    pytest.param(
        Case(
            lambda n: [
                {
                    **chunk({"content": "a"}),
                    "choices": [{"index": 0, "delta": {}, "logprobs": {"content": [{}] * 5}}],
                }
                for _ in range(n)
            ],
            assembled,
            8000,
        ),
        id="logprobs assembled into a body",
    ),
    pytest.param(
        Case(lambda n: chunk({"content": "é\n" * n}), lambda body: fit(body, 65000, Counter()), 100_000),
        id="a long content fitted under the line limit",
    ),
    pytest.param(
        Case(
            lambda n: chunk(
                {
                    "tool_calls": [
                        {"index": i, "id": f"c{i}", "type": "function", "function": CALL} for i in range(n)
                    ]
                }
            ),
            lambda body: fit(body, 65000, Counter()),
            4000,
        ),
        id="many tool calls in one chunk fitted under the line limit",
    ),
    pytest.param(
        Case(lambda n: b"<" * n, lambda body: body_error(502, "text/html", body), 16384),
        id="an HTML error page full of '<'",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_twice_the_input_costs_about_twice_the_cpu(case: Case) -> None:
    ratios = []
    for _ in range(_ATTEMPTS):
        small, large = best_cpu(case)
        ratios.append(large / small)
        if large <= _SLACK * small:
            return
    pytest.fail(f"twice the input cost {', '.join(f'{r:.1f}' for r in ratios)} times the CPU")
