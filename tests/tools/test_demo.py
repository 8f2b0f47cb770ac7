"""``sse-adapter demo`` as a newcomer runs it, and its embedded model server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from sse_adapter.tools.demo_upstream import DIALECTS, demo_upstream, events_of, transcript
from sse_adapter.tools.oneapi import channel_test_passes
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


def test_demo_all_runs_within_the_think_time_and_exits_0() -> None:
    started = time.monotonic()
    result = demo("--dialect", "all", "--think-seconds", "2")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # The think time plus a few seconds on an idle machine (5.7 s in all); the bound is generous,
    # for the interpreter's start on a loaded one: how fast the demo runs is not this test's business.
    assert took < 2 + 30
    summary = result.stdout[result.stdout.index("Summary") :]
    rows = {line.split("│")[1].strip(): line for line in summary.splitlines() if line.count("│") == 4}
    assert set(rows) == set(DIALECTS)
    direct, adapted = (cell.strip() for cell in rows["tgi-2.0"].split("│")[2:4])
    assert direct.startswith("BROKEN: text lost")
    assert adapted == "clean"
    assert all(line.split("│")[3].strip() == "clean" for line in rows.values())
    assert "Traceback" not in result.stderr


def test_the_reasoning_dialect_shows_silence_direct_and_heartbeats_through_the_adapter() -> None:
    result = demo("--dialect", "reasoning", "--think-seconds", "4")
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


@pytest.mark.parametrize("args", [("--dialect", "tgi"), ("--think-seconds", "-1"), ("--port", "0")])
def test_bad_demo_flags_are_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    result = demo(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("name", list(DIALECTS))
def test_the_shipped_transcripts_are_the_fixture_files(name: str) -> None:
    dialect = DIALECTS[name]
    assert transcript(dialect) == fixture(dialect.transcript)
    assert b"".join(events_of(transcript(dialect))) == transcript(dialect)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.sse")), ids=lambda path: path.name)
def test_events_of_cuts_every_fixture_without_changing_a_byte(path: os.PathLike[str]) -> None:
    body = fixture(os.fspath(path).rsplit("/", 1)[1])
    assert b"".join(events_of(body)) == body


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(DIALECTS))
async def test_the_embedded_server_writes_the_fixture_bytes(name: str) -> None:
    async with demo_upstream(think_seconds=0.1) as url, httpx.AsyncClient() as client:
        body = {"model": name, "stream": True, "messages": []}
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            raw = b"".join([piece async for piece in response.aiter_raw()])
    assert response.headers["content-type"] == "text/event-stream"
    assert raw == fixture(DIALECTS[name].transcript)


@pytest.mark.anyio
async def test_the_embedded_server_says_what_it_serves() -> None:
    async with demo_upstream(think_seconds=0) as url, httpx.AsyncClient() as client:
        wrong = await client.post(url + "/v1/chat/completions", json={"model": "gpt-4", "stream": True})
        models = await client.get(url + "/v1/models")
    assert wrong.status_code == 400
    assert "tgi-2.0" in wrong.json()["error"]["message"]
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
