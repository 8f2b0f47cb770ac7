"""``sse-adapter probe``: its verdict agrees with the One-API double on every
dialect, direct and through the adapter; its JSON and exit codes are stable."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest
from rich.console import Console

from sse_adapter.repair.format import Format
from sse_adapter.settings import Settings
from sse_adapter.tools.oneapi import OneAPIRelay
from sse_adapter.tools.probe import _rate, first_model, probe, show
from sse_adapter.tools.probe_typed import probe_typed, show_typed
from tests.adapter_server import STARTUP, run_adapter
from tests.end_client import Seen, fixture
from tests.formats_fake import message_start, messages_stream, typed
from tests.proxy.test_dialects_wire import HANDLERS, ROWS, Row
from tests.upstream_fake import Handler, Received, Writer, content_frame, fake_upstream, json_answer

CHAT_ROWS = [
    pytest.param(row, id=row.fixture.rsplit(".", 1)[0])
    for row in ROWS
    if row.path.endswith("chat/completions")
]
COMPLETION = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "usage": {},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    }
)


def server(row: Row) -> Handler:
    streaming = HANDLERS[row.delivery](fixture(row.fixture))

    async def handler(request: Received, out: Writer) -> None:
        if request.json().get("stream"):  # type: ignore[union-attr]
            await streaming(request, out)
        else:
            await out.start(
                200,
                [("Content-Type", "application/json"), ("Content-Length", str(len(COMPLETION)))],
                chunked=False,
            )
            await out.raw(COMPLETION)

    return handler


def double_relays(row: Row) -> bool:
    """The One-API double's own judgement of the raw fixture, against what the server meant."""
    if row.delivery == "ndjson":
        return False  # 200 with no event stream: nothing reaches the client as text
    relay = OneAPIRelay()
    seen = Seen(
        200, None, frames=[(0.0, frame) for frame in relay.feed(fixture(row.fixture)) + relay.close()]
    )  # type: ignore[arg-type]
    try:
        text, errors = seen.text(), seen.errors()
    except orjson.JSONDecodeError:
        return False
    return text == row.text and (row.error is None or any(row.error in error for error in errors))


@pytest.mark.anyio
@pytest.mark.parametrize("row", CHAT_ROWS)
async def test_the_verdict_matches_the_one_api_double(row: Row) -> None:
    async with fake_upstream(server(row)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            direct, through = await asyncio.gather(probe(upstream.url, "m", None), probe(adapter, "m", None))
    if row.delivery == "cut":  # the cut is a transport failure, seen as such rather than judged
        assert not direct.one_api_relays
    else:
        assert direct.one_api_relays is double_relays(row), direct.reasons
    # A wrong upstream stays an error status; a stream that is nothing but an error is
    # shown as one, but is no clean relay.
    expected_through = row.delivery != "ndjson" and not (row.error is not None and not row.text)
    assert through.one_api_relays is expected_through, through.reasons
    if row.delivery != "ndjson" and row.error is not None:
        assert any(row.error in error for error in through.errors)


def test_tgi_2_0_is_no_directly_and_yes_through_the_adapter_in_stable_json() -> None:
    code = """
import asyncio, subprocess, sys, json
from tests.upstream_fake import fake_upstream
from tests.adapter_server import run_adapter
from tests.tools.test_probe import server
from tests.proxy.test_dialects_wire import ROWS
from sse_adapter.settings import Settings

async def main():
    row = next(r for r in ROWS if r.fixture == "tgi-2.0.sse")
    async with fake_upstream(server(row)) as up, run_adapter(Settings(upstream=up.url)) as adapter:
        runs = []
        for via in ([], ["--via", adapter]):
            args = ["probe", "--upstream", up.url, "--model", "tgi", "--json", *via]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sse_adapter", *args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            out, _ = await proc.communicate()
            runs.append({"code": proc.returncode, "report": json.loads(out)})
    print(json.dumps(runs))
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=3 * STARTUP,  # two probes and the adapter, each a process
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    direct_only, with_via = json.loads(done.stdout)
    assert direct_only["code"] == 1
    assert with_via["code"] == 0
    report = with_via["report"]
    assert sorted(report) == ["direct", "model", "relays", "via"]
    assert report["model"] == {"name": "tgi", "why": "--model"}
    assert report["relays"] is True
    assert report["direct"]["one_api_relays"] is False
    assert "`data:` with no space" in report["direct"]["reasons"][0]
    assert report["direct"]["quirks"]["no_space_after_data"] == 5  # what the bytes show
    assert report["direct"]["repairs"]["finish_reason_mapped"] == 1  # eos_token: the adapter's doing
    assert "finish_reason_mapped" not in report["direct"]["quirks"]
    assert report["via"]["repairs"] == {}  # what comes through the adapter needs nothing more
    assert report["via"]["one_api_relays"] is True
    assert report["via"]["text"] == "Hello from TGI!"
    assert sorted(report["via"]["prompts"]) == ["long answer", "tool call"]
    assert report["via"]["prompts"]["long answer"]["relays"] is True
    assert sorted(report["via"]) == [
        "errors",
        "first_byte_ms",
        "first_token_ms",
        "nonstream_error",
        "nonstream_server_error",
        "nonstream_status",
        "one_api_relays",
        "ping_interval_s",
        "prompts",
        "quirks",
        "reasoning",
        "reasons",
        "repairs",
        "server_error",
        "stream_status",
        "text",
        "tokens_per_s",
        "url",
    ]


def test_a_bad_url_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sse_adapter", "probe", "--upstream", "nope"],
        capture_output=True,
        text=True,
        timeout=STARTUP,
    )
    assert result.returncode == 2
    assert "--upstream must be an http://" in result.stderr


@pytest.mark.anyio
async def test_the_interval_of_comment_pings_is_measured() -> None:
    async def pinging(request: Received, out: Writer) -> None:
        if not request.json().get("stream"):  # type: ignore[union-attr]
            await out.start(
                200, [("Content-Type", "application/json"), ("Content-Length", "2")], chunked=False
            )
            await out.raw(b"{}")
            return
        await out.start(200, [("Content-Type", "text/event-stream")])
        for _ in range(8):  # 1.4 s from the first to the last: not to be taken for the interval
            await out.chunk(b": ping\n\n")
            await asyncio.sleep(0.2)
        await out.chunk(fixture("vllm.sse"))
        await out.end()

    async with fake_upstream(pinging) as upstream:
        report = await probe(upstream.url, "m", None)
    assert report.ping_interval_s is not None
    assert 0.15 <= report.ping_interval_s <= 1.0  # 0.2 s, with room for a loaded machine
    assert report.quirks["comment_pings"] == 8
    assert report.one_api_relays


@pytest.mark.anyio
async def test_an_error_answer_shows_no_framing_quirks() -> None:
    """A plain JSON error has no SSE framing: no "no [DONE]" and no repairs are laid on it."""

    refuses = json_answer(404, b'{"error":{"message":"model not found","type":"NotFoundError","code":404}}')
    async with fake_upstream(refuses) as upstream:
        report = await probe(upstream.url, "m", None)
    assert (report.quirks, report.repairs) == ({}, {})
    assert not report.one_api_relays


@pytest.mark.anyio
# paced: 20 a second on an idle machine; the bounds leave room for a loaded one, and the
# formula itself is pinned down on exact times below
@pytest.mark.parametrize(("pause", "rate"), [(0.0, None), (0.05, (5, 80))], ids=["one-burst", "paced"])
async def test_tokens_per_second_are_measured_from_first_to_last_token_or_not_at_all(
    pause: float, rate: tuple[int, int] | None
) -> None:
    tokens = [content_frame(f"t{n} ") for n in range(12)]

    async def streams(request: Received, out: Writer) -> None:
        if not request.json().get("stream"):  # type: ignore[union-attr]
            await out.start(200, [("Content-Type", "application/json"), ("Content-Length", "2")], False)
            await out.raw(b"{}")
            return
        await out.start(200, [("Content-Type", "text/event-stream")])
        if pause:
            for token in tokens:
                await out.chunk(token)
                await asyncio.sleep(pause)
        else:
            await out.chunk(b"".join(tokens))
        await out.chunk(b"data: [DONE]\n\n")
        await out.end()

    async with fake_upstream(streams) as upstream:
        report = await probe(upstream.url, "m", None)
    if rate is None:
        assert report.tokens_per_s is None  # no rate can be told from one burst
    else:
        assert report.tokens_per_s is not None
        assert rate[0] <= report.tokens_per_s <= rate[1]


@pytest.mark.parametrize(
    ("times", "rate"),
    [
        pytest.param([1.0 + n * 0.05 for n in range(12)], 20.0, id="from-the-first-token-not-the-request"),
        pytest.param([0.0, 0.1, 0.1, 0.1, 0.5], 8.0, id="bunched-reads-count-each-token"),
        pytest.param([0.0, 0.1, 0.2, 0.3], None, id="too-few-tokens"),
        pytest.param([0.0, 0.05, 0.1, 0.15, 0.2], None, id="too-short-a-span"),
    ],
)
def test_the_rate_is_tokens_between_the_first_and_the_last(times: list[float], rate: float | None) -> None:
    assert _rate(times) == (pytest.approx(rate) if rate is not None else None)


@pytest.mark.anyio
async def test_the_model_asked_for_says_why() -> None:
    async def lists_nothing(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "application/json"), ("Content-Length", "11")], False)
        await out.raw(b'{"data":[]}')

    async with fake_upstream(lists_nothing) as upstream:
        name, why = await first_model(upstream.url, None)
    assert name == "default"
    assert "lists no model" in why
    assert "--model" in why


def answers(stream: bytes, whole: bytes = COMPLETION, status: int = 200) -> Handler:
    """A server that streams ``stream`` and answers a whole request with ``whole``."""

    async def handler(request: Received, out: Writer) -> None:
        if request.json().get("stream"):  # type: ignore[union-attr]
            await out.start(200, [("Content-Type", "text/event-stream")])
            await out.chunk(stream)
            await out.end()
            return
        await out.start(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(whole)))], False
        )
        await out.raw(whole)

    return handler


def usage_frame(chunk_id: str = "c") -> bytes:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    body = {"id": chunk_id, "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    return b"data: " + orjson.dumps({**body, "usage": usage}) + b"\n\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("stream", "moved"),
    [
        pytest.param(content_frame("hi") + usage_frame() + b"data: [DONE]\n\n", None, id="already-last"),
        pytest.param(
            content_frame("h") + usage_frame() + content_frame("i") + b"data: [DONE]\n\n", 1, id="early"
        ),
    ],
)
async def test_usage_sent_last_is_a_repair_only_when_it_was_not_last(
    stream: bytes, moved: int | None
) -> None:
    async with fake_upstream(answers(stream)) as upstream:
        report = await probe(upstream.url, "m", None)
    assert report.repairs.get("usage_moved_last") == moved
    assert report.one_api_relays, report.reasons


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


THINKING = chat_chunk({"role": "assistant", "reasoning_content": "The user wants a greeting"})
NO_TEXT = [
    pytest.param(
        THINKING + chat_chunk({}, "length") + b"data: [DONE]\n\n",
        "no text, only reasoning: 'The user wants a greeting'",
        "the client gets reasoning but no text: the answer ran out of tokens while thinking",
        id="reasoning-only",
    ),
    pytest.param(
        chat_chunk({"role": "assistant", "content": ""}, "stop") + b"data: [DONE]\n\n",
        "(nothing)",
        "the client gets no text",
        id="empty",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("stream", "shown", "reason"), NO_TEXT)
async def test_an_answer_with_no_text_is_no_yes_and_reasoning_reads_as_reasoning(
    stream: bytes, shown: str, reason: str
) -> None:
    async with fake_upstream(answers(stream)) as upstream:
        report = await probe(upstream.url, "m", None)
    assert not report.one_api_relays
    assert report.reasons[0].startswith(reason), report.reasons
    console = Console(record=True, width=400)
    show({"direct": report}, console)
    assert shown in console.export_text()


MESSAGES_THINKING = [
    message_start(),
    typed({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
    typed(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm"}}
    ),
    typed({"type": "content_block_stop", "index": 0}),
    typed({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 32}}),
    typed({"type": "message_stop"}),
]


@pytest.mark.anyio
async def test_a_thinking_only_messages_answer_is_no_yes_and_reads_as_reasoning() -> None:
    async with fake_upstream(answers(b"".join(MESSAGES_THINKING), b'{"content":[]}')) as upstream:
        report = await probe_typed(upstream.url, "m", None, Format.MESSAGES)
    assert not report.new_api_relays
    assert report.reasons == [
        "the client gets reasoning but no text: the answer ran out of tokens while thinking; "
        "nothing shows the stream relays text"
    ]
    console = Console(record=True, width=400)
    show_typed({"direct": report}, console)
    assert "no text, only reasoning: 'Hmm'" in console.export_text()


TGI_OVERLOADED = b'{"error":"Model is overloaded","error_type":"overloaded"}'
CUDA_ERROR = b'data: {"error":"CUDA error: out of memory","error_type":"generation"}\n\n'


def refuses(body: bytes) -> Handler:
    """A server that answers every request with a 503 and its own error body."""
    return json_answer(503, body)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("handler", "nonstream", "said", "reason"),
    [
        pytest.param(
            refuses(TGI_OVERLOADED),
            "error: status 503 (the server: Model is overloaded)",
            "Model is overloaded",
            "One-API treats status 503 with application/json as an error",
            id="an-error-status",
        ),
        pytest.param(
            answers(content_frame("Partial") + CUDA_ERROR),
            "ok",
            "CUDA error: out of memory",
            "the server's error (CUDA error: out of memory) is dropped",
            id="an-error-in-the-stream-one-api-drops",
        ),
    ],
)
async def test_the_direct_column_shows_the_servers_own_message(
    handler: Handler, nonstream: str, said: str, reason: str
) -> None:
    async with fake_upstream(handler) as upstream:
        report = await probe(upstream.url, "m", None)
    assert report.server_error == said
    assert not report.one_api_relays
    console = Console(record=True, width=400)
    show({"direct": report}, console)
    shown = rows(console)
    assert shown["non-stream, One-API reads"] == nonstream
    assert shown["error the server sent"] == said
    assert report.reasons[0].startswith(reason), report.reasons


@pytest.mark.anyio
async def test_the_typed_direct_column_shows_the_servers_own_message() -> None:
    async with fake_upstream(refuses(b'{"detail":"Not Found"}')) as upstream:
        report = await probe_typed(upstream.url, "m", None, Format.RESPONSES)
    assert (report.nonstream_error, report.nonstream_server_error) == ("status 503", "Not Found")
    assert report.server_error == "Not Found"
    console = Console(record=True, width=400)
    show_typed({"direct": report}, console)
    assert rows(console)["error the server sent"] == "Not Found"


@pytest.mark.anyio
async def test_what_the_probe_simulates_is_labelled_simulated() -> None:
    stream = content_frame("hi") + b"data: [DONE]\n\n"
    async with fake_upstream(answers(stream)) as upstream:
        chat = await probe(upstream.url, "m", None)
    async with fake_upstream(answers(b"".join(messages_stream(["hi"])), b'{"content":[]}')) as upstream:
        messages = await probe_typed(upstream.url, "m", None, Format.MESSAGES)
    for report, table in ((chat, show), (messages, show_typed)):
        console = Console(record=True, width=400)
        table({"direct": report}, console)  # type: ignore[operator]
        labels = list(rows(console))
        simulated = [label for label in labels if label.endswith("(simulated)")]
        gateway = "One-API" if report is chat else "new-api"
        assert f"{gateway} would relay this stream (simulated)" in simulated
        assert f"text {gateway}'s client gets (simulated)" in simulated
        assert "what sse-adapter repairs in them (simulated)" in simulated
        assert f"(simulated): {gateway}" in console.export_text()  # the caption says by what rules


def rows(console: Console) -> dict[str, str]:
    """A one-column probe table's rows, by label (the lines a row's label is on)."""
    cells = [
        line.split("│") for line in console.export_text(clear=False).splitlines() if line.count("│") == 3
    ]
    return {cell[1].strip(): cell[2].strip() for cell in cells if cell[1].strip()}


def by_prompt(short: bytes, long: bytes, tool: Handler | bytes) -> Handler:
    """A server that streams each of the probe's prompts its own way."""

    async def handler(request: Received, out: Writer) -> None:
        body = request.json()
        assert isinstance(body, dict)
        if not body.get("stream"):
            await answers(short)(request, out)
            return
        if "tools" in body and not isinstance(tool, bytes):
            await tool(request, out)
            return
        stream = tool if "tools" in body else long if body.get("max_tokens") == 600 else short
        await answers(stream)(request, out)

    return handler


def tool_call_frames(index: bool) -> bytes:
    call: dict[str, Any] = {"id": "call_1", "type": "function"}
    call |= {"index": 0} if index else {}
    frames = [
        {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{**({"index": 0} if index else {}), "function": {"arguments": '{"city":"Paris"}'}}]},
    ]
    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
        for choice in [
            *({"index": 0, "delta": delta, "finish_reason": None} for delta in frames),
            {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
        ]
    ]
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"


SHORT = content_frame("Hello there, friend!") + b"data: [DONE]\n\n"


@pytest.mark.anyio
async def test_a_long_answer_one_api_cannot_relay_makes_the_route_a_no() -> None:
    long = content_frame("x" * 70_000) + b"data: [DONE]\n\n"  # one line past One-API's 64 KiB scanner
    async with fake_upstream(by_prompt(SHORT, long, tool_call_frames(index=True))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            direct, through = await asyncio.gather(probe(upstream.url, "m", None), probe(adapter, "m", None))
    assert direct.one_api_relays  # the short answer alone would have said yes
    assert direct.prompts["long answer"].relays is False
    assert not direct.relays
    assert through.relays, through.prompts  # the adapter splits the line
    assert through.prompts["long answer"].text_chars == 70_000
    console = Console(record=True, width=400)
    show({"direct": direct}, console)
    assert rows(console)["a long answer: One-API would relay it (simulated)"].startswith("no, because")


@pytest.mark.anyio
async def test_a_tool_call_is_an_answer_and_one_the_sdk_cannot_read_is_a_no() -> None:
    async with fake_upstream(by_prompt(SHORT, SHORT, tool_call_frames(index=False))) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            direct, through = await asyncio.gather(probe(upstream.url, "m", None), probe(adapter, "m", None))
    assert direct.prompts["tool call"].relays is False
    assert "openai SDK cannot read its tool calls" in direct.prompts["tool call"].reasons[0]
    tool = through.prompts["tool call"]  # the adapter numbers the deltas
    assert (tool.relays, tool.tool_calls, tool.finish_reason, tool.text_chars) == (
        True,
        ["get_weather"],
        "tool_calls",
        0,
    )
    assert through.relays


@pytest.mark.anyio
async def test_a_server_that_takes_no_tools_is_said_so_and_no_failure() -> None:
    refuses = json_answer(400, b'{"error":{"message":"tools param requires --jinja flag","code":400}}')
    async with fake_upstream(by_prompt(SHORT, SHORT, refuses)) as upstream:
        report = await probe(upstream.url, "m", None)
    tool = report.prompts["tool call"]
    assert tool.relays is None
    assert "takes no tools" in tool.note
    assert "requires --jinja" in tool.note
    assert report.relays
    console = Console(record=True, width=400)
    show({"direct": report}, console)
    assert "takes no tools" in rows(console)["a tool call: One-API would relay it (simulated)"]
