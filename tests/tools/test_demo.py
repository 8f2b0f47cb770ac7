"""``sse-adapter demo`` as a newcomer runs it, and its embedded model server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from sse_adapter.repair.format import Format
from sse_adapter.tools.demo import request_body
from sse_adapter.tools.demo_upstream import DIALECTS, DemoDialect, demo_upstream, events_of, transcript
from sse_adapter.tools.newapi import nonstream_error
from sse_adapter.tools.oneapi import channel_test_passes
from sse_adapter.tools.quirks import read_typed
from tests.adapter_server import STARTUP, free_port_pair
from tests.end_client import FIXTURES, fixture

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def demo(*args: str, timeout: float = STARTUP + 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sse_adapter", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


# What each dialect does to the end client when nothing stands between it and the server.
DIRECT = {
    "tgi-2.0": "BROKEN: text lost",
    "xinference": "BROKEN: the upstream's error was hidden",
    "llamacpp-legacy": "BROKEN: the upstream's error was hidden",
    "vllm": "clean",
    "tools": "BROKEN: tool calls garbled",
    "reasoning": "BROKEN: silent for",
    "responses-clean": "clean",
    "responses-thinking": "BROKEN: silent for",
    "responses-cut": "BROKEN: no terminal event",
    "responses-error": "BROKEN: no terminal event; the upstream's error was hidden",
    "messages-clean": "clean",
    "messages-silent": "BROKEN: silent for",
    "messages-cut": "BROKEN: no terminal event",
    "messages-error": "BROKEN: no terminal event; the upstream's error was hidden",
}


def table(output: str, title: str) -> dict[str, tuple[str, str]]:
    """The rows of the table whose title starts with ``title``: label -> (direct, through the adapter)."""
    start = output.index(title)
    body = output[start : output.index("└", start)]
    rows: dict[str, tuple[str, str]] = {}
    for line in body.splitlines():
        cells = [cell.strip() for cell in re.split("[│┃]", line)[1:-1]]
        if len(cells) == 3 and cells[0]:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_demo_all_runs_within_the_think_time_and_exits_0() -> None:
    started = time.monotonic()
    # past the demo's silence limit (three 1 s intervals), so the thinking servers show as broken direct
    result = demo("--dialect", "all", "--think-seconds", "4")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # The think time plus a few seconds on an idle machine; the bound is generous, for the
    # interpreter's start on a loaded one: how fast the demo runs is not this test's business.
    assert took < 4 + 30
    summary = result.stdout[result.stdout.index("Summary") :]
    rows = {line.split("│")[1].strip(): line for line in summary.splitlines() if line.count("│") == 4}
    assert list(rows) == list(DIALECTS) == list(DIRECT)  # every format, in order
    for name, line in rows.items():
        direct, adapted = (cell.strip() for cell in line.split("│")[2:4])
        assert direct.startswith(DIRECT[name]), (name, direct)
        assert adapted == "clean", (name, adapted)
    assert "Traceback" not in result.stderr


def test_the_typed_tables_show_the_terminal_event_and_the_error_each_client_gets() -> None:
    result = demo("--format", "responses", "--think-seconds", "0")
    assert result.returncode == 0, result.stderr
    error = table(result.stdout, "responses-error (/v1/responses)")
    assert error["Codex behind new-api"] == ("direct to the model server", "through sse-adapter")
    assert error["terminal event"] == ("none", "response.failed")
    assert error["errors surfaced"] == ("none", "CUDA error: out of memory")
    assert error["text received"] == ("'Partial'", "'Partial'")
    assert table(result.stdout, "responses-clean")["terminal event"] == ("response.completed",) * 2
    assert "messages-" not in result.stdout  # one format only
    assert "tgi-2.0" not in result.stdout
    assert "an `error` event (Codex drops its message) (1)" in result.stdout
    assert "the failure ended in one response.failed (1)" in result.stdout


@pytest.mark.parametrize("name", ["reasoning", "responses-thinking", "messages-silent"])
def test_the_thinking_dialects_show_silence_direct_and_heartbeats_through_the_adapter(name: str) -> None:
    result = demo("--dialect", name, "--think-seconds", "4")
    assert result.returncode == 0, result.stderr
    silence = re.search(r"longest silence\s*│\s*([\d.]+) s\s*│\s*([\d.]+) s", result.stdout)
    beats = re.search(r"heartbeats seen\s*│\s*(\d+)\s*│\s*(\d+)", result.stdout)
    assert silence is not None
    assert beats is not None
    assert float(silence[1]) >= 4.0  # the think time
    assert float(silence[2]) <= 3.0  # the demo's limit: 1 s heartbeats, and room for a loaded machine
    assert (int(beats[1]), int(beats[2]) >= 2) == (0, True)
    assert "BROKEN: silent for" in result.stdout


def test_the_tools_dialect_shows_garbled_calls_direct_and_whole_ones_through_the_adapter() -> None:
    result = demo("--dialect", "tools")
    assert result.returncode == 0, result.stderr
    rebuilt = re.search(r"tool calls rebuilt\s*│\s*(.+?)\s*│\s*(.+?)\s*│", result.stdout)
    assert rebuilt is not None
    assert rebuilt[1].startswith("get_weatherget_weather")
    assert rebuilt[2] == 'get_weather({"city": "Paris"})'
    verdicts = re.search(r"verdict\s*│\s*(.+?)\s*│\s*(\S+)", result.stdout)
    assert verdicts is not None
    assert verdicts[1].startswith("BROKEN: tool calls garbled")
    assert verdicts[2] == "clean"


@pytest.mark.parametrize(
    "args",
    [
        ("--dialect", "tgi"),
        ("--format", "grpc"),
        ("--dialect", "vllm", "--format", "messages"),
        ("--think-seconds", "-1"),
        ("--port", "0"),
    ],
)
def test_bad_demo_flags_are_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    result = demo(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


CHAT = [name for name, dialect in DIALECTS.items() if dialect.form is Format.CHAT]
TYPED = [name for name, dialect in DIALECTS.items() if dialect.form is not Format.CHAT]


@pytest.mark.parametrize("name", CHAT)
def test_the_shipped_chat_transcripts_are_the_fixture_files(name: str) -> None:
    dialect = DIALECTS[name]
    assert transcript(dialect) == fixture(dialect.transcript)
    assert b"".join(events_of(transcript(dialect))) == transcript(dialect)


@pytest.mark.parametrize("name", TYPED)
def test_the_typed_transcripts_say_what_their_dialect_says(name: str) -> None:
    """The relay's own reading of each transcript: its text, its failure and the server's message."""
    dialect = DIALECTS[name]
    raw = transcript(dialect)
    reading = read_typed(raw, dialect.form)
    assert (reading.text, reading.failed, reading.error) == (dialect.text, dialect.failure, dialect.error)
    assert b"".join(events_of(raw)) == raw
    for event in events_of(raw):
        name_line, data_line = event.removesuffix(b"\n\n").split(b"\n")
        body = orjson.loads(data_line.removeprefix(b"data: "))
        assert name_line == b"event: " + str(body.get("type", "error")).encode()  # named as servers do


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.sse")), ids=lambda path: path.name)
def test_events_of_cuts_every_fixture_without_changing_a_byte(path: os.PathLike[str]) -> None:
    body = fixture(os.fspath(path).rsplit("/", 1)[1])
    assert b"".join(events_of(body)) == body


def asked(dialect: DemoDialect, stream: bool = True) -> dict[str, object]:
    if dialect.form is Format.CHAT:
        return {"model": dialect.name, "stream": stream, "messages": []}
    return {**request_body(dialect.form, dialect.name), "stream": stream}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(DIALECTS))
async def test_the_embedded_server_writes_the_transcript_bytes_on_its_route(name: str) -> None:
    dialect = DIALECTS[name]
    raw = b""
    async with demo_upstream(think_seconds=0.1) as url, httpx.AsyncClient() as client:
        async with client.stream("POST", url + dialect.path, json=asked(dialect)) as response:
            try:
                async for piece in response.aiter_raw():
                    raw += piece
                cut = False
            except httpx.RemoteProtocolError:
                cut = True
    assert response.headers["content-type"] == "text/event-stream"
    assert raw == transcript(dialect)
    assert cut is dialect.cut


@pytest.mark.anyio
@pytest.mark.parametrize("name", TYPED)
async def test_the_embedded_server_answers_whole_requests_with_the_same_story(name: str) -> None:
    dialect = DIALECTS[name]
    async with demo_upstream(think_seconds=0) as url, httpx.AsyncClient() as client:
        try:
            answer = await client.post(url + dialect.path, json=asked(dialect, stream=False))
        except httpx.RemoteProtocolError:
            assert dialect.cut  # a server that cuts its streams cuts its whole answers too
            return
    said = nonstream_error(answer.status_code, answer.content, "output" if "responses" in name else "content")
    if dialect.failure:
        assert said == "status 500"
        assert (dialect.error or "stopped mid-answer") in answer.json()["error"]["message"]
    else:
        assert said is None
        assert dialect.text.encode() in answer.content


@pytest.mark.anyio
async def test_the_embedded_server_says_what_it_serves() -> None:
    async with demo_upstream(think_seconds=0) as url, httpx.AsyncClient() as client:
        wrong = await client.post(url + "/v1/chat/completions", json={"model": "gpt-4", "stream": True})
        elsewhere = await client.post(url + "/v1/messages", json={"model": "tgi-2.0", "stream": True})
        models = await client.get(url + "/v1/models")
    assert wrong.status_code == 400
    assert "tgi-2.0" in wrong.json()["error"]["message"]
    assert elsewhere.status_code == 400
    assert elsewhere.json()["type"] == "error"  # Anthropic's shape on its route
    assert "messages-clean" in elsewhere.json()["error"]["message"]
    assert "tgi-2.0" not in elsewhere.json()["error"]["message"]
    assert [model["id"] for model in models.json()["data"]] == list(DIALECTS)


def test_serve_keeps_both_servers_up_until_ctrl_c() -> None:
    port = free_port_pair()
    command = [
        sys.executable,
        "-m",
        "sse_adapter",
        "demo",
        "--dialect",
        "vllm",
        "--serve",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any("Press Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            lines.append(line)
        printed = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"curl -N http://127.0.0.1:{port}/v1/chat/completions" in printed
        assert f"base URL http://127.0.0.1:{port}" in printed
        probe = f"sse-adapter probe --upstream http://127.0.0.1:{port + 1} --model tgi-2.0 --via {base}"
        assert probe in printed  # the exact command, for the ports it took
        options = f"--format responses --upstream http://127.0.0.1:{port + 1} --model responses-error"
        assert f"sse-adapter probe {options} --via {base}" in printed
        assert f"curl -N http://127.0.0.1:{port}/v1/responses" in printed
        typed = {"model": "responses-clean", "input": "hi", "stream": True}
        events = httpx.post(f"{base}/v1/responses", json=typed, timeout=10).text
        assert events.endswith("\n\n")
        assert "event: response.completed\n" in events
        body = {"model": "tgi-2.0", "stream": True, "messages": []}
        reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10)
        assert reply.text.endswith("data: [DONE]\n\n")
        assert "Hello" in reply.text
        whole = httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": False}, timeout=10)
        assert channel_test_passes(whole.status_code, whole.content)  # One-API's Test button
        assert whole.json()["choices"][0]["message"]["content"] == "Hello from TGI!"
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
    finally:
        process.kill()
