"""``sse-adapter probe --format responses|messages|all``: what new-api's client gets
from each route, directly and through the adapter, and what the adapter would repair."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest

from sse_adapter.repair.format import Format
from sse_adapter.settings import Settings
from sse_adapter.tools.agentclient import AgentView
from sse_adapter.tools.demo_upstream import DIALECTS, demo_upstream
from sse_adapter.tools.probe import probe_routes
from sse_adapter.tools.probe_typed import TypedRouteReport, judge_route, probe_typed
from sse_adapter.tools.quirks import read_typed, typed_quirks
from tests.adapter_server import run_adapter
from tests.end_client import fixture
from tests.formats_fake import (
    messages_delta,
    messages_head,
    messages_stream,
    messages_tail,
    responses_delta,
    responses_head,
    responses_stream,
    responses_tail,
    typed,
)
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer, sse

TYPED = [name for name, dialect in DIALECTS.items() if dialect.form is not Format.CHAT]
# What each dialect does to new-api's client straight from the server (silences under a minute pass).
DIRECT_REASONS = {
    "responses-clean": [],
    "responses-thinking": [],
    "responses-cut": ["no terminal event"],
    "responses-error": ["no terminal event", "the upstream's error was hidden"],
    "messages-clean": [],
    "messages-silent": [],
    "messages-cut": ["no terminal event"],
    "messages-error": ["no terminal event", "the upstream's error was hidden"],
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", TYPED)
async def test_each_demo_dialect_is_judged_directly_and_relays_through_the_adapter(name: str) -> None:
    dialect = DIALECTS[name]
    async with demo_upstream(think_seconds=0.5) as upstream:
        async with run_adapter(Settings(upstream=upstream, heartbeat_interval=0.2)) as adapter:
            direct, through = await asyncio.gather(
                probe_typed(upstream, name, None, dialect.form),
                probe_typed(adapter, name, None, dialect.form),
            )
    assert direct.reasons == DIRECT_REASONS[name]
    assert direct.new_api_relays is not DIRECT_REASONS[name]
    assert through.new_api_relays, through.reasons
    assert (direct.text, through.text) == (dialect.text, dialect.text)
    assert through.quirks == {}  # what comes through the adapter shows nothing odd
    assert through.repairs == {}  # and needs nothing more
    assert len(through.terminal) == 1
    if dialect.error is not None:
        assert through.errors == [dialect.error]
        assert direct.errors == []
    if dialect.thinks:
        assert through.heartbeats >= 1
        assert direct.heartbeats == 0
        assert direct.longest_silence_s is not None
        assert direct.longest_silence_s >= 0.5


@pytest.mark.anyio
async def test_what_the_bytes_show_and_what_the_adapter_repairs_are_told_apart() -> None:
    async with demo_upstream(think_seconds=0) as upstream:
        report = await probe_typed(upstream, "responses-error", None, Format.RESPONSES)
        messages = await probe_typed(upstream, "messages-error", None, Format.MESSAGES)
    assert report.quirks == {"no_terminal": 1, "error_event": 1}
    assert report.repairs == {"response_failed_added": 1}
    assert report.terminal == []
    assert report.nonstream_status == 500
    assert report.nonstream_error == "status 500"
    assert messages.quirks == {"error_event_untyped": 1}
    assert messages.repairs == {"error_event_added": 1}


KEEPALIVE = typed({"type": "keepalive", "sequence_number": 4})
RESPONSES_BODIES = [
    pytest.param(b"".join(responses_stream(["a", "b"])), {}, {}, id="clean"),
    pytest.param(
        b"".join([*responses_head(), b": ping\n\n", b": ping\n\n", *responses_tail("", 4)]),
        {"comment_keepalives": 2},
        {},
        id="comments-only",
    ),
    pytest.param(
        b"".join([*responses_head(), b": ping\n\n", KEEPALIVE, *responses_tail("", 5)]),
        {},
        {},
        id="comments-beside-typed-keepalives",
    ),
    pytest.param(
        b"".join([*responses_head(), responses_delta("a", 9), *responses_tail("a", 10)]),
        {"sequence_gaps": 1},
        {"sequence_renumbered": 5},
        id="a-gap",
    ),
    pytest.param(
        b"".join([*responses_head(), responses_delta("x" * 70_000, 4), *responses_tail("x", 5)]),
        {"line_over_limit": 1},
        {"long_line_split": 1, "sequence_renumbered": 4},  # the pieces take numbers: the rest move up
        id="long-delta",
    ),
    pytest.param(
        b"".join(
            [*responses_head("resp_a")[:1], *responses_head("resp_b")[1:], *responses_tail("", 4, "resp_b")]
        ),
        {"response_ids": 2},
        {},
        id="two-ids",
    ),
    pytest.param(
        b"".join([*responses_head()[1:], *responses_tail("", 4)]),
        {"created_not_first": 1, "sequence_gaps": 0},
        {},
        id="no-created",
    ),
    pytest.param(b"".join(responses_stream(["a"], usage=None)), {}, {"usage_missing": 1}, id="no-usage"),
    pytest.param(
        b"".join([*responses_head(), b"data: {not json\n\n"]),
        {"not_json": 1, "no_terminal": 1},
        {"response_failed_added": 1},
        id="undecodable",
    ),
]


@pytest.mark.parametrize(("raw", "quirks", "repairs"), RESPONSES_BODIES)
def test_responses_quirks_and_repairs(raw: bytes, quirks: dict[str, int], repairs: dict[str, int]) -> None:
    assert typed_quirks(raw, Format.RESPONSES) == {name: n for name, n in quirks.items() if n}
    assert read_typed(raw, Format.RESPONSES).repairs == repairs


PING = typed({"type": "ping"})
ANTHROPIC_ERROR = typed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
MESSAGES_BODIES = [
    pytest.param(b"".join(messages_stream(["a"])), {}, {}, None, id="clean"),
    pytest.param(
        b"".join([b": ping\n\n", *messages_stream(["a"])]), {"comment_keepalives": 1}, {}, None, id="comments"
    ),
    pytest.param(b"".join([PING, b": x\n\n", *messages_stream(["a"])]), {}, {}, None, id="pings-too"),
    pytest.param(
        b"".join([*messages_head(), messages_delta("a"), ANTHROPIC_ERROR]),
        {},
        {},
        "busy",
        id="anthropic-error",
    ),
    pytest.param(
        b"".join([*messages_head(), messages_delta("a")]),
        {"no_terminal": 1},
        {"error_event_added": 1},
        None,
        id="cut",
    ),
    pytest.param(
        b"".join([PING, *messages_head()[1:], messages_delta("a"), *messages_tail()]),
        {"start_not_first": 1},
        {},
        None,
        id="no-message-start",
    ),
    pytest.param(
        b"".join(messages_stream(["a"], output_tokens=None)), {}, {"usage_missing": 1}, None, id="no-usage"
    ),
]


@pytest.mark.parametrize(("raw", "quirks", "repairs", "error"), MESSAGES_BODIES)
def test_messages_quirks_and_repairs(
    raw: bytes, quirks: dict[str, int], repairs: dict[str, int], error: str | None
) -> None:
    assert typed_quirks(raw, Format.MESSAGES) == quirks
    reading = read_typed(raw, Format.MESSAGES)
    assert reading.repairs == repairs
    assert reading.error == error


def view_at(times: list[float], parts: list[bytes]) -> AgentView:
    """A Responses stream whose events reached the client at ``times``."""
    raw = b"".join(parts)
    seen = AgentView(Format.RESPONSES, 200, httpx.Headers({"content-type": "text/event-stream"}), raw=raw)
    for at, part in zip(times, parts, strict=True):
        name, data = part.removesuffix(b"\n\n").split(b"\n")
        seen.events.append((at, name.removeprefix(b"event: ").decode(), data[6:].decode()))
    seen.reads = [(times[0], raw)]
    return seen


@pytest.mark.parametrize(
    ("pause", "filled", "relays"),
    [(5.0, 0, True), (11.0, 1, True), (61.0, 1, False)],
    ids=["short", "over-the-interval", "over-a-minute"],
)
def test_silences_are_measured_between_the_events_the_client_gets(
    pause: float, filled: int, relays: bool
) -> None:
    parts = responses_stream(["a", "b"])
    times = [0.1 * n for n in range(len(parts))]
    times[4:] = [at + pause for at in times[4:]]  # silent before the first delta
    report = TypedRouteReport("http://x", "/v1/responses")
    judge_route(report, view_at(times, parts))
    assert report.repairs.get("silences_filled", 0) == filled
    assert report.new_api_relays is relays
    assert report.longest_silence_s == pytest.approx(pause + 0.1)
    if not relays:
        assert "nginx and AWS ALB cut a connection silent for 60 s" in report.reasons[0]


def every_route() -> Any:
    """A server that speaks all three formats, cleanly, for any model."""
    chat = sse([fixture("vllm.sse")])
    answers = {
        "/v1/responses": (sse(responses_stream(["Hel", "lo"])), {"output": [], "usage": {}}),
        "/v1/messages": (sse(messages_stream(["Hel", "lo"])), {"content": [], "usage": {}}),
        "/v1/chat/completions": (chat, {"choices": [{"index": 0, "message": {"content": "Hi"}}]}),
    }

    async def handler(request: Received, out: Writer) -> None:
        streaming, whole = answers[request.target]
        if request.json().get("stream"):  # type: ignore[union-attr]
            await streaming(request, out)
        else:
            await json_answer(200, orjson.dumps(whole))(request, out)

    return handler


@pytest.mark.anyio
async def test_all_formats_each_under_its_name_and_one_relays_for_all() -> None:
    async with fake_upstream(every_route()) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            run = await probe_routes(upstream.url, adapter, "m", "k", [Format.MESSAGES])
            everything = await probe_routes(
                upstream.url, adapter, "m", "k", [Format.CHAT, Format.RESPONSES, Format.MESSAGES]
            )
    assert sorted(run.as_json()) == ["direct", "model", "relays", "via"]  # one format: as ever
    shown = everything.as_json()
    assert sorted(shown) == ["chat", "messages", "model", "relays", "responses"]
    assert shown["relays"] is True
    assert shown["messages"]["via"]["text"] == "Hello"
    assert shown["responses"]["direct"]["terminal"] == ["response.completed"]
    messages_asked = [r for r in upstream.requests if r.target == "/v1/messages"]
    assert messages_asked[0].headers["x-api-key"] == "k"  # as Claude Code sends it
    assert messages_asked[0].headers["anthropic-version"]


def test_the_cli_exits_by_the_route_the_traffic_takes_in_every_format() -> None:
    code = """
import asyncio, subprocess, sys, json
from tests.upstream_fake import fake_upstream
from tests.adapter_server import run_adapter
from tests.tools.test_probe_typed import every_route
from sse_adapter.settings import Settings
from sse_adapter.tools.demo_upstream import demo_upstream

async def main():
    runs = []
    async with demo_upstream(0) as demo, run_adapter(Settings(upstream=demo)) as adapter:
        for args in (
            ["--format", "responses", "--model", "responses-cut", "--upstream", demo],
            ["--format", "responses", "--model", "responses-cut", "--upstream", demo, "--via", adapter],
            ["--format", "messages", "--model", "responses-cut", "--upstream", demo],
        ):
            runs.append(await cli(args))
    async with fake_upstream(every_route()) as up, run_adapter(Settings(upstream=up.url)) as adapter:
        runs.append(await cli(["--format", "all", "--model", "m", "--upstream", up.url, "--via", adapter]))
    print(json.dumps(runs))

async def cli(args):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sse_adapter", "probe", "--json", *args,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return {"code": proc.returncode, "report": json.loads(out)}

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    direct, via, wrong_route, everything = json.loads(done.stdout)
    assert (direct["code"], via["code"], wrong_route["code"], everything["code"]) == (1, 0, 1, 0)
    assert direct["report"]["direct"]["reasons"] == ["no terminal event"]
    assert via["report"]["via"]["terminal"] == ["response.failed"]
    assert wrong_route["report"]["direct"]["stream_status"] == 400
    assert sorted(everything["report"]) == ["chat", "messages", "model", "relays", "responses"]


def test_a_format_it_does_not_know_is_a_usage_error() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sse_adapter",
            "probe",
            "--upstream",
            "http://127.0.0.1:1",
            "--format",
            "grpc",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--format must be one of chat, responses, messages or all, got 'grpc'" in result.stderr
